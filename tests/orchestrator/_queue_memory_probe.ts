/**
 * @module
 * Run by `queue_memory_test.ts` in a child Deno with `--expose-gc`: queues 2,000 runs delayed by a year, each with a
 * 46 KB input, and prints how much the heap grew (MiB), garbage collected before and after.
 */
import { ROOT, startTestKeel, TEST_TOKEN } from "../_support/keel.ts";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");
const k = await startTestKeel();
try {
  const installed = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/engine`, grant: {} });
  if (installed.status !== 201) throw new Error(JSON.stringify(installed.body));
  const N = Number(Deno.env.get("N") ?? 2000);
  const body = JSON.stringify({ input: { ms: 1, pad: "p".repeat(46_000) } });
  gc();
  const before = Deno.memoryUsage().heapUsed;
  let sent = 0;
  const lane = async () => {
    while (sent < N) {
      sent++;
      const res = await fetch(`${k.url}/api/workflows/hold/runs?delay=31536000`, {
        method: "POST",
        headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
        body,
      });
      if (res.status !== 202) throw new Error(`start answered ${res.status}`);
      await res.body?.cancel();
    }
  };
  await Promise.all(Array.from({ length: 16 }, lane));
  await new Promise((r) => setTimeout(r, 500));
  gc();
  console.log(JSON.stringify({ queued: N, grownMiB: (Deno.memoryUsage().heapUsed - before) / 2 ** 20 }));
} finally {
  await k.close();
}
// Timers of runs delayed by a year are not this probe's to wait for.
Deno.exit(0);

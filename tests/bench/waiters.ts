/**
 * @module
 * The cost of `?wait=` callers (`deno run -A tests/bench/waiters.ts [N]`, default 8,000): N runs delayed by an
 * hour, a `wait` of 20 s on each, and the CPU the Keel process uses over 5 s once they all wait (after the first
 * reads). Waiters are woken by their runs' ends and parks; the shared sweep is all that runs meanwhile.
 */
import { Effect } from "effect";
import process from "node:process";
import { ROOT, startTestKeel } from "../_support/keel.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
const N = Number(Deno.args[0] ?? 8000);
const k = await startTestKeel({ maxQueued: 1_000_000 });
try {
  const r = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/ctx_edges`, grant: {} });
  if (r.status !== 201) throw new Error(JSON.stringify(r.body));
  const ids: string[] = [];
  await k.keel.runtime.runPromise(Effect.gen(function* () {
    const o = yield* Orchestrator;
    for (let i = 0; i < N; i++) {
      ids.push((yield* o.start("kid", {}, "probe", { notBefore: Date.now() + 3_600_000 })).id);
    }
  }));
  const waits = ids.map((id) => k.keel.runtime.runPromise(Orchestrator.use((o) => o.wait(id, 20))));
  await new Promise((r) => setTimeout(r, 5000));
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, 5000));
  const c = process.cpuUsage(c0);
  const ms = performance.now() - t0;
  console.log(
    `${N} waiters: CPU ${(((c.user + c.system) / 1000) / ms * 100).toFixed(1)}% of one core over ${
      (ms / 1000).toFixed(1)
    } s`,
  );
  await Promise.all(waits);
} finally {
  await k.close();
}

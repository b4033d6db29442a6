/**
 * @module
 * Bench of the two isolation modes (called from `tests/bench/run.ts`, section
 * 5). For the `bench_echo` connector as a Worker, as a sandboxed process
 * (bwrap where it works) and as a process without bwrap, it measures:
 *
 * - cold start to first call: spawn, load, `init`/`ready`, one `bench.echo`;
 * - the RPC round trip of one small call (median, p99), sequential;
 * - calls per second with 16 calls in flight.
 *
 * It drives the host side of the protocol directly (`openConnection`), the
 * same object `PluginHost` calls through, so the figures are the isolation
 * machinery's own, without the Gateway.
 */
import { openConnection, type PluginSpec } from "../../core/plugins/_connection.ts";
import { sandboxTools } from "../../core/plugins/_process.ts";
import { keelRoot } from "../../core/config/mod.ts";

/** One result row, in the shape of `run.ts`'s table. */
export interface PluginBenchRow {
  readonly what: string;
  readonly s: { count: number; median: number; p99: number; mean: number };
  readonly rate?: string;
  readonly note?: string;
}

/** Options of `benchPlugins`. */
export interface PluginBenchOptions {
  readonly quick: boolean;
  readonly progress: (line: string) => void;
}

const pct = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
const summarize = (samples: ReadonlyArray<number>) => {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    count: sorted.length,
    median: pct(sorted, 50),
    p99: pct(sorted, 99),
    mean: sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length),
  };
};
const rate = (n: number, ms: number) => `${Math.round(n / (ms / 1000)).toLocaleString("en-US")} calls/s`;

/** Measure each isolation mode; returns rows for the bench table. */
export const benchPlugins = async ({ quick, progress }: PluginBenchOptions): Promise<PluginBenchRow[]> => {
  const root = keelRoot();
  const folder = `${root}/tests/bench/fixtures/bench_echo`;
  const temp = await Deno.makeTempDir({ prefix: "keel-bench-iso-" });
  const starts = quick ? 3 : 20;
  const calls = quick ? 200 : 2000;
  const warmup = quick ? 20 : 200;
  const args = { i: 0, pad: "x".repeat(100) };
  const tools = await sandboxTools();
  const modes: Array<{ label: string; isolation: "worker" | "process"; bwrap?: boolean }> = [
    { label: "worker", isolation: "worker" },
    ...(tools.bwrap ? [{ label: "process (bwrap)", isolation: "process" as const }] : []),
    { label: "process (no bwrap)", isolation: "process", bwrap: false },
  ];
  if (!tools.bwrap) {
    progress(`isolation: bwrap unusable here, process mode measured without it (${tools.bwrapProblem})`);
  }
  const rows: PluginBenchRow[] = [];
  const spec = (mode: (typeof modes)[number], n: number): PluginSpec => {
    const dataDir = `${temp}/data-${n}`;
    Deno.mkdirSync(dataDir, { recursive: true });
    return {
      isolation: mode.isolation,
      name: "bench_echo@0.1.0",
      entry: `${folder}/mod.ts`,
      folder,
      sdkDir: `${root}/core/sdk`,
      dataDir,
      // One transpile cache per mode: after the first start, starts are warm-cache cold starts.
      cacheDir: `${temp}/cache-${mode.label.replace(/\W+/g, "-")}`,
      permissions: {
        env: false,
        net: false,
        read: false,
        write: false,
        run: false,
        ffi: false,
        sys: false,
        import: false,
      },
      config: {},
      startTimeoutMs: 30_000,
      npm: false,
      ...(mode.bwrap === false ? { bwrap: false } : {}),
    };
  };
  const echo = (conn: ReturnType<typeof openConnection>) =>
    conn.request({ t: "effect", name: "bench.echo", args, idempotencyKey: "bench" }, 30_000);
  let n = 0;
  try {
    for (const mode of modes) {
      progress(`isolation ${mode.label}: ${starts} cold starts to first call`);
      // One start first, not counted: it fills the transpile cache (and probes the sandbox tools).
      const first = openConnection(spec(mode, n++));
      await first.ready;
      await echo(first);
      first.kill({ tag: "PluginCrashedError", message: "bench" });
      await first.closed;
      const coldMs: number[] = [];
      for (let i = 0; i < starts; i++) {
        const t0 = performance.now();
        const conn = openConnection(spec(mode, n++));
        await conn.ready;
        await echo(conn);
        coldMs.push(performance.now() - t0);
        conn.kill({ tag: "PluginCrashedError", message: "bench" });
        await conn.closed;
      }
      rows.push({
        what: `${mode.label}: cold start to first call`,
        s: summarize(coldMs),
        note: "transpile cache warm",
      });

      const conn = openConnection(spec(mode, n++));
      try {
        await conn.ready;
        for (let i = 0; i < warmup; i++) await echo(conn);
        progress(`isolation ${mode.label}: ${calls} sequential calls`);
        const tripMs: number[] = [];
        let begin = performance.now();
        for (let i = 0; i < calls; i++) {
          const t0 = performance.now();
          await echo(conn);
          tripMs.push(performance.now() - t0);
        }
        rows.push({
          what: `${mode.label}: RPC round trip`,
          s: summarize(tripMs),
          rate: rate(calls, performance.now() - begin),
          note: "sequential, ~130 B args",
        });

        progress(`isolation ${mode.label}: ${calls} calls, 16 in flight`);
        let next = 0;
        begin = performance.now();
        const lane = async () => {
          while (next++ < calls) await echo(conn);
        };
        await Promise.all(Array.from({ length: 16 }, lane));
        rows.push({
          what: `${mode.label}: 16 calls in flight`,
          s: { count: calls, median: NaN, p99: NaN, mean: NaN },
          rate: rate(calls, performance.now() - begin),
          note: "throughput only",
        });
      } finally {
        conn.kill({ tag: "PluginCrashedError", message: "bench" });
        await conn.closed;
      }
    }
  } finally {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  return rows;
};

if (import.meta.main) {
  const rows = await benchPlugins({
    quick: Deno.args.includes("--quick"),
    progress: (l) => console.error(`[bench] ${l}`),
  });
  for (const r of rows) {
    console.log(
      `${r.what.padEnd(45)} n=${String(r.s.count).padStart(5)} median ${r.s.median.toFixed(3)} ms  p99 ${
        r.s.p99.toFixed(3)
      } ms  ${r.rate ?? ""}`,
    );
  }
}

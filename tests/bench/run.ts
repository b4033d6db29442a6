/**
 * @module
 * Keel's performance bench (`deno task bench`). Measures, on this machine:
 *
 * 1. a checkpointed `ctx.step` as the workflow sees it (timed inside the
 *    agent's Worker), with a file-backed Deno KV and with `:memory:`;
 * 2. the plugin RPC round trip host → Worker → host through
 *    `PluginHost.callEffect`, sequential and 16 in flight;
 * 3. a full Gateway effect (`ctx.effect("bench.echo")` under an allow policy:
 *    policy check, intent, dispatch, outcome, audit), timed inside the Worker;
 * 4. baselines: a raw Deno KV atomic commit and a raw Worker postMessage round
 *    trip;
 * 5. each isolation mode (`plugins.ts`): cold start to first call, RPC round
 *    trip, calls/s with 16 in flight — Worker, process in bwrap, process
 *    without bwrap;
 * 6. memory (`memory.ts`): recall at 10k items (and 100k with
 *    `--memory-100k`): HNSW top-10 median/p99, recall@10 against exact
 *    search, insert rate, index build time, size on disk;
 * 7. policy decisions (`policy.ts`): `evaluate()` median and p99 with 10,
 *    100 and 1,000 rules of a realistic mix (globs, conditions, limits).
 * 8. policy tooling (`policy_tooling.ts`, its own table): lint of 10, 100
 *    and 1,000 rules, replaying 10,000 past requests, `POST
 *    /api/policy/simulate` and `/explain` on a real decision log.
 * 9. the plugin lifecycle (`lifecycle.ts`): reading a `.tar.gz`, install from
 *    a folder and from an archive, an upgrade that carries the grant and
 *    one held for a grant, end to end through the API.
 * 10. the standard workflow workloads (`workflows.ts`, its own table): W1, a
 *    10-step checkpointed workflow at concurrency 1 and 16, and W2, a step,
 *    an approval and a step, timed from the decision to the run's end.
 *
 * Progress goes to stderr, the result table to stdout. Nothing is written
 * into the repository; temp dirs are removed at the end. `--quick` runs a
 * tenth of the iterations (for checking the bench itself); `--only workflows`
 * runs only section 10, `--only w2` only its W2. Figures are medians and p99s from a shared, noisy
 * machine: compare orders of magnitude.
 */
import { Effect } from "effect";
import { type Keel, startKeel } from "../../core/mod.ts";
import { keelRoot } from "../../core/config/mod.ts";
import { PluginHost } from "../../core/plugins/mod.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
import { benchModels } from "./models.ts";
import { benchPolicyTooling } from "./policy_tooling.ts";
import { benchPlugins } from "./plugins.ts";
import { benchMemory, memoryBenchSizes } from "./memory.ts";
import { benchPolicy } from "./policy.ts";
import { benchLifecycle } from "./lifecycle.ts";
import { benchWorkflows } from "./workflows.ts";

const QUICK = Deno.args.includes("--quick");
/** `--only workflows` (or `--only=workflows`): run just that section. */
const ONLY = Deno.args.find((a) => a.startsWith("--only="))?.slice("--only=".length) ??
  (Deno.args.includes("--only") ? Deno.args[Deno.args.indexOf("--only") + 1] : undefined);
const SECTIONS = ["workflows", "w2"];
const scale = (n: number) => (QUICK ? Math.max(1, Math.ceil(n / 10)) : n);

const CFG = {
  kvCommits: scale(2000),
  kvWarmup: scale(200),
  workerTrips: scale(2000),
  workerWarmup: scale(200),
  rpcCalls: scale(2000),
  rpcWarmup: scale(200),
  inFlight: 16,
  runs: QUICK ? 3 : 20,
  stepsPerRun: 100,
  effectsPerRun: 100,
  payloadBytes: 100,
};

const ROOT = keelRoot();
const FIXTURES = `${ROOT}/tests/bench/fixtures`;
/** Must match `HIST_BASE` in fixtures/bench_agent/mod.ts. */
const HIST_BASE = 1.01;

const progress = (line: string) => console.error(`[bench] ${line}`);

// ---------------------------------------------------------------- statistics

interface Summary {
  readonly count: number;
  readonly median: number;
  readonly p99: number;
  readonly mean: number;
}

/** Nearest-rank percentile of sorted samples. */
const pct = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];

const summarize = (samplesMs: ReadonlyArray<number>): Summary => {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  return {
    count: sorted.length,
    median: pct(sorted, 50),
    p99: pct(sorted, 99),
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
  };
};

/** What a bench_agent workflow returns. */
interface WorkerStats {
  readonly count: number;
  readonly median: number;
  readonly p99: number;
  readonly mean: number;
  readonly totalMs: number;
  readonly hist: Record<string, number>;
}

/** Pool several runs' histograms (1 % buckets, so quantiles are within ±0.5 %). */
const pool = (runs: ReadonlyArray<WorkerStats>): Summary & { totalMs: number } => {
  const hist = new Map<number, number>();
  let count = 0;
  let sum = 0;
  let totalMs = 0;
  for (const r of runs) {
    for (const [k, c] of Object.entries(r.hist)) hist.set(Number(k), (hist.get(Number(k)) ?? 0) + c);
    count += r.count;
    sum += r.mean * r.count;
    totalMs += r.totalMs;
  }
  const buckets = [...hist.entries()].sort((a, b) => a[0] - b[0]);
  const quantile = (p: number) => {
    const rank = Math.max(1, Math.ceil((p / 100) * count));
    let seen = 0;
    for (const [k, c] of buckets) {
      seen += c;
      if (seen >= rank) return HIST_BASE ** (k + 0.5) / 1000; // bucket midpoint, µs → ms
    }
    return NaN;
  };
  return { count, median: quantile(50), p99: quantile(99), mean: sum / count, totalMs };
};

// --------------------------------------------------------------------- table

interface Row {
  readonly section: string;
  readonly what: string;
  readonly s: Summary;
  readonly rate?: string;
  readonly note?: string;
}
const rows: Row[] = [];
const fmtMs = (ms: number) => (Number.isFinite(ms) ? ms.toFixed(3) : "n/a");
const fmtRate = (perSec: number, unit: string) => `${Math.round(perSec).toLocaleString("en-US")} ${unit}/s`;

const printTable = () => {
  const head = ["#", "measurement", "n", "median ms", "p99 ms", "mean ms", "throughput", "note"];
  const body = rows.map((r) => [
    r.section,
    r.what,
    String(r.s.count),
    fmtMs(r.s.median),
    fmtMs(r.s.p99),
    fmtMs(r.s.mean),
    r.rate ?? "",
    r.note ?? "",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const right = new Set([2, 3, 4, 5, 6]);
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(" | ")} |`;
  console.log(line(head));
  console.log(`|${widths.map((w, i) => (right.has(i) ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`);
  for (const b of body) console.log(line(b));
};

const machineInfo = () => {
  let cpu = "unknown";
  try {
    cpu = Deno.readTextFileSync("/proc/cpuinfo").match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() ?? cpu;
  } catch { /* not Linux */ }
  const load = (() => {
    try {
      return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
    } catch {
      return "n/a";
    }
  })();
  return [
    `Deno ${Deno.version.deno} (V8 ${Deno.version.v8}, TypeScript ${Deno.version.typescript})`,
    `${Deno.build.os}/${Deno.build.arch}, kernel ${Deno.osRelease()}, ${navigator.hardwareConcurrency} CPUs (${cpu})`,
    `load average (1/5/15 min): ${load}`,
  ];
};

// ----------------------------------------------------------------- baselines

const benchRawKv = async (label: string, path: string) => {
  const kv = await Deno.openKv(path);
  try {
    const value = { seq: 0, kind: "step", name: "s", status: "done", value: "x".repeat(CFG.payloadBytes) };
    const commit = async (i: number) => {
      const key = ["bench", i];
      const res = await kv.atomic().check({ key, versionstamp: null }).set(key, { ...value, seq: i }).commit();
      if (!res.ok) throw new Error(`raw KV commit ${i} lost its check`);
    };
    for (let i = 0; i < CFG.kvWarmup; i++) await commit(-1 - i);
    const samples: number[] = [];
    const begin = performance.now();
    for (let i = 0; i < CFG.kvCommits; i++) {
      const t0 = performance.now();
      await commit(i);
      samples.push(performance.now() - t0);
    }
    const s = summarize(samples);
    rows.push({
      section: "4",
      what: `raw KV atomic check+set+commit, ${label}`,
      s,
      rate: fmtRate(CFG.kvCommits / ((performance.now() - begin) / 1000), "commits"),
      note: `${CFG.payloadBytes} B value`,
    });
    // What batching would buy: 100 checkpoint-sized sets in one atomic commit.
    const batches = Math.max(2, Math.ceil(CFG.kvCommits / 100));
    const perSet: number[] = [];
    const batchBegin = performance.now();
    for (let b = 0; b < batches; b++) {
      const op = kv.atomic();
      for (let i = 0; i < 100; i++) {
        const key = ["bench_batch", b, i];
        op.check({ key, versionstamp: null }).set(key, { ...value, seq: i });
      }
      const t0 = performance.now();
      if (!(await op.commit()).ok) throw new Error(`raw KV batch ${b} lost its check`);
      perSet.push((performance.now() - t0) / 100);
    }
    rows.push({
      section: "4",
      what: `raw KV, 100 check+sets per commit, ${label}`,
      s: summarize(perSet),
      rate: fmtRate((batches * 100) / ((performance.now() - batchBegin) / 1000), "sets"),
      note: `per set (commit time / 100), ${batches} commits`,
    });
  } finally {
    kv.close();
  }
};

const benchRawWorker = async () => {
  const worker = new Worker(new URL("./fixtures/raw_echo_worker.ts", import.meta.url), {
    type: "module",
    deno: {
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
    },
  });
  const pending = new Map<number, () => void>();
  worker.onmessage = (e: MessageEvent<{ id: number }>) => {
    const done = pending.get(e.data.id);
    pending.delete(e.data.id);
    done?.();
  };
  let nextId = 1;
  const pad = "x".repeat(CFG.payloadBytes);
  const trip = () =>
    new Promise<void>((resolve) => {
      const id = nextId++;
      pending.set(id, resolve);
      worker.postMessage({ t: "call", id, op: "checkpoint", runId: "run_bench", seq: id, name: "s", value: pad });
    });
  try {
    for (let i = 0; i < CFG.workerWarmup; i++) await trip();
    const samples: number[] = [];
    const begin = performance.now();
    for (let i = 0; i < CFG.workerTrips; i++) {
      const t0 = performance.now();
      await trip();
      samples.push(performance.now() - t0);
    }
    rows.push({
      section: "4",
      what: "raw Worker postMessage round trip",
      s: summarize(samples),
      rate: fmtRate(CFG.workerTrips / ((performance.now() - begin) / 1000), "trips"),
      note: `sequential, ~${CFG.payloadBytes + 80} B JSON`,
    });
    const t0 = performance.now();
    await inFlight(CFG.workerTrips, CFG.inFlight, trip);
    const elapsed = performance.now() - t0;
    rows.push({
      section: "4",
      what: `raw Worker postMessage, ${CFG.inFlight} in flight`,
      s: { count: CFG.workerTrips, median: NaN, p99: NaN, mean: NaN },
      rate: fmtRate(CFG.workerTrips / (elapsed / 1000), "trips"),
      note: "throughput only",
    });
  } finally {
    worker.terminate();
  }
};

/** Run `total` calls of `f`, at most `width` at a time. */
const inFlight = async (total: number, width: number, f: () => Promise<unknown>) => {
  let started = 0;
  const lane = async () => {
    while (started < total) {
      started++;
      await f();
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, total) }, lane));
};

// ---------------------------------------------------------------------- Keel

const startBenchKeel = async (dataDir: string, policiesDir: string): Promise<Keel> => {
  const keel = await startKeel({
    dataDir,
    hostname: "127.0.0.1",
    port: 0,
    token: "bench-token",
    policiesDir,
    root: ROOT,
    rpcTimeoutMs: 30_000,
    eagerMemory: false,
  }, { serve: false });
  try {
    for (const name of ["bench_echo", "bench_agent"]) {
      await keel.runtime.runPromise(
        PluginHost.use((h) => h.install({ path: `${FIXTURES}/${name}`, grant: {} }, "bench")),
      );
    }
  } catch (error) {
    await keel.close().catch(() => {});
    throw error;
  }
  return keel;
};

/** Start one bench_agent run and wait for it; returns the Worker-side stats. */
const runWorkflow = async (keel: Keel, workflow: "steps" | "effects", n: number) => {
  const t0 = performance.now();
  const view = await keel.runtime.runPromise(
    Effect.gen(function* () {
      const o = yield* Orchestrator;
      const run = yield* o.start(workflow, { n, payloadBytes: CFG.payloadBytes }, "bench");
      return yield* o.wait(run.id, 120);
    }),
  );
  const wallMs = performance.now() - t0;
  if (view.status !== "succeeded") {
    throw new Error(`bench run ${view.id} (${workflow}) ended ${view.status}: ${JSON.stringify(view.error)}`);
  }
  return { stats: view.output as WorkerStats, wallMs };
};

const benchWorkflow = async (keel: Keel, variant: string, workflow: "steps" | "effects") => {
  const n = workflow === "steps" ? CFG.stepsPerRun : CFG.effectsPerRun;
  progress(`${variant}: ${workflow} warm-up run (${n})`);
  await runWorkflow(keel, workflow, n);
  const stats: WorkerStats[] = [];
  const walls: number[] = [];
  for (let r = 0; r < CFG.runs; r++) {
    const { stats: s, wallMs } = await runWorkflow(keel, workflow, n);
    stats.push(s);
    walls.push(wallMs);
  }
  const pooled = pool(stats);
  progress(
    `${variant}: ${workflow} ${CFG.runs} × ${n}: median ${fmtMs(pooled.median)} ms, p99 ${fmtMs(pooled.p99)} ms`,
  );
  const section = workflow === "steps" ? "1" : "3";
  const what = workflow === "steps"
    ? `ctx.step (checkpoint), KV ${variant}`
    : `ctx.effect bench.echo via Gateway, KV ${variant}`;
  rows.push({
    section,
    what,
    s: pooled,
    rate: fmtRate(pooled.count / (pooled.totalMs / 1000), workflow === "steps" ? "steps" : "effects"),
    note: `${CFG.runs} runs × ${n}, timed in Worker`,
  });
  rows.push({
    section,
    what: `  whole run of ${n} ${workflow}, KV ${variant}`,
    s: summarize(walls),
    note: `host: start → wait returns; p99 ≈ max of ${CFG.runs}`,
  });
};

const benchRpc = async (keel: Keel) => {
  const plugin = await keel.runtime.runPromise(PluginHost.use((h) => h.get("bench_echo")));
  const args = { i: 0, pad: "x".repeat(CFG.payloadBytes) };
  const viaRuntime = () =>
    keel.runtime.runPromise(PluginHost.use((h) => h.callEffect(plugin, "bench.echo", args, "bench-key")));

  progress(`rpc: warm-up ${CFG.rpcWarmup} calls`);
  for (let i = 0; i < CFG.rpcWarmup; i++) await viaRuntime();

  progress(`rpc: ${CFG.rpcCalls} sequential calls, one runtime.runPromise each`);
  const perCall: number[] = [];
  let begin = performance.now();
  for (let i = 0; i < CFG.rpcCalls; i++) {
    const t0 = performance.now();
    await viaRuntime();
    perCall.push(performance.now() - t0);
  }
  rows.push({
    section: "2",
    what: "PluginHost.callEffect, runtime.runPromise each",
    s: summarize(perCall),
    rate: fmtRate(CFG.rpcCalls / ((performance.now() - begin) / 1000), "calls"),
    note: "sequential",
  });

  progress(`rpc: ${CFG.rpcCalls} sequential calls inside one Effect`);
  begin = performance.now();
  const inside = await keel.runtime.runPromise(
    Effect.gen(function* () {
      const host = yield* PluginHost;
      const out: number[] = [];
      for (let i = 0; i < CFG.rpcCalls; i++) {
        const t0 = performance.now();
        yield* host.callEffect(plugin, "bench.echo", args, "bench-key");
        out.push(performance.now() - t0);
      }
      return out;
    }),
  );
  rows.push({
    section: "2",
    what: "PluginHost.callEffect, inside one Effect",
    s: summarize(inside),
    rate: fmtRate(CFG.rpcCalls / ((performance.now() - begin) / 1000), "calls"),
    note: "sequential",
  });

  progress(`rpc: ${CFG.rpcCalls} calls, ${CFG.inFlight} in flight`);
  begin = performance.now();
  await keel.runtime.runPromise(
    Effect.gen(function* () {
      const host = yield* PluginHost;
      yield* Effect.forEach(
        Array.from({ length: CFG.rpcCalls }, (_, i) => i),
        () => host.callEffect(plugin, "bench.echo", args, "bench-key"),
        { concurrency: CFG.inFlight, discard: true },
      );
    }),
  );
  rows.push({
    section: "2",
    what: `PluginHost.callEffect, ${CFG.inFlight} in flight`,
    s: { count: CFG.rpcCalls, median: NaN, p99: NaN, mean: NaN },
    rate: fmtRate(CFG.rpcCalls / ((performance.now() - begin) / 1000), "calls"),
    note: "throughput only (Effect.forEach)",
  });
};

// ---------------------------------------------------------------------- main

const main = async () => {
  const startedAt = performance.now();
  const info = machineInfo();
  for (const l of info) progress(l);
  const temp = await Deno.makeTempDir({ prefix: "keel-bench-" });
  const policiesDir = `${temp}/policies`;
  await Deno.mkdir(policiesDir);
  await Deno.writeTextFile(`${policiesDir}/bench.yaml`, "default: allow\nrules: []\n");
  try {
    progress(`baseline: raw KV, ${CFG.kvCommits} commits (file)`);
    await benchRawKv("file", `${temp}/raw.kv`);
    progress(`baseline: raw KV, ${CFG.kvCommits} commits (:memory:)`);
    await benchRawKv(":memory:", ":memory:");
    progress(`baseline: raw Worker, ${CFG.workerTrips} round trips`);
    await benchRawWorker();

    for (const variant of ["file", ":memory:"] as const) {
      progress(`keel (${variant}): starting and installing bench_echo, bench_agent`);
      const keel = await startBenchKeel(variant === "file" ? `${temp}/data` : ":memory:", policiesDir);
      try {
        if (variant === "file") await benchRpc(keel);
        await benchWorkflow(keel, variant, "steps");
        await benchWorkflow(keel, variant, "effects");
      } finally {
        progress(`keel (${variant}): closing`);
        await keel.close();
      }
    }
    for (const row of await benchPlugins({ quick: QUICK, progress })) rows.push({ section: "5", ...row });
    const memorySizes = memoryBenchSizes(Deno.args, QUICK);
    for (const row of await benchMemory({ sizes: memorySizes, quick: QUICK, progress })) {
      rows.push({ section: "6", ...row });
    }
    for (const row of await benchPolicy({ quick: QUICK, progress })) rows.push({ section: "7", ...row });
    for (const row of await benchLifecycle({ quick: QUICK, progress })) rows.push({ section: "9", ...row });
  } finally {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }

  rows.sort((a, b) => a.section.localeCompare(b.section));
  const elapsed = (performance.now() - startedAt) / 1000;
  console.log(`# Keel bench${QUICK ? " (--quick)" : ""}`);
  for (const l of info) console.log(`- ${l}`);
  console.log(
    "- Figures come from a shared, noisy 2-core machine: read them as orders of magnitude, not as limits.",
  );
  console.log(
    `- Sections: 1 checkpointed step · 2 plugin RPC · 3 Gateway effect (allow policy) · 4 baselines · ` +
      `5 isolation modes (worker, process), host side of the protocol · ` +
      `6 memory recall on PGlite + pgvector, 384 dims, clustered vectors (--memory-100k adds 100k) · ` +
      `7 policy decision latency, evaluate() alone, per decision · ` +
      `9 plugin lifecycle through the API (install from a folder or .tar.gz, upgrades). ` +
      `Worker-timed rows pool ${CFG.runs} runs via 1 % histogram buckets (quantiles ±0.5 %). ` +
      `Warm-up runs/calls are excluded. Bench took ${elapsed.toFixed(1)} s.`,
  );
  console.log("");
  printTable();
  const median = (what: string) => rows.find((r) => r.what === what)?.s.median ?? NaN;
  const trip = median("raw Worker postMessage round trip");
  console.log("");
  for (const variant of ["file", ":memory:"]) {
    const step = median(`ctx.step (checkpoint), KV ${variant}`);
    const commit = median(`raw KV atomic check+set+commit, ${variant}`);
    const extra = step - trip - commit;
    console.log(
      `- ctx.step beyond the raw floor, KV ${variant}: ${fmtMs(step)} − (${fmtMs(trip)} trip + ${
        fmtMs(commit)
      } commit) = ${fmtMs(extra)} ms (medians; host RPC handling, Effect, JSON, SDK)${
        extra < 0.05 ? " — within this machine's noise" : ""
      }.`,
    );
  }
};

const USAGE = `Usage: deno task bench [--quick] [--only workflows|w2] [--memory-100k]

Measures Keel on this machine and prints the result tables to stdout
(progress goes to stderr). Takes 10-20 minutes; nothing is written into the
repository.

  --quick          a tenth of the iterations (to check the bench itself)
  --only SECTION   run one section: workflows (W1 and W2) or w2 (W2 only)
  --memory-100k    also measure memory recall at 100k items (slow)
  -h, --help       show this help`;

/** Every argument the bench knows; anything else is refused before any work starts. */
const unknownArg = (args: readonly string[]): string | undefined => {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--only") {
      i++;
      continue;
    }
    if (a === "--quick" || a === "--memory-100k" || a.startsWith("--only=")) continue;
    return a;
  }
  return undefined;
};

if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
  console.log(USAGE);
  Deno.exit(0);
}
const stray = unknownArg(Deno.args);
if (stray !== undefined || (Deno.args.includes("--only") && ONLY === undefined)) {
  console.error(
    stray !== undefined
      ? `bench: unknown argument "${stray}"\n\n${USAGE}`
      : `bench: --only needs a section\n\n${USAGE}`,
  );
  Deno.exit(2);
}

if (ONLY !== undefined && !SECTIONS.includes(ONLY)) {
  console.error(`bench: unknown section "${ONLY}": --only takes one of ${SECTIONS.join(", ")}`);
  Deno.exit(2);
}

try {
  if (ONLY === undefined) await main();
  await benchWorkflows({ quick: QUICK, w2Only: ONLY === "w2", progress });
  if (ONLY === undefined) {
    await benchModels({ quick: QUICK });
    await benchPolicyTooling({ quick: QUICK });
  }
} catch (error) {
  console.error("[bench] FAILED:", error);
  Deno.exit(1);
}

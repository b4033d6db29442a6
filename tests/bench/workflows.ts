/**
 * @module
 * The standard workflow workloads (`deno task bench`, or alone with
 * `deno task bench --only workflows`), on an in-process Keel over a real
 * file-backed Deno KV in a temp dir, measured from the host: `Orchestrator.start`
 * until `Orchestrator.wait` returns the run `succeeded`.
 *
 * - **W1**: a 10-step workflow, each step turning the previous step's 100
 *   bytes into the next, every step checkpointed with `ctx.step` — 500 runs
 *   one at a time, and 2,000 runs with 16 kept in flight. To separate what a
 *   step costs from what a run costs, the same workflow also runs with its
 *   steps computed without checkpoints (pure compute plus the run's fixed
 *   cost) and with 0 steps (the fixed cost alone), interleaved with the
 *   10-step runs so drift on a noisy machine hits all three alike.
 * - **W2**: a step, a human approval, a step — the time from the `decide`
 *   call to the run's completion, 200 times. After each W2 run the bench
 *   samples the machine's floor for it (`machineFloor`: an echo Worker round
 *   trip and a one-key durable KV commit, no Keel) so the table shows how much
 *   of W2 is Keel's own. The rows "W2 part" split W2 by the host's marks
 *   (`pathMarks` in `core/telemetry/marks.ts`): each part's median and p99 over
 *   the same runs (medians of parts need not add up to the median of the whole).
 *
 * `--w2` (or `deno task bench --only w2`) runs W2 alone.
 *
 * Peak RSS is `Deno.memoryUsage().rss` sampled every 20 ms during each
 * workload; plugins run as Workers in this process, so it includes them.
 * Prints its own table with the targets from issue 5 beside the figures.
 */
import { Effect } from "effect";
import { type Keel, startKeel } from "../../core/mod.ts";
import { keelRoot } from "../../core/config/mod.ts";
import { PluginHost } from "../../core/plugins/mod.ts";
import { Orchestrator, type RunView } from "../../core/orchestrator/mod.ts";
import { type PathMark, pathMarks } from "../../core/telemetry/mod.ts";

/** One row of the workflow table (times in ms). */
export interface WorkflowBenchRow {
  readonly what: string;
  readonly n: number;
  readonly median: number;
  readonly p99: number;
  readonly runsPerSec?: number;
  readonly stepsPerSec?: number;
  readonly peakRssMb?: number;
  readonly target?: string;
  /** Whether the figure the target is about meets it. */
  readonly met?: boolean;
  readonly note?: string;
}

/** Options for `benchWorkflows`. */
export interface WorkflowBenchOptions {
  /** A tenth of the runs (for checking the bench itself). */
  readonly quick?: boolean;
  /** Only W2 (`--only w2`: for iterating on the approval path). */
  readonly w2Only?: boolean;
  readonly progress?: (line: string) => void;
}

const ROOT = keelRoot();
const FIXTURE = `${ROOT}/tests/fixtures/bench_workflows`;
const STEPS = 10;
const BYTES = 100;
const TARGET_STEP_MS = 0.4;
const TARGET_STEPS_PER_SEC = 10_000;
const TARGET_W2_MS = 1.5;

/** The bench's workflows call no effects; W2's gate is the workflow's own `ctx.approval`. */
const POLICY = `default: allow
rules: []
`;

/** Nearest-rank percentile of sorted samples. */
const pct = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];

const stats = (samples: ReadonlyArray<number>) => {
  const sorted = [...samples].sort((a, b) => a - b);
  return { n: sorted.length, median: pct(sorted, 50), p99: pct(sorted, 99) };
};

/** Track the process's peak RSS while a workload runs. */
const rssSampler = () => {
  let peak = Deno.memoryUsage().rss;
  const timer = setInterval(() => (peak = Math.max(peak, Deno.memoryUsage().rss)), 20);
  return {
    stop: () => {
      clearInterval(timer);
      return Math.max(peak, Deno.memoryUsage().rss) / (1024 * 1024);
    },
  };
};

/**
 * The machine's floor for W2: a round trip to an echo Worker, then one durable Deno KV commit of one key,
 * after about 1 ms of idle (W2's commit also follows a Worker call and a quiet moment). On these VMs the
 * first fsync and thread wake after an idle moment cost several times a busy one, so the floor is sampled
 * beside each W2 run: both see the same machine.
 */
const machineFloor = async (dir: string) => {
  await Deno.mkdir(dir, { recursive: true });
  const kv = await Deno.openKv(`${dir}/floor.kv`);
  const source = "self.onmessage = (e) => self.postMessage(e.data);";
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  const value = { run: "x".repeat(100), status: "succeeded" };
  let n = 0;
  return {
    sample: async () => {
      await new Promise((r) => setTimeout(r, 1));
      const t = performance.now();
      await new Promise((resolve) => {
        worker.onmessage = resolve;
        worker.postMessage({ n });
      });
      await kv.atomic().set(["floor", n++ % 64], value).commit();
      return performance.now() - t;
    },
    close: async () => {
      worker.terminate();
      URL.revokeObjectURL(url);
      kv.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
};

/** W2's parts, between the host's marks (`pathMarks`) and the bench's own. */
const W2_PARTS: ReadonlyArray<{ from: PathMark | "start"; to: PathMark | "done"; what: string }> = [
  {
    from: "start",
    to: "posted",
    what: "Keel: take the decision, answer the gate in the journal, post the workflow call",
  },
  { from: "posted", to: "answered", what: "Worker round trip: deliver, replay the journal, run the step, answer" },
  { from: "answered", to: "submitted", what: "Keel: check the answer, build the run's end" },
  { from: "submitted", to: "durable", what: "the one commit: decision, steps, run and audit events, made durable" },
  { from: "durable", to: "done", what: "Keel: answer `decide`; `wait` sees the run succeeded" },
];

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

const fail = (view: RunView, want: string): never => {
  throw new Error(
    `bench run ${view.id} (${view.workflow}) is ${view.status}, expected ${want}: ${JSON.stringify(view)}`,
  );
};

/** Run the W1 and W2 workloads, print their table, and return its rows. */
export const benchWorkflows = async (options: WorkflowBenchOptions = {}): Promise<WorkflowBenchRow[]> => {
  const quick = options.quick ?? false;
  const progress = options.progress ?? ((line: string) => console.error(`[bench] ${line}`));
  const scale = (n: number) => (quick ? Math.max(2, Math.ceil(n / 10)) : n);
  const N = { c1: scale(500), c16: scale(2000), w2: scale(200), warmup: scale(30) };
  const rows: WorkflowBenchRow[] = [];

  const temp = await Deno.makeTempDir({ prefix: "keel-bench-wf-" });
  await Deno.mkdir(`${temp}/policies`);
  await Deno.writeTextFile(`${temp}/policies/bench.yaml`, POLICY);
  let keel: Keel | undefined;
  try {
    progress("workflows: starting Keel (file-backed KV), installing bench_workflows");
    keel = await startKeel({
      dataDir: `${temp}/data`,
      hostname: "127.0.0.1",
      port: 0,
      token: "bench-token",
      policiesDir: `${temp}/policies`,
      root: ROOT,
      rpcTimeoutMs: 30_000,
      eagerMemory: false,
    }, { serve: false });
    const k = keel;
    await k.runtime.runPromise(PluginHost.use((h) => h.install({ path: FIXTURE, grant: {} }, "bench")));

    /** One run, start → `wait` returns it succeeded; the host-side time and the Worker-side compute. */
    const w1 = (steps: number, checkpoint: boolean) => async () => {
      const t0 = performance.now();
      const view = await k.runtime.runPromise(
        Effect.gen(function* () {
          const o = yield* Orchestrator;
          const run = yield* o.start("bench_w1", { steps, bytes: BYTES, checkpoint }, "bench");
          return yield* o.wait(run.id, 120);
        }),
      );
      const ms = performance.now() - t0;
      if (view.status !== "succeeded") fail(view, "succeeded");
      return { ms, computeMs: (view.output as { computeMs: number }).computeMs };
    };
    const durable = w1(STEPS, true);
    const pure = w1(STEPS, false);
    const empty = w1(0, true);

    if (!options.w2Only) {
      // ---------------------------------------------------------------- W1, c1
      progress(`W1 c1: warm-up ${N.warmup} runs of each variant`);
      for (let i = 0; i < N.warmup; i++) {
        await durable();
        await pure();
        await empty();
      }
      progress(`W1 c1: ${N.c1} runs each of 10 checkpointed steps, 10 unchecked steps, 0 steps (interleaved)`);
      const d: Array<{ ms: number; computeMs: number }> = [];
      const p: number[] = [];
      const z: number[] = [];
      const rss1 = rssSampler();
      for (let i = 0; i < N.c1; i++) {
        d.push(await durable());
        p.push((await pure()).ms);
        z.push((await empty()).ms);
      }
      const rssC1 = rss1.stop();
      const sum = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0);
      const dMs = d.map((r) => r.ms);
      const dStats = stats(dMs);
      const zStats = stats(z);
      const computeMedian = stats(d.map((r) => r.computeMs)).median;
      const c1RunsPerSec = N.c1 / (sum(dMs) / 1000);
      progress(`W1 c1: 10-step run median ${dStats.median.toFixed(3)} ms, 0-step ${zStats.median.toFixed(3)} ms`);
      rows.push({
        what: "W1 c1: run of 10 checkpointed steps",
        ...dStats,
        runsPerSec: c1RunsPerSec,
        stepsPerSec: c1RunsPerSec * STEPS,
        peakRssMb: rssC1,
        note: "start → succeeded, one run at a time",
      });
      rows.push({
        what: "W1 c1: same 10 steps, no checkpoints",
        ...stats(p),
        runsPerSec: N.c1 / (sum(p) / 1000),
        note: "the workflow's pure compute + the run's fixed cost",
      });
      rows.push({
        what: "W1 c1: run of 0 steps",
        ...zStats,
        runsPerSec: N.c1 / (sum(z) / 1000),
        note: "per-run fixed cost: start, Worker call, finish, audit, wait",
      });
      const allIn = stats(d.map((r) => (r.ms - r.computeMs) / STEPS));
      rows.push({
        what: "W1 c1: per step, (run − compute) / 10",
        ...allIn,
        target: `≤ ${TARGET_STEP_MS} ms`,
        met: allIn.median <= TARGET_STEP_MS,
        note: `includes the run's fixed cost; compute median ${(computeMedian * 1000).toFixed(1)} µs/run`,
      });
      const perStep = stats(d.map((r) => (r.ms - zStats.median) / STEPS));
      rows.push({
        what: "W1 c1: per step, (run − 0-step median) / 10",
        ...perStep,
        target: `≤ ${TARGET_STEP_MS} ms`,
        met: perStep.median <= TARGET_STEP_MS,
        note: "the checkpointed step alone: Worker ⇄ host RPC + durable KV commit",
      });

      // --------------------------------------------------------------- W1, c16
      progress(`W1 c16: warm-up, then ${N.c16} runs of 10 checkpointed steps, 16 in flight`);
      await inFlight(N.warmup, 16, durable);
      const c16: number[] = [];
      const rss16 = rssSampler();
      let t0 = performance.now();
      await inFlight(N.c16, 16, async () => c16.push((await durable()).ms));
      let elapsed = (performance.now() - t0) / 1000;
      const rssC16 = rss16.stop();
      const c16RunsPerSec = N.c16 / elapsed;
      progress(`W1 c16: ${Math.round(c16RunsPerSec * STEPS)} steps/s`);
      rows.push({
        what: "W1 c16: run of 10 checkpointed steps",
        ...stats(c16),
        runsPerSec: c16RunsPerSec,
        stepsPerSec: c16RunsPerSec * STEPS,
        peakRssMb: rssC16,
        target: `≥ ${TARGET_STEPS_PER_SEC.toLocaleString("en-US")} steps/s`,
        met: c16RunsPerSec * STEPS >= TARGET_STEPS_PER_SEC,
        note: `${N.c16} runs, 16 in flight; latency per run includes queueing behind the other 15`,
      });
      progress(`W1 c16: ${N.c16} runs of 0 steps, 16 in flight`);
      const c16z: number[] = [];
      t0 = performance.now();
      await inFlight(N.c16, 16, async () => c16z.push((await empty()).ms));
      elapsed = (performance.now() - t0) / 1000;
      rows.push({
        what: "W1 c16: run of 0 steps",
        ...stats(c16z),
        runsPerSec: N.c16 / elapsed,
        note: "ceiling on runs/s from the per-run fixed cost alone",
      });
    }

    // -------------------------------------------------------------------- W2
    /** Each timed W2 run's marks, ms from its start (only while `marked`). */
    const w2Marks: Array<Map<string, number>> = [];
    let marked = false;
    /** Start a W2 run, let it park, then time decide → succeeded. */
    const w2 = async () => {
      const parked = await k.runtime.runPromise(
        Effect.gen(function* () {
          const o = yield* Orchestrator;
          const run = yield* o.start("bench_w2", { bytes: BYTES }, "bench");
          return yield* o.wait(run.id, 120);
        }),
      );
      if (parked.status !== "waiting_approval" || !parked.waitingFor) fail(parked, "waiting_approval");
      const approvalId = parked.waitingFor!.approvalId;
      const seen = new Map<string, number>();
      const t = performance.now();
      // The first of each mark: the run's own (nothing else runs meanwhile).
      if (marked) pathMarks.at = (mark) => seen.has(mark) || seen.set(mark, performance.now() - t);
      const done = await k.runtime.runPromise(
        Effect.gen(function* () {
          const o = yield* Orchestrator;
          yield* o.decide(approvalId, { approve: true, actor: "bench" });
          return yield* o.wait(parked.id, 120);
        }),
      );
      const ms = performance.now() - t;
      pathMarks.at = undefined;
      if (marked) w2Marks.push(seen.set("start", 0).set("done", ms));
      if (done.status !== "succeeded") fail(done, "succeeded");
      return ms;
    };
    progress(`W2: warm-up ${N.warmup}, then ${N.w2} runs (step, approval, step), each followed by a floor sample`);
    const floor = await machineFloor(`${temp}/floor`);
    try {
      for (let i = 0; i < N.warmup; i++) {
        await w2();
        await floor.sample();
      }
      const w2ms: number[] = [];
      const floorMs: number[] = [];
      const rssW2 = rssSampler();
      marked = true;
      for (let i = 0; i < N.w2; i++) {
        w2ms.push(await w2());
        floorMs.push(await floor.sample());
      }
      const w2Stats = stats(w2ms);
      const floorStats = stats(floorMs);
      rows.push({
        what: "W2: approval decided → run succeeded",
        ...w2Stats,
        peakRssMb: rssW2.stop(),
        target: `< ${TARGET_W2_MS} ms`,
        met: w2Stats.median < TARGET_W2_MS,
        note: `decide (answers the gate in the journal) + resume + replay + step + finish; ${
          (w2Stats.median - floorStats.median).toFixed(3)
        } ms over the machine floor below`,
      });
      rows.push({
        what: "W2 floor: Worker echo + 1-key durable KV commit, no Keel",
        ...floorStats,
        note: "what any engine pays here for W2's one Worker round trip and one durable commit, sampled " +
          "after each W2 run (after ~1 ms idle, as W2's commit is)",
      });
      // Runs that took another path (no quick resumption) lack marks: the parts cover the others.
      const complete = w2Marks.filter((m) => W2_PARTS.every((p) => m.has(p.from) && m.has(p.to)));
      for (const part of W2_PARTS) {
        if (!complete.length) break;
        rows.push({
          what: `W2 part: ${part.from} → ${part.to}`,
          ...stats(complete.map((m) => m.get(part.to)! - m.get(part.from)!)),
          note: part.what,
        });
      }
    } finally {
      await floor.close();
    }
  } finally {
    progress("workflows: closing Keel");
    await keel?.close().catch(() => {});
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  printTable(rows, quick);
  return rows;
};

const printTable = (rows: ReadonlyArray<WorkflowBenchRow>, quick: boolean) => {
  const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "n/a");
  const rate = (x: number | undefined) => (x === undefined ? "" : Math.round(x).toLocaleString("en-US"));
  console.log("");
  console.log(`## Workflows: W1 (10 checkpointed steps), W2 (step, approval, step)${quick ? " (--quick)" : ""}`);
  console.log("");
  console.log(
    "Host-side, in-process Keel on a file-backed Deno KV; a run is timed from `Orchestrator.start` until " +
      "`Orchestrator.wait` returns it succeeded. Targets from issue 5 are measured, not asserted.",
  );
  console.log("");
  console.log("| workload | n | median ms | p99 ms | runs/s | steps/s | peak RSS MB | target | met | note |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.what} | ${r.n} | ${ms(r.median)} | ${ms(r.p99)} | ${rate(r.runsPerSec)} | ${rate(r.stepsPerSec)} | ${
        r.peakRssMb === undefined ? "" : r.peakRssMb.toFixed(0)
      } | ${r.target ?? ""} | ${r.met === undefined ? "" : r.met ? "yes" : "no"} | ${r.note ?? ""} |`,
    );
  }
};

if (import.meta.main) {
  await benchWorkflows({ quick: Deno.args.includes("--quick"), w2Only: Deno.args.includes("--w2") });
}

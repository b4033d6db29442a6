/**
 * @module
 * Memory recall at scale, on real PGlite with pgvector through Keel's own
 * `Memory.layer` (its migrations, its `hnsw.ef_search`): for N items of
 * dimension 384 it measures the bulk insert rate (batches of 1,000, index
 * dropped), the HNSW index build time, the top-10 latency of the vector
 * search (median, p99) and its recall@10 against exact search (brute force
 * in JS over the same vectors), the latency of a full `Memory.recall()`
 * (vector + full text fused, logged), `Memory.remember()` one at a time with
 * the index in place, and the data size on disk.
 *
 * Vectors are clustered (N/100 centres, each point a centre plus Gaussian
 * noise of norm ≈ 0.7, normalised) and seeded: uniform random vectors have no
 * near neighbours and make recall meaningless (see FACTS.md). Queries are new
 * points drawn the same way.
 *
 * `deno task bench` runs 10k; add `--memory-100k` (or set
 * `KEEL_BENCH_MEMORY_100K=1`) for 100k too, which takes minutes. Standalone:
 * `deno run -A tests/bench/memory.ts [--memory-100k] [--quick]`.
 */
import { Effect, Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { EMBEDDING_DIM, HNSW_EF_SEARCH, Memory, MemoryDb, OFFLINE_EMBEDDER } from "../../core/memory/mod.ts";

/** One row of the bench table (section added by the caller). */
export interface MemoryBenchRow {
  readonly what: string;
  readonly s: { readonly count: number; readonly median: number; readonly p99: number; readonly mean: number };
  readonly rate?: string;
  readonly note?: string;
}

/** What the caller asks for. */
export interface MemoryBenchOptions {
  /** Item counts to measure; default 10k, plus 100k with `--memory-100k`. */
  readonly sizes?: ReadonlyArray<number>;
  readonly quick?: boolean;
  readonly progress?: (line: string) => void;
}

/** The sizes the command line asks for. */
export const memoryBenchSizes = (args: ReadonlyArray<string>, quick: boolean): number[] => {
  const big = args.includes("--memory-100k") || Boolean(Deno.env.get("KEEL_BENCH_MEMORY_100K"));
  if (quick) return big ? [1_000, 10_000] : [1_000];
  return big ? [10_000, 100_000] : [10_000];
};

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
const one = (ms: number) => ({ count: 1, median: ms, p99: ms, mean: ms });
const none = { count: 0, median: NaN, p99: NaN, mean: NaN };
const rate = (n: number, ms: number, unit: string) =>
  `${Math.round(n / (ms / 1000)).toLocaleString("en-US")} ${unit}/s`;
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`;

/** Seeded PRNG (mulberry32) and standard normal samples (Box–Muller). */
const rng = (seed: number) => {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(next() || 1e-12)) * Math.cos(2 * Math.PI * next());
  return { next, normal };
};

const normalize = (v: Float32Array) => {
  let n = 0;
  for (const x of v) n += x * x;
  n = Math.sqrt(n) || 1;
  for (let i = 0; i < v.length; i++) v[i] = Math.round((v[i] / n) * 1e6) / 1e6;
  return v;
};

const WORDS = ("invoice client project meeting payment contract proposal email call report budget tax quote " +
  "delivery design review launch support renewal schedule travel hiring supplier order refund").split(" ");

/** Clustered unit vectors: `centres[c]` plus noise, and a synthetic text per item. */
const dataset = (n: number, seed: number) => {
  const r = rng(seed);
  const clusters = Math.max(10, Math.round(n / 100));
  const centres = Array.from({ length: clusters }, () => {
    const c = new Float32Array(EMBEDDING_DIM);
    for (let i = 0; i < EMBEDDING_DIM; i++) c[i] = r.normal();
    return normalize(c);
  });
  const noise = 0.7 / Math.sqrt(EMBEDDING_DIM);
  const point = (cluster: number) => {
    const v = new Float32Array(EMBEDDING_DIM);
    const c = centres[cluster];
    for (let i = 0; i < EMBEDDING_DIM; i++) v[i] = c[i] + noise * r.normal();
    return normalize(v);
  };
  const text = (i: number, cluster: number) =>
    `item ${i} of topic ${cluster}: ${WORDS[cluster % WORDS.length]} ${WORDS[(cluster * 7 + i) % WORDS.length]} ${
      WORDS[(i * 13) % WORDS.length]
    }`;
  return { clusters, point, text, pick: () => Math.floor(r.next() * clusters) };
};

const literal = (v: Float32Array) => `[${Array.prototype.join.call(v, ",")}]`;

/** Top-10 ids by exact cosine (vectors are unit length, so the dot product). */
const exactTop10 = (all: Float32Array, ids: ReadonlyArray<string>, q: Float32Array): string[] => {
  const n = ids.length;
  const best: Array<[number, number]> = [];
  for (let row = 0; row < n; row++) {
    let dot = 0;
    const off = row * EMBEDDING_DIM;
    for (let i = 0; i < EMBEDDING_DIM; i++) dot += all[off + i] * q[i];
    if (best.length < 10 || dot > best[best.length - 1][0]) {
      best.push([dot, row]);
      best.sort((a, b) => b[0] - a[0]);
      if (best.length > 10) best.pop();
    }
  }
  return best.map(([, row]) => ids[row]);
};

const dirSize = async (path: string): Promise<number> => {
  let total = 0;
  for await (const e of Deno.readDir(path)) {
    const p = `${path}/${e.name}`;
    if (e.isDirectory) total += await dirSize(p);
    else if (e.isFile) total += (await Deno.stat(p)).size;
  }
  return total;
};

/** Measure one size; returns its rows. */
const benchSize = async (n: number, quick: boolean, progress: (line: string) => void): Promise<MemoryBenchRow[]> => {
  const rows: MemoryBenchRow[] = [];
  const label = n >= 1000 ? `${n / 1000}k` : String(n);
  const dir = await Deno.makeTempDir({ prefix: `keel-bench-memory-${label}-` });
  const rt = ManagedRuntime.make(
    Memory.layer.pipe(
      Layer.provide(
        KeelConfig.layer({
          dataDir: dir,
          hostname: "127.0.0.1",
          port: 0,
          token: "bench",
          policiesDir: dir,
          root: dir,
          rpcTimeoutMs: 1000,
          eagerMemory: true,
        }),
      ),
    ),
  );
  try {
    progress(`memory ${label}: opening PGlite (initdb + migrations)`);
    const db = await rt.runPromise(MemoryDb.use((d) => d.run("bench", (pg) => Promise.resolve(pg))));
    await db.exec("drop index memory_items_embedding");

    const data = dataset(n, 42);
    const all = new Float32Array(n * EMBEDDING_DIM);
    const ids: string[] = [];
    const batch = 1000;
    const batchMs: number[] = [];
    progress(`memory ${label}: inserting ${n.toLocaleString("en-US")} items in batches of ${batch}`);
    const insertBegin = performance.now();
    for (let start = 0; start < n; start += batch) {
      const end = Math.min(n, start + batch);
      const bIds: string[] = [];
      const texts: string[] = [];
      const vecs: string[] = [];
      for (let i = start; i < end; i++) {
        const cluster = i % data.clusters;
        const v = data.point(cluster);
        all.set(v, i * EMBEDDING_DIM);
        const id = `mem_bench_${i.toString().padStart(7, "0")}`;
        ids.push(id);
        bIds.push(id);
        texts.push(data.text(i, cluster));
        vecs.push(literal(v));
      }
      const t0 = performance.now();
      await db.query(
        `insert into memory_items (id, scope, kind, text, content_hash, embedder, embedding, source)
         select a, 'agent:bench', 'fact', t, a, $4, v::vector, 'bench' from unnest($1::text[], $2::text[], $3::text[]) as u(a, t, v)`,
        [bIds, texts, vecs, OFFLINE_EMBEDDER],
      );
      batchMs.push(performance.now() - t0);
      if ((end / batch) % 10 === 0) progress(`memory ${label}: ${end.toLocaleString("en-US")} inserted`);
    }
    const insertMs = performance.now() - insertBegin;
    rows.push({
      what: `memory ${label}: bulk insert, ${batch} per statement, no index`,
      s: summarize(batchMs),
      rate: rate(n, batchMs.reduce((a, b) => a + b, 0), "items"),
      note: `per batch; whole load ${(insertMs / 1000).toFixed(1)} s incl. generating vectors`,
    });

    progress(`memory ${label}: building the HNSW index (m=16, ef_construction=64)`);
    const buildBegin = performance.now();
    await db.exec("create index memory_items_embedding on memory_items using hnsw (embedding vector_cosine_ops)");
    const buildMs = performance.now() - buildBegin;
    await db.exec("analyze memory_items"); // as Keel does at every start (PGlite has no autovacuum)
    rows.push({
      what: `memory ${label}: HNSW index build`,
      s: one(buildMs),
      rate: rate(n, buildMs, "items"),
      note: `${(buildMs / 1000).toFixed(1)} s`,
    });

    const queries = quick ? 50 : 200;
    const warm = quick ? 5 : 20;
    const qs = Array.from({ length: queries + warm }, () => data.point(data.pick()));
    const sql = `select id from memory_items where embedder = $2 order by embedding <=> $1::vector limit 10`;
    progress(`memory ${label}: ${queries} top-10 vector queries (ef_search ${HNSW_EF_SEARCH})`);
    for (let i = 0; i < warm; i++) await db.query(sql, [literal(qs[i]), OFFLINE_EMBEDDER]);
    const latency: number[] = [];
    const got: string[][] = [];
    for (let i = warm; i < qs.length; i++) {
      const t0 = performance.now();
      const res = await db.query<{ id: string }>(sql, [literal(qs[i]), OFFLINE_EMBEDDER]);
      latency.push(performance.now() - t0);
      got.push(res.rows.map((r) => r.id));
    }
    const plan = (await db.query<{ "QUERY PLAN": string }>(
      `explain ${sql.replace("$1::vector", `'${literal(qs[0])}'::vector`).replace("$2", `'${OFFLINE_EMBEDDER}'`)}`,
    ))
      .rows.map((r) => r["QUERY PLAN"]).join(" ");
    progress(`memory ${label}: exact top-10 by brute force for recall@10`);
    let hits = 0;
    for (let i = 0; i < got.length; i++) {
      const exact = new Set(exactTop10(all, ids, qs[warm + i]));
      hits += got[i].filter((id) => exact.has(id)).length;
    }
    const recall = hits / (got.length * 10);
    const vec = summarize(latency);
    rows.push({
      what: `memory ${label}: HNSW top-10 (vector search)`,
      s: vec,
      rate: rate(latency.length, latency.reduce((a, b) => a + b, 0), "queries"),
      note: `recall@10 ${recall.toFixed(3)} vs exact; ef_search ${HNSW_EF_SEARCH}; ${
        /memory_items_embedding/.test(plan) ? "plan: HNSW index" : "plan: seq scan (the planner's pick at this size)"
      }`,
    });

    const topics = Array.from({ length: queries + warm }, (_, i) => `${WORDS[i % WORDS.length]} topic ${data.pick()}`);
    progress(`memory ${label}: ${queries} Memory.recall() calls (hybrid + retrieval log)`);
    const recallMs = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const out: number[] = [];
      for (let i = 0; i < topics.length; i++) {
        const t0 = performance.now();
        yield* m.recall(topics[i], { limit: 10 }, { actor: "bench" });
        if (i >= warm) out.push(performance.now() - t0);
      }
      return out;
    }));
    rows.push({
      what: `memory ${label}: Memory.recall() top-10, hybrid`,
      s: summarize(recallMs),
      rate: rate(recallMs.length, recallMs.reduce((a, b) => a + b, 0), "recalls"),
      note: "embed query + vector + full text + RRF + log row",
    });

    const writes = quick ? 50 : 300;
    progress(`memory ${label}: ${writes} Memory.remember() calls with the index in place`);
    const rememberMs = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const out: number[] = [];
      for (let i = 0; i < writes; i++) {
        const t0 = performance.now();
        yield* m.remember({
          scope: "agent:bench",
          kind: "note",
          text: `follow-up ${i}: ${WORDS[i % WORDS.length]} for client ${i * 31}`,
          provenance: { source: "bench", runId: "run_bench", seq: i },
        });
        out.push(performance.now() - t0);
      }
      return out;
    }));
    rows.push({
      what: `memory ${label}: Memory.remember() one at a time`,
      s: summarize(rememberMs),
      rate: rate(writes, rememberMs.reduce((a, b) => a + b, 0), "items"),
      note: "offline embedding + item + write row + HNSW insert",
    });

    await db.exec("checkpoint");
    const sizes = (await db.query<{ t: string; i: string }>(
      `select pg_total_relation_size('memory_items')::text as t, pg_relation_size('memory_items_embedding')::text as i`,
    )).rows[0];
    const disk = await dirSize(`${dir}/pg`);
    rows.push({
      what: `memory ${label}: data on disk`,
      s: none,
      note: `${mb(disk)} data dir; memory_items ${mb(Number(sizes.t))} incl. HNSW ${mb(Number(sizes.i))}`,
    });
    progress(
      `memory ${label}: top-10 median ${vec.median.toFixed(2)} ms, p99 ${vec.p99.toFixed(2)} ms, recall@10 ${
        recall.toFixed(3)
      }, build ${(buildMs / 1000).toFixed(1)} s, ${mb(disk)}`,
    );
  } finally {
    await rt.dispose().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return rows;
};

/** Run the memory bench for each size; returns the rows for the bench table. */
export const benchMemory = async (options: MemoryBenchOptions = {}): Promise<MemoryBenchRow[]> => {
  const progress = options.progress ?? ((line: string) => console.error(`[bench] ${line}`));
  const sizes = options.sizes ?? memoryBenchSizes([], options.quick ?? false);
  const rows: MemoryBenchRow[] = [];
  for (const n of sizes) rows.push(...await benchSize(n, options.quick ?? false, progress));
  return rows;
};

if (import.meta.main) {
  const quick = Deno.args.includes("--quick");
  const rows = await benchMemory({ sizes: memoryBenchSizes(Deno.args, quick), quick });
  const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "n/a");
  console.log(`load average at the end (1/5/15 min): ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  console.log("| measurement | n | median ms | p99 ms | throughput | note |");
  console.log("| --- | ---: | ---: | ---: | ---: | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.what} | ${r.s.count} | ${fmt(r.s.median)} | ${fmt(r.s.p99)} | ${r.rate ?? ""} | ${r.note ?? ""} |`,
    );
  }
}

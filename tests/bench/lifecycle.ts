/**
 * @module
 * Plugin lifecycle costs (`deno task bench`, section 9), end to end through
 * the HTTP API of a real Keel (Deno KV file, Workers): reading and checking
 * a `.tar.gz` (about 200 files, 800 KB) in memory; installing from a folder
 * and from that archive (copy into the store, SDK imports pinned, module graph
 * resolved twice for a folder and once for an archive, a Worker started); an
 * upgrade that carries the old grant (stored, started, activated); and an
 * upgrade held for a grant (stored, never started). Each install uses a fresh
 * plugin name, so nothing is cached between samples but Deno's own caches.
 *
 * Run alone with `deno run -A tests/bench/lifecycle.ts [--quick]`.
 */
import { Effect } from "effect";
import { startKeel } from "../../core/mod.ts";
import { keelRoot } from "../../core/config/mod.ts";
import { readTarGz } from "../../core/plugins/mod.ts";
import { osTarGz } from "../_support/tar.ts";
import { variant } from "../fixtures/lifecycle/variant.ts";

/** One row of the bench table (times in ms, like the other sections). */
export interface LifecycleBenchRow {
  readonly what: string;
  readonly s: { count: number; median: number; p99: number; mean: number };
  readonly rate?: string;
  readonly note?: string;
}

const stats = (samples: number[]) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
  return {
    count: sorted.length,
    median: at(50),
    p99: at(99),
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
  };
};

/** Measure the lifecycle; `progress` gets one line per phase. */
export const benchLifecycle = async (
  options: { quick?: boolean; progress?: (line: string) => void } = {},
): Promise<LifecycleBenchRow[]> => {
  const progress = options.progress ?? (() => {});
  const n = options.quick ? 3 : 12;
  const temp = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-bench-lifecycle-" }));
  const rows: LifecycleBenchRow[] = [];
  const keel = await startKeel({
    dataDir: `${temp}/data`,
    hostname: "127.0.0.1",
    port: 0,
    token: "bench",
    policiesDir: `${keelRoot()}/policies`,
    root: keelRoot(),
    rpcTimeoutMs: 30_000,
    eagerMemory: false,
  }, { serve: false });
  const api = async (method: string, path: string, body: unknown) => {
    const res = await keel.app.request(path, {
      method,
      headers: { authorization: "Bearer bench", "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = await res.json();
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  /** An echo plugin named `name` with 200 extra 4 KB files. */
  const bulky = async (name: string, version = "1.0.0", manifest?: (m: Record<string, any>) => any) => {
    const dir = await variant("echo", {
      version,
      dir: `${temp}/src/${name}-${version}/${name}`,
      manifest: (m) => {
        const renamed = {
          ...m,
          name,
          effects: m.effects.map((e: any) => ({ ...e, name: e.name.replace("lc.", `${name.replaceAll("-", "_")}.`) })),
        };
        return manifest ? manifest(renamed) : renamed;
      },
    });
    const mod = await Deno.readTextFile(`${dir}/mod.ts`);
    await Deno.writeTextFile(`${dir}/mod.ts`, mod.replaceAll('"lc.', `"${name.replaceAll("-", "_")}.`));
    await Deno.mkdir(`${dir}/assets`);
    const blob = "x".repeat(4096);
    for (let i = 0; i < 200; i++) await Deno.writeTextFile(`${dir}/assets/${i}.txt`, blob);
    return dir;
  };
  try {
    progress("lifecycle: reading archives");
    const sample = await bulky("bench-tar");
    const archive = await osTarGz(sample, `${temp}/bench-tar.tar.gz`, { top: "bench-tar" });
    const reads: number[] = [];
    for (let i = 0; i < n * 5; i++) {
      const t = performance.now();
      await Effect.runPromise(readTarGz(archive));
      reads.push(performance.now() - t);
    }
    rows.push({
      what: "read + check a .tar.gz in memory (≈200 files, 800 KB)",
      s: stats(reads),
      note: `${Deno.statSync(archive).size} bytes compressed`,
    });

    const timed = async (what: string, note: string, once: (i: number) => Promise<unknown>) => {
      progress(`lifecycle: ${what}`);
      await once(-1); // warm-up: Deno's module and transpile caches
      const samples: number[] = [];
      for (let i = 0; i < n; i++) {
        const t = performance.now();
        await once(i);
        samples.push(performance.now() - t);
      }
      rows.push({ what, s: stats(samples), note });
    };
    const folders: string[] = [];
    for (let i = -1; i < n; i++) folders.push(await bulky(`bench-dir-${i + 1}`));
    await timed(
      "install from a folder (copy, pin SDK, 2 graph checks, start Worker)",
      "fresh name each",
      (i) => api("POST", "/api/plugins", { path: folders[i + 1], grant: {}, isolation: "worker" }),
    );
    const archives: string[] = [];
    for (let i = -1; i < n; i++) {
      const name = `bench-tgz-${i + 1}`;
      archives.push(await osTarGz(await bulky(name), `${temp}/${name}.tar.gz`, { top: name }));
    }
    await timed(
      "install from a .tar.gz (read, check, write, pin SDK, graph check, start)",
      "fresh name each",
      (i) => api("POST", "/api/plugins", { path: archives[i + 1], grant: {}, isolation: "worker" }),
    );
    const carried: string[] = [];
    const held: string[] = [];
    for (let i = -1; i < n; i++) {
      carried.push(await bulky(`bench-dir-${i + 1}`, "1.1.0"));
      held.push(
        await bulky(`bench-dir-${i + 1}`, "2.0.0", (m) => ({ ...m, permissions: { net: ["127.0.0.1:9"] } })),
      );
    }
    await timed(
      "upgrade carrying the old grant (stored, started, activated)",
      "same declarations",
      (i) => api("POST", `/api/plugins/bench-dir-${i + 1}/upgrade`, { path: carried[i + 1], isolation: "worker" }),
    );
    await timed(
      "upgrade held for a grant (stored, never started)",
      "asks for a new net host",
      (i) => api("POST", `/api/plugins/bench-dir-${i + 1}/upgrade`, { path: held[i + 1], isolation: "worker" }),
    );
  } finally {
    await keel.close();
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  return rows;
};

if (import.meta.main) {
  const rows = await benchLifecycle({ quick: Deno.args.includes("--quick"), progress: (l) => console.error(l) });
  for (const r of rows) {
    console.log(
      `${r.what}: median ${r.s.median.toFixed(1)} ms, p99 ${r.s.p99.toFixed(1)} ms (n=${r.s.count})${
        r.note ? `, ${r.note}` : ""
      }`,
    );
  }
}

/**
 * @module
 * Policy tooling benchmarks: what `keel policy check|explain|simulate` cost.
 * The lint of sets of 10, 100 and 1,000 rules (its shadow check compares
 * every pair); the pure replay of 10,000 past requests against candidates of
 * 10, 100 and 1,000 rules; and, on a real Keel with 10,000 decisions in its
 * Deno KV decision log, `POST /api/policy/simulate` end to end and
 * `POST /api/policy/explain`. Prints its own table; `run.ts` calls
 * `benchPolicyTooling`.
 */
import { Effect } from "effect";
import { keelRoot } from "../../core/config/mod.ts";
import { startKeel } from "../../core/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import {
  lintPolicySet,
  parsePolicyFile,
  type PastRequest,
  type PolicySet,
  simulatePolicy,
} from "../../core/policy/mod.ts";

interface Result {
  readonly what: string;
  readonly n: number;
  readonly median: number;
  readonly p99: number;
}

const measure = async (what: string, n: number, f: () => Promise<unknown> | unknown): Promise<Result> => {
  for (let i = 0; i < Math.min(3, n); i++) await f(); // warm-up
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    await f();
    samples.push(performance.now() - s);
  }
  samples.sort((a, b) => a - b);
  const at = (p: number) => samples[Math.min(samples.length - 1, Math.floor((p / 100) * samples.length))];
  return { what, n, median: at(50), p99: at(99) };
};

const EFFECTS = ["crm.lookup", "crm.update", "crm.delete", "bank.balance", "bank.pay", "mail.send"] as const;
const CLASSES = ["read", "write", "irreversible", "read", "financial", "irreversible"] as const;

/** A policy file of `n` rules over globs, classes, workflows and conditions on args. */
const rulesYaml = (n: number): string => {
  const lines = ["default: allow", "rules:"];
  for (let i = 0; i < n; i++) {
    const effect = i % 3 === 0 ? `"${EFFECTS[i % EFFECTS.length].split(".")[0]}.*"` : EFFECTS[i % EFFECTS.length];
    const decision = ["allow", "approve", "deny"][i % 3];
    const when = i % 4 === 0 ? `, when: "args.amount > ${i}"` : "";
    lines.push(`  - { id: r${i}, match: { effect: ${effect}, workflow: "w${i % 7}*" }${when}, decision: ${decision} }`);
  }
  return `${lines.join("\n")}\n`;
};

const setOf = async (n: number): Promise<PolicySet> => {
  const parsed = await Effect.runPromise(parsePolicyFile("bench.yaml", rulesYaml(n)));
  return { hash: `h${n}`, files: ["bench.yaml"], rules: parsed.rules, defaultDecision: "allow" };
};

const history = (n: number): PastRequest[] =>
  Array.from({ length: n }, (_, i) => ({
    at: new Date(Date.UTC(2025, 0, 1) + i * 1000).toISOString(),
    runId: `run_${Math.floor(i / 25)}`,
    seq: (i % 25) + 1,
    effect: EFFECTS[i % EFFECTS.length],
    effectClass: CLASSES[i % EFFECTS.length],
    plugin: i % 2 ? "pt_crm" : "pt_bank",
    agent: "pt_ops",
    workflow: `w${i % 9}`,
    args: { amount: i % 500, to: `p${i % 13}`, id: `c${i}` },
    decision: (["allow", "approve", "deny"] as const)[i % 3],
    rule: "default",
    policyHash: "h",
    context: { now: Date.UTC(2025, 0, 1) + i * 1000, hour: 0, runId: `run_${Math.floor(i / 25)}`, seq: (i % 25) + 1 },
  }));

/** Run the policy tooling benchmarks and print their table. */
export const benchPolicyTooling = async (options: { readonly quick?: boolean } = {}): Promise<Result[]> => {
  const quick = options.quick ?? false;
  const progress = (line: string) => console.error(`[bench] ${line}`);
  const results: Result[] = [];
  const past = history(quick ? 1000 : 10_000);

  for (const n of [10, 100, 1000]) {
    const set = await setOf(n);
    progress(`policy tooling: lint of ${n} rules`);
    results.push(
      await measure(`lint, ${n} rules (shadow check over every pair)`, quick ? 2 : 10, () => lintPolicySet(set)),
    );
    progress(`policy tooling: replay ${past.length} requests against ${n} rules`);
    results.push(
      await measure(
        `simulate (pure): ${past.length} past requests × ${n} rules`,
        quick ? 2 : 5,
        () => Effect.runPromise(simulatePolicy(set, past, { changedOnly: true })),
      ),
    );
  }

  progress(`policy tooling: a Keel with ${past.length} decisions in its decision log`);
  const temp = await Deno.makeTempDir({ prefix: "keel-bench-policy-" });
  const policies = `${temp}/policies`;
  await Deno.mkdir(policies);
  await Deno.writeTextFile(`${policies}/p.yaml`, rulesYaml(100));
  const keel = await startKeel({
    dataDir: `${temp}/data`,
    hostname: "127.0.0.1",
    port: 0,
    token: "bench",
    policiesDir: policies,
    root: keelRoot(),
    rpcTimeoutMs: 10_000,
    eagerMemory: false,
  });
  try {
    await keel.runtime.runPromise(
      Effect.forEach(past, (d) => Journal.use((j) => j.recordDecision(d)), { concurrency: 16, discard: true }),
    );
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${keel.url}${path}`, {
        method: "POST",
        headers: { authorization: "Bearer bench", "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
      return await res.json();
    };
    const candidate = { files: { "candidate.yaml": rulesYaml(100) }, changedOnly: true };
    results.push(
      await measure(
        `POST /api/policy/simulate: ${past.length} logged requests, 100-rule candidate`,
        quick ? 2 : 5,
        () => post("/api/policy/simulate", candidate),
      ),
    );
    const explain = { effect: "bank.pay", class: "financial", plugin: "pt_bank", workflow: "w1", args: { amount: 50 } };
    results.push(
      await measure(
        "POST /api/policy/explain, 100 rules",
        quick ? 20 : 200,
        () => post("/api/policy/explain", explain),
      ),
    );
  } finally {
    await keel.close();
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }

  console.log("");
  console.log("## Policy tooling");
  console.log("");
  console.log("| Measurement | Median | p99 | Per request (median) |");
  console.log("| --- | --- | --- | --- |");
  for (const r of results) {
    const perRequest = /past requests|logged requests/.test(r.what)
      ? `${((r.median / past.length) * 1000).toFixed(1)} µs`
      : "";
    console.log(`| ${r.what} | ${r.median.toFixed(2)} ms | ${r.p99.toFixed(2)} ms | ${perRequest} |`);
  }
  return results;
};

if (import.meta.main) await benchPolicyTooling({ quick: Deno.args.includes("--quick") });

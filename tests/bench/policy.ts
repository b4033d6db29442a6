/**
 * @module
 * Policy decision latency (`deno task bench`, section 6): how long
 * `evaluate(set, request)` takes with 10, 100 and 1,000 rules, with a
 * realistic mix — exact effect names and `head.*` globs, plugin, agent,
 * workflow and class matches, `when` conditions on args and context, rules
 * with rates, budgets and quiet hours, a few denies — against requests drawn
 * from the same catalogue, with args and the context the Gateway builds.
 * Every decision is timed on its own with `performance.now()` (resolution
 * about 0.1 µs here, which is also roughly its own cost); compiling a set
 * (globs and conditions to closures, the index by effect-name head and
 * class), done once per load, is reported separately. Goal: median under 20 µs at 100 rules.
 *
 * Run alone with `deno run -A tests/bench/policy.ts [--quick]`.
 */
import { Effect } from "effect";
import { evaluate, parsePolicyFile, policyContext, type PolicyRequest, type PolicySet } from "../../core/policy/mod.ts";
import { EFFECT_CLASSES, type EffectClass } from "../../core/manifest/mod.ts";

/** One row of the bench table (times in ms, like the other sections). */
export interface PolicyBenchRow {
  readonly what: string;
  readonly s: { count: number; median: number; p99: number; mean: number };
  readonly rate?: string;
  readonly note?: string;
}

/** A small deterministic PRNG (mulberry32), so every run benches the same rules and requests. */
export const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

const HEADS = [
  "email",
  "sms",
  "cal",
  "crm",
  "bank",
  "invoice",
  "drive",
  "chat",
  "github",
  "tickets",
  "notes",
  "stripe",
  "shop",
  "ads",
  "social",
  "dns",
  "s3",
  "hr",
  "ledger",
  "model",
];
const VERBS = ["send", "read", "create", "update", "delete", "list", "pay", "post"];
const AGENTS = ["onboarding", "billing", "triage", "ops", "sales", "support", "research", "content"];
const WORKFLOWS = ["onboard_client", "billing_monthly", "triage_inbox", "nightly_sync", "weekly_report", "post_news"];
const CURRENCIES = ["EUR", "USD", "GBP", "CHF"];
const CONDITIONS = [
  "args.amount <= 100 and args.currency == 'EUR'",
  "args.amount > 1000",
  "args.to endsWith '@example.test'",
  "args.to like '*@partner-*.test'",
  "args.currency in ['USD', 'GBP'] and args.amount * 1.2 > 500",
  "context.hour >= 9 and context.hour < 18 and context.weekday not in ['sat', 'sun']",
  "not (args.subject contains 'URGENT')",
  "args.items.0.sku startsWith 'SKU-' or args.amount % 2 == 0",
];

const classOf = (verb: string): EffectClass =>
  verb === "read" || verb === "list"
    ? "read"
    : verb === "pay"
    ? "financial"
    : verb === "send" || verb === "post" || verb === "delete"
    ? "irreversible"
    : "write";

/** A policy file with `n` rules of the realistic mix. */
const rulesYaml = (n: number, rnd: () => number): string => {
  const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(rnd() * xs.length)];
  const lines = ["default: allow", "rules:"];
  for (let i = 0; i < n; i++) {
    const head = pick(HEADS);
    const verb = pick(VERBS);
    const kind = rnd();
    const match: string[] = [];
    let when: string | undefined;
    // Most rules allow or gate; denies are few and narrow, as in a real policy.
    let decision = rnd() < 0.62 ? "allow" : "approve";
    let limits: string | undefined;
    if (kind < 0.35) {
      match.push(`effect: ${head}.${verb}`);
      if (rnd() < 0.5) when = pick(CONDITIONS);
    } else if (kind < 0.6) {
      match.push(`effect: "${head}.*"`);
      if (rnd() < 0.5) match.push(`agent: ${pick(AGENTS)}`);
      else match.push(`class: ${pick(EFFECT_CLASSES)}`);
    } else if (kind < 0.7) {
      match.push(`plugin: "${head}*"`, `class: [${classOf(verb)}, write]`);
    } else if (kind < 0.8) {
      match.push(rnd() < 0.5 ? `workflow: ${pick(WORKFLOWS)}` : `agent: "${pick(AGENTS)}"`);
      if (rnd() < 0.5) when = pick(CONDITIONS);
    } else if (kind < 0.9) {
      match.push(`effect: ["${head}.*", "${pick(HEADS)}.${verb}"]`);
      decision = "allow";
      limits = rnd() < 0.5
        ? `{ rate: { count: ${1 + Math.floor(rnd() * 100)}, per: 1h }, scope: agent }`
        : `{ budget: { usdPerDay: ${
          1 + Math.floor(rnd() * 50)
        } }, quietHours: { from: "22:00", to: "07:00", timezone: Europe/Berlin } }`;
    } else if (kind < 0.95) {
      match.push(`effect: ${head}.${verb}`);
      when = pick(CONDITIONS);
      decision = "deny";
    } else {
      match.push(`class: ${pick(EFFECT_CLASSES)}`);
      if (rnd() < 0.5) when = pick(CONDITIONS);
    }
    lines.push(`  - id: r${i}`, `    match: { ${match.join(", ")} }`);
    if (when) lines.push(`    when: "${when}"`);
    lines.push(`    decision: ${decision}`);
    if (limits) lines.push(`    limits: ${limits}`);
  }
  return lines.join("\n") + "\n";
};

export const makeSet = async (n: number): Promise<PolicySet> => {
  const parsed = await Effect.runPromise(parsePolicyFile(`bench-${n}.yaml`, rulesYaml(n, prng(n))));
  return { hash: `bench-${n}`, files: [`bench-${n}.yaml`], rules: parsed.rules, defaultDecision: "allow" };
};

export const makeRequests = (count: number, rnd: () => number): PolicyRequest[] => {
  const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(rnd() * xs.length)];
  const now = Date.UTC(2025, 4, 14, 10, 30);
  return Array.from({ length: count }, (_, i) => {
    const head = pick(HEADS);
    const verb = pick(VERBS);
    return {
      effect: `${head}.${verb}`,
      effectClass: classOf(verb),
      plugin: head,
      agent: pick(AGENTS),
      workflow: pick(WORKFLOWS),
      args: {
        amount: Math.floor(rnd() * 2000),
        currency: pick(CURRENCIES),
        to: rnd() < 0.5 ? `client${i}@example.test` : `ops@partner-${i % 7}.test`,
        subject: rnd() < 0.1 ? "URGENT: invoice" : "Monthly invoice",
        items: [{ sku: rnd() < 0.5 ? "SKU-1" : "X-2", qty: 1 }],
      },
      context: policyContext(now + i * 60_000, { runId: `run_${i % 50}`, seq: i % 20 }, "UTC"),
    };
  });
};

const pct = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
const summarize = (samplesMs: ReadonlyArray<number>) => {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  return {
    count: sorted.length,
    median: pct(sorted, 50),
    p99: pct(sorted, 99),
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
  };
};
const us = (ms: number) => `${(ms * 1000).toFixed(2)} µs`;

/** Bench `evaluate` at 10, 100 and 1,000 rules; returns table rows (times in ms). */
export const benchPolicy = async (
  { quick, progress }: { readonly quick: boolean; readonly progress: (line: string) => void },
): Promise<PolicyBenchRow[]> => {
  const rows: PolicyBenchRow[] = [];
  const samples = quick ? 5_000 : 50_000;
  const warmup = quick ? 1_000 : 10_000;
  const requests = makeRequests(1_000, prng(42));
  for (const n of [10, 100, 1000]) {
    progress(`policy: ${n} rules, ${samples} decisions`);
    const set = await makeSet(n);
    const withWhen = set.rules.filter((r) => r.when).length;
    const withLimits = set.rules.filter((r) => r.limits).length;
    for (let i = 0; i < warmup; i++) evaluate(set, requests[i % requests.length]);
    // Compiling and indexing a set happens once per (re)load: time it on a fresh copy, with warm code.
    const t0 = performance.now();
    evaluate({ ...set }, requests[0]);
    const compileMs = performance.now() - t0;
    const times: number[] = new Array(samples);
    const tally = { allow: 0, approve: 0, deny: 0 };
    const begin = performance.now();
    for (let i = 0; i < samples; i++) {
      const request = requests[i % requests.length];
      const s = performance.now();
      const d = evaluate(set, request);
      times[i] = performance.now() - s;
      tally[d.decision]++;
    }
    const elapsed = performance.now() - begin;
    const s = summarize(times);
    progress(`policy: ${n} rules: median ${us(s.median)}, p99 ${us(s.p99)}`);
    rows.push({
      what: `policy evaluate(), ${n} rules`,
      s,
      rate: `${Math.round(samples / (elapsed / 1000)).toLocaleString("en-US")} decisions/s`,
      note: `median ${us(s.median)}, p99 ${us(s.p99)}; ${withWhen} with when, ${withLimits} with limits; ` +
        `allow/approve/deny ${tally.allow}/${tally.approve}/${tally.deny}; compiling the set ${
          compileMs.toFixed(2)
        } ms`,
    });
  }
  return rows;
};

if (import.meta.main) {
  const rows = await benchPolicy({
    quick: Deno.args.includes("--quick"),
    progress: (l) => console.error(`[bench] ${l}`),
  });
  for (const r of rows) console.log(`${r.what}: ${r.note} (${r.rate})`);
}

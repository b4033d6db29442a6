/**
 * @module
 * Property-based tests (fast-check): the policy engine against a small,
 * obviously correct reference model of rule matching and precedence, and
 * algebraic properties of the `when` language.
 *
 * The reference model is written for reading, not speed: filter the rules
 * that match (every listed key matches one of its globs, the condition's
 * meaning computed by a separate tiny interpreter), raise a rule with quiet
 * hours in force to its quiet-hours decision, take the most restrictive
 * decision (deny > approve > allow) and, among equals, the first rule; with
 * no match, deny irreversible and financial effects and give the others the
 * set's default. The engine (precompiled globs, rules indexed by the first
 * segment of the effect name, early exit on deny) must agree on the decision,
 * the deciding rule and the limits it hands on.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  compareValues,
  compileExpr,
  type Decision,
  evalExpr,
  evaluate,
  type Expr,
  type ExprEnv,
  parseExpr,
  type PolicyRequest,
  type PolicySet,
  printExpr,
  ROOTS,
  type Rule,
} from "../../core/policy/mod.ts";
import { EFFECT_CLASSES, type EffectClass } from "../../core/manifest/mod.ts";

const RUNS = 400;

// ------------------------------------------------------------ the reference

/** A condition the generator knows the meaning of. */
type Cond =
  | { k: "le"; n: number }
  | { k: "eq"; cur: string }
  | { k: "in"; curs: string[] }
  | { k: "starts"; prefix: string }
  | { k: "not"; c: Cond }
  | { k: "and" | "or"; l: Cond; r: Cond };

const condSource = (c: Cond): string => {
  switch (c.k) {
    case "le":
      return `args.amount <= ${c.n}`;
    case "eq":
      return `args.currency == '${c.cur}'`;
    case "in":
      return `args.currency in [${c.curs.map((x) => `'${x}'`).join(", ")}]`;
    case "starts":
      return `args.currency startsWith '${c.prefix}'`;
    case "not":
      return `not (${condSource(c.c)})`;
    case "and":
    case "or":
      return `(${condSource(c.l)}) ${c.k} (${condSource(c.r)})`;
  }
};

/** What a condition means, written out by hand. */
const condHolds = (c: Cond, args: Record<string, unknown> | undefined): boolean => {
  const amount = args?.amount;
  const currency = args?.currency;
  switch (c.k) {
    case "le":
      return typeof amount === "number" && amount <= c.n;
    case "eq":
      return currency === c.cur;
    case "in":
      return typeof currency === "string" && c.curs.includes(currency);
    case "starts":
      return typeof currency === "string" && currency.startsWith(c.prefix);
    case "not":
      return !condHolds(c.c, args);
    case "and":
      return condHolds(c.l, args) && condHolds(c.r, args);
    case "or":
      return condHolds(c.l, args) || condHolds(c.r, args);
  }
};

/** A generated rule with the pieces the reference model reads. */
interface GenRule {
  readonly rule: Rule;
  readonly cond?: Cond;
}

/** Glob match by regular expression: the simplest correct way, nothing shared with the engine. */
const refGlob = (pattern: string, value: string) =>
  new RegExp(`^${pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`).test(value);

const refKey = (patterns: ReadonlyArray<string> | undefined, value: string | undefined) =>
  patterns === undefined || (value !== undefined && patterns.some((p) => refGlob(p, value)));

const RANK: Record<Decision, number> = { allow: 0, approve: 1, deny: 2 };

const refQuiet = (rule: Rule, request: PolicyRequest): boolean => {
  const q = rule.limits?.quietHours;
  if (!q) return false;
  const now = request.context?.now;
  if (typeof now !== "number") return true;
  const d = new Date(now);
  const m = d.getUTCHours() * 60 + d.getUTCMinutes();
  if (q.fromMinute === q.toMinute) return false;
  return q.fromMinute < q.toMinute ? m >= q.fromMinute && m < q.toMinute : m >= q.fromMinute || m < q.toMinute;
};

const reference = (rules: ReadonlyArray<GenRule>, defaultDecision: Decision, request: PolicyRequest) => {
  const matching = rules.filter(({ rule, cond }) =>
    refKey(rule.match.effect, request.effect) && refKey(rule.match.plugin, request.plugin) &&
    refKey(rule.match.agent, request.agent) && refKey(rule.match.workflow, request.workflow) &&
    (rule.match.class === undefined || rule.match.class.includes(request.effectClass)) &&
    (cond === undefined || condHolds(cond, request.args as Record<string, unknown>))
  );
  if (matching.length === 0) {
    if (request.effectClass === "irreversible" || request.effectClass === "financial") {
      return { decision: "deny" as Decision, rule: `default-deny-${request.effectClass}`, limitRules: [] };
    }
    return { decision: defaultDecision, rule: "default", limitRules: [] };
  }
  const rank = ({ rule }: GenRule) =>
    Math.max(RANK[rule.decision], refQuiet(rule, request) ? RANK[rule.limits!.quietHours!.decision] : -1);
  const top = Math.max(...matching.map(rank));
  const winner = matching.find((r) => rank(r) === top)!;
  const decision = (["allow", "approve", "deny"] as const)[top];
  const limitRules = decision === "deny" ? [] : matching.filter((r) => r.rule.limits?.rate).map((r) => r.rule.id);
  return { decision, rule: winner.rule.id, limitRules };
};

// ------------------------------------------------------------ the generators

const HEADS = ["email", "pay", "crm", "cal"];
const TAILS = ["send", "read", "bulk_send", "event.create", "x"];
const EFFECTS = HEADS.flatMap((h) => TAILS.map((t) => `${h}.${t}`)).concat(["other.thing"]);
const PLUGINS = ["smtp", "bank", "crm-eu", "crm"];
const AGENTS = ["onboarding", "billing", "ops"];
const WORKFLOWS = ["onboard_client", "billing_monthly", "cleanup"];
const CURRENCIES = ["EUR", "USD", "GBP", "EURO"];

const effectPattern = fc.oneof(
  fc.constantFrom(...EFFECTS),
  fc.constantFrom(...HEADS).map((h) => `${h}.*`),
  fc.constantFrom("*", "*.send", "*.read", "email*", "*.*.create", "cal.*.create", "*a*", "pay.s*d"),
);
const namePattern = (names: string[]) =>
  fc.oneof(fc.constantFrom(...names), fc.constantFrom("*", "crm-*", "*ing", "b*", "*_*"));
const listOf = <A>(arb: fc.Arbitrary<A>) => fc.array(arb, { minLength: 1, maxLength: 3 });

const cond: fc.Arbitrary<Cond> = fc.letrec<{ c: Cond }>((tie) => ({
  c: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.integer({ min: 0, max: 200 }).map((n): Cond => ({ k: "le", n })),
    fc.constantFrom(...CURRENCIES).map((cur): Cond => ({ k: "eq", cur })),
    fc.subarray(CURRENCIES, { minLength: 1 }).map((curs): Cond => ({ k: "in", curs })),
    fc.constantFrom("EU", "U", "G", "").map((prefix): Cond => ({ k: "starts", prefix })),
    tie("c").map((c): Cond => ({ k: "not", c })),
    fc.record({ k: fc.constantFrom("and" as const, "or" as const), l: tie("c"), r: tie("c") }),
  ),
})).c;

const clock = fc.integer({ min: 0, max: 23 * 60 + 59 }).map((m) =>
  `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`
);

const genRule = (i: number) =>
  fc.record({
    effect: fc.option(listOf(effectPattern), { nil: undefined }),
    plugin: fc.option(listOf(namePattern(PLUGINS)), { nil: undefined }),
    agent: fc.option(listOf(namePattern(AGENTS)), { nil: undefined }),
    workflow: fc.option(listOf(namePattern(WORKFLOWS)), { nil: undefined }),
    class: fc.option(fc.subarray([...EFFECT_CLASSES], { minLength: 1 }), { nil: undefined }),
    cond: fc.option(cond, { nil: undefined, freq: 2 }),
    decision: fc.constantFrom<Decision>("allow", "approve", "deny"),
    rate: fc.option(fc.integer({ min: 1, max: 9 }), { nil: undefined, freq: 3 }),
    quiet: fc.option(
      fc.record({ from: clock, to: clock, decision: fc.constantFrom("approve" as const, "deny" as const) }),
      { nil: undefined, freq: 4 },
    ),
  }).map((g): GenRule => {
    const match: Record<string, ReadonlyArray<string>> = {};
    for (const key of ["effect", "plugin", "agent", "workflow", "class"] as const) {
      if (g[key] !== undefined) match[key] = g[key]!;
    }
    let when: Rule["when"];
    if (g.cond) {
      const source = condSource(g.cond);
      const parsed = parseExpr(source, EFFECT_CLASSES);
      if (!parsed.ok) throw new Error(`generator wrote a bad condition: ${source}: ${parsed.problem.message}`);
      when = { source, expr: parsed.expr };
    }
    const toMinute = (s: string) => Number(s.slice(0, 2)) * 60 + Number(s.slice(3));
    const limits = g.decision === "deny" || (g.rate === undefined && g.quiet === undefined) ? undefined : {
      scope: "global" as const,
      rate: g.rate === undefined ? undefined : { count: g.rate, per: "1h", perMs: 3600_000 },
      quietHours: g.quiet === undefined ? undefined : {
        ...g.quiet,
        fromMinute: toMinute(g.quiet.from),
        toMinute: toMinute(g.quiet.to),
        timezone: "UTC",
      },
    };
    const rule: Rule = {
      id: `r${i}`,
      file: "gen.yaml",
      line: i + 1,
      match: match as Rule["match"],
      ...(when ? { when } : {}),
      decision: g.decision,
      approval: g.decision === "approve" ? { approver: "operator", expiresInMs: 60_000 } : undefined,
      ...(limits ? { limits } : {}),
    };
    return { rule, cond: g.cond };
  });

const genRules = fc.integer({ min: 0, max: 12 }).chain((n) =>
  n === 0 ? fc.constant([] as GenRule[]) : fc.tuple(...Array.from({ length: n }, (_, i) => genRule(i)))
);

const genRequest: fc.Arbitrary<PolicyRequest> = fc.record({
  effect: fc.constantFrom(...EFFECTS),
  effectClass: fc.constantFrom<EffectClass>(...EFFECT_CLASSES),
  plugin: fc.constantFrom(...PLUGINS),
  agent: fc.option(fc.constantFrom(...AGENTS), { nil: undefined }),
  workflow: fc.option(fc.constantFrom(...WORKFLOWS), { nil: undefined }),
  args: fc.record({
    amount: fc.option(fc.oneof(fc.integer({ min: -10, max: 250 }), fc.constant("80")), { nil: undefined }),
    currency: fc.option(fc.oneof(fc.constantFrom(...CURRENCIES), fc.constant(7)), { nil: undefined }),
  }, { requiredKeys: [] }),
  context: fc.option(fc.record({ now: fc.integer({ min: 0, max: 4_102_444_800_000 }) }), { nil: undefined }),
});

const setOf = (rules: ReadonlyArray<GenRule>, defaultDecision: Decision): PolicySet => ({
  hash: "h-gen",
  files: ["gen.yaml"],
  rules: rules.map((r) => r.rule),
  defaultDecision,
});

// ------------------------------------------------------------------ engine

Deno.test("evaluate() agrees with the reference model on decision, deciding rule and limits", () => {
  fc.assert(
    fc.property(genRules, fc.constantFrom<Decision>("allow", "approve", "deny"), genRequest, (rules, def, request) => {
      const got = evaluate(setOf(rules, def), request);
      const want = reference(rules, def, request);
      assert.equal(got.decision, want.decision);
      assert.equal(got.rule, want.rule);
      assert.equal(got.policyHash, "h-gen");
      assert.deepEqual((got.limits ?? []).map((l) => l.rule), want.limitRules);
      if (got.decision === "approve") assert.ok(got.approval, "an approve decision says who approves");
    }),
    { numRuns: RUNS * 5 },
  );
});

Deno.test("evaluate() does not depend on where a deny is written, and a matching deny always wins", () => {
  fc.assert(
    fc.property(genRules, genRequest, fc.integer({ min: 0, max: 12 }), (rules, request, at) => {
      const deny: GenRule = { rule: { id: "catch-all-deny", file: "gen.yaml", line: 99, match: {}, decision: "deny" } };
      const withDeny = [...rules.slice(0, at), deny, ...rules.slice(at)];
      const got = evaluate(setOf(withDeny, "allow"), request);
      assert.equal(got.decision, "deny");
      const firstDeny = reference(withDeny, "allow", request).rule;
      assert.equal(got.rule, firstDeny, "the first deny in order decides");
    }),
    { numRuns: RUNS },
  );
});

Deno.test("with no rule matching, irreversible and financial effects are denied whatever the default", () => {
  fc.assert(
    fc.property(genRequest, fc.constantFrom<Decision>("allow", "approve", "deny"), (request, def) => {
      const got = evaluate(setOf([], def), request);
      const strict = request.effectClass === "irreversible" || request.effectClass === "financial";
      assert.equal(got.decision, strict ? "deny" : def);
      assert.equal(got.rule, strict ? `default-deny-${request.effectClass}` : "default");
    }),
    { numRuns: RUNS },
  );
});

Deno.test("evaluate() is total: any JSON args and context give a decision, never an exception", () => {
  fc.assert(
    fc.property(genRules, genRequest, fc.jsonValue(), fc.jsonValue(), (rules, request, args, context) => {
      const got = evaluate(setOf(rules, "allow"), {
        ...request,
        args,
        context: context as Record<string, unknown>,
      });
      assert.ok(["allow", "approve", "deny"].includes(got.decision));
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------- the language

const SEGS = ["a", "b", "0", "1", "in", "amount"];
const literal = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: 0, max: 1_000_000 }),
  fc.integer({ min: 0, max: 100_000 }).map((n) => n / 100),
  fc.string({ maxLength: 8 }),
  fc.constantFrom("a", "b", "a*", "*b", "ab", ""),
);

/** Any AST, well-typed or not: evaluation must be total on all of them. */
const anyExpr: fc.Arbitrary<Expr> = fc.letrec<{ e: Expr }>((tie) => ({
  e: fc.oneof(
    { depthSize: "small", maxDepth: 7, withCrossShrink: true },
    literal.map((v): Expr => ({ k: "lit", v, at: 0 })),
    fc.record({ root: fc.constantFrom(...ROOTS), segs: fc.array(fc.constantFrom(...SEGS), { maxLength: 3 }) })
      .map(({ root, segs }): Expr => ({
        k: "path",
        root,
        segs: root === "args" || root === "context" ? segs : [],
        at: 0,
      })),
    fc.array(tie("e"), { maxLength: 3 }).map((items): Expr => ({ k: "list", items, at: 0 })),
    tie("e").map((e): Expr => ({ k: "not", e, at: 0 })),
    tie("e").map((e): Expr => ({ k: "neg", e, at: 0 })),
    fc.record({ k: fc.constantFrom("and" as const, "or" as const), l: tie("e"), r: tie("e") })
      .map((x): Expr => ({ ...x, at: 0 })),
    fc.record({ op: fc.constantFrom("==", "!=", "<", "<=", ">", ">=" as const), l: tie("e"), r: tie("e") })
      .map((x): Expr => ({ k: "cmp", ...x, at: 0 } as Expr)),
    fc.record({ negated: fc.boolean(), l: tie("e"), r: tie("e") }).map((x): Expr => ({ k: "in", ...x, at: 0 })),
    fc.record({
      op: fc.constantFrom("startsWith", "endsWith", "contains", "like" as const),
      l: tie("e"),
      r: tie("e"),
    }).map((x): Expr => ({ k: "str", ...x, at: 0 } as Expr)),
    fc.record({ op: fc.constantFrom("+", "-", "*", "/", "%" as const), l: tie("e"), r: tie("e") })
      .map((x): Expr => ({ k: "arith", ...x, at: 0 } as Expr)),
  ),
})).e;

const anyEnv: fc.Arbitrary<ExprEnv> = fc.record({
  args: fc.jsonValue(),
  context: fc.jsonValue(),
  effect: fc.constantFrom(...EFFECTS),
  plugin: fc.constantFrom(...PLUGINS),
  agent: fc.option(fc.constantFrom(...AGENTS), { nil: undefined }),
  workflow: fc.option(fc.constantFrom(...WORKFLOWS), { nil: undefined }),
  class: fc.constantFrom(...EFFECT_CLASSES),
});

const isJson = (v: unknown): boolean =>
  v === null || typeof v === "boolean" || typeof v === "string" ||
  (typeof v === "number" && Number.isFinite(v)) ||
  (typeof v === "object" && (Array.isArray(v) ? v.every(isJson) : Object.values(v as object).every(isJson)));

Deno.test("evaluation is total: every AST gives a JSON value for every request, compiled or interpreted alike", () => {
  fc.assert(
    fc.property(anyExpr, anyEnv, (e, env) => {
      const compiled = compileExpr(e)(env);
      assert.deepEqual(compiled, evalExpr(e, env));
      assert.ok(isJson(compiled), `not JSON: ${String(compiled)}`);
    }),
    { numRuns: RUNS * 3 },
  );
});

Deno.test("not not x is exactly x == true, and and/or/not always answer true or false", () => {
  fc.assert(
    fc.property(anyExpr, anyExpr, anyEnv, (x, y, env) => {
      const v = evalExpr(x, env);
      assert.equal(evalExpr({ k: "not", e: { k: "not", e: x, at: 0 }, at: 0 }, env), v === true);
      for (const k of ["and", "or"] as const) {
        const got = evalExpr({ k, l: x, r: y, at: 0 }, env);
        assert.equal(typeof got, "boolean");
        const w = evalExpr(y, env);
        assert.equal(got, k === "and" ? v === true && w === true : v === true || w === true);
      }
      // De Morgan, under "only true is true"
      assert.equal(
        evalExpr({ k: "not", e: { k: "and", l: x, r: y, at: 0 }, at: 0 }, env),
        evalExpr({ k: "or", l: { k: "not", e: x, at: 0 }, r: { k: "not", e: y, at: 0 }, at: 0 }, env),
      );
      // "not in" is exactly the negation of "in"
      assert.equal(
        evalExpr({ k: "in", negated: true, l: x, r: y, at: 0 }, env),
        !evalExpr({ k: "in", negated: false, l: x, r: y, at: 0 }, env),
      );
    }),
    { numRuns: RUNS },
  );
});

Deno.test("comparisons are consistent: < mirrors >, <= is < or ==, != is not ==, and numbers are totally ordered", () => {
  const value = fc.oneof(fc.jsonValue(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string());
  fc.assert(
    fc.property(value, value, (a, b) => {
      assert.equal(compareValues("<", a, b), compareValues(">", b, a));
      assert.equal(compareValues("<=", a, b), compareValues(">=", b, a));
      assert.equal(compareValues("!=", a, b), !compareValues("==", a, b));
      assert.equal(compareValues("==", a, b), compareValues("==", b, a));
      assert.ok(compareValues("==", a, a), "every JSON value equals itself");
      const ordered = (typeof a === "number" && typeof b === "number") ||
        (typeof a === "string" && typeof b === "string");
      if (ordered) {
        assert.equal(compareValues("<=", a, b), compareValues("<", a, b) || compareValues("==", a, b));
        const trichotomy = [compareValues("<", a, b), compareValues("==", a, b), compareValues(">", a, b)];
        assert.equal(trichotomy.filter(Boolean).length, 1, `exactly one of <, ==, > for ${a} and ${b}`);
      } else {
        for (const op of ["<", "<=", ">", ">="] as const) assert.equal(compareValues(op, a, b), false);
      }
    }),
    { numRuns: RUNS * 2 },
  );
});

Deno.test("printing and parsing an AST keeps its meaning, whenever the printed text type-checks", () => {
  let checked = 0;
  fc.assert(
    fc.property(anyExpr, anyEnv, (e, env) => {
      const parsed = parseExpr(printExpr(e), EFFECT_CLASSES, { anyType: true });
      if (!parsed.ok) return;
      checked++;
      assert.deepEqual(compileExpr(parsed.expr)(env), evalExpr(e, env), printExpr(e));
    }),
    { numRuns: RUNS * 2 },
  );
  assert.ok(checked > RUNS / 4, `too few generated expressions type-checked (${checked})`);
});

Deno.test("the parser never throws: any text is parsed or refused with a position inside it", () => {
  const alphabet = fc.constantFrom(
    ..."abcdefghijklmnopqrstuvwxyz0123456789 .,'\"()[]<>=!+-*/%&|\\\n".split(""),
    "args",
    "context",
    " and ",
    " or ",
    "not ",
    " in ",
    " like ",
    " startsWith ",
    "==",
    "true",
    "null",
  );
  fc.assert(
    fc.property(fc.array(alphabet, { maxLength: 40 }).map((a) => a.join("")), (text) => {
      const parsed = parseExpr(text, EFFECT_CLASSES);
      if (!parsed.ok) {
        assert.ok(parsed.problem.at >= 0 && parsed.problem.at <= text.length, `position ${parsed.problem.at}`);
        assert.ok(!parsed.problem.message.startsWith("cannot parse"), `the parser crashed: ${parsed.problem.message}`);
      }
    }),
    { numRuns: RUNS * 5 },
  );
});

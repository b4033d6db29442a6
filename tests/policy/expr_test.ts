/**
 * @module
 * The `when` language on its own: what parses, what is refused at load and
 * with which message and position, and what every operator answers —
 * including for values of the wrong type and missing paths, where the answer
 * is defined rather than an error. Hostile inputs (deep nesting, huge
 * lists, cyclic values, prototype names) must neither throw nor hang.
 */
import assert from "node:assert/strict";
import {
  compileExpr,
  compileGlob,
  evalExpr,
  type ExprEnv,
  MAX_EXPR_DEPTH,
  MAX_EXPR_LENGTH,
  MAX_LIST_ITEMS,
  parseExpr,
  printExpr,
} from "../../core/policy/mod.ts";
import { EFFECT_CLASSES } from "../../core/manifest/mod.ts";

const env: ExprEnv = {
  args: {
    amount: 80,
    currency: "EUR",
    to: ["ada@example.test", "bob@example.test"],
    subject: "Invoice 2025-03",
    nested: { deep: { value: 7 } },
    flag: true,
    nothing: null,
  },
  context: { hour: 23, weekday: "sat", runId: "run_1" },
  effect: "email.send",
  plugin: "smtp",
  agent: "onboarding",
  workflow: "onboard_client",
  class: "irreversible",
};

/** Parse (must succeed) and evaluate with both the compiled closures and the direct interpreter. */
const run = (source: string, e: ExprEnv = env): unknown => {
  const parsed = parseExpr(source, EFFECT_CLASSES, { anyType: true });
  if (!parsed.ok) assert.fail(`"${source}" should parse: ${parsed.problem.message}`);
  const compiled = compileExpr(parsed.expr)(e);
  assert.deepEqual(compiled, evalExpr(parsed.expr, e), `compiled and interpreted disagree on "${source}"`);
  return compiled;
};

const refused = (source: string, message: RegExp, at?: number) => {
  const parsed = parseExpr(source, EFFECT_CLASSES);
  if (parsed.ok) assert.fail(`"${source}" should be refused, parsed as ${printExpr(parsed.expr)}`);
  assert.match(parsed.problem.message, message, source);
  if (at !== undefined) assert.equal(parsed.problem.at, at, `position of the problem in "${source}"`);
};

Deno.test("conditions compare numbers, strings, booleans and null, and combine with and, or, not", () => {
  const cases: Array<[string, unknown]> = [
    ["args.amount <= 100 and args.currency == 'EUR'", true],
    ['args.amount > 100 or args.currency != "EUR"', false],
    ["not args.amount > 100", true],
    ["not (args.amount < 100 and args.flag)", false],
    ["args.flag == true", true],
    ["args.nothing == null", true],
    ["args.missing == null", true],
    ["args.nested.deep.value == 7", true],
    ["args.to.1 == 'bob@example.test'", true],
    ["args.to.2 == null", true],
    ["'abc' < 'abd'", true],
    ["context.hour >= 22 or context.hour < 7", true],
    ["context.weekday in ['sat', 'sun']", true],
    ["class == 'irreversible' and effect like 'email.*'", true],
    ["plugin == 'smtp' and agent == 'onboarding' and workflow startsWith 'onboard'", true],
    ["true and false or true", true],
    ["true or false and false", true /* and binds tighter than or */],
    ["not false and false", false /* not binds tighter than and */],
  ];
  for (const [source, expected] of cases) assert.equal(run(source), expected, source);
});

Deno.test("arithmetic works on numbers with the usual precedence, and is null for anything else", () => {
  const cases: Array<[string, unknown]> = [
    ["1 + 2 * 3", 7],
    ["(1 + 2) * 3", 9],
    ["10 - 4 - 3", 3],
    ["-args.amount + 100", 20],
    ["7 % 4", 3],
    ["args.amount / 4", 20],
    ["1 / 0", null],
    ["5 % 0", null],
    ["args.currency + 1", null],
    ["args.missing * 2", null],
    ["-args.currency", null],
    ["args.amount * 1.5 <= 120", true],
    ["args.amount * 1.5 < 120", false],
  ];
  for (const [source, expected] of cases) assert.equal(run(source), expected, source);
});

Deno.test("in tests list membership and substrings; the string operators match strings and lists", () => {
  const cases: Array<[string, unknown]> = [
    ["'ada@example.test' in args.to", true],
    ["'eve@example.test' in args.to", false],
    ["'eve@example.test' not in args.to", true],
    ["'voice' in args.subject", true],
    ["args.amount in [10, 80, 90]", true],
    ["args.amount in ['80']", false],
    ["[1, 2] in [[1, 2], [3]]", true],
    ["args.to contains 'bob@example.test'", true],
    ["args.subject contains '2025'", true],
    ["args.subject startsWith 'Invoice'", true],
    ["args.subject endsWith '-03'", true],
    ["args.subject like 'Invoice *-0?'", false],
    ["args.subject like 'Invoice *-03'", true],
    ["args.subject like '*'", true],
    ["args.subject like 'invoice*'", false],
    ["effect like 'email.*.bulk'", false],
  ];
  for (const [source, expected] of cases) assert.equal(run(source), expected, source);
});

Deno.test("operators given the wrong types at run time answer false or null instead of failing", () => {
  const cases: Array<[string, unknown]> = [
    ["args.currency > 3", false],
    ["args.currency < 3", false],
    ["args.missing < 3", false],
    ["args.missing >= 3", false],
    ["args.amount startsWith '8'", false],
    ["args.missing like '*'", false],
    ["3 in args.currency", false],
    ["'x' in args.amount", false],
    ["args.amount not in args.amount", true],
    ["args.currency and true", false],
    ["args.currency or true", true],
    ["not args.currency", true],
    ["args.currency.length == null", true],
    ["args.to.first == null", true],
    ["args.nested.deep.value.more == null", true],
  ];
  for (const [source, expected] of cases) assert.equal(run(source), expected, source);
});

Deno.test("a path reads only the request's own data: prototype names and non-JSON values read as null", () => {
  const hostile = { args: JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}') };
  assert.equal(run("args.constructor == null", hostile), true);
  assert.equal(run("args.toString == null", hostile), true);
  assert.equal(run("args.ok == 1", hostile), true);
  assert.equal(run("args.__proto__.polluted == true", hostile), true, "an own __proto__ key from JSON is data");
  assert.equal(({} as Record<string, unknown>).polluted, undefined, "nothing was polluted");
  const odd = { args: { f: () => 1, n: NaN, inf: Infinity, big: 10n, sym: Symbol("s") } as unknown };
  for (const key of ["f", "n", "inf", "big", "sym"]) assert.equal(run(`args.${key} == null`, odd), true, key);
});

Deno.test("equality of cyclic or absurdly deep values is defined (false), not a stack overflow", () => {
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  const other: Record<string, unknown> = { a: 1 };
  other.self = other;
  assert.equal(run("args.x == args.y", { args: { x: cyclic, y: other } }), false);
  let deep: unknown = 1;
  for (let i = 0; i < 10_000; i++) deep = [deep];
  assert.equal(run("args.x == args.x", { args: { x: deep } }), true, "the same value is equal to itself");
  let deep2: unknown = 1;
  for (let i = 0; i < 10_000; i++) deep2 = [deep2];
  assert.equal(run("args.x == args.y", { args: { x: deep, y: deep2 } }), false);
});

Deno.test("glob matching is linear: a pattern of many stars against a long string answers at once", () => {
  const text = "a".repeat(100_000);
  const pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*b";
  assert.equal(compileGlob(pattern)(text), false);
  assert.equal(compileGlob("*a*a*a*a")(text), true);
  assert.equal(compileGlob("a*b*c")("abc"), true);
  assert.equal(compileGlob("a*b*c")("acb"), false);
  assert.equal(compileGlob("ab*ba")("aba"), false, "prefix and suffix may not overlap");
  assert.equal(compileGlob("*.*")("email.send"), true);
  assert.equal(compileGlob("email.?")("email.x"), false, "? is literal");
});

Deno.test("syntax errors are refused with a message that says what to write instead, and where", () => {
  refused("args.x = 1", /use "==" to compare/, 7);
  refused("args.x == 1 && true", /use "and" instead of "&&"/, 12);
  refused("args.x || true", /use "or" instead of "\|\|"/, 7);
  refused("!args.x", /use "not" instead of "!"/, 0);
  refused("args.x == 1 and", /ends too early/, 15);
  refused("(args.x == 1", /expected "\)"/, 12);
  refused("args.x == 1)", /unexpected "\)"/, 11);
  refused("'abc", /unterminated string/, 0);
  refused("'a\\qb' == 'x'", /unknown escape/, 2);
  refused("args. == 1", /expected a field name/, 5);
  refused("args.x == 1 == 2", /comparisons do not chain/, 12);
  refused("12abc > 1", /after a number/, 2);
  refused("args.x == 1 args.y", /unexpected "args.y"/, 12);
  refused("args.x == @", /unexpected character "@"/, 10);
  refused("", /ends too early/, 0);
});

Deno.test("unknown names and impossible comparisons are refused at load, not silently false at run time", () => {
  refused("arg.amount > 1", /unknown name "arg" \(expected args, context, effect, plugin, agent, workflow, class\)/, 0);
  refused("effect.name == 'x'", /"effect" is a string and has no fields/, 0);
  refused("class == 'finance'", /unknown effect class "finance"/, 9);
  refused("class in ['read', 'money']", /unknown effect class "money"/, 18);
  refused("'a' < 3", /compares a string with a number/);
  refused("1 == 'a'", /never equal/);
  refused("true > false", /compares numbers or strings, not a boolean/);
  refused("1 + 'a' > 2", /"\+" needs numbers, not a string/, 4);
  refused("not 3", /"not" needs true or false, not a number/);
  refused("1 and true", /"and" needs true or false on both sides, not a number/, 0);
  refused("args.x in 3", /"in" needs a list or a string on the right/);
  refused("3 in 'abc'", /"in" a string needs a string on the left/);
  refused("args.x like 3", /"like" needs a string on the right, not a number/);
  refused("3 startsWith 'a'", /"startsWith" needs a string on the left/);
  refused("-'a' == 1", /"-" needs a number/);
  refused("42", /a condition must be true or false, not a number/);
  refused("'yes'", /a condition must be true or false, not a string/);
  refused("args.amount + 1", /a condition must be true or false, not a number/);
  refused("[1, 2]", /not a list/);
});

Deno.test("input length, nesting and list size are bounded", () => {
  refused("true or ".repeat(300) + "true", new RegExp(`longer than ${MAX_EXPR_LENGTH} characters`));
  refused("(".repeat(MAX_EXPR_DEPTH + 1) + "true" + ")".repeat(MAX_EXPR_DEPTH + 1), /nests deeper than 32/);
  refused("not ".repeat(MAX_EXPR_DEPTH + 1) + "true", /nests deeper than 32/);
  refused("-".repeat(MAX_EXPR_DEPTH + 1) + "1 == 1", /nests deeper than 32/);
  refused(`1 in [${"0,".repeat(MAX_LIST_ITEMS)}0]`, new RegExp(`at most ${MAX_LIST_ITEMS} items`));
  assert.equal(run("(".repeat(MAX_EXPR_DEPTH) + "true" + ")".repeat(MAX_EXPR_DEPTH)), true);
  assert.equal(run("not ".repeat(20) + "true"), true);
});

Deno.test("a parsed condition prints back to source that parses to the same meaning", () => {
  for (
    const source of [
      "args.amount <= 100 and args.currency == 'EUR'",
      "not (a_b in [1, 'two', null, true]) or 'it''s' == 'x'".replace("a_b", "args.a_b").replace("'it''s'", "'it\\'s'"),
      "context.hour * 60 + context.minute >= 22 * 60 - 1",
      "args.s like 'x*y' and args.t not in ['a\\nb']",
    ]
  ) {
    const first = parseExpr(source, EFFECT_CLASSES);
    if (!first.ok) assert.fail(first.problem.message);
    const again = parseExpr(printExpr(first.expr), EFFECT_CLASSES);
    if (!again.ok) assert.fail(`${printExpr(first.expr)}: ${again.problem.message}`);
    assert.equal(printExpr(again.expr), printExpr(first.expr));
    assert.deepEqual(compileExpr(again.expr)(env), compileExpr(first.expr)(env));
  }
});

/**
 * @module
 * The `when` language of policy rules: a small, total, side-effect-free
 * expression language over an effect request (`args.amount <= 100 and
 * args.currency == 'EUR'`). A hand-written tokenizer and recursive-descent
 * parser build an AST, a light type check refuses expressions that can never
 * mean what they say (`'a' < 3`, `when: 42`), and `compileExpr` turns the
 * AST into closures evaluated per request. There is no `eval`, no loop, no
 * call beyond the fixed string operators, and input length and nesting are
 * bounded, so evaluating a parsed expression always ends, quickly.
 *
 * Evaluation is total: a missing path is `null`; an operator given values of
 * the wrong type answers `false` (comparisons, string operators, `in`) or
 * `null` (arithmetic, also for division by zero); `and`, `or` and `not`
 * count only `true` as true. So every expression has a defined value for
 * every request, and a rule whose condition is not exactly `true` does not
 * match.
 */

/** A value an expression computes: JSON data. */
export type Value = null | boolean | number | string | ReadonlyArray<unknown> | { readonly [k: string]: unknown };

/** The names an expression may start with. */
export const ROOTS = ["args", "context", "effect", "plugin", "agent", "workflow", "class"] as const;
/** One of `ROOTS`. */
export type Root = typeof ROOTS[number];

/** Comparison operators. */
export type CmpOp = "==" | "!=" | "<" | "<=" | ">" | ">=";
/** Arithmetic operators (numbers only). */
export type ArithOp = "+" | "-" | "*" | "/" | "%";
/** The fixed string operators. */
export type StrOp = "startsWith" | "endsWith" | "contains" | "like";

/** A parsed expression; `at` is the character offset in the source, for messages. */
export type Expr =
  | { readonly k: "lit"; readonly v: null | boolean | number | string; readonly at: number }
  | { readonly k: "list"; readonly items: ReadonlyArray<Expr>; readonly at: number }
  | { readonly k: "path"; readonly root: Root; readonly segs: ReadonlyArray<string>; readonly at: number }
  | { readonly k: "not"; readonly e: Expr; readonly at: number }
  | { readonly k: "neg"; readonly e: Expr; readonly at: number }
  | { readonly k: "and" | "or"; readonly l: Expr; readonly r: Expr; readonly at: number }
  | { readonly k: "cmp"; readonly op: CmpOp; readonly l: Expr; readonly r: Expr; readonly at: number }
  | { readonly k: "in"; readonly negated: boolean; readonly l: Expr; readonly r: Expr; readonly at: number }
  | { readonly k: "str"; readonly op: StrOp; readonly l: Expr; readonly r: Expr; readonly at: number }
  | { readonly k: "arith"; readonly op: ArithOp; readonly l: Expr; readonly r: Expr; readonly at: number };

/** Why an expression was refused, and where (0-based offset into the source). */
export interface ExprProblem {
  readonly message: string;
  readonly at: number;
}

/** What an expression is evaluated against. */
export interface ExprEnv {
  readonly args?: unknown;
  readonly context?: unknown;
  readonly effect?: string;
  readonly plugin?: string;
  readonly agent?: string;
  readonly workflow?: string;
  readonly class?: string;
}

/** Longest `when` source accepted. */
export const MAX_EXPR_LENGTH = 2000;
/** Deepest nesting accepted (parentheses, `not`, `-`, lists). */
export const MAX_EXPR_DEPTH = 32;
/** Deepest AST accepted, counting chains like `a or b or c` as nesting. */
export const MAX_AST_DEPTH = 256;
/** Longest list literal accepted. */
export const MAX_LIST_ITEMS = 256;

// ------------------------------------------------------------------ tokenizer

type Tok =
  | { t: "num"; v: number; at: number }
  | { t: "str"; v: string; at: number }
  | { t: "path"; segs: string[]; at: number }
  | { t: "op"; v: string; at: number }
  | { t: "end"; at: number };

const KEYWORDS = new Set([
  "and",
  "or",
  "not",
  "in",
  "true",
  "false",
  "null",
  "startsWith",
  "endsWith",
  "contains",
  "like",
]);
const IDENT_START = /[A-Za-z_]/;
const IDENT = /[A-Za-z0-9_]/;
const DIGIT = /[0-9]/;
const TWO_CHAR = new Set(["==", "!=", "<=", ">="]);
const ONE_CHAR = new Set(["<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", ","]);
const ESCAPES: Record<string, string> = { "\\": "\\", "'": "'", '"': '"', n: "\n", t: "\t" };

class Refused {
  constructor(readonly problem: ExprProblem) {}
}
const refuse = (message: string, at: number): never => {
  throw new Refused({ message, at });
};

const tokenize = (src: string): Tok[] => {
  const out: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === " " || c === "\t" || c === "\n" || c === "\r") {
      i++;
      continue;
    }
    const at = i;
    if (DIGIT.test(c)) {
      while (i < src.length && DIGIT.test(src[i])) i++;
      if (src[i] === "." && DIGIT.test(src[i + 1] ?? "")) {
        i++;
        while (i < src.length && DIGIT.test(src[i])) i++;
      }
      if (i < src.length && IDENT.test(src[i])) refuse(`unexpected "${src[i]}" after a number`, i);
      out.push({ t: "num", v: Number(src.slice(at, i)), at });
      continue;
    }
    if (c === "'" || c === '"') {
      let v = "";
      i++;
      for (;;) {
        if (i >= src.length) refuse("unterminated string", at);
        const ch = src[i];
        if (ch === c) break;
        if (ch === "\\") {
          const e = ESCAPES[src[i + 1] ?? ""];
          if (e === undefined) refuse(`unknown escape "\\${src[i + 1] ?? ""}" in a string`, i);
          v += e;
          i += 2;
          continue;
        }
        v += ch;
        i++;
      }
      i++;
      out.push({ t: "str", v, at });
      continue;
    }
    if (IDENT_START.test(c)) {
      const segs: string[] = [];
      for (;;) {
        const start = i;
        if (segs.length === 0 || IDENT_START.test(src[i] ?? "")) {
          while (i < src.length && IDENT.test(src[i])) i++;
        } else if (DIGIT.test(src[i] ?? "")) {
          while (i < src.length && DIGIT.test(src[i])) i++;
        } else {
          refuse('expected a field name after "."', i);
        }
        segs.push(src.slice(start, i));
        if (src[i] !== ".") break;
        i++;
      }
      out.push({ t: "path", segs, at });
      continue;
    }
    const two = src.slice(i, i + 2);
    if (TWO_CHAR.has(two)) {
      out.push({ t: "op", v: two, at });
      i += 2;
      continue;
    }
    if (ONE_CHAR.has(c)) {
      out.push({ t: "op", v: c, at });
      i++;
      continue;
    }
    if (two === "=>" || two === "=<") refuse(`use "${two[1]}=" (not "${two}")`, at);
    if (c === "=") refuse('use "==" to compare', at);
    if (two === "&&" || two === "||") refuse(`use "${two === "&&" ? "and" : "or"}" instead of "${two}"`, at);
    if (c === "!") refuse('use "not" instead of "!"', at);
    refuse(`unexpected character "${c}"`, at);
  }
  out.push({ t: "end", at: src.length });
  return out;
};

// --------------------------------------------------------------------- parser

const CMP_OPS = new Set(["==", "!=", "<", "<=", ">", ">="]);
const STR_OPS = new Set(["startsWith", "endsWith", "contains", "like"]);

const describe = (t: Tok): string =>
  t.t === "end"
    ? "the end"
    : t.t === "num"
    ? `number ${t.v}`
    : t.t === "str"
    ? `string "${t.v}"`
    : t.t === "path"
    ? `"${t.segs.join(".")}"`
    : `"${t.v}"`;

const parseTokens = (toks: Tok[]): Expr => {
  let p = 0;
  let depth = 0;
  const peek = () => toks[p];
  const word = (t: Tok, w: string) => t.t === "path" && t.segs.length === 1 && t.segs[0] === w;
  const isOp = (t: Tok, v: string) => t.t === "op" && t.v === v;
  const deeper = <A>(at: number, f: () => A): A => {
    if (++depth > MAX_EXPR_DEPTH) refuse(`expression nests deeper than ${MAX_EXPR_DEPTH} levels`, at);
    const out = f();
    depth--;
    return out;
  };
  const expect = (v: string) => {
    const t = peek();
    if (!isOp(t, v)) refuse(`expected "${v}" but found ${describe(t)}`, t.at);
    p++;
  };

  const or = (): Expr => {
    let l = and();
    while (word(peek(), "or")) {
      const at = peek().at;
      p++;
      l = { k: "or", l, r: and(), at };
    }
    return l;
  };
  const and = (): Expr => {
    let l = not();
    while (word(peek(), "and")) {
      const at = peek().at;
      p++;
      l = { k: "and", l, r: not(), at };
    }
    return l;
  };
  const not = (): Expr => {
    const t = peek();
    if (word(t, "not")) {
      p++;
      return deeper(t.at, () => ({ k: "not", e: not(), at: t.at }));
    }
    return cmp();
  };
  const cmp = (): Expr => {
    const l = add();
    const t = peek();
    let out: Expr | undefined;
    if (t.t === "op" && CMP_OPS.has(t.v)) {
      p++;
      out = { k: "cmp", op: t.v as CmpOp, l, r: add(), at: t.at };
    } else if (word(t, "in")) {
      p++;
      out = { k: "in", negated: false, l, r: add(), at: t.at };
    } else if (word(t, "not") && word(toks[p + 1], "in")) {
      p += 2;
      out = { k: "in", negated: true, l, r: add(), at: t.at };
    } else if (t.t === "path" && t.segs.length === 1 && STR_OPS.has(t.segs[0])) {
      p++;
      out = { k: "str", op: t.segs[0] as StrOp, l, r: add(), at: t.at };
    }
    if (!out) return l;
    const next = peek();
    if (
      (next.t === "op" && CMP_OPS.has(next.v)) || word(next, "in") ||
      (next.t === "path" && next.segs.length === 1 && STR_OPS.has(next.segs[0]))
    ) {
      refuse(`comparisons do not chain: put parentheses around one side of ${describe(next)}`, next.at);
    }
    return out;
  };
  const add = (): Expr => {
    let l = mul();
    for (;;) {
      const t = peek();
      if (!(isOp(t, "+") || isOp(t, "-"))) return l;
      p++;
      l = { k: "arith", op: (t as { v: ArithOp }).v, l, r: mul(), at: t.at };
    }
  };
  const mul = (): Expr => {
    let l = unary();
    for (;;) {
      const t = peek();
      if (!(isOp(t, "*") || isOp(t, "/") || isOp(t, "%"))) return l;
      p++;
      l = { k: "arith", op: (t as { v: ArithOp }).v, l, r: unary(), at: t.at };
    }
  };
  const unary = (): Expr => {
    const t = peek();
    if (isOp(t, "-")) {
      p++;
      return deeper(t.at, () => ({ k: "neg", e: unary(), at: t.at }));
    }
    return primary();
  };
  const primary = (): Expr => {
    const t = peek();
    p++;
    switch (t.t) {
      case "num":
        if (!Number.isFinite(t.v)) refuse("number is too large", t.at);
        return { k: "lit", v: t.v, at: t.at };
      case "str":
        return { k: "lit", v: t.v, at: t.at };
      case "path": {
        const [head, ...rest] = t.segs;
        if (rest.length === 0 && (head === "true" || head === "false")) {
          return { k: "lit", v: head === "true", at: t.at };
        }
        if (rest.length === 0 && head === "null") return { k: "lit", v: null, at: t.at };
        if (KEYWORDS.has(head)) refuse(`unexpected "${head}"`, t.at);
        if (!(ROOTS as ReadonlyArray<string>).includes(head)) {
          refuse(`unknown name "${head}" (expected ${ROOTS.join(", ")})`, t.at);
        }
        if (rest.length && head !== "args" && head !== "context") {
          refuse(`"${head}" is a string and has no fields`, t.at);
        }
        return { k: "path", root: head as Root, segs: rest, at: t.at };
      }
      case "op":
        if (t.v === "(") {
          const e = deeper(t.at, or);
          expect(")");
          return e;
        }
        if (t.v === "[") {
          return deeper(t.at, () => {
            const items: Expr[] = [];
            if (!isOp(peek(), "]")) {
              for (;;) {
                items.push(or());
                if (items.length > MAX_LIST_ITEMS) refuse(`a list holds at most ${MAX_LIST_ITEMS} items`, t.at);
                if (!isOp(peek(), ",")) break;
                p++;
              }
            }
            expect("]");
            return { k: "list", items, at: t.at };
          });
        }
        return refuse(`unexpected ${describe(t)}`, t.at);
      case "end":
        return refuse("the expression ends too early", t.at);
    }
  };

  const e = or();
  const rest = peek();
  if (rest.t !== "end") refuse(`unexpected ${describe(rest)}`, rest.at);
  return e;
};

// ----------------------------------------------------------------- type check

/** The static type of an expression; `any` for request data whose shape is only known at run time. */
export type ExprType = "number" | "string" | "boolean" | "null" | "list" | "any";

const article = (t: ExprType) => (t === "any" ? "a value" : t === "null" ? "null" : `a ${t}`);

const typeOf = (e: Expr, classes: ReadonlyArray<string>): ExprType => {
  const known = (t: ExprType) => t !== "any";
  switch (e.k) {
    case "lit":
      return e.v === null ? "null" : typeof e.v as ExprType;
    case "list":
      for (const item of e.items) typeOf(item, classes);
      return "list";
    case "path":
      return e.root === "effect" || e.root === "plugin" || e.root === "class" ? "string" : "any";
    case "not": {
      const t = typeOf(e.e, classes);
      if (t !== "boolean" && known(t)) refuse(`"not" needs true or false, not ${article(t)}`, e.at);
      return "boolean";
    }
    case "neg": {
      const t = typeOf(e.e, classes);
      if (t !== "number" && known(t)) refuse(`"-" needs a number, not ${article(t)}`, e.at);
      return "number";
    }
    case "and":
    case "or": {
      for (const side of [e.l, e.r]) {
        const t = typeOf(side, classes);
        if (t !== "boolean" && known(t)) {
          refuse(`"${e.k}" needs true or false on both sides, not ${article(t)}`, side.at);
        }
      }
      return "boolean";
    }
    case "cmp": {
      const l = typeOf(e.l, classes);
      const r = typeOf(e.r, classes);
      if (e.op === "==" || e.op === "!=") {
        if (known(l) && known(r) && l !== r && l !== "null" && r !== "null") {
          refuse(`"${e.op}" compares ${article(l)} with ${article(r)}, which is never equal`, e.at);
        }
        checkClass(e.l, e.r, classes);
        checkClass(e.r, e.l, classes);
      } else {
        for (const t of [l, r]) {
          if (known(t) && t !== "number" && t !== "string") {
            refuse(`"${e.op}" compares numbers or strings, not ${article(t)}`, e.at);
          }
        }
        if (known(l) && known(r) && l !== r) refuse(`"${e.op}" compares ${article(l)} with ${article(r)}`, e.at);
      }
      return "boolean";
    }
    case "in": {
      const l = typeOf(e.l, classes);
      const r = typeOf(e.r, classes);
      if (known(r) && r !== "list" && r !== "string") refuse(`"in" needs a list or a string on the right`, e.r.at);
      if (r === "string" && known(l) && l !== "string") refuse(`"in" a string needs a string on the left`, e.l.at);
      if (e.r.k === "list") { for (const item of e.r.items) checkClass(e.l, item, classes); }
      return "boolean";
    }
    case "str": {
      const l = typeOf(e.l, classes);
      const r = typeOf(e.r, classes);
      const leftOk = l === "string" || (e.op === "contains" && l === "list") || !known(l);
      if (!leftOk) refuse(`"${e.op}" needs a string on the left, not ${article(l)}`, e.l.at);
      if (known(r) && r !== "string" && !(e.op === "contains" && l === "list")) {
        refuse(`"${e.op}" needs a string on the right, not ${article(r)}`, e.r.at);
      }
      return "boolean";
    }
    case "arith": {
      for (const side of [e.l, e.r]) {
        const t = typeOf(side, classes);
        if (known(t) && t !== "number") refuse(`"${e.op}" needs numbers, not ${article(t)}`, side.at);
      }
      return "number";
    }
  }
};

/** `class == 'finance'` can never match: say so at load. */
const checkClass = (side: Expr, other: Expr, classes: ReadonlyArray<string>) => {
  if (side.k === "path" && side.root === "class" && other.k === "lit" && typeof other.v === "string") {
    if (!classes.includes(other.v)) {
      refuse(`unknown effect class "${other.v}" (expected ${classes.join(", ")})`, other.at);
    }
  }
};

/** A parsed `when` condition, or why it was refused. */
export type ParseResult =
  | { readonly ok: true; readonly expr: Expr }
  | { readonly ok: false; readonly problem: ExprProblem };

/**
 * Parse and type-check a `when` condition; `classes` are the effect classes
 * `class` may equal. With `anyType`, the whole expression may be a value of
 * any type (for tools that show what an expression computes).
 */
export const parseExpr = (
  source: string,
  classes: ReadonlyArray<string> = [],
  options: { readonly anyType?: boolean } = {},
): ParseResult => {
  if (source.length > MAX_EXPR_LENGTH) {
    return { ok: false, problem: { message: `condition is longer than ${MAX_EXPR_LENGTH} characters`, at: 0 } };
  }
  try {
    const expr = parseTokens(tokenize(source));
    if (exprDepth(expr) > MAX_AST_DEPTH) refuse(`expression is deeper than ${MAX_AST_DEPTH} operators`, 0);
    const t = typeOf(expr, classes);
    if (!options.anyType && t !== "boolean" && t !== "any") {
      refuse(`a condition must be true or false, not ${article(t)}`, 0);
    }
    return { ok: true, expr };
  } catch (error) {
    if (error instanceof Refused) return { ok: false, problem: error.problem };
    // A bug in the parser: refuse the expression rather than load something misread.
    return { ok: false, problem: { message: `cannot parse: ${String(error)}`, at: 0 } };
  }
};

/** Depth of an AST (a literal is 1). */
export const exprDepth = (e: Expr): number => {
  switch (e.k) {
    case "lit":
    case "path":
      return 1;
    case "list":
      return 1 + e.items.reduce((m, i) => Math.max(m, exprDepth(i)), 0);
    case "not":
    case "neg":
      return 1 + exprDepth(e.e);
    default:
      return 1 + Math.max(exprDepth(e.l), exprDepth(e.r));
  }
};

/** Print an AST back as source text (fully parenthesised); parsing it gives the same AST shape. */
export const printExpr = (e: Expr): string => {
  switch (e.k) {
    case "lit":
      return typeof e.v === "string"
        ? `'${e.v.replace(/[\\']/g, (c) => `\\${c}`).replace(/\n/g, "\\n").replace(/\t/g, "\\t")}'`
        : String(e.v);
    case "list":
      return `[${e.items.map(printExpr).join(", ")}]`;
    case "path":
      return [e.root, ...e.segs].join(".");
    case "not":
      return `(not ${printExpr(e.e)})`;
    case "neg":
      return `(-${printExpr(e.e)})`;
    case "and":
    case "or":
      return `(${printExpr(e.l)} ${e.k} ${printExpr(e.r)})`;
    case "cmp":
    case "arith":
    case "str":
      return `(${printExpr(e.l)} ${e.op} ${printExpr(e.r)})`;
    case "in":
      return `(${printExpr(e.l)} ${e.negated ? "not in" : "in"} ${printExpr(e.r)})`;
  }
};

// ----------------------------------------------------------------- evaluation

/** How deep `==` looks into lists and objects before calling them different. */
const MAX_EQUAL_DEPTH = 64;

/** Structural equality of JSON values; bounded, so a cyclic or absurdly deep value compares unequal. */
export const valueEquals = (a: unknown, b: unknown, depth = 0): boolean => {
  if (a === b) return a === a || typeof a !== "number"; // NaN is never equal
  if (depth > MAX_EQUAL_DEPTH || typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return false;
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!valueEquals(a[i], b[i], depth + 1)) return false;
    return true;
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    if (!Object.hasOwn(b, k)) return false;
    if (!valueEquals((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], depth + 1)) return false;
  }
  return true;
};

/** Only plain JSON data is visible to an expression; anything else reads as `null`. */
const asValue = (v: unknown): unknown => {
  switch (typeof v) {
    case "string":
    case "boolean":
      return v;
    case "number":
      return Number.isFinite(v) ? v : null;
    case "object":
      return v;
    default:
      return null;
  }
};

const step = (v: unknown, seg: string): unknown => {
  if (v === null || typeof v !== "object") return null;
  if (Array.isArray(v)) {
    if (!/^(0|[1-9][0-9]*)$/.test(seg)) return null;
    const i = Number(seg);
    return i < v.length ? asValue(v[i]) : null;
  }
  return Object.hasOwn(v, seg) ? asValue((v as Record<string, unknown>)[seg]) : null;
};

/** Does `text` match the glob `pattern`? `*` is any run of characters, everything else is literal. */
export const globMatch = (pattern: string, text: string): boolean => compileGlob(pattern)(text);

const globCache = new Map<string, (s: string) => boolean>();

/** A matcher for a glob (`*` is any run of characters); linear time, no regular expressions. */
export const compileGlob = (pattern: string): (s: string) => boolean => {
  const cached = globCache.get(pattern);
  if (cached) return cached;
  const parts = pattern.split("*");
  let f: (s: string) => boolean;
  if (parts.length === 1) f = (s) => s === pattern;
  else if (parts.length === 2 && parts[1] === "") {
    const pre = parts[0];
    f = pre === "" ? () => true : (s) => s.startsWith(pre);
  } else if (parts.length === 2 && parts[0] === "") {
    const suf = parts[1];
    f = (s) => s.endsWith(suf);
  } else {
    const first = parts[0];
    const last = parts[parts.length - 1];
    const middle = parts.slice(1, -1).filter((x) => x !== "");
    const min = first.length + last.length;
    f = (s) => {
      if (s.length < min || !s.startsWith(first) || !s.endsWith(last)) return false;
      // Star-only globs: taking each middle part at its leftmost place is never worse than any other place.
      let i = first.length;
      const end = s.length - last.length;
      for (const m of middle) {
        const at = s.indexOf(m, i);
        if (at < 0 || at + m.length > end) return false;
        i = at + m.length;
      }
      return true;
    };
  }
  if (globCache.size < 10_000) globCache.set(pattern, f);
  return f;
};

const num = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** Evaluate a comparison; defined for every pair of values. */
export const compareValues = (op: CmpOp, l: unknown, r: unknown): boolean => {
  if (op === "==") return valueEquals(l, r);
  if (op === "!=") return !valueEquals(l, r);
  const bothNum = num(l) && num(r);
  if (!bothNum && !(typeof l === "string" && typeof r === "string")) return false;
  const a = l as number | string;
  const b = r as number | string;
  switch (op) {
    case "<":
      return a < b;
    case "<=":
      return a <= b;
    case ">":
      return a > b;
    case ">=":
      return a >= b;
  }
};

const inValue = (l: unknown, r: unknown): boolean => {
  if (Array.isArray(r)) return r.some((x) => valueEquals(l, x));
  return typeof r === "string" && typeof l === "string" && r.includes(l);
};

const strOp = (op: StrOp, l: unknown, r: unknown): boolean => {
  if (op === "contains" && Array.isArray(l)) return l.some((x) => valueEquals(x, r));
  if (typeof l !== "string" || typeof r !== "string") return false;
  switch (op) {
    case "startsWith":
      return l.startsWith(r);
    case "endsWith":
      return l.endsWith(r);
    case "contains":
      return l.includes(r);
    case "like":
      return compileGlob(r)(l);
  }
};

const arith = (op: ArithOp, l: unknown, r: unknown): number | null => {
  if (!num(l) || !num(r)) return null;
  let v: number;
  switch (op) {
    case "+":
      v = l + r;
      break;
    case "-":
      v = l - r;
      break;
    case "*":
      v = l * r;
      break;
    case "/":
      v = l / r;
      break;
    case "%":
      v = l % r;
      break;
  }
  return Number.isFinite(v) ? v : null;
};

/** A compiled expression: one closure per AST node. */
export type Compiled = (env: ExprEnv) => unknown;

/** Compile an AST to closures (literals and literal globs are prepared once). */
export const compileExpr = (e: Expr): Compiled => {
  switch (e.k) {
    case "lit": {
      const v = e.v;
      return () => v;
    }
    case "list": {
      const items = e.items.map(compileExpr);
      return (env) => items.map((f) => f(env));
    }
    case "path": {
      const segs = e.segs;
      const root = e.root;
      if (segs.length === 0) return (env) => asValue(env[root]) ?? null;
      return (env) => {
        let v: unknown = asValue(env[root]) ?? null;
        for (const s of segs) {
          v = step(v, s);
          if (v === null) return null;
        }
        return v;
      };
    }
    case "not": {
      const f = compileExpr(e.e);
      return (env) => f(env) !== true;
    }
    case "neg": {
      const f = compileExpr(e.e);
      return (env) => {
        const v = f(env);
        return num(v) ? (v === 0 ? 0 : -v) : null;
      };
    }
    case "and": {
      const l = compileExpr(e.l);
      const r = compileExpr(e.r);
      return (env) => l(env) === true && r(env) === true;
    }
    case "or": {
      const l = compileExpr(e.l);
      const r = compileExpr(e.r);
      return (env) => l(env) === true || r(env) === true;
    }
    case "cmp": {
      const l = compileExpr(e.l);
      const r = compileExpr(e.r);
      const op = e.op;
      return (env) => compareValues(op, l(env), r(env));
    }
    case "in": {
      const l = compileExpr(e.l);
      const negated = e.negated;
      if (e.r.k === "list" && e.r.items.every((i) => i.k === "lit")) {
        // A literal list of literals: a set lookup for primitives.
        const set = new Set(e.r.items.map((i) => (i as { v: unknown }).v));
        return (env) => {
          const v = l(env);
          const hit = (v === null || typeof v !== "object") && set.has(v);
          return negated ? !hit : hit;
        };
      }
      const r = compileExpr(e.r);
      return (env) => inValue(l(env), r(env)) !== negated;
    }
    case "str": {
      const l = compileExpr(e.l);
      const op = e.op;
      if (op === "like" && e.r.k === "lit" && typeof e.r.v === "string") {
        const g = compileGlob(e.r.v);
        return (env) => {
          const v = l(env);
          return typeof v === "string" && g(v);
        };
      }
      const r = compileExpr(e.r);
      return (env) => strOp(op, l(env), r(env));
    }
    case "arith": {
      const l = compileExpr(e.l);
      const r = compileExpr(e.r);
      const op = e.op;
      return (env) => arith(op, l(env), r(env));
    }
  }
};

/** Evaluate an AST directly (the reference semantics `compileExpr` must agree with). */
export const evalExpr = (e: Expr, env: ExprEnv): unknown => {
  switch (e.k) {
    case "lit":
      return e.v;
    case "list":
      return e.items.map((i) => evalExpr(i, env));
    case "path": {
      let v: unknown = asValue(env[e.root]) ?? null;
      for (const s of e.segs) v = step(v, s);
      return v;
    }
    case "not":
      return evalExpr(e.e, env) !== true;
    case "neg": {
      const v = evalExpr(e.e, env);
      return num(v) ? (v === 0 ? 0 : -v) : null;
    }
    case "and":
      return evalExpr(e.l, env) === true && evalExpr(e.r, env) === true;
    case "or":
      return evalExpr(e.l, env) === true || evalExpr(e.r, env) === true;
    case "cmp":
      return compareValues(e.op, evalExpr(e.l, env), evalExpr(e.r, env));
    case "in":
      return inValue(evalExpr(e.l, env), evalExpr(e.r, env)) !== e.negated;
    case "str":
      return strOp(e.op, evalExpr(e.l, env), evalExpr(e.r, env));
    case "arith":
      return arith(e.op, evalExpr(e.l, env), evalExpr(e.r, env));
  }
};

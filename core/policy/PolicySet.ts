/**
 * @module
 * Policy files: YAML in `policies/`, parsed into rules with their source
 * positions. A file that does not parse or type-check is refused with file,
 * line and reason, so Keel never starts with a policy it misread.
 */
import { Effect } from "effect";
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import { PolicyFileError } from "../errors/mod.ts";
import { EFFECT_CLASSES, type EffectClass, sha256Hex } from "../manifest/mod.ts";
import { type Expr, parseExpr } from "./Expr.ts";
import { isTimeZone, parseClock } from "./LocalTime.ts";

/** What a rule decides. Most restrictive wins: deny > approve > allow. */
export type Decision = "allow" | "approve" | "deny";

/** How a human gate looks: who approves, for how long, what they are shown. */
export interface ApprovalSpec {
  readonly approver: string;
  readonly expiresInMs: number;
  readonly message?: string;
}

/** A rule's `when` condition: its source text and the parsed, type-checked expression. */
export interface When {
  readonly source: string;
  readonly expr: Expr;
}

/** Whose calls one counter of a rule's limits counts: everyone's, or per effect, plugin, agent, workflow or run. */
export type LimitScope = "global" | "effect" | "plugin" | "agent" | "workflow" | "run";
/** The values `limits.scope` may take. */
export const LIMIT_SCOPES: ReadonlyArray<LimitScope> = ["global", "effect", "plugin", "agent", "workflow", "run"];

/** Budget caps of one rule; money in US dollars, model tokens as counted by the model router. */
export interface BudgetSpec {
  readonly usdPerDay?: number;
  readonly usdPerMonth?: number;
  readonly tokensPerDay?: number;
  readonly tokensPerMonth?: number;
  /** The zone whose midnight starts a budget day (default UTC). */
  readonly timezone: string;
}

/** Quiet hours: in this window an allow (or approve) becomes `decision`. */
export interface QuietHoursSpec {
  readonly from: string;
  readonly to: string;
  readonly fromMinute: number;
  readonly toMinute: number;
  readonly timezone: string;
  readonly decision: "approve" | "deny";
}

/** Limits on a rule: they hold for every request the rule matches. */
export interface RuleLimits {
  readonly rate?: { readonly count: number; readonly per: string; readonly perMs: number };
  readonly budget?: BudgetSpec;
  readonly scope: LimitScope;
  readonly quietHours?: QuietHoursSpec;
}

/** One rule with where it came from. */
export interface Rule {
  readonly id: string;
  readonly description?: string;
  readonly file: string;
  readonly line: number;
  readonly match: {
    readonly effect?: ReadonlyArray<string>;
    readonly plugin?: ReadonlyArray<string>;
    readonly agent?: ReadonlyArray<string>;
    readonly workflow?: ReadonlyArray<string>;
    readonly class?: ReadonlyArray<EffectClass>;
  };
  /** Only requests for which this condition is exactly `true` match. */
  readonly when?: When;
  readonly decision: Decision;
  readonly approval?: ApprovalSpec;
  readonly limits?: RuleLimits;
}

/** All policy files loaded together, with the content hash every decision records. */
export interface PolicySet {
  readonly hash: string;
  readonly files: ReadonlyArray<string>;
  readonly rules: ReadonlyArray<Rule>;
  /** Decision when nothing matches a `read`/`write` effect; `irreversible`/`financial` always deny. */
  readonly defaultDecision: Decision;
}

const DECISIONS: ReadonlyArray<Decision> = ["allow", "approve", "deny"];
const MATCH_KEYS = ["effect", "plugin", "agent", "workflow", "class"] as const;
/** How long an approval stays good when the rule does not say. */
export const DEFAULT_APPROVAL_MS = 7 * 24 * 3600_000;
const BUDGET_KEYS = ["usdPerDay", "usdPerMonth", "tokensPerDay", "tokensPerMonth"] as const;

/** The longest duration a policy may give (an approval's expiry, a rate's window): a year. */
export const MAX_DURATION_MS = 366 * 86_400_000;

/** Parse a duration like `90s`, `15m`, `72h`, `7d`. */
export const parseDuration = (text: string): number | undefined => {
  const m = /^(\d+)(s|m|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  const ms = Number(m[1]) * { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] as "s"];
  return ms > 0 && ms <= MAX_DURATION_MS ? ms : undefined;
};

/** A YAML scalar as text (`72h`, `22:00`, a zone), or undefined for a mapping, a list or null. */
const scalarText = (v: unknown): string | undefined =>
  typeof v === "string" ? v : typeof v === "number" || typeof v === "boolean" ? String(v) : undefined;

/** The policy files of a folder, in the order they load: `*.yaml`/`*.yml` files, and links to files. */
export const policyFileNames = (dir: string): string[] =>
  [...Deno.readDirSync(dir)]
    .filter((e) => /\.ya?ml$/.test(e.name) && (e.isFile || (e.isSymlink && Deno.statSync(`${dir}/${e.name}`).isFile)))
    .map((e) => e.name)
    .sort();

/** Parse one policy file's text; `file` names it in errors. */
export const parsePolicyFile = (
  file: string,
  text: string,
): Effect.Effect<{ rules: Rule[]; defaultDecision?: Decision }, PolicyFileError> =>
  Effect.gen(function* () {
    const lineCounter = new LineCounter();
    const doc = parseDocument(text, { lineCounter, prettyErrors: false });
    const fail = (line: number, why: string) =>
      new PolicyFileError({ message: `Policy file "${file}" line ${line}: ${why}`, details: { file, line } });
    const lineOf = (node: unknown): number => {
      const range = (node as { range?: [number, number, number] } | null)?.range;
      return range ? lineCounter.linePos(range[0]).line : 1;
    };
    const posOf = (offset: number) => lineCounter.linePos(offset);
    if (doc.errors.length) {
      const e = doc.errors[0];
      // `linePos` is only filled in with prettyErrors; `pos` always is.
      return yield* fail(e.linePos?.[0].line ?? lineCounter.linePos(e.pos[0]).line, e.message.split("\n")[0]);
    }
    const root = doc.contents;
    if (root === null) return { rules: [] };
    if (!isMap(root)) return yield* fail(lineOf(root), 'expected a mapping with "rules" (and optionally "default")');
    let defaultDecision: Decision | undefined;
    const rules: Rule[] = [];
    for (const pair of root.items) {
      const key = String((pair.key as { value?: unknown })?.value ?? pair.key);
      const line = lineOf(pair.key);
      if (key === "default") {
        const v = (pair.value as { value?: unknown })?.value;
        if (!DECISIONS.includes(v as Decision)) {
          return yield* fail(line, `"default" must be one of allow, approve, deny`);
        }
        defaultDecision = v as Decision;
      } else if (key === "rules") {
        if (!isSeq(pair.value)) return yield* fail(line, `"rules" must be a list`);
        for (const item of pair.value.items) {
          rules.push(yield* parseRule(file, item, lineOf(item), fail, lineOf, posOf));
        }
      } else {
        return yield* fail(line, `unknown key "${key}" (expected "rules" or "default")`);
      }
    }
    return { rules, defaultDecision };
  }).pipe(
    // Whatever a file holds, it is refused with its name, never thrown: a throw would stop the reloads after it.
    Effect.catchDefect((defect) =>
      Effect.fail(
        new PolicyFileError({
          message: `Policy file "${file}" cannot be read as a policy: ${
            defect instanceof Error ? defect.message : "unexpected value"
          }`,
          details: { file },
        }),
      )
    ),
  );

const parseRule = (
  file: string,
  node: unknown,
  line: number,
  fail: (line: number, why: string) => PolicyFileError,
  lineOf: (node: unknown) => number,
  posOf: (offset: number) => { line: number; col: number },
): Effect.Effect<Rule, PolicyFileError> =>
  Effect.gen(function* () {
    if (!isMap(node)) return yield* fail(line, "a rule must be a mapping");
    const value = node.toJSON() as Record<string, unknown>;
    const at = (key: string) => lineOf(node.get(key, true) ?? node);
    // The line of the key itself (`limits:`), for errors about the whole entry.
    const keyAt = (key: string) =>
      lineOf(node.items.find((p) => (p.key as { value?: unknown } | null)?.value === key)?.key ?? node);
    // The line of `parent.key` (e.g. `match.class`), so errors point at the offending entry.
    const atIn = (parent: string, key: string) => {
      const p = node.get(parent, true);
      return isMap(p) ? lineOf(p.get(key, true) ?? p) : at(parent);
    };
    const allowed = ["id", "description", "match", "when", "decision", "approval", "limits"];
    const unknown = Object.keys(value).find((k) => !allowed.includes(k));
    if (unknown) return yield* fail(at(unknown), `unknown rule key "${unknown}"`);
    if (typeof value.id !== "string" || !/^[A-Za-z0-9_.-]+$/.test(value.id)) {
      return yield* fail(at("id"), 'every rule needs an "id" (letters, digits, . _ -)');
    }
    if (!DECISIONS.includes(value.decision as Decision)) {
      return yield* fail(at("decision"), `rule "${value.id}": "decision" must be one of allow, approve, deny`);
    }
    const match: Record<string, string[]> = {};
    const rawMatch = value.match ?? {};
    if (rawMatch === null || typeof rawMatch !== "object" || Array.isArray(rawMatch)) {
      return yield* fail(at("match"), `rule "${value.id}": "match" must be a mapping`);
    }
    for (const [k, v] of Object.entries(rawMatch)) {
      if (!(MATCH_KEYS as ReadonlyArray<string>).includes(k)) {
        return yield* fail(
          atIn("match", k),
          `rule "${value.id}": unknown match key "${k}" (expected ${MATCH_KEYS.join(", ")})`,
        );
      }
      const list = Array.isArray(v) ? v : [v];
      if (!list.length || list.some((x) => typeof x !== "string" || x === "")) {
        return yield* fail(atIn("match", k), `rule "${value.id}": match "${k}" must be a string or a list of strings`);
      }
      if (k === "class") {
        const bad = list.find((c) => !(EFFECT_CLASSES as ReadonlyArray<string>).includes(c));
        if (bad) {
          return yield* fail(
            atIn("match", k),
            `rule "${value.id}": unknown effect class "${bad}" (expected ${EFFECT_CLASSES.join(", ")})`,
          );
        }
      }
      match[k] = list as string[];
    }
    let approval: ApprovalSpec | undefined;
    if (value.decision === "approve") {
      const a = (value.approval ?? {}) as Record<string, unknown>;
      if (typeof a !== "object" || Array.isArray(a)) {
        return yield* fail(at("approval"), `rule "${value.id}": "approval" must be a mapping`);
      }
      const expires = a.expires === undefined ? DEFAULT_APPROVAL_MS : parseDuration(scalarText(a.expires) ?? "");
      if (expires === undefined) {
        return yield* fail(
          atIn("approval", "expires"),
          `rule "${value.id}": approval "expires" must look like 30m, 72h or 7d (at most 366d)`,
        );
      }
      approval = {
        approver: typeof a.approver === "string" ? a.approver : "operator",
        expiresInMs: expires,
        message: typeof a.message === "string" ? a.message : undefined,
      };
    } else if (value.approval !== undefined) {
      return yield* fail(at("approval"), `rule "${value.id}": "approval" only goes with decision approve`);
    }
    const id = value.id;
    let when: When | undefined;
    if (value.when !== undefined) {
      const whenNode = node.get("when", true);
      if (typeof value.when !== "string" && typeof value.when !== "boolean") {
        return yield* fail(keyAt("when"), `rule "${id}": "when" must be a condition such as "args.amount <= 100"`);
      }
      const source = String(value.when);
      const parsed = parseExpr(source, EFFECT_CLASSES);
      if (!parsed.ok) {
        // Point at the exact column when the YAML scalar is the expression verbatim on one line.
        const range = isScalar(whenNode) ? whenNode.range : undefined;
        const quoted = isScalar(whenNode) && (whenNode.type === "QUOTE_DOUBLE" || whenNode.type === "QUOTE_SINGLE");
        const plain = isScalar(whenNode) && whenNode.type === "PLAIN";
        let where = { line: keyAt("when"), col: 0 };
        if (
          range && (plain || quoted) && !source.includes("\n") &&
          range[1] - range[0] === source.length + (quoted ? 2 : 0)
        ) {
          where = posOf(range[0] + (quoted ? 1 : 0) + parsed.problem.at);
        }
        return yield* new PolicyFileError({
          message: `Policy file "${file}" line ${where.line}: rule "${id}": "when"${
            where.col ? ` column ${where.col}` : ` at character ${parsed.problem.at + 1}`
          }: ${parsed.problem.message}`,
          details: { file, line: where.line, ...(where.col ? { column: where.col } : {}) },
        });
      }
      when = { source, expr: parsed.expr };
    }
    let limits: RuleLimits | undefined;
    if (value.limits !== undefined) {
      const problem = (key: string, why: string) => fail(atIn("limits", key), `rule "${id}": limits ${why}`);
      const raw = value.limits as Record<string, unknown>;
      if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
        return yield* fail(keyAt("limits"), `rule "${id}": "limits" must be a mapping`);
      }
      if (value.decision === "deny") {
        return yield* fail(keyAt("limits"), `rule "${id}": "limits" do nothing on a deny rule`);
      }
      const unknownKey = Object.keys(raw).find((k) => !["rate", "budget", "scope", "quietHours"].includes(k));
      if (unknownKey) {
        return yield* problem(
          unknownKey,
          `has an unknown key "${unknownKey}" (expected rate, budget, scope, quietHours)`,
        );
      }
      let rate: RuleLimits["rate"];
      if (raw.rate !== undefined) {
        const r = raw.rate as Record<string, unknown>;
        const perMs = typeof r?.per === "string" ? parseDuration(r.per) : undefined;
        if (
          r === null || typeof r !== "object" || !Number.isInteger(r.count) || (r.count as number) < 1 ||
          !perMs || Object.keys(r).some((k) => k !== "count" && k !== "per")
        ) {
          return yield* problem("rate", `"rate" must look like { count: 10, per: 1h } (per at most 366d)`);
        }
        rate = { count: r.count as number, per: r.per as string, perMs };
      }
      let budget: BudgetSpec | undefined;
      if (raw.budget !== undefined) {
        const b = raw.budget as Record<string, unknown>;
        if (b === null || typeof b !== "object" || Array.isArray(b)) {
          return yield* problem("budget", `"budget" must be a mapping such as { usdPerDay: 5 }`);
        }
        const bad = Object.keys(b).find((k) => k !== "timezone" && !(BUDGET_KEYS as ReadonlyArray<string>).includes(k));
        if (bad) {
          return yield* problem(
            "budget",
            `"budget" has an unknown key "${bad}" (expected ${BUDGET_KEYS.join(", ")}, timezone)`,
          );
        }
        const caps = BUDGET_KEYS.filter((k) => b[k] !== undefined);
        if (!caps.length) return yield* problem("budget", `"budget" needs at least one of ${BUDGET_KEYS.join(", ")}`);
        const notNumber = caps.find((k) => typeof b[k] !== "number" || !Number.isFinite(b[k]) || (b[k] as number) < 0);
        if (notNumber) return yield* problem("budget", `"budget.${notNumber}" must be a number of at least 0`);
        const timezone = b.timezone === undefined ? "UTC" : scalarText(b.timezone) ?? "";
        if (!isTimeZone(timezone)) {
          return yield* problem("budget", `"budget.timezone" "${timezone}" is not a time zone`);
        }
        budget = { timezone, ...Object.fromEntries(caps.map((k) => [k, b[k] as number])) };
      }
      const scope = raw.scope === undefined ? "global" : raw.scope;
      if (!LIMIT_SCOPES.includes(scope as LimitScope)) {
        return yield* problem("scope", `"scope" must be one of ${LIMIT_SCOPES.join(", ")}`);
      }
      let quietHours: QuietHoursSpec | undefined;
      if (raw.quietHours !== undefined) {
        const q = raw.quietHours as Record<string, unknown>;
        const shape = `"quietHours" must look like { from: "22:00", to: "07:00", timezone: Europe/Berlin }`;
        if (q === null || typeof q !== "object" || Array.isArray(q)) return yield* problem("quietHours", shape);
        const bad = Object.keys(q).find((k) => !["from", "to", "timezone", "decision"].includes(k));
        if (bad) return yield* problem("quietHours", `"quietHours" has an unknown key "${bad}"`);
        const from = parseClock(scalarText(q.from) ?? "");
        const to = parseClock(scalarText(q.to) ?? "");
        if (from === undefined || to === undefined) return yield* problem("quietHours", shape);
        const timezone = q.timezone === undefined ? "UTC" : scalarText(q.timezone) ?? "";
        if (!isTimeZone(timezone)) {
          return yield* problem("quietHours", `"quietHours.timezone" "${timezone}" is not a time zone`);
        }
        const decision = q.decision === undefined ? "approve" : q.decision;
        if (decision !== "approve" && decision !== "deny") {
          return yield* problem("quietHours", `"quietHours.decision" must be approve or deny`);
        }
        quietHours = { from: String(q.from), to: String(q.to), fromMinute: from, toMinute: to, timezone, decision };
      }
      limits = { scope: scope as LimitScope, rate, budget, quietHours };
    }
    return {
      id: value.id,
      description: typeof value.description === "string" ? value.description : undefined,
      file,
      line,
      match: match as Rule["match"],
      ...(when ? { when } : {}),
      decision: value.decision as Decision,
      approval,
      ...(limits ? { limits } : {}),
    };
  });

/** Load every `*.yaml`/`*.yml` file in a folder into one policy set. */
export const loadPolicySet = (dir: string): Effect.Effect<PolicySet, PolicyFileError> =>
  Effect.gen(function* () {
    const names = yield* Effect.try({
      try: () => policyFileNames(dir),
      catch: (cause) =>
        new PolicyFileError({ message: `Cannot read policy folder "${dir}": ${String(cause)}`, details: { dir } }),
    });
    const rules: Rule[] = [];
    const sources: string[] = [];
    let defaultDecision: Decision | undefined;
    let defaultFile = "";
    for (const name of names) {
      const file = `${dir}/${name}`;
      const text = yield* Effect.try({
        try: () => Deno.readTextFileSync(file),
        catch: (cause) => new PolicyFileError({ message: `Cannot read policy file "${file}": ${String(cause)}` }),
      });
      sources.push(`${name}\n${text}`);
      const parsed = yield* parsePolicyFile(file, text);
      for (const rule of parsed.rules) {
        const twin = rules.find((r) => r.id === rule.id);
        if (twin) {
          return yield* new PolicyFileError({
            message:
              `Policy file "${file}" line ${rule.line}: rule id "${rule.id}" is already used at ${twin.file}:${twin.line}`,
            details: { file, line: rule.line },
          });
        }
        rules.push(rule);
      }
      if (parsed.defaultDecision) {
        if (defaultDecision && defaultDecision !== parsed.defaultDecision) {
          return yield* new PolicyFileError({
            message: `Policy file "${file}": "default" conflicts with the one in "${defaultFile}"`,
            details: { file },
          });
        }
        defaultDecision = parsed.defaultDecision;
        defaultFile = file;
      }
    }
    const hash = yield* Effect.promise(() => sha256Hex(sources.join("\n\0\n")));
    return { hash, files: names, rules, defaultDecision: defaultDecision ?? "allow" };
  });

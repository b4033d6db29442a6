/**
 * @module
 * `keel policy check`: everything wrong with a policy folder at once, not
 * just the first problem that stops Keel from starting. Parse and type errors
 * per file (with line), duplicate rule ids and conflicting defaults across
 * files, then lint findings on the combined set:
 *
 * - **shadowed**: rule R can never decide because another rule S always wins
 *   over it. S wins over R when S is more restrictive (deny > approve >
 *   allow), or equally restrictive and earlier in the set (files in name
 *   order, rules in file order — the engine keeps the first of equals). S
 *   shadows R when S wins over R and S matches every request R matches:
 *   for each match key, S leaves it out, or every pattern of R is contained in
 *   one pattern of S (glob containment is decided exactly); for `class`, R's
 *   classes are a subset of S's. Against installed manifests the same holds
 *   for effect, plugin and class when S matches every installed effect that R
 *   matches (agent and workflow are still compared as patterns). Conditions
 *   and limits make it conservative: S must have no `when:` condition, or
 *   exactly the same one as R; if R has quiet hours, S must beat R's quiet
 *   hours decision too; if R has a rate or budget, S must deny (otherwise
 *   R's counters still apply to what S lets through). Several rules that
 *   together cover R are not looked for.
 * - **unreachable**: a rule no request can match: a literal pattern that is
 *   not a valid effect, plugin, agent or workflow name; a `when:` that is a
 *   constant other than `true`; or, against installed manifests, effect
 *   patterns that name installed effects but none of them with the rule's
 *   class and plugin.
 * - **unknown-effect**: an effect name or glob that matches no effect an
 *   installed plugin declares (only when the installed plugins are known).
 */
import { Effect } from "effect";
import type { PolicyFileError } from "../errors/mod.ts";
import { EFFECT_CLASSES, type EffectClass } from "../manifest/mod.ts";
import { type Decision, parsePolicyFile, type PolicySet, type Rule } from "./PolicySet.ts";

/** An effect some installed connector declares: what rules can match it on. */
export interface InstalledEffect {
  readonly name: string;
  readonly class: EffectClass;
  readonly plugin: string;
}

/** One problem `keel policy check` reports. Errors stop Keel from starting; warnings do not. */
export interface PolicyFinding {
  readonly severity: "error" | "warning";
  readonly kind: "parse" | "duplicate-id" | "conflicting-default" | "shadowed" | "unreachable" | "unknown-effect";
  readonly file: string;
  readonly line: number;
  readonly rule?: string;
  /** For `shadowed`: the rule that always wins. */
  readonly by?: string;
  readonly message: string;
}

/** A checked folder (or file): every finding, and the combined set when it parsed. */
export interface PolicyCheck {
  readonly files: ReadonlyArray<string>;
  readonly rules: number;
  readonly findings: ReadonlyArray<PolicyFinding>;
  /** Whether the installed effects were known, so `unknown-effect` and manifest-based checks ran. */
  readonly checkedAgainstInstalled: boolean;
}

const RANK: Record<Decision, number> = { allow: 0, approve: 1, deny: 2 };
const KEYS = ["effect", "plugin", "agent", "workflow"] as const;
/** What a name must look like for the Gateway to ever put it in a request (see core/manifest). */
const VALID_NAME: Record<(typeof KEYS)[number], RegExp> = {
  effect: /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/,
  plugin: /^[a-z][a-z0-9_-]{0,63}$/,
  agent: /^[a-z][a-z0-9_-]{0,63}$/,
  workflow: /^[a-z][a-z0-9_]{0,63}$/,
};
const EXAMPLE: Record<(typeof KEYS)[number], string> = {
  effect: "crm.lookup",
  plugin: "smtp",
  agent: "onboarding",
  workflow: "onboard_client",
};

/** A literal (no `*`) that is not a valid name of its kind can never be in a request. */
const impossibleName = (key: (typeof KEYS)[number], pattern: string) =>
  !pattern.includes("*") && !VALID_NAME[key].test(pattern);

const globCache = new Map<string, RegExp>();
/** The engine's glob: anchored, `*` is any run of characters, everything else literal. */
const glob = (pattern: string): RegExp => {
  let re = globCache.get(pattern);
  if (!re) {
    re = new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*")}$`);
    globCache.set(pattern, re);
  }
  return re;
};

/**
 * Whether every name glob `inner` matches, glob `outer` matches too. Exact:
 * replace each `*` of `inner` by a character `outer` cannot name literally;
 * `outer` matches that string exactly when its own `*`s can absorb whatever
 * `inner`'s `*`s stand for.
 */
export const globContains = (outer: string, inner: string): boolean => {
  if (outer === inner) return true;
  if (outer.includes("\u0000")) return false;
  return glob(outer).test(inner.replaceAll("*", "\u0000"));
};

const keyContains = (outer: ReadonlyArray<string> | undefined, inner: ReadonlyArray<string> | undefined) =>
  outer === undefined ||
  (inner === undefined
    ? outer.some((o) => globContains(o, "*"))
    : inner.every((i) => outer.some((o) => globContains(o, i))));

const classContains = (outer: ReadonlyArray<string> | undefined, inner: ReadonlyArray<string> | undefined) =>
  outer === undefined || (inner ?? EFFECT_CLASSES).every((c) => outer.includes(c));

const anyMatch = (patterns: ReadonlyArray<string> | undefined, value: string | undefined) =>
  patterns === undefined || (value !== undefined && patterns.some((p) => glob(p).test(value)));

/**
 * Whether a rule's `match` keys can match a request, before its `when:` and
 * limits (which only the engine judges): a cheap filter, never a verdict.
 */
export const matchKeysMatch = (
  rule: Rule,
  request: { effect: string; effectClass: string; plugin: string; agent?: string; workflow?: string },
): boolean =>
  anyMatch(rule.match.effect, request.effect) && anyMatch(rule.match.plugin, request.plugin) &&
  anyMatch(rule.match.agent, request.agent) && anyMatch(rule.match.workflow, request.workflow) &&
  (rule.match.class === undefined || (rule.match.class as ReadonlyArray<string>).includes(request.effectClass));

const matchesInstalled = (rule: Rule, e: InstalledEffect) =>
  anyMatch(rule.match.effect, e.name) && anyMatch(rule.match.plugin, e.plugin) &&
  (rule.match.class === undefined || rule.match.class.includes(e.class));

/** The rule's `when:` condition as comparable text (whitespace outside quotes does not matter). */
const conditionOf = (rule: Rule): string | undefined =>
  rule.when && !(rule.when.expr.k === "lit" && rule.when.expr.v === true)
    ? JSON.stringify(rule.when.expr, stripOffsets)
    : undefined;
const stripOffsets = (key: string, value: unknown) => key === "at" ? undefined : value;
/** The most restrictive decision a rule can reach: quiet hours may raise it. */
const highestRank = (rule: Rule): number =>
  Math.max(RANK[rule.decision], rule.limits?.quietHours ? RANK[rule.limits.quietHours.decision] : 0);
const hasCounters = (rule: Rule): boolean => !!(rule.limits?.rate || rule.limits?.budget);

const where = (rule: Rule) => `${rule.file}:${rule.line}`;
const decisionWord = (d: Decision) => d === "approve" ? "approve (gated)" : d;

/** Edit distance, for "did you mean" on unknown names. */
const distance = (a: string, b: string): number => {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
};

/** Lint one parsed policy set; `effects` (the installed plugins' effects) enables the manifest checks. */
export const lintPolicySet = (
  set: Pick<PolicySet, "rules">,
  effects?: ReadonlyArray<InstalledEffect>,
): PolicyFinding[] => {
  const findings: PolicyFinding[] = [];
  const rules = set.rules;
  const unreachable = new Set<string>();

  // Rules that no request can ever match.
  for (const rule of rules) {
    const e = rule.when?.expr;
    if (e && e.k === "lit" && e.v !== true) {
      unreachable.add(rule.id);
      findings.push({
        severity: "warning",
        kind: "unreachable",
        file: rule.file,
        line: rule.line,
        rule: rule.id,
        message: `rule "${rule.id}" can never match: its condition "${rule.when!.source}" is never true`,
      });
      continue;
    }
    for (const key of KEYS) {
      const patterns = rule.match[key];
      if (!patterns) continue;
      const impossible = patterns.filter((p) => impossibleName(key, p));
      if (impossible.length && impossible.length < patterns.length) {
        findings.push({
          severity: "warning",
          kind: "unreachable",
          file: rule.file,
          line: rule.line,
          rule: rule.id,
          message: `rule "${rule.id}": ${key} ${
            impossible.map((p) => `"${p}"`).join(", ")
          } can never match, since it is not a valid ${key} name (names look like "${EXAMPLE[key]}")`,
        });
      }
      if (impossible.length === patterns.length) {
        unreachable.add(rule.id);
        findings.push({
          severity: "warning",
          kind: "unreachable",
          file: rule.file,
          line: rule.line,
          rule: rule.id,
          message: `rule "${rule.id}" can never match: ${key} ${
            impossible.map((p) => `"${p}"`).join(", ")
          } is not a valid ${key} name (names look like "${EXAMPLE[key]}")`,
        });
        break;
      }
    }
  }

  if (effects) {
    const names = [...new Set(effects.map((e) => e.name))].sort();
    for (const rule of rules) {
      if (unreachable.has(rule.id) || !rule.match.effect) continue;
      const unknown = rule.match.effect.filter((p) =>
        !impossibleName("effect", p) && !names.some((n) => glob(p).test(n))
      );
      for (const p of unknown) {
        const near = names.filter((n) => distance(n, p) <= 2);
        findings.push({
          severity: "warning",
          kind: "unknown-effect",
          file: rule.file,
          line: rule.line,
          rule: rule.id,
          message: `rule "${rule.id}": effect "${p}" matches no effect an installed plugin declares${
            near.length ? ` (did you mean ${near.map((n) => `"${n}"`).join(" or ")}?)` : ""
          }`,
        });
      }
      if (!rule.match.effect.some((p) => names.some((n) => glob(p).test(n)))) continue;
      if (!effects.some((e) => matchesInstalled(rule, e))) {
        unreachable.add(rule.id);
        const named = effects.filter((e) => anyMatch(rule.match.effect, e.name));
        findings.push({
          severity: "warning",
          kind: "unreachable",
          file: rule.file,
          line: rule.line,
          rule: rule.id,
          message: `rule "${rule.id}" can never match an installed effect: ${
            named.map((e) => `${e.name} is ${e.class} from plugin ${e.plugin}`).join(", ")
          }, but the rule asks for ${
            [
              rule.match.class ? `class ${rule.match.class.join("|")}` : "",
              rule.match.plugin ? `plugin ${rule.match.plugin.join("|")}` : "",
            ].filter(Boolean).join(" and ")
          }`,
        });
      }
    }
  }

  // Rules another rule always beats.
  for (const [ri, r] of rules.entries()) {
    if (unreachable.has(r.id)) continue;
    for (const [si, s] of rules.entries()) {
      if (si === ri || unreachable.has(s.id)) continue;
      const rRank = highestRank(r);
      const wins = RANK[s.decision] > rRank || (RANK[s.decision] === rRank && si < ri);
      if (!wins || (hasCounters(r) && s.decision !== "deny")) continue;
      const sCond = conditionOf(s);
      if (sCond !== undefined && sCond !== conditionOf(r)) continue;
      const people = keyContains(s.match.agent, r.match.agent) && keyContains(s.match.workflow, r.match.workflow);
      if (!people) continue;
      const statically = keyContains(s.match.effect, r.match.effect) &&
        keyContains(s.match.plugin, r.match.plugin) && classContains(s.match.class, r.match.class);
      let installed: InstalledEffect[] | undefined;
      if (!statically && effects) {
        const mine = effects.filter((e) => matchesInstalled(r, e));
        if (mine.length && mine.every((e) => matchesInstalled(s, e))) installed = mine;
      }
      if (!statically && !installed) continue;
      const rWord = rRank > RANK[r.decision]
        ? `${decisionWord(r.decision)} (or ${decisionWord(r.limits!.quietHours!.decision)} in quiet hours)`
        : decisionWord(r.decision);
      const why = RANK[s.decision] > rRank
        ? `it decides ${decisionWord(s.decision)}, which beats ${rWord}`
        : `it decides ${decisionWord(s.decision)} too and comes first`;
      const scope = statically
        ? "matches every request this rule matches"
        : `matches every installed effect this rule matches (${
          [...new Set(installed!.map((e) => e.name))].join(", ")
        })`;
      findings.push({
        severity: "warning",
        kind: "shadowed",
        file: r.file,
        line: r.line,
        rule: r.id,
        by: s.id,
        message: `rule "${r.id}" never decides: rule "${s.id}" (${where(s)}) ${scope}, and ${why}`,
      });
      break;
    }
  }
  return findings.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line);
};

/**
 * Check policy files given as path → text, the way Keel loads them (in name
 * order): every file's first parse or type error, every duplicate rule id,
 * conflicting defaults, then the lint of the combined set if nothing failed.
 */
export const checkPolicyFiles = (
  files: ReadonlyArray<{ readonly file: string; readonly text: string }>,
  effects?: ReadonlyArray<InstalledEffect>,
): Effect.Effect<PolicyCheck> =>
  Effect.gen(function* () {
    const findings: PolicyFinding[] = [];
    const rules: Rule[] = [];
    let defaultOf: { decision: Decision; file: string } | undefined;
    // In the engine's order (code units, as `policyFileNames`), so "first rule wins" means the same rule.
    const sorted = [...files].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
    for (const { file, text } of sorted) {
      const parsed = yield* Effect.result(parsePolicyFile(file, text));
      if (parsed._tag === "Failure") {
        const error: PolicyFileError = parsed.failure;
        const details = (error.details ?? {}) as { line?: number };
        // The finding carries file and line itself; the message keeps only the reason.
        const message = error.message.replace(/^Policy file "[^"]*"(?: line \d+)?: /, "");
        findings.push({ severity: "error", kind: "parse", file, line: details.line ?? 1, message });
        continue;
      }
      for (const rule of parsed.success.rules) {
        const twin = rules.find((r) => r.id === rule.id);
        if (twin) {
          findings.push({
            severity: "error",
            kind: "duplicate-id",
            file,
            line: rule.line,
            rule: rule.id,
            message: `rule id "${rule.id}" is already used at ${where(twin)}`,
          });
          continue;
        }
        rules.push(rule);
      }
      const d = parsed.success.defaultDecision;
      if (d) {
        if (defaultOf && defaultOf.decision !== d) {
          findings.push({
            severity: "error",
            kind: "conflicting-default",
            file,
            line: 1,
            message: `"default: ${d}" conflicts with "default: ${defaultOf.decision}" in "${defaultOf.file}"`,
          });
        } else defaultOf = { decision: d, file };
      }
    }
    if (!findings.length) findings.push(...lintPolicySet({ rules }, effects));
    return { files: sorted.map((f) => f.file), rules: rules.length, findings, checkedAgainstInstalled: !!effects };
  });

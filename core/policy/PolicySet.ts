/**
 * @module
 * Policy files: YAML in `policies/`, parsed into rules with their source
 * positions. A file that does not parse or type-check is refused with file,
 * line and reason, so Keel never starts with a policy it misread.
 */
import { Effect } from "effect";
import { isMap, isSeq, LineCounter, parseDocument } from "yaml";
import { PolicyFileError } from "../errors/mod.ts";
import { EFFECT_CLASSES, type EffectClass, sha256Hex } from "../manifest/mod.ts";

/** What a rule decides. Most restrictive wins: deny > approve > allow. */
export type Decision = "allow" | "approve" | "deny";

/** How a human gate looks: who approves, for how long, what they are shown. */
export interface ApprovalSpec {
  readonly approver: string;
  readonly expiresInMs: number;
  readonly message?: string;
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
  readonly decision: Decision;
  readonly approval?: ApprovalSpec;
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
const DEFAULT_APPROVAL_MS = 7 * 24 * 3600_000;

/** Parse a duration like `90s`, `15m`, `72h`, `7d`. */
export const parseDuration = (text: string): number | undefined => {
  const m = /^(\d+)(s|m|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] as "s"];
};

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
          rules.push(yield* parseRule(file, item, lineOf(item), fail, lineOf));
        }
      } else {
        return yield* fail(line, `unknown key "${key}" (expected "rules" or "default")`);
      }
    }
    return { rules, defaultDecision };
  });

const parseRule = (
  file: string,
  node: unknown,
  line: number,
  fail: (line: number, why: string) => PolicyFileError,
  lineOf: (node: unknown) => number,
): Effect.Effect<Rule, PolicyFileError> =>
  Effect.gen(function* () {
    if (!isMap(node)) return yield* fail(line, "a rule must be a mapping");
    const value = node.toJSON() as Record<string, unknown>;
    const at = (key: string) => lineOf(node.get(key, true) ?? node);
    // The line of `parent.key` (e.g. `match.class`), so errors point at the offending entry.
    const atIn = (parent: string, key: string) => {
      const p = node.get(parent, true);
      return isMap(p) ? lineOf(p.get(key, true) ?? p) : at(parent);
    };
    const allowed = ["id", "description", "match", "decision", "approval"];
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
      const expires = a.expires === undefined ? DEFAULT_APPROVAL_MS : parseDuration(String(a.expires));
      if (expires === undefined) {
        return yield* fail(
          atIn("approval", "expires"),
          `rule "${value.id}": approval "expires" must look like 30m, 72h or 7d`,
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
    return {
      id: value.id,
      description: typeof value.description === "string" ? value.description : undefined,
      file,
      line,
      match: match as Rule["match"],
      decision: value.decision as Decision,
      approval,
    };
  });

/** Load every `*.yaml`/`*.yml` file in a folder into one policy set. */
export const loadPolicySet = (dir: string): Effect.Effect<PolicySet, PolicyFileError> =>
  Effect.gen(function* () {
    const names = yield* Effect.try({
      try: () =>
        [...Deno.readDirSync(dir)].filter((e) => e.isFile && /\.ya?ml$/.test(e.name)).map((e) => e.name).sort(),
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

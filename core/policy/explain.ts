/**
 * @module
 * `keel policy explain`: which rule decides one effect request and why.
 * Lists every rule that matches (each tested by the engine itself, on a set
 * holding only that rule, so conditions on args and context count exactly
 * as they do at the Gateway), the winner the engine picks from the whole
 * set, and the fallback that applies when nothing matches.
 */
import { evaluate, failClosed, type PolicyDecision, type PolicyRequest } from "./Policy.ts";
import type { Decision, PolicySet, Rule } from "./PolicySet.ts";
import { matchKeysMatch } from "./lint.ts";

/** One rule that matches the request. */
export interface MatchingRule {
  readonly id: string;
  readonly decision: Decision;
  readonly file: string;
  readonly line: number;
  readonly description?: string;
  /** Whether this rule is the one that decides. */
  readonly decides: boolean;
}

/** The answer of `explain`. */
export interface PolicyExplanation {
  readonly request: PolicyRequest;
  readonly policyHash: string;
  readonly files: ReadonlyArray<string>;
  /** The engine's decision on the whole set. */
  readonly decision: PolicyDecision;
  /** Every matching rule, in set order. */
  readonly matches: ReadonlyArray<MatchingRule>;
  /** What decides when no rule matches a request of this class. */
  readonly fallback: { readonly rule: string; readonly decision: Decision; readonly reason: string };
}

/** A set holding only `rules`, with everything else of `set` kept. */
const withRules = (set: PolicySet, rules: ReadonlyArray<Rule>): PolicySet => ({ ...set, rules });

/** Evaluate like `Policy.decide`: anything that throws is a `fail-closed` deny. */
export const evaluateSafely = (set: PolicySet, request: PolicyRequest): PolicyDecision => {
  try {
    return evaluate(set, request);
  } catch (error) {
    return failClosed(set.hash, `policy evaluation failed: ${String(error)}`);
  }
};

/** Explain one request against a policy set. */
export const explainPolicy = (set: PolicySet, request: PolicyRequest): PolicyExplanation => {
  const decision = evaluateSafely(set, request);
  const matches: MatchingRule[] = [];
  for (const rule of set.rules) {
    // The engine has the last word (conditions, quiet hours); the filter only spares it rules that cannot match.
    if (!matchKeysMatch(rule, request)) continue;
    const alone = evaluateSafely(withRules(set, [rule]), request);
    if (alone.rule !== rule.id) continue;
    matches.push({
      id: rule.id,
      decision: alone.decision,
      file: rule.file,
      line: rule.line,
      description: rule.description,
      decides: rule.id === decision.rule,
    });
  }
  const fallback = evaluateSafely(withRules(set, []), request);
  return {
    request,
    policyHash: set.hash,
    files: set.files,
    decision,
    matches,
    fallback: { rule: fallback.rule, decision: fallback.decision, reason: fallback.reason },
  };
};

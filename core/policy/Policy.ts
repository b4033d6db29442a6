/**
 * @module
 * The policy engine: given an effect request, which rule decides and what it
 * decides. Most restrictive wins (deny > approve > allow); with no matching
 * rule, `irreversible` and `financial` effects are denied and the others get
 * the policy set's default. Evaluation is total and fails closed: if anything
 * throws, the answer is deny.
 */
import { Context, Effect, Layer, Ref } from "effect";
import type { PolicyFileError } from "../errors/mod.ts";
import { KeelConfig } from "../config/mod.ts";
import type { EffectClass } from "../manifest/mod.ts";
import { type ApprovalSpec, type Decision, loadPolicySet, type PolicySet, type Rule } from "./PolicySet.ts";

/** Everything a rule can match on. */
export interface PolicyRequest {
  readonly effect: string;
  readonly effectClass: EffectClass;
  readonly plugin: string;
  readonly agent?: string;
  readonly workflow?: string;
}

/** The engine's answer, with what it was based on. */
export interface PolicyDecision {
  readonly decision: Decision;
  /** The deciding rule's id, or `default` / `default-deny-<class>` / `fail-closed`. */
  readonly rule: string;
  readonly ruleSource?: string;
  readonly policyHash: string;
  readonly reason: string;
  readonly approval?: ApprovalSpec;
}

const RANK: Record<Decision, number> = { allow: 0, approve: 1, deny: 2 };
const globCache = new Map<string, RegExp>();
const glob = (pattern: string): RegExp => {
  let re = globCache.get(pattern);
  if (!re) {
    re = new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*")}$`);
    globCache.set(pattern, re);
  }
  return re;
};

const matches = (rule: Rule, request: PolicyRequest): boolean => {
  const m = rule.match;
  const any = (patterns: ReadonlyArray<string> | undefined, value: string | undefined) =>
    patterns === undefined || (value !== undefined && patterns.some((p) => glob(p).test(value)));
  return any(m.effect, request.effect) && any(m.plugin, request.plugin) && any(m.agent, request.agent) &&
    any(m.workflow, request.workflow) && (m.class === undefined || m.class.includes(request.effectClass));
};

/** Decide one request against a policy set (pure; throws only on a bug, which callers turn into deny). */
export const evaluate = (set: PolicySet, request: PolicyRequest): PolicyDecision => {
  let best: Rule | undefined;
  for (const rule of set.rules) {
    if (matches(rule, request) && (best === undefined || RANK[rule.decision] > RANK[best.decision])) best = rule;
  }
  if (best) {
    return {
      decision: best.decision,
      rule: best.id,
      ruleSource: `${best.file}:${best.line}`,
      policyHash: set.hash,
      reason: best.description ?? `rule "${best.id}" matched`,
      approval: best.approval,
    };
  }
  if (request.effectClass === "irreversible" || request.effectClass === "financial") {
    return {
      decision: "deny",
      rule: `default-deny-${request.effectClass}`,
      policyHash: set.hash,
      reason: `no rule allows this ${request.effectClass} effect`,
    };
  }
  return { decision: set.defaultDecision, rule: "default", policyHash: set.hash, reason: "no rule matched" };
};

/** The policy engine service. */
export class Policy extends Context.Service<Policy, {
  /** Decide a request; never fails: errors become an audited deny. */
  decide(request: PolicyRequest): Effect.Effect<PolicyDecision>;
  /** The policy set in force. */
  readonly current: Effect.Effect<PolicySet>;
  /** Re-read the policy folder; on error the old set stays in force. */
  readonly reload: Effect.Effect<PolicySet, PolicyFileError>;
}>()("keel/policy/Policy") {
  /** Loads `config.policiesDir`; a bad file fails the layer, so Keel refuses to start. */
  static readonly layer = Layer.effect(
    Policy,
    Effect.gen(function* () {
      const config = yield* KeelConfig;
      const ref = yield* Ref.make(yield* loadPolicySet(config.policiesDir));
      return Policy.of({
        decide: (request) =>
          Effect.map(Ref.get(ref), (set) => {
            try {
              return evaluate(set, request);
            } catch (error) {
              return {
                decision: "deny",
                rule: "fail-closed",
                policyHash: set.hash,
                reason: `policy evaluation failed: ${String(error)}`,
              } satisfies PolicyDecision;
            }
          }),
        current: Ref.get(ref),
        reload: Effect.tap(loadPolicySet(config.policiesDir), (set) => Ref.set(ref, set)),
      });
    }),
  );
}

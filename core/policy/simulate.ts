/**
 * @module
 * `keel policy simulate`: replay past effect requests (the decision log the
 * Gateway keeps) against a candidate policy set and say what would change —
 * allowed → gated, gated → denied, and so on — before the candidate is put
 * in force. "Before" is the decision that was actually made at the time;
 * "after" is the candidate's, from the same engine the Gateway uses, with the
 * request's args and the context it was decided in (its time, so quiet hours
 * replay too). Limits that depend on counters (rate, budget) are not
 * replayed: a past request is judged by its rules alone, the rate and budget
 * limits the candidate would count are listed, and requests a counter
 * refused at the time are counted apart (`limitedBefore`). A request the
 * Gateway checked more than once (a gated one is checked again when its run
 * resumes) is replayed once, with the first decision it met.
 */
import { Effect } from "effect";
import { InvalidInputError, PolicyFileError } from "../errors/mod.ts";
import { createHash } from "node:crypto";
import { canonicalJson, type EffectClass } from "../manifest/mod.ts";
import { evaluateSafely } from "./explain.ts";
import { limitName, type PolicyDecision, type PolicyRequest } from "./Policy.ts";
import { type Decision, loadPolicySet, type PolicySet } from "./PolicySet.ts";

/**
 * One policy decision on an effect request, as the Gateway logs it in the journal, so a candidate policy set can be
 * replayed against history.
 */
export interface DecisionRecord {
  readonly at: string;
  readonly runId: string;
  readonly seq: number;
  readonly effect: string;
  readonly effectClass: string;
  readonly plugin: string;
  readonly agent: string;
  readonly workflow: string;
  readonly args: unknown;
  readonly decision: Decision;
  readonly rule: string;
  readonly policyHash: string;
  /** The limit that decided, when one did (`rate 10/1h`, `budget usdPerDay 5`, `quietHours …`). */
  readonly limit?: string;
  /** The request context the policy saw (`now`, `hour`, `weekday`, `runId` …), so a replay can see it too. */
  readonly context?: Readonly<Record<string, unknown>>;
  /**
   * Set when the rule's gate was answered with a denial: `decision` stays the rule's (`approve`); the approver,
   * not the policy, refused the effect.
   */
  readonly approval?: { readonly id: string; readonly status: "denied" };
}

/** A past effect request to replay: a decision-log record. */
export type PastRequest = DecisionRecord;

/** How an operator reads a decision: allowed, gated (waits for approval) or denied. */
export type Outcome = "allowed" | "gated" | "denied";

/** What each decision means for the request. */
export const OUTCOME: Readonly<Record<Decision, Outcome>> = { allow: "allowed", approve: "gated", deny: "denied" };

/** Every way a decision can change, in the order reports list them. */
export const TRANSITIONS = [
  "allowed_to_gated",
  "allowed_to_denied",
  "gated_to_allowed",
  "gated_to_denied",
  "denied_to_allowed",
  "denied_to_gated",
] as const;

/** One way a decision can change. */
export type Transition = (typeof TRANSITIONS)[number];

/** One past request, replayed. */
export interface SimulatedRequest {
  readonly at: string;
  readonly runId: string;
  readonly seq: number;
  readonly effect: string;
  readonly effectClass: string;
  readonly plugin: string;
  readonly agent: string;
  readonly workflow: string;
  /** First 16 hex digits of the SHA-256 of the args' canonical JSON. */
  readonly argsDigest: string;
  readonly before: {
    readonly decision: Decision;
    readonly rule: string;
    readonly policyHash: string;
    readonly limit?: string;
  };
  readonly after: {
    readonly decision: Decision;
    readonly rule: string;
    readonly ruleSource?: string;
    /** Quiet hours, when they decided. */
    readonly limit?: string;
    /** Rate and budget limits the candidate would count for this request (not replayed). */
    readonly limits?: ReadonlyArray<string>;
  };
  /** `allowed_to_gated` and so on, or `unchanged`. */
  readonly transition: Transition | "unchanged";
}

/** The outcome of a replay. */
export interface SimulationResult {
  readonly policyHash: string;
  readonly files: ReadonlyArray<string>;
  readonly rules: number;
  readonly summary: {
    /** Distinct past requests (by run, step, effect and args), however many times the Gateway checked each. */
    readonly total: number;
    readonly unchanged: number;
    readonly changed: number;
    readonly transitions: Readonly<Record<Transition, number>>;
    /** Requests a rate or budget counter refused at the time; their "after" ignores counters. */
    readonly limitedBefore: number;
    /**
     * Requests the gate refused as `fail-closed` at the time (an engine failure, args too deep to inspect): no rule
     * decided them, and their args may not be kept, so they are not replayed and count as unchanged.
     */
    readonly failedClosedBefore: number;
  };
  /** The policy hashes that were in force across the replayed requests. */
  readonly pastPolicies: ReadonlyArray<string>;
  /** Replayed requests, oldest first (only the changed ones with `changedOnly`). */
  readonly requests: ReadonlyArray<SimulatedRequest>;
}

/** Largest candidate the API accepts: 100 files, 1 MB of text. */
export const CANDIDATE_LIMITS = { files: 100, bytes: 1024 * 1024 } as const;
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*\.ya?ml$/;
/** The rule of a deny the gate made because it could not decide. */
const FAIL_CLOSED = "fail-closed";
/** Limit names of counters (as opposed to quiet hours, which replay). */
const COUNTED = /^(rate|budget) /;

/**
 * A policy set from file texts (name → YAML), loaded exactly as Keel loads
 * its policy folder: written to a private temporary folder, read with
 * `loadPolicySet`, and the folder removed. Errors name the file as given.
 */
export const policySetFromFiles = (
  files: Readonly<Record<string, string>>,
): Effect.Effect<PolicySet, PolicyFileError | InvalidInputError> =>
  Effect.gen(function* () {
    const entries = Object.entries(files);
    if (!entries.length) {
      return yield* new InvalidInputError({ message: "A candidate policy set needs at least one file" });
    }
    if (entries.length > CANDIDATE_LIMITS.files) {
      return yield* new InvalidInputError({
        message: `A candidate policy set has at most ${CANDIDATE_LIMITS.files} files: got ${entries.length}`,
      });
    }
    let bytes = 0;
    for (const [name, text] of entries) {
      if (!FILE_NAME.test(name)) {
        return yield* new InvalidInputError({
          message: `Policy file name "${name}" must be a plain file name ending in .yaml or .yml`,
          details: { file: name },
        });
      }
      if (typeof text !== "string") {
        return yield* new InvalidInputError({ message: `Policy file "${name}" must be given as text` });
      }
      bytes += new TextEncoder().encode(text).length;
    }
    if (bytes > CANDIDATE_LIMITS.bytes) {
      return yield* new InvalidInputError({
        message: `A candidate policy set is at most ${CANDIDATE_LIMITS.bytes} bytes: got ${bytes}`,
      });
    }
    return yield* Effect.acquireUseRelease(
      Effect.tryPromise({
        try: () => Deno.makeTempDir({ prefix: "keel-candidate-" }),
        catch: (cause) => new PolicyFileError({ message: `Cannot stage the candidate policy: ${String(cause)}` }),
      }),
      (dir) =>
        Effect.gen(function* () {
          yield* Effect.tryPromise({
            try: () => Promise.all(entries.map(([name, text]) => Deno.writeTextFile(`${dir}/${name}`, text))),
            catch: (cause) => new PolicyFileError({ message: `Cannot stage the candidate policy: ${String(cause)}` }),
          });
          const strip = (s: string) => s.replaceAll(`${dir}/`, "");
          const set = yield* Effect.mapError(loadPolicySet(dir), (error) => {
            const details = error.details as { file?: string } | undefined;
            return new PolicyFileError({
              message: strip(error.message),
              details: details && typeof details === "object"
                ? { ...details, ...(details.file ? { file: strip(details.file) } : {}) }
                : details,
            });
          });
          return { ...set, rules: set.rules.map((r) => ({ ...r, file: strip(r.file) })) };
        }),
      (dir) => Effect.promise(() => Deno.remove(dir, { recursive: true }).catch(() => {})),
    );
  });

/** Replay past requests against a candidate set: per request before/after, and how many moved where. */
export const simulatePolicy = (
  candidate: PolicySet,
  history: ReadonlyArray<PastRequest>,
  options: { readonly changedOnly?: boolean } = {},
): Effect.Effect<SimulationResult> =>
  Effect.sync(() => {
    const transitions = Object.fromEntries(TRANSITIONS.map((t) => [t, 0])) as Record<Transition, number>;
    const requests: SimulatedRequest[] = [];
    const pastPolicies = new Set<string>();
    // One request per run, step, effect and args: the Gateway logs a decision each time it checks a request, and it
    // checks a gated one again when its run resumes (pending, approved or denied, or under a new policy). The first
    // decision is the one the request met when it was made, which is what a candidate would have changed: had the
    // candidate allowed or denied it there, the later checks would never have happened.
    const requestsOf = new Map<string, { past: PastRequest; argsDigest: string; limited: boolean }>();
    for (const past of history) {
      pastPolicies.add(past.policyHash);
      const argsDigest = createHash("sha256").update(canonicalJson(past.args ?? null)).digest("hex").slice(0, 16);
      const key = JSON.stringify([past.runId, past.seq, past.effect, argsDigest]);
      const limited = past.limit !== undefined && COUNTED.test(past.limit);
      const seen = requestsOf.get(key);
      if (!seen) requestsOf.set(key, { past, argsDigest, limited });
      // A counter that refused it at a later check (after its approval, say) still refused it.
      else if (limited) seen.limited = true;
    }
    let unchanged = 0;
    let limitedBefore = 0;
    let failedClosedBefore = 0;
    for (const { past, argsDigest, limited } of requestsOf.values()) {
      // The args go along, so `when:` conditions judge the request as the Gateway did.
      const request: PolicyRequest = {
        effect: past.effect,
        effectClass: past.effectClass as EffectClass,
        plugin: past.plugin,
        agent: past.agent,
        workflow: past.workflow,
        args: past.args,
        ...(past.context ? { context: past.context } : {}),
      };
      const failedClosed = past.rule === FAIL_CLOSED;
      if (failedClosed) failedClosedBefore++;
      const after: Pick<PolicyDecision, "decision" | "rule"> & Partial<PolicyDecision> = failedClosed
        ? { decision: past.decision, rule: past.rule }
        : evaluateSafely(candidate, request);
      if (limited) limitedBefore++;
      const from = OUTCOME[past.decision] ?? "denied";
      const to = OUTCOME[after.decision];
      const transition = from === to ? "unchanged" : `${from}_to_${to}` as Transition;
      if (transition === "unchanged") unchanged++;
      else transitions[transition]++;
      if (options.changedOnly && transition === "unchanged") continue;
      requests.push({
        at: past.at,
        runId: past.runId,
        seq: past.seq,
        effect: past.effect,
        effectClass: past.effectClass,
        plugin: past.plugin,
        agent: past.agent,
        workflow: past.workflow,
        argsDigest,
        before: {
          decision: past.decision,
          rule: past.rule,
          policyHash: past.policyHash,
          ...(past.limit ? { limit: past.limit } : {}),
        },
        after: {
          decision: after.decision,
          rule: after.rule,
          ...(after.ruleSource ? { ruleSource: after.ruleSource } : {}),
          ...(after.limit ? { limit: after.limit } : {}),
          ...(after.limits?.length ? { limits: after.limits.map((l) => `${limitName(l)} (rule ${l.rule})`) } : {}),
        },
        transition,
      });
    }
    return {
      policyHash: candidate.hash,
      files: candidate.files,
      rules: candidate.rules.length,
      summary: {
        total: requestsOf.size,
        unchanged,
        changed: requestsOf.size - unchanged,
        transitions,
        limitedBefore,
        failedClosedBefore,
      },
      pastPolicies: [...pastPolicies],
      requests,
    };
  });

/**
 * @module
 * Divergence: a replayed workflow asking, at a journal position, for another
 * call than the one recorded there (in whatever state: done, an intent whose
 * outcome is unknown, a gate). Every check of a workflow call at its position
 * goes through `divergence` (or `divergedAt`), so a divergence is known
 * wherever it travels (`isDivergence`): the run it happens in fails, even if
 * the workflow catches the error.
 */
import { InvalidInputError } from "../errors/mod.ts";
import type { StepRecord } from "./Journal.ts";

/** Every divergence error made, to tell them from other invalid input however they are passed on. */
const divergences = new WeakSet<object>();

/** The divergence error for the call at `seq`; `what` says what was recorded and what was asked. */
export const divergedAt = (seq: number, what: string): InvalidInputError => {
  const error = new InvalidInputError({
    message: `Workflow diverged from its journal at step ${seq}: ${what}`,
    // `diverged` tells the workflow's SDK too: it fails every later call, and the result, with this error.
    details: { seq, diverged: true },
  });
  divergences.add(error);
  return error;
};

/** The divergence error if `prior` (the step at `seq`) is not a `kind` step named `name`, else undefined. */
export const divergence = (
  prior: StepRecord | undefined,
  seq: number,
  kind: StepRecord["kind"],
  name: string,
): InvalidInputError | undefined =>
  prior && (prior.kind !== kind || prior.name !== name)
    ? divergedAt(seq, `recorded ${prior.kind} "${prior.name}", code asked for ${kind} "${name}"`)
    : undefined;

/** Whether `error` is a divergence made by `divergedAt`. */
export const isDivergence = (error: unknown): error is InvalidInputError =>
  typeof error === "object" && error !== null && divergences.has(error);

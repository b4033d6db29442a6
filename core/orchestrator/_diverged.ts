/**
 * @module
 * The one check every call a workflow makes goes through at its journal
 * position: the step recorded there (in whatever state: done, an intent
 * whose outcome is unknown, a gate) must be this call's, or the workflow
 * diverged. Private to `core/orchestrator`.
 */
import { InvalidInputError } from "../errors/mod.ts";
import type { StepRecord } from "../journal/mod.ts";

/** The divergence error if `prior` (the step at `seq`) is not a `kind` step named `name`, else undefined. */
export const divergence = (
  prior: StepRecord | undefined,
  seq: number,
  kind: StepRecord["kind"],
  name: string,
): InvalidInputError | undefined =>
  prior && (prior.kind !== kind || prior.name !== name)
    ? new InvalidInputError({
      message:
        `Workflow diverged from its journal at step ${seq}: recorded ${prior.kind} "${prior.name}", code asked for ${kind} "${name}"`,
      details: { seq },
    })
    : undefined;

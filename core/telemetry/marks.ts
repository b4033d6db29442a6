/**
 * @module
 * Opt-in timing marks on the approval path, from `decide` to the run's end, for the bench's W2 breakdown
 * (`tests/bench/workflows.ts`): where the time between a decision and a finished run goes. Off unless a
 * caller sets `pathMarks.at`; a mark is then one property read.
 */

/** The points marked, in the order a quickly resumed run passes them. */
export type PathMark =
  /** `Orchestrator.decide` was called. */
  | "decide"
  /** The workflow call that resumes the run was posted to its agent. */
  | "posted"
  /** The workflow's answer was handled by the host. */
  | "answered"
  /** The run's end was submitted to the grouped commit. */
  | "submitted"
  /** That commit is durable. */
  | "durable";

/** Set `at` to receive the marks (one caller at a time: the bench). */
export const pathMarks: { at?: (mark: PathMark) => void } = {};

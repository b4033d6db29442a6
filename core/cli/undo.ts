/**
 * @module
 * `keel undo RUN`: undo a finished or cancelled run through the running Keel
 * (`POST /api/runs/{id}/undo`) and say, effect by effect, what was undone.
 */
import { api, atMost, type Command, flagsOf, print, UsageError } from "./client.ts";

/** `keel undo RUN_ID [--json]`. */
export const undoCommand: Command = {
  summary: ["undo RUN_ID                   Undo a finished run: compensations, last first, then its memory"],
  help: `Usage: deno task keel undo RUN_ID [--json]

Runs the compensations its connectors declare (compensate) for the run's
completed effects, last first, through the Gateway: each is checked by policy,
journaled and audited like any effect. Then removes what the run wrote to
memory. Reads are skipped; an effect with no compensation is reported as not
undoable. Running it again sends nothing new; a compensation that needs an
approval waits for it: approve it, then run undo again; one that failed (the
policy refused it, the connector said it failed) is tried again.
Only a finished (succeeded, failed) or cancelled run can be undone.
Exits 1 when a compensation failed, 2 when one waits for an approval.`,
  async run(args) {
    const { values, positionals } = flagsOf(args, { json: { type: "boolean" } });
    const runId = positionals[0];
    if (!runId) throw new UsageError("undo needs a RUN_ID");
    atMost(positionals, 1, "undo");
    const report = await api("POST", `/api/runs/${encodeURIComponent(runId)}/undo`);
    // An undo that is not complete says so in its exit code too (scripts check it).
    Deno.exitCode = report.failed.length ? 1 : report.waiting.length ? 2 : 0;
    if (values.json) return print(report);
    for (const e of report.compensated) {
      console.log(
        `undone   step ${e.seq} ${e.effect} by ${e.compensation}${e.previously ? " (already, earlier)" : ""}`,
      );
    }
    for (const e of report.waiting) {
      console.log(`waiting  step ${e.seq} ${e.effect}: approve ${e.approvalId}, then run undo again`);
    }
    for (const e of report.failed) {
      console.log(`failed   step ${e.seq} ${e.effect}: ${e.error?.message ?? e.reason}`);
    }
    for (const e of report.skipped) console.log(`skipped  step ${e.seq} ${e.effect}: ${e.reason}`);
    const m = report.memory;
    console.log(
      `memory   ${m.removed.length} removed, ${m.kept.length} kept; records ${m.records.removed.length} removed, ${m.records.restored.length} restored`,
    );
  },
};

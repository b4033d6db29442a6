/**
 * @module
 * `keel replay RUN [--version V]`: run a finished run's workflow again with
 * the current (or the given) agent version against its journal, performing
 * nothing, and print where the code no longer matches the history. Exit 0
 * when it matches, 1 when anything diverged.
 */
import { api, atMost, type Command, flagsOf, print, UsageError } from "./client.ts";

const show = (value: unknown): string => JSON.stringify(value) ?? "nothing";

/** `keel replay RUN [--version V] [--json]`. */
export const replayCommand: Command = {
  summary: ["replay RUN [--version V]      Check a finished run against the current code (performs nothing)"],
  help: `Usage: deno task keel replay RUN_ID [--version VERSION] [--json]

Execute the finished run's workflow again with the agent version that is
active now (or VERSION), answering every call from the run's journal: no
effect is performed, no model or memory is asked, nothing is written. Prints
every divergence (a different call, different effect arguments, a call past
the end of the journal, a different result). Exits 0 when the code matches
the journal, 1 when it does not.`,
  async run(args) {
    const { values, positionals } = flagsOf(args, { version: { type: "string" }, json: { type: "boolean" } });
    const runId = positionals[0];
    if (!runId) throw new UsageError("replay needs a RUN_ID");
    atMost(positionals, 1, "replay");
    const report = await api(
      "POST",
      `/api/runs/${encodeURIComponent(runId)}/replay`,
      values.version ? { version: values.version } : {},
    );
    if (values.json) print(report);
    else {
      console.log(
        `Replayed ${report.runId} (${report.workflow}, recorded with ${report.agent} ${report.recordedVersion}) ` +
          `with ${report.agentVersion}: ${report.steps} step(s) in the journal`,
      );
      if (!report.divergences.length) console.log("No divergence: the code does what the journal recorded");
      for (const d of report.divergences) {
        console.log(`${d.seq === undefined ? "result" : `step ${d.seq}`}: ${d.message}`);
        console.log(`  - recorded: ${show(d.expected)}`);
        console.log(`  + replayed: ${show(d.actual)}`);
      }
    }
    if (report.divergences.length) Deno.exitCode = 1;
  },
};

/**
 * @module
 * `keel schedules`: the cron schedules of active workflows and when each
 * fires next.
 */
import { api, atMost, type Command, flagsOf, print } from "./client.ts";

/** `keel schedules [--json]`. */
export const schedulesCommand: Command = {
  summary: ["schedules                     Cron schedules of workflows and when they fire next"],
  help: `Usage: deno task keel schedules [--json]

List every cron schedule declared by an active workflow ("schedule" in its
manifest): the expression, its time zone, when it fires next and the last run
it started. Fires missed while Keel was down are caught up once at start (the
most recent missed slot only).`,
  async run(args) {
    const { values, positionals } = flagsOf(args, { json: { type: "boolean" } });
    atMost(positionals, 0, "schedules");
    const { schedules } = await api("GET", "/api/schedules");
    if (values.json) return print(schedules);
    if (!schedules.length) return console.log("No schedules");
    for (const s of schedules) {
      console.log(`${s.workflow}  "${s.cron}" ${s.tz}  next ${s.nextFireAt}  (${s.plugin} ${s.version})`);
      if (s.lastFireAt) console.log(`    last ${s.lastFireAt}: ${s.lastRunId}`);
    }
  },
};

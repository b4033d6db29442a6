/**
 * @module
 * Runs, approvals and the audit trail from the command line: `run`, `runs`
 * (list and show), `cancel`, `approvals`, `approve`, `deny`, `audit`.
 */
import { MAX_DELAY_SECONDS } from "../config/mod.ts";
import { api, atMost, type Command, flagsOf, parseJson, print, UsageError } from "./client.ts";

/** `keel run WORKFLOW --input JSON [--wait [S]]`. */
export const runCommand: Command = {
  summary: ["run WORKFLOW --input JSON     Start a run (add --wait to wait for it)"],
  help: `Usage: deno task keel run WORKFLOW --input JSON [--wait [SECONDS]] [--delay SECONDS] [--priority 0-9]

Start a run of WORKFLOW with the given input. With --wait, wait (default 30 s)
until the run ends or pauses (for an approval, a timer or a child run), and
print it; the command then exits 1 if the run failed or was cancelled. --delay starts it no earlier than SECONDS from now (it waits in the
run queue); --priority (default 5) orders it among queued runs, 9 first.`,
  async run(args) {
    // `--wait` may stand alone (30 s) or take a number of seconds: a word after it is the next argument.
    const i = args.indexOf("--wait");
    if (i >= 0 && !/^\d+(\.\d+)?$/.test(args[i + 1] ?? "")) {
      args = [...args.slice(0, i + 1), "30", ...args.slice(i + 1)];
    }
    const { values, positionals } = flagsOf(args, {
      input: { type: "string" },
      wait: { type: "string" },
      delay: { type: "string" },
      priority: { type: "string" },
    });
    const workflow = positionals[0];
    if (!workflow) throw new UsageError("run needs a WORKFLOW name");
    const afterWait = i >= 0 ? args[i + 2] : undefined;
    if (positionals.length > 1 && afterWait !== undefined && positionals.slice(1).includes(afterWait)) {
      throw new UsageError(`--wait takes seconds from 1 to 300, or stands alone: got "${afterWait}"`);
    }
    if (positionals.length > 1) {
      throw new UsageError(`run takes one WORKFLOW name: got ${positionals.map((p) => `"${p}"`).join(", ")}`);
    }
    const input = parseJson("input", values.input) ?? {};
    const query = new URLSearchParams();
    if (values.wait !== undefined) {
      if (!/^\d+(\.\d+)?$/.test(values.wait) || Number(values.wait) <= 0 || Number(values.wait) > 300) {
        throw new UsageError(`--wait takes seconds from 1 to 300: got "${values.wait}"`);
      }
      query.set("wait", values.wait);
    }
    // Checked here too, so the message names the flag the operator typed (the API names its query).
    if (values.delay !== undefined) {
      if (!/^\d{1,12}(\.\d{1,6})?$/.test(values.delay) || Number(values.delay) > MAX_DELAY_SECONDS) {
        throw new UsageError(`--delay takes seconds from 0 to ${MAX_DELAY_SECONDS}: got "${values.delay}"`);
      }
      query.set("delay", values.delay);
    }
    if (values.priority !== undefined) {
      if (!/^\d$/.test(values.priority)) {
        throw new UsageError(`--priority takes an integer from 0 to 9: got "${values.priority}"`);
      }
      query.set("priority", values.priority);
    }
    const wait = values.wait !== undefined;
    const qs = query.size ? `?${query}` : "";
    const result = await api("POST", `/api/workflows/${encodeURIComponent(workflow)}/runs${qs}`, { input });
    if (!wait) return console.log(`Started ${result.runId} (${result.status})`);
    print(result);
    if (result.status === "waiting_approval") {
      console.log(`Waiting for approval: deno task keel approve ${result.waitingFor?.approvalId}`);
    }
    // Scripts check the exit code: a run that ended without succeeding fails the command.
    if (result.status === "failed" || result.status === "cancelled") Deno.exitCode = 1;
  },
};

/** One line of `keel runs`: id, status, workflow, when, and why it waits or failed. */
const runLine = (run: Record<string, any>): string => {
  const why = run.waitingFor?.reason ?? run.error?.message ?? run.cancelled?.reason;
  return `${run.id}  ${run.status.padEnd(16)}  ${run.workflow}  ${run.createdAt}${why ? `  ${why}` : ""}`;
};

/** `keel runs [--status S] [--workflow W] [--limit N] [--before ID]` and `keel runs show ID`. */
export const runsCommand: Command = {
  summary: [
    "runs [--status S]             List runs, newest first (--workflow, --limit, --before)",
    "runs show ID                  Show a run: status, steps, output, error",
  ],
  help: `Usage: deno task keel runs [list] [--status STATUS] [--workflow NAME] [--limit N] [--before RUN_ID]
       deno task keel runs show RUN_ID

List runs, newest first: id, status, workflow, when it was created, and why
it waits or failed. STATUS is one of queued, running, waiting_approval,
sleeping, waiting_child, succeeded, failed, cancelled. --limit (default 50,
at most 1000) caps the list; when there may be more, the last line says how
to go on (--before). \`runs show\` prints one run whole: steps, output, error.`,
  async run(args) {
    const { values, positionals } = flagsOf(args, {
      status: { type: "string" },
      workflow: { type: "string" },
      limit: { type: "string" },
      before: { type: "string" },
    });
    if (positionals[0] === "show") {
      if (!positionals[1]) throw new UsageError("Usage: runs show RUN_ID");
      atMost(positionals.slice(1), 1, "runs show");
      return print(await api("GET", `/api/runs/${encodeURIComponent(positionals[1])}`));
    }
    if (positionals[0] !== undefined && positionals[0] !== "list") {
      throw new UsageError(`runs takes "list" or "show RUN_ID": got "${positionals[0]}"`);
    }
    atMost(positionals.slice(1), 0, "runs list");
    // The API checks the values and says what is wrong with them.
    const q = new URLSearchParams();
    for (const name of ["status", "workflow", "limit", "before"] as const) {
      if (values[name] !== undefined) q.set(name, values[name]!);
    }
    const { runs, next } = await api("GET", `/api/runs${q.size ? `?${q}` : ""}`);
    if (!runs.length) {
      const none = values.status ? `No ${values.status} runs` : "No runs";
      // A long stretch without a match ends a page early: say that more may come.
      console.log(next ? `${none} among the runs read so far` : none);
    }
    for (const run of runs) console.log(runLine(run));
    if (next) {
      q.set("before", next);
      const flags = [...q].map(([k, v]) => `--${k} ${v}`).join(" ");
      console.log(`More: deno task keel runs ${flags}`);
    }
  },
};

/** `keel cancel RUN [--reason TEXT]`. */
export const cancelCommand: Command = {
  summary: ["cancel RUN [--reason TEXT]    Cancel a run that has not ended"],
  help: `Usage: deno task keel cancel RUN_ID [--reason TEXT]

Cancel a run: a queued, sleeping or waiting run stops at once; a running one
stops at its workflow's next call to Keel (steps already done stay done).
Its pending approvals are denied and its child runs cancelled. To reverse
what it already did, use \`keel undo RUN_ID\`.`,
  async run(args) {
    const { values, positionals } = flagsOf(args, { reason: { type: "string" } });
    if (!positionals[0]) throw new UsageError("cancel needs a RUN_ID");
    atMost(positionals, 1, "cancel");
    const run = await api("POST", `/api/runs/${encodeURIComponent(positionals[0])}/cancel`, {
      ...(values.reason ? { reason: values.reason } : {}),
    });
    // A running run stops at its workflow's next call to Keel; the cancel waited a while for that, and it is still on.
    console.log(
      run.status === "cancelled"
        ? `Run ${run.id} is cancelled`
        : `Cancel requested: run ${run.id} is still ${run.status}; it stops at its workflow's next call to Keel`,
    );
  },
};

/** `keel approvals [--status S]`. */
export const approvalsCommand: Command = {
  summary: ["approvals                     List pending approvals"],
  help: `Usage: deno task keel approvals [--status pending|approved|denied|used|expired|invalidated]

List approvals with the given status (default pending), oldest first. An
invalidated one was voided by Keel before it could be used (the policy or the
action changed since it was asked for); its line says why, and the run asks
again for what it needs now.`,
  async run(args) {
    const { values, positionals } = flagsOf(args, { status: { type: "string" } });
    atMost(positionals, 0, "approvals");
    const status = values.status ?? "pending";
    const { approvals } = await api("GET", `/api/approvals?status=${encodeURIComponent(status)}`);
    if (!approvals.length) return console.log(`No ${status} approvals`);
    for (const a of approvals) {
      console.log(`${a.id}  ${a.effect}  run ${a.runId}  rule ${a.rule}  expires ${a.expiresAt}`);
      console.log(`    args: ${JSON.stringify(a.args)}`);
      if (a.message) console.log(`    ${a.message}`);
      // Only pending and approved ones are ever voided: a decision on a voided one was an approval.
      if (a.decidedBy) {
        console.log(`    ${a.status === "denied" ? "denied" : "approved"} by ${a.decidedBy} at ${a.decidedAt}`);
      }
      if (a.reason) console.log(`    ${a.status} at ${a.invalidatedAt}: ${a.reason}`);
    }
  },
};

const decide = (verb: "approve" | "deny"): Command => ({
  summary: [
    verb === "approve"
      ? "approve ID [--note TEXT]      Approve a pending action; the run resumes"
      : "deny ID [--note TEXT]         Deny a pending action",
  ],
  help: verb === "approve"
    ? `Usage: deno task keel approve APPROVAL_ID [--note TEXT] [--resolution retry|delivered]

--resolution is needed when Keel could not tell whether an effect happened
(after a crash): "delivered" if it did, "retry" to perform it again.`
    : "Usage: deno task keel deny APPROVAL_ID [--note TEXT]",
  async run(args) {
    // Only approve takes --resolution: a deny never performs the effect, so the flag would be ignored silently.
    const { values, positionals } = flagsOf(
      args,
      verb === "approve" ? { note: { type: "string" }, resolution: { type: "string" } } : { note: { type: "string" } },
    );
    if (!positionals[0]) throw new UsageError(`${verb} needs an APPROVAL_ID`);
    atMost(positionals, 1, verb);
    const { approval } = await api("POST", `/api/approvals/${encodeURIComponent(positionals[0])}/${verb}`, {
      note: values.note,
      ...(verb === "approve" ? { resolution: values.resolution } : {}),
    });
    console.log(`${approval.id} ${approval.status} by ${approval.decidedBy}`);
  },
});

/** `keel approve ID`. */
export const approveCommand: Command = decide("approve");
/** `keel deny ID`. */
export const denyCommand: Command = decide("deny");

/** `keel audit [--run ID] [--limit N] [--verify [--anchor SEQ:HASH]]`. */
export const auditCommand: Command = {
  summary: ["audit [--run ID]              Show the audit trail (add --verify to check the hash chain)"],
  help: `Usage: deno task keel audit [--run RUN_ID] [--limit N]
       deno task keel audit --verify [--anchor SEQ:HASH]

Print the newest N audit events (default 1000, at most 10000), oldest first,
of the whole log or of one run. --verify checks the whole hash chain instead
and exits 1 if it is broken.

The chain shows an event changed or removed in its middle, but not its newest
events removed. --verify reports the head (the newest event, as "SEQ:HASH"):
keep it outside the data dir, and pass it later as --anchor. Then --verify
also checks that the event still has that hash, and exits 1 if it is gone or
differs (events up to it were removed, changed or written again).`,
  async run(args) {
    const { values, positionals } = flagsOf(args, {
      run: { type: "string" },
      limit: { type: "string" },
      verify: { type: "boolean" },
      anchor: { type: "string" },
    });
    atMost(positionals, 0, "audit");
    if (values.verify && (values.run !== undefined || values.limit !== undefined)) {
      throw new UsageError("audit --verify checks the whole chain: it takes no --run or --limit");
    }
    if (values.anchor !== undefined && !values.verify) throw new UsageError("--anchor goes with --verify");
    if (values.anchor !== undefined && !/^[1-9][0-9]{0,15}:[0-9a-fA-F]{64}$/.test(values.anchor)) {
      throw new UsageError('--anchor must be a head as "audit --verify" reports it: SEQ:HASH (64 hex digits)');
    }
    if (values.verify) {
      const q = values.anchor === undefined ? "" : `?anchor=${encodeURIComponent(values.anchor)}`;
      const report = await api("GET", `/api/audit/verify${q}`);
      // A broken chain or a lost anchor fails the command too: scripts check the exit code.
      if (!report.ok) Deno.exitCode = 1;
      print(report);
      // Only a whole chain's head is worth keeping: a broken one's would anchor what may be forged.
      if (report.ok && report.head) {
        console.error(`Head: ${report.head.seq}:${report.head.hash} (keep it; check it with --anchor)`);
      }
      return;
    }
    const q = new URLSearchParams();
    if (values.run) q.set("runId", values.run);
    if (values.limit) q.set("limit", values.limit);
    const { events } = await api("GET", `/api/audit?${q}`);
    for (const e of events) {
      console.log(`${e.seq}\t${e.at}\t${e.type}\t${e.actor}\t${e.runId ?? ""}\t${JSON.stringify(e.data)}`);
    }
  },
};

/**
 * @module
 * The client commands of the CLI, by name. `main.ts` adds `serve` and
 * dispatches; each command parses its own flags. Every command but `serve`
 * talks to a running Keel over its HTTP API.
 */
import type { Command } from "./client.ts";
import { pluginCommand } from "./plugin.ts";
import { memoryCommand } from "./memory.ts";
import { policyCommand } from "./policy.ts";
import { schedulesCommand } from "./schedules.ts";
import { hooksCommand } from "./hooks.ts";
import { replayCommand } from "./replay.ts";
import { undoCommand } from "./undo.ts";
import {
  approvalsCommand,
  approveCommand,
  auditCommand,
  cancelCommand,
  denyCommand,
  runCommand,
  runsCommand,
} from "./runs.ts";

export { type Command, UsageError } from "./client.ts";
export { dataDir, env, readToken } from "./client.ts";

/** Every client command, in the order `--help` lists them. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  plugin: pluginCommand,
  run: runCommand,
  runs: runsCommand,
  cancel: cancelCommand,
  approvals: approvalsCommand,
  approve: approveCommand,
  deny: denyCommand,
  audit: auditCommand,
  replay: replayCommand,
  undo: undoCommand,
  schedules: schedulesCommand,
  hooks: hooksCommand,
  memory: memoryCommand,
  policy: policyCommand,
};

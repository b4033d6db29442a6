/**
 * @module
 * Run the real CLI (`deno run -A main.ts …`) as a child process the way an
 * operator would, with stdin closed and every KEEL_* variable set so the
 * parent's environment cannot leak in (empty means unset to main.ts).
 */
import assert from "node:assert/strict";
import { ROOT } from "./keel.ts";

/** What one CLI invocation printed and how it exited. */
export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** A CLI runner working in its own scratch folder, removed when the test module unloads. */
export const cliRunner = async (prefix: string) => {
  const scratch = await Deno.makeTempDir({ prefix });
  globalThis.addEventListener("unload", () => Deno.removeSync(scratch, { recursive: true }));
  const keel = async (args: string[], env: Record<string, string> = {}): Promise<CliResult> => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}/main.ts`, ...args],
      cwd: scratch,
      env: {
        KEEL_DATA_DIR: `${scratch}/data`,
        KEEL_PORT: "",
        KEEL_HOST: "",
        KEEL_TOKEN: "",
        KEEL_POLICIES: "",
        KEEL_URL: "",
        NO_COLOR: "1",
        ...env,
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
  };
  /** Several invocations, two at a time (the machine has two cores). */
  const keelAll = async (runs: Array<[string[], Record<string, string>?]>): Promise<CliResult[]> => {
    const results: CliResult[] = [];
    for (let i = 0; i < runs.length; i += 2) {
      results.push(...await Promise.all(runs.slice(i, i + 2).map(([args, env]) => keel(args, env))));
    }
    return results;
  };
  return { scratch, keel, keelAll };
};

/** Exit 1 with one `error: …` line on stderr and nothing that looks like a stack trace. */
export const cleanError = (r: CliResult, message: RegExp | string): void => {
  assert.equal(r.code, 1, `exit 1: ${r.stdout}${r.stderr}`);
  const line = r.stderr.trim();
  assert.equal(line.split("\n").length, 1, `one line: ${r.stderr}`);
  if (typeof message === "string") assert.equal(line, message);
  else assert.match(line, message);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack frames");
  assert.doesNotMatch(r.stderr, /Uncaught|Stack backtrace/);
};

/**
 * @module
 * `keel plugin new NAME --kind connector|agent [--dir DIR]`: write a new
 * plugin folder that installs and passes its own test as it is: a
 * `plugin.json` asking for no permissions with one sample effect (connector)
 * or workflow (agent), a `mod.ts` written with the typed SDK helpers, a
 * `mod_test.ts` that installs it into a throw-away Keel and calls it, and a
 * `README.md`. It never overwrites: an existing folder is refused, and every
 * file is created new. Imports in the generated files are relative paths to
 * this Keel checkout, so the folder may live anywhere.
 */
import { relative, resolve } from "node:path";
import { type Command, flagsOf, UsageError } from "./client.ts";
import { scaffoldFiles } from "./_templates.ts";

/** What `scaffoldPlugin` needs. */
export interface ScaffoldOptions {
  readonly name: string;
  readonly kind: "connector" | "agent";
  /** Folder to create the plugin folder in; default `plugins/` (connector) or `agents/` (agent). */
  readonly dir?: string;
  /** Keel's source root (for the generated imports); default: this checkout. */
  readonly root?: string;
}

/** The plugin folder written and its files, relative to it. */
export interface Scaffolded {
  readonly path: string;
  readonly files: ReadonlyArray<string>;
  /** The sample effect (connector) or workflow (agent) it declares. */
  readonly sample: string;
}

/** Plugin names `plugin.json` accepts, kept short enough for the sample workflow's name. */
const NAME = /^[a-z][a-z0-9_-]{0,57}$/;

const keelRoot = () => new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** Why `name` cannot name a plugin, if it cannot. */
export const nameProblem = (name: string): string | undefined => {
  if (name === "") return "it is empty";
  if (!/^[a-z]/.test(name)) return "it must start with a lowercase letter";
  if (!NAME.test(name)) {
    return name.length > 58
      ? "it is longer than 58 characters"
      : "it may contain only lowercase letters, digits, '-' and '_'";
  }
  return undefined;
};

/** Write a new plugin folder; fails with a `UsageError` on a bad name or an existing folder. */
export const scaffoldPlugin = async (options: ScaffoldOptions): Promise<Scaffolded> => {
  const problem = nameProblem(options.name);
  if (problem) throw new UsageError(`Cannot create plugin "${options.name}": ${problem}`);
  if (options.kind !== "connector" && options.kind !== "agent") {
    throw new UsageError(`Cannot create plugin "${options.name}": --kind must be "connector" or "agent"`);
  }
  const root = options.root ?? keelRoot();
  const parent = resolve(options.dir ?? (options.kind === "connector" ? "plugins" : "agents"));
  const path = `${parent}/${options.name}`;
  await Deno.mkdir(parent, { recursive: true }).catch((error) => {
    throw new UsageError(`Cannot create folder "${parent}": ${(error as Error).message}`);
  });
  // Not recursive: the one call that fails if anything (a folder, a file, a symlink) is already there.
  try {
    await Deno.mkdir(path);
  } catch (error) {
    throw new UsageError(
      error instanceof Deno.errors.AlreadyExists
        ? `Cannot create plugin "${options.name}": "${path}" already exists (Keel never overwrites it)`
        : `Cannot create folder "${path}": ${(error as Error).message}`,
    );
  }
  const toRoot = relative(path, root) || ".";
  const { files, sample } = scaffoldFiles({ name: options.name, kind: options.kind, toRoot });
  for (const [file, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${path}/${file}`, text, { createNew: true });
  }
  // Formatted with Keel's own settings, so a plugin made inside the checkout passes `deno task check` as it is.
  // Best effort: unformatted files work just the same.
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", "--config", `${root}/deno.json`, path],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output().catch(() => undefined);
  return { path, files: Object.keys(files), sample };
};

const HELP = `Usage:
  deno task keel plugin new NAME --kind connector|agent [--dir DIR]

Creates DIR/NAME (DIR defaults to plugins/ for a connector, agents/ for an
agent; relative to the current folder, which is the Keel folder under
"deno task") holding:
  plugin.json  the manifest: no permissions, one sample effect (connector)
               or workflow (agent)
  mod.ts       the handlers, written with the typed SDK helpers
  mod_test.ts  installs the plugin into a throw-away Keel and calls it
  README.md    what to change next
NAME: lowercase letters, digits, '-' and '_', starting with a letter.
An existing DIR/NAME is never overwritten. Guide: docs/plugins.md`;

/** `keel plugin new`, run by `keel plugin` with the arguments after `new`. */
export const newPluginCommand: Command = {
  summary: ["plugin new NAME --kind K      Create a plugin folder (connector or agent) with a passing test"],
  help: HELP,
  async run(args) {
    const { values, positionals } = flagsOf(args, { kind: { type: "string" }, dir: { type: "string" } });
    if (values.help) return console.log(HELP);
    const [name, extra] = positionals;
    if (name === undefined) throw new UsageError("plugin new needs a NAME, e.g. plugin new weather --kind connector");
    if (extra !== undefined) throw new UsageError(`plugin new takes one NAME: got also "${extra}"`);
    if (values.kind === undefined) throw new UsageError("plugin new needs --kind connector or --kind agent");
    const made = await scaffoldPlugin({
      name,
      kind: values.kind as ScaffoldOptions["kind"],
      dir: values.dir,
    });
    const shown = relative(Deno.cwd(), made.path) || ".";
    console.log(`Created ${values.kind} "${name}" in ${made.path}:`);
    for (const file of made.files) console.log(`  ${file}`);
    console.log(`It declares ${values.kind === "connector" ? "the effect" : "the workflow"} "${made.sample}".`);
    console.log("Next:");
    console.log(`  deno test -A ${shown}/mod_test.ts          # its test passes as it is`);
    console.log(`  deno task keel plugin install ${shown}   # install it into the running Keel`);
  },
};

/**
 * @module
 * Deno's permissions do not cover module loading: a literal
 * `import("file:///…", { with: { type: "json" } })` reads a file even in a
 * Worker with `read: false`. So before a plugin runs, the host resolves its
 * static module graph with `deno info --json` and refuses any module outside
 * the plugin's own folder and Keel's `core/sdk`, after resolving symlinks.
 */
import { Effect } from "effect";
import { ModuleGraphError } from "../errors/mod.ts";

interface InfoModule {
  readonly specifier: string;
  readonly local?: string;
  readonly error?: string;
  readonly kind?: string;
}

/** Check the module graph rooted at `entry`; returns the real paths of every module. */
export const checkModuleGraph = (entry: string, allowedDirs: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const output = yield* Effect.tryPromise({
      try: () =>
        new Deno.Command(Deno.execPath(), {
          // --no-remote --no-npm: resolving the graph must not download anything the plugin names.
          args: ["info", "--json", "--no-config", "--no-lock", "--no-remote", "--no-npm", entry],
          stdout: "piped",
          stderr: "piped",
          env: { NO_COLOR: "1" },
        }).output(),
      catch: (cause) =>
        new ModuleGraphError({ message: `Cannot resolve module graph of "${entry}": ${String(cause)}` }),
    });
    if (!output.success) {
      const stderr = new TextDecoder().decode(output.stderr).trim().split("\n")[0];
      return yield* new ModuleGraphError({ message: `Cannot resolve module graph of "${entry}": ${stderr}` });
    }
    const info = JSON.parse(new TextDecoder().decode(output.stdout)) as { modules: InfoModule[] };
    const realDirs = allowedDirs.map((d) => Deno.realPathSync(d).replace(/\/?$/, "/"));
    const files: string[] = [];
    for (const m of info.modules) {
      if (m.error) {
        return yield* new ModuleGraphError({
          message: `Plugin module graph is broken at "${m.specifier}": ${m.error}`,
          details: { specifier: m.specifier },
        });
      }
      if (!m.specifier.startsWith("file://") || !m.local) {
        return yield* new ModuleGraphError({
          message: `Plugin imports "${m.specifier}": only files inside the plugin folder and core/sdk may be imported`,
          details: { specifier: m.specifier },
        });
      }
      let real: string;
      try {
        real = Deno.realPathSync(m.local);
      } catch {
        real = m.local;
      }
      if (!realDirs.some((d) => real.startsWith(d))) {
        return yield* new ModuleGraphError({
          message: `Plugin imports "${m.specifier}"${
            real !== m.local ? ` (really "${real}")` : ""
          }, which is outside its folder`,
          details: { specifier: m.specifier, real },
        });
      }
      files.push(real);
    }
    return files;
  });

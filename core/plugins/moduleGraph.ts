/**
 * @module
 * Deno's permissions do not cover module loading: a literal
 * `import("file:///…", { with: { type: "json" } })` reads a file even in a
 * Worker with `read: false`. So before a plugin runs, the host resolves its
 * static module graph with `deno info --json` and refuses any module outside
 * the plugin's own folder and Keel's `core/sdk`, after resolving symlinks.
 *
 * npm packages are allowed only as the manifest's `npm` field declares them,
 * name and exact version (`"npm": ["@cfworker/json-schema@4.1.6"]` allows
 * `import … from "npm:@cfworker/json-schema@4.1.6"` and its subpaths): an
 * undeclared package, a range, or another version is refused. The graph is
 * read with `--no-npm`, so checking never downloads what a plugin names; the
 * packages' own code is trusted as declared (it runs under the plugin's grant).
 */
import { Effect } from "effect";
import { ModuleGraphError } from "../errors/mod.ts";

interface InfoModule {
  readonly specifier: string;
  readonly local?: string;
  readonly error?: string;
  readonly kind?: string;
  readonly dependencies?: ReadonlyArray<{
    readonly specifier: string;
    readonly code?: { readonly specifier?: string };
    readonly type?: { readonly specifier?: string };
  }>;
}

/**
 * Why an SDK import does not resolve, in words that say what to do: a plugin folder moved away from Keel's tree
 * keeps its relative SDK import (`../../core/sdk/mod.ts`), which then points at nothing.
 */
const brokenSdkImport = (broken: string, modules: ReadonlyArray<InfoModule>): string | undefined => {
  if (!broken.startsWith("file://") || !/\/core\/sdk\/[^/]/.test(new URL(broken).pathname)) return undefined;
  for (const m of modules) {
    const dep = m.dependencies?.find((d) => d.code?.specifier === broken || d.type?.specifier === broken);
    if (!dep || !m.specifier.startsWith("file://")) continue;
    const path = decodeURIComponent(new URL(m.specifier).pathname);
    const folder = path.slice(0, path.lastIndexOf("/")) || "/";
    return `The plugin imports Keel's SDK as "${dep.specifier}", which does not resolve from "${folder}": pack it as a .tar.gz (see docs/plugins.md) or fix the relative path`;
  }
  return undefined;
};

/** `npm:name@version[/sub]` (or `npm:/…`) as name and version; undefined when it is not one. */
export const parseNpmSpecifier = (specifier: string): { name: string; version?: string } | undefined => {
  const m = /^npm:\/?((?:@[^/@]+\/)?[^/@]+)(?:@([^/]+))?(?:\/.*)?$/.exec(specifier);
  return m ? { name: m[1], ...(m[2] === undefined ? {} : { version: m[2] }) } : undefined;
};

/** Why an npm import is refused given the declared `name@version` list, or undefined when it is declared. */
const npmProblem = (specifier: string, declared: ReadonlyArray<string>): string | undefined => {
  const parsed = parseNpmSpecifier(specifier);
  if (!parsed) return "not an npm package specifier Keel understands";
  const same = declared.filter((d) => d.slice(0, d.lastIndexOf("@")) === parsed.name);
  if (!same.length) {
    return `npm package "${parsed.name}" is not declared in plugin.json "npm"${
      declared.length ? ` (it declares ${declared.join(", ")})` : ""
    }`;
  }
  if (parsed.version !== undefined && same.includes(`${parsed.name}@${parsed.version}`)) return undefined;
  return `plugin.json "npm" declares ${same.join(", ")}: the import must name exactly that version`;
};

/**
 * Check the module graph rooted at `entry`; returns the real paths of every
 * local module. `npm` lists the declared packages as `name@version`.
 */
export const checkModuleGraph = (entry: string, allowedDirs: ReadonlyArray<string>, npm: ReadonlyArray<string> = []) =>
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
      if (m.specifier.startsWith("npm:")) {
        const problem = npmProblem(m.specifier, npm);
        if (problem) {
          return yield* new ModuleGraphError({
            message: `Plugin imports "${m.specifier}": ${problem}`,
            details: { specifier: m.specifier, npm },
          });
        }
        continue;
      }
      if (m.error) {
        return yield* new ModuleGraphError({
          message: brokenSdkImport(m.specifier, info.modules) ??
            `Plugin module graph is broken at "${m.specifier}": ${m.error}`,
          details: { specifier: m.specifier },
        });
      }
      if (!m.specifier.startsWith("file://") || !m.local) {
        return yield* new ModuleGraphError({
          message:
            `Plugin imports "${m.specifier}": only files inside the plugin folder, core/sdk and declared npm packages may be imported`,
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

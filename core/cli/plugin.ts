/**
 * @module
 * `keel plugin …`: install a plugin folder with an explicit grant (showing
 * what it asks for in plain words first), and list installed plugins.
 */
import { Effect } from "effect";
import { describePermissions, readManifest, resolveRequested, validateConfig } from "../manifest/mod.ts";
import { api, type Command, confirm, flagsOf, parseJson, UsageError } from "./client.ts";

const install = async (path: string | undefined, flags: { config?: string; grant?: string; yes?: boolean }) => {
  if (!path) throw new UsageError("plugin install needs a PATH to the plugin folder");
  const config = parseJson("config", flags.config);
  const { manifest, requested } = await Effect.runPromise(
    Effect.gen(function* () {
      const manifest = yield* readManifest(path);
      const cfg = yield* validateConfig(manifest, config);
      const requested = yield* resolveRequested(manifest, cfg);
      return { manifest, requested };
    }).pipe(Effect.mapError((e) => new UsageError(e.message))),
  ).catch((e) => {
    throw e instanceof UsageError ? e : new UsageError(String(e?.message ?? e));
  });
  const grant = flags.grant !== undefined ? parseJson("grant", flags.grant) : requested;
  console.log(`Plugin ${manifest.name} ${manifest.version} (${manifest.kind}): ${manifest.description}`);
  console.log("It asks to:");
  for (const line of describePermissions(requested)) console.log(`  - ${line}`);
  if (manifest.effects.length) {
    console.log("It performs these effects:");
    for (const e of manifest.effects) console.log(`  - ${e.name} (${e.class}): ${e.description}`);
  }
  if (manifest.uses.length) console.log(`It asks Keel for these effects: ${manifest.uses.join(", ")}`);
  if (manifest.workflows.length) {
    console.log(`It offers workflows: ${manifest.workflows.map((w) => w.name).join(", ")}`);
  }
  if (flags.grant !== undefined) console.log(`You grant: ${JSON.stringify(grant)}`);
  if (!flags.yes && !confirm("Install and grant this?")) {
    throw new UsageError("Not installed (answer y, or pass --yes in scripts)");
  }
  const { plugin } = await api("POST", "/api/plugins", { path: Deno.realPathSync(path), grant, config });
  console.log(`Installed ${plugin.name} ${plugin.version} (manifest ${String(plugin.manifestHash).slice(0, 12)})`);
};

const list = async () => {
  const { plugins } = await api("GET", "/api/plugins");
  if (!plugins.length) return console.log("No plugins installed");
  for (const p of plugins) {
    console.log(
      `${p.name} ${p.version} ${p.manifest.kind} — ${p.state}${p.restarts ? ` (${p.restarts} restarts)` : ""}`,
    );
    for (const line of describePermissions(p.grant)) console.log(`    grant: ${line}`);
  }
};

/** `keel plugin install|list`. */
export const pluginCommand: Command = {
  summary: [
    "plugin install PATH           Install a plugin folder with an explicit grant",
    "plugin list                   List installed plugins, their grants and state",
  ],
  help: `Usage:
  deno task keel plugin install PATH [--config JSON] [--grant JSON] [--yes]
  deno task keel plugin list

install shows the permissions and effects the plugin requests and asks before
granting them. --grant gives a subset explicitly (e.g. '{"net":["127.0.0.1:2525"]}');
--yes grants what is requested without asking (for scripts).`,
  async run(args) {
    const { values, positionals } = flagsOf(args, {
      config: { type: "string" },
      grant: { type: "string" },
      yes: { type: "boolean", short: "y" },
    });
    const [sub, path] = positionals;
    if (sub === "install") return await install(path, values);
    if (sub === "list") return await list();
    throw new UsageError(`Unknown plugin command "${sub ?? ""}": use install or list`);
  },
};

/**
 * @module
 * `keel plugin …`: install a plugin folder or `.tar.gz` archive with an
 * explicit grant (showing what it asks for in plain words first), upgrade it
 * (showing what the new version changes, and whether it needs a new grant),
 * grant a version, remove a version or the whole plugin, and list every
 * installed version with its state. The package is read here only to show
 * it; Keel checks it again, on its own stored copy.
 *
 * A plugin requesting what Keel refuses by default (`run`, `ffi`, `sys`,
 * `all`, wildcard net, paths outside its data dir) installs only with
 * `--override ITEM` naming each such request exactly; the CLI then shows
 * what it unlocks, in plain words, under a loud warning before asking.
 */
import { Effect } from "effect";
import {
  checkOverride,
  describePermissions,
  type Manifest,
  overrideReason,
  type Permissions,
  powerRequests,
  readManifest,
  requestedPermissions,
  validateConfig,
  validateManifest,
} from "../manifest/mod.ts";
import { locatePackage, readArchiveManifest } from "../plugins/mod.ts";
import { api, atMost, type Command, confirm, flagsOf, parseJson, UsageError } from "./client.ts";
import { describeHealth } from "./describeHealth.ts";
import { newPluginCommand } from "./scaffold.ts";

/**
 * Read a folder's or archive's manifest here, to show it; never contacts Keel. A path that holds neither is refused
 * in the API's words. Returns the manifest and the package's real path, which is what Keel is sent.
 */
const readLocal = (path: string) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const { source, kind } = yield* locatePackage(path);
      if (kind === "archive") {
        const raw = yield* readArchiveManifest(path);
        return { source, manifest: yield* validateManifest(raw, `${path}/plugin.json`) };
      }
      return { source, manifest: yield* readManifest(path) };
    }).pipe(Effect.mapError((e) => new UsageError(e.message))),
  ).catch((e) => {
    throw e instanceof UsageError ? e : new UsageError(String(e?.message ?? e));
  });

const isolationFlag = (isolation: string | undefined) => {
  if (isolation !== undefined && isolation !== "worker" && isolation !== "process") {
    throw new UsageError(`--isolation must be "worker" or "process": got "${isolation}"`);
  }
  return isolation;
};

/** Check `--override` items against a request here (so a missing one never contacts Keel); returns them. */
const checkOverrideFlags = async (manifest: Manifest, requested: Permissions, flags: string[] | undefined) =>
  await Effect.runPromise(
    checkOverride(manifest, requested, flags?.length ? flags : undefined).pipe(
      Effect.mapError((e) => new UsageError(e.message)),
    ),
  );

/** The loud warning shown before the prompt when the operator overrides Keel's refusals. */
const warnOverride = (name: string, overrides: ReadonlyArray<string>) => {
  if (!overrides.length) return;
  const bar = "!".repeat(78);
  console.log(bar);
  console.log(
    `!!! WARNING: you are overriding Keel's refusal of ${overrides.length} permission${
      overrides.length === 1 ? "" : "s"
    } for plugin ${name}.`,
  );
  console.log("!!! Keel never grants these on its own. With your override the plugin will be able to:");
  for (const o of overrides) console.log(`!!!   - ${overrideReason(o)}   [--override ${o}]`);
  console.log("!!! Anything the plugin does with them is outside Keel's sandbox. Your override is recorded");
  console.log("!!! with the grant and audited (plugin.permission_override). Upgrades must state it again.");
  console.log(bar);
};

/** The default grant: everything ordinary that is requested (overridden items are granted by the override). */
const ordinaryGrant = (requested: Permissions) => ({
  net: requested.net,
  env: requested.env,
  read: requested.read,
  write: requested.write,
});

const describeManifest = (manifest: Manifest) => {
  if (manifest.effects.length) {
    console.log("It performs these effects:");
    for (const e of manifest.effects) console.log(`  - ${e.name} (${e.class}): ${e.description}`);
  }
  if (manifest.uses.length) console.log(`It asks Keel for these effects: ${manifest.uses.join(", ")}`);
  if (manifest.records?.read.length) console.log(`It reads records in: ${manifest.records.read.join(", ")}`);
  if (manifest.records?.write.length) console.log(`It writes records in: ${manifest.records.write.join(", ")}`);
  if (manifest.workflows.length) {
    console.log(`It offers workflows: ${manifest.workflows.map((w) => w.name).join(", ")}`);
  }
};

const install = async (
  path: string | undefined,
  flags: { config?: string; grant?: string; yes?: boolean; isolation?: string; override?: string[] },
) => {
  if (!path) throw new UsageError("plugin install needs a PATH to the plugin folder or .tar.gz archive");
  const config = parseJson("config", flags.config);
  const isolation = isolationFlag(flags.isolation);
  const { source, manifest } = await readLocal(path);
  // run/ffi/sys/all need no config to name: refuse an unstated one before anything else.
  const powers = powerRequests(manifest);
  if (powers.some((p) => !flags.override?.includes(p))) {
    const none = { net: [], env: [], read: [], write: [], needsOverride: powers };
    await checkOverrideFlags(manifest, none, flags.override?.filter((o) => powers.includes(o)));
  }
  const requested = await Effect.runPromise(
    Effect.flatMap(validateConfig(manifest, config), (cfg) => requestedPermissions(manifest, cfg)).pipe(
      Effect.mapError((e) => new UsageError(e.message)),
    ),
  );
  const overrides = await checkOverrideFlags(manifest, requested, flags.override);
  const grant = flags.grant !== undefined ? parseJson("grant", flags.grant) : ordinaryGrant(requested);
  console.log(`Plugin ${manifest.name} ${manifest.version} (${manifest.kind}): ${manifest.description}`);
  console.log("It asks to:");
  for (const line of describePermissions(requested)) console.log(`  - ${line}`);
  describeManifest(manifest);
  if (flags.grant !== undefined) console.log(`You grant: ${JSON.stringify(grant)}`);
  warnOverride(manifest.name, overrides);
  if (!flags.yes && !confirm(overrides.length ? "Install, grant this AND override?" : "Install and grant this?")) {
    throw new UsageError("Not installed (answer y, or pass --yes in scripts)");
  }
  const { plugin } = await api("POST", "/api/plugins", {
    path: source,
    grant,
    config,
    isolation,
    ...(overrides.length ? { override: overrides } : {}),
  });
  console.log(`Installed ${plugin.name} ${plugin.version} (manifest ${String(plugin.manifestHash).slice(0, 12)})`);
};

const upgrade = async (
  path: string | undefined,
  flags: { config?: string; yes?: boolean; isolation?: string; override?: string[] },
) => {
  if (!path) throw new UsageError("plugin upgrade needs a PATH to the new version's folder or .tar.gz archive");
  const config = parseJson("config", flags.config);
  const isolation = isolationFlag(flags.isolation);
  const { source, manifest } = await readLocal(path);
  const override = flags.override?.length ? flags.override : undefined;
  const body = { path: source, config, isolation, ...(override ? { override } : {}) };
  const route = `/api/plugins/${encodeURIComponent(manifest.name)}/upgrade`;
  const preview = await api("POST", route, { ...body, dryRun: true });
  console.log(`Upgrade ${manifest.name} ${preview.from} → ${manifest.version}: ${manifest.description}`);
  const lines: string[] = preview.diff.lines;
  if (lines.length) {
    console.log(`Compared with ${preview.from}, it:`);
    for (const line of lines) console.log(`  - ${line}`);
  } else {
    console.log(`It declares exactly what ${preview.from} declares.`);
  }
  const needed: string[] = preview.requested.needsOverride ?? [];
  const unstated = needed.filter((o) => !(override ?? []).includes(o));
  if (unstated.length && !preview.diff.escalates) {
    console.log(
      `It needs the operator override ${
        unstated.map((o) => `--override ${o}`).join(" ")
      } stated again: without it, it will be installed but stay disabled until granted.`,
    );
  }
  warnOverride(manifest.name, needed.filter((o) => (override ?? []).includes(o)));
  if (preview.diff.escalates) {
    console.log(
      `It asks for more than ${preview.from} was granted: it will be installed but stays disabled, and ${preview.from} keeps serving, until you grant it with "deno task keel plugin grant ${manifest.name} ${manifest.version}".`,
    );
  } else {
    console.log(`It asks for nothing more: it will run with ${preview.from}'s grant, narrowed to what it requests:`);
    for (const line of describePermissions(preview.carriedGrant)) console.log(`  - ${line}`);
  }
  if (!flags.yes && !confirm(preview.diff.escalates ? "Install it, disabled?" : "Upgrade?")) {
    throw new UsageError("Not upgraded (answer y, or pass --yes in scripts)");
  }
  const { plugin } = await api("POST", route, body);
  console.log(
    plugin.activation === "needs_grant"
      ? `Installed ${plugin.name} ${plugin.version}, disabled until granted; ${preview.from} keeps serving`
      : `Upgraded ${plugin.name} to ${plugin.version} (manifest ${String(plugin.manifestHash).slice(0, 12)})`,
  );
};

const grant = async (
  name: string | undefined,
  version: string | undefined,
  flags: { grant?: string; yes?: boolean; override?: string[] },
) => {
  if (!name || !version) throw new UsageError("plugin grant needs a NAME and a VERSION");
  const { plugins } = await api("GET", "/api/plugins");
  const target = plugins.find((p: { name: string; version: string }) => p.name === name && p.version === version);
  if (!target) {
    const versions = plugins.filter((p: { name: string }) => p.name === name).map((p: { version: string }) =>
      p.version
    );
    throw new UsageError(
      versions.length
        ? `Plugin "${name}" has no version ${version} (installed: ${versions.join(", ")})`
        : `No plugin named "${name}" is installed`,
    );
  }
  const overrides = await checkOverrideFlags(target.manifest, target.requested, flags.override);
  const granted = flags.grant !== undefined ? parseJson("grant", flags.grant) : ordinaryGrant(target.requested);
  console.log(`Plugin ${name} ${version} (${target.manifest.kind}): ${target.manifest.description}`);
  if (target.pendingChanges?.length) {
    console.log("Compared with the version it upgrades, it:");
    for (const line of target.pendingChanges) console.log(`  - ${line}`);
  }
  console.log("It asks to:");
  for (const line of describePermissions(target.requested)) console.log(`  - ${line}`);
  describeManifest(target.manifest);
  if (flags.grant !== undefined) console.log(`You grant: ${JSON.stringify(granted)}`);
  warnOverride(name, overrides);
  if (!flags.yes && !confirm(`Grant this and make ${version} the active version?`)) {
    throw new UsageError("Not granted (answer y, or pass --yes in scripts)");
  }
  const route = `/api/plugins/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/grant`;
  const { plugin } = await api("POST", route, { grant: granted, ...(overrides.length ? { override: overrides } : {}) });
  console.log(`Granted ${plugin.name} ${plugin.version}; it is the active version`);
};

const remove = async (name: string | undefined, flags: { version?: string; force?: boolean }) => {
  if (!name) throw new UsageError("plugin remove needs a NAME");
  const base = `/api/plugins/${encodeURIComponent(name)}`;
  const path = flags.version ? `${base}/versions/${encodeURIComponent(flags.version)}` : base;
  const result = await api("DELETE", `${path}${flags.force ? "?force=true" : ""}`);
  console.log(
    result.whole
      ? `Removed ${name} (${result.removed.join(", ")}) and its data`
      : `Removed ${name} ${result.removed.join(", ")}`,
  );
  if (result.cancelledRuns?.length) {
    console.log(`Cancelled ${result.cancelledRuns.length} run(s) pinned to it: ${result.cancelledRuns.join(", ")}`);
  }
};

const list = async () => {
  const { plugins } = await api("GET", "/api/plugins");
  if (!plugins.length) return console.log("No plugins installed");
  let current = "";
  for (const p of plugins) {
    if (p.name !== current) {
      current = p.name;
      console.log(`${p.name} (${p.manifest.kind}): ${p.manifest.description}`);
    }
    const activation = p.activation === "needs_grant" ? "disabled: needs a grant" : p.activation;
    const runs = p.activation === "needs_grant" ? "" : ` — ${p.state}${p.restarts ? ` (${p.restarts} restarts)` : ""}`;
    const where = `${p.isolation ?? "worker"}${
      p.sandbox === "bwrap" ? " in bwrap" : p.sandbox === "none" ? " without bwrap" : ""
    }`;
    console.log(`  ${p.version} ${activation}${runs}, ${where}`);
    if (p.activation === "needs_grant") {
      for (const line of p.pendingChanges ?? []) console.log(`    changes: ${line}`);
      console.log(`    grant it: deno task keel plugin grant ${p.name} ${p.version}`);
      continue;
    }
    console.log(`    health: ${describeHealth(p.health)}`);
    for (const line of describePermissions(p.grant)) console.log(`    grant: ${line}`);
  }
};

/** `keel plugin install|upgrade|grant|remove|list|new`. */
export const pluginCommand: Command = {
  summary: [
    "plugin install PATH           Install a plugin folder or .tar.gz archive with an explicit grant",
    "plugin upgrade PATH           Install a new version; one asking for more waits for a grant",
    "plugin grant NAME VERSION     Grant a version and make it the active one",
    "plugin remove NAME            Remove a plugin (or --version V), unless runs still use it",
    "plugin list                   List installed versions, which is active, their grants and state",
    ...newPluginCommand.summary,
  ],
  help: `Usage:
  deno task keel plugin install PATH|ARCHIVE.tar.gz [--config JSON] [--grant JSON] [--isolation worker|process]
                                [--override ITEM]... [--yes]
  deno task keel plugin upgrade PATH|ARCHIVE.tar.gz [--config JSON] [--isolation worker|process] [--override ITEM]...
                                [--yes]
  deno task keel plugin grant NAME VERSION [--grant JSON] [--override ITEM]... [--yes]
  deno task keel plugin remove NAME [--version V] [--force]
  deno task keel plugin list
  deno task keel plugin new NAME --kind connector|agent [--dir DIR]

install shows the permissions and effects the plugin requests and asks before
granting them. --grant gives a subset explicitly (e.g. '{"net":["127.0.0.1:2525"]}');
--yes grants what is requested without asking (for scripts). --isolation
overrides where it runs: a Worker in Keel, or its own sandboxed process (the
default for plugins from outside Keel's folder). Keel copies the plugin into
<data dir>/plugins/NAME/VERSION and runs that copy, so editing the folder
later changes nothing.

--override ITEM grants, against Keel's judgement, one request Keel refuses
by default, named exactly as the refusal names it: run, run:PROGRAM, ffi,
ffi:PATH, sys, sys:KIND, all, net:* (any host), net:HOST (any port),
net:0.0.0.0:PORT, read:PATH or write:PATH (outside the plugin's data dir).
Repeat it for each item. You see what it unlocks under a loud warning before
you confirm; the grant records it and the audit log gets
plugin.permission_override. An override is never carried to another version:
state it again on upgrade (or the new version waits for a grant).

upgrade installs a new version of an installed plugin and shows what it
changes. If it asks for nothing more (same or fewer permissions, identical
effect declarations) it becomes the active version with the old grant. If it
asks for more, it is installed but disabled, and the old version keeps
serving, until you grant it. Runs keep the version they started with.

grant grants one version what it requests (or --grant JSON) and makes it the
active version; the previous one stays installed for the runs pinned to it.

remove deletes a plugin's versions, stored files and data (or one version with
--version). Keel refuses while runs pinned to it are running or waiting for an
approval; --force removes it anyway and cancels those runs.

new creates a plugin folder whose test passes as it is (see docs/plugins.md).`,
  async run(args) {
    if (args[0] === "new") return await newPluginCommand.run(args.slice(1));
    const { values, positionals } = flagsOf(args, {
      config: { type: "string" },
      grant: { type: "string" },
      yes: { type: "boolean", short: "y" },
      isolation: { type: "string" },
      override: { type: "string", multiple: true },
      version: { type: "string" },
      force: { type: "boolean" },
    });
    const [sub, first, second] = positionals;
    const takes: Record<string, number> = { install: 1, upgrade: 1, grant: 2, remove: 1, list: 0 };
    if (sub !== undefined && takes[sub] !== undefined) atMost(positionals.slice(1), takes[sub], `plugin ${sub}`);
    if (sub === "install") return await install(first, values);
    if (sub === "upgrade") return await upgrade(first, values);
    if (sub === "grant") return await grant(first, second, values);
    if (sub === "remove") return await remove(first, values);
    if (sub === "list") return await list();
    throw new UsageError(
      `Unknown plugin command "${sub ?? ""}": use install, upgrade, grant, remove, list or new`,
    );
  },
};

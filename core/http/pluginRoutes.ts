/**
 * @module
 * The plugin lifecycle behind `/api/plugins/*` besides install and list:
 * preview a package, upgrade a plugin (or preview the upgrade), grant a
 * version, and remove a version or a whole plugin. Removal is refused while
 * runs pinned to what it removes are running or waiting for an approval,
 * unless the caller forces it; this module finds those runs in the journal.
 * `app.ts` routes to these; they validate their input here.
 */
import { Effect } from "effect";
import { InvalidInputError } from "../errors/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { Journal } from "../journal/mod.ts";
import { Orchestrator } from "../orchestrator/mod.ts";

const pathField = (b: Record<string, unknown>) =>
  typeof b.path === "string" && b.path !== ""
    ? Effect.succeed(b.path)
    : Effect.fail(new InvalidInputError({ message: 'Field "path" must be the plugin\'s folder or .tar.gz archive' }));

const VERSION = /^[0-9A-Za-z.+-]{1,64}$/;
const versionParam = (version: string | undefined) =>
  version === undefined || VERSION.test(version)
    ? Effect.succeed(version)
    : Effect.fail(new InvalidInputError({ message: `"${version}" is not a version` }));

/** Parse `?force=`: absent or `false` is no, `true` or `1` is yes. */
export const forceParam = (raw: string | undefined) =>
  raw === undefined || raw === "false" || raw === "0"
    ? Effect.succeed(false)
    : raw === "true" || raw === "1" || raw === ""
    ? Effect.succeed(true)
    : Effect.fail(new InvalidInputError({ message: `Query "force" must be true or false: got "${raw}"` }));

/** `POST /api/plugins/preview {path, config?}`: what a package asks for, without installing it. */
export const previewRoute = Effect.fn("Http.pluginPreview")(function* (b: Record<string, unknown>) {
  const path = yield* pathField(b);
  const host = yield* PluginHost;
  return yield* host.preview(path, b.config);
});

/** `POST /api/plugins/{name}/upgrade {path, config?, isolation?, override?, dryRun?}`. */
export const upgradeRoute = Effect.fn("Http.pluginUpgrade")(function* (name: string, b: Record<string, unknown>) {
  const path = yield* pathField(b);
  if (b.dryRun !== undefined && typeof b.dryRun !== "boolean") {
    return yield* new InvalidInputError({ message: 'Field "dryRun" must be true or false' });
  }
  const host = yield* PluginHost;
  const request = { name, path, config: b.config, isolation: b.isolation, override: b.override };
  if (b.dryRun) return { dryRun: true, ...(yield* host.previewUpgrade(request)) };
  const { plugin, from, diff } = yield* host.upgrade(request, "operator");
  const { config: _c, ...shown } = plugin;
  return { plugin: shown, from, diff };
});

/** `POST /api/plugins/{name}/versions/{version}/grant {grant, override?}`. */
export const grantRoute = Effect.fn("Http.pluginGrant")(function* (
  name: string,
  rawVersion: string,
  b: Record<string, unknown>,
) {
  const version = (yield* versionParam(rawVersion))!;
  if (b.grant === undefined) {
    return yield* new InvalidInputError({
      message: 'Field "grant" is required: the permissions you give this version, e.g. {"net": ["127.0.0.1:2525"]}',
    });
  }
  const host = yield* PluginHost;
  const { config: _c, ...shown } = yield* host.grant(name, version, b.grant, "operator", b.override);
  return { plugin: shown };
});

/**
 * `DELETE /api/plugins/{name}[/versions/{version}]?force=`: refused while pinned runs are running or waiting. A run
 * still pinned to what went (a forced removal's, or one that started while the removal was made) cannot go on: it is
 * cancelled, with the removal as its reason, so nothing installed later under that name picks it up.
 */
export const removeRoute = Effect.fn("Http.pluginRemove")(function* (
  name: string,
  rawVersion: string | undefined,
  rawForce: string | undefined,
) {
  const version = yield* versionParam(rawVersion);
  const force = yield* forceParam(rawForce);
  const journal = yield* Journal;
  // Every run that has not ended holds its agent version, and the connector versions it was pinned to.
  const pinnedRuns = Effect.map(journal.activeRuns, (live) =>
    live
      .filter((r) =>
        (r.plugin === name && (version === undefined || r.pluginVersion === version)) ||
        (r.pins?.[name] !== undefined && (version === undefined || r.pins[name] === version))
      )
      .map((r) => r.id));
  const host = yield* PluginHost;
  const removed = yield* host.remove({ name, version, force, pinnedRuns }, "operator");
  const orchestrator = yield* Orchestrator;
  const reason = `Plugin "${name}"${version === undefined ? "" : ` ${version}`} was removed`;
  const cancelledRuns: string[] = [];
  for (const runId of yield* pinnedRuns) {
    const cancelled = yield* Effect.result(orchestrator.cancel(runId, "operator", reason));
    if (cancelled._tag === "Success") cancelledRuns.push(runId);
  }
  return { ...removed, cancelledRuns };
});

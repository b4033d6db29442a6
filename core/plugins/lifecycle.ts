/**
 * @module
 * Install, upgrade, grant and remove: how a plugin version enters the store
 * and the registry, and when it may serve.
 *
 * - **Install** (a folder or a `.tar.gz` archive, a plugin name not yet
 *   installed): the operator's grant is checked against the request, the
 *   package is copied into the store, its module graph is checked on the
 *   stored copy, it is started once to see it implements what it declares,
 *   and it becomes the active version. Installing the identical package
 *   again re-grants it (its grant and config; where it runs stays, unless
 *   asked); another package under an installed name and version
 *   is refused.
 * - **Upgrade** (a new version of an installed name): compared with the
 *   serving version (`diffManifests`). If it asks for nothing more (same or
 *   fewer permissions, identical effect declarations, no new `uses`, child
 *   workflows, record collections, npm packages or weaker isolation) it
 *   starts with the old grant narrowed to what it still requests, and
 *   becomes active. Otherwise it is stored as `needs_grant` and never runs
 *   until granted, while the old version keeps serving. Both outcomes are
 *   audited.
 * - **Grant** a version: the grant is checked against that version's request
 *   and recorded with its manifest hash, the version is started with it and
 *   becomes active; the one it replaces stays installed as `inactive` (runs
 *   pinned to it still use it).
 * - **Remove** a version or the whole plugin: refused while runs pinned to
 *   it are running or waiting, unless forced; its stored files go too.
 *
 * Requests Keel refuses by default (`run`, `ffi`, `sys`, `all`, wildcard net,
 * paths outside the data dir) need the operator's explicit override, naming
 * each one, at install, at grant, and again at every upgrade (an override is
 * never carried): the grant records it and `plugin.permission_override`
 * audits who gave what for which manifest hash. An upgrade whose request needs
 * an override that was not re-stated is held as `needs_grant`.
 *
 * Every lifecycle change runs under one lock, so two upgrades never race.
 */
import { Clock, Effect, Semaphore } from "effect";
import {
  ConflictError,
  InvalidInputError,
  NotFoundError,
  type PluginCrashedError,
  type PluginTimeoutError,
  type StoreError,
} from "../errors/mod.ts";
import {
  carryGrant,
  checkGrant,
  checkOverride,
  diffManifests,
  type Grant,
  type Manifest,
  type ManifestDiff,
  manifestHash,
  overrideReason,
  type Permissions,
  readManifest,
  requestedPermissions,
  type SchemaChecker,
  validateConfig,
} from "../manifest/mod.ts";
import { checkModuleGraph } from "./moduleGraph.ts";
import { type PluginRegistry, versionKey } from "./registry.ts";
import type { InstalledPlugin, InstallRequest } from "./PluginHost.ts";
import type { Isolation } from "./_connection.ts";
import { locatePackage, type PluginStore, type StagedPackage } from "./store.ts";

/** What `upgrade` needs: the installed name, the new package, and config (default: the serving version's). */
export interface UpgradeRequest {
  readonly name: string;
  readonly path: string;
  readonly config?: unknown;
  /** Operator override of the isolation mode (else the manifest's, else by where the package comes from). */
  readonly isolation?: unknown;
  /** The operator's override of refused requests, re-stated (never carried from the serving version). */
  readonly override?: unknown;
}

/** What an upgrade did: the new version (active, or waiting for a grant) and what changed. */
export interface UpgradeResult {
  readonly plugin: InstalledPlugin;
  /** The version it was compared with. */
  readonly from: string;
  readonly diff: ManifestDiff;
}

/** What an upgrade would do, without storing anything. */
export interface UpgradePreview {
  readonly manifest: Manifest;
  readonly requested: Permissions;
  readonly from: string;
  readonly diff: ManifestDiff;
  /** The grant it would start with when it does not escalate. */
  readonly carriedGrant: Grant;
}

/** How to remove. `pinnedRuns`: running or waiting runs pinned to the versions removed. */
export interface RemoveRequest {
  readonly name: string;
  readonly version?: string;
  readonly force?: boolean;
  /** The runs (not ended) pinned to what is removed: read under the lifecycle's lock, just before the removal. */
  readonly pinnedRuns: Effect.Effect<ReadonlyArray<string>, StoreError>;
}

/** What the lifecycle needs from the plugin host. */
export interface LifecycleDeps {
  readonly registry: PluginRegistry;
  readonly store: PluginStore;
  readonly sdkDir: string;
  /** Checks a manifest's schedule inputs against its own schemas, off the main thread when they hold patterns. */
  readonly checker: SchemaChecker;
  /** Start a version (stopping one already running) and wait for what it implements. */
  launch(
    plugin: InstalledPlugin,
  ): Effect.Effect<
    { effects: ReadonlyArray<string>; workflows: ReadonlyArray<string> },
    PluginCrashedError | PluginTimeoutError
  >;
  /** Stop a version's Worker or process, if it runs. */
  stop(plugin: InstalledPlugin, reason: string): void;
  /** How a package from `source` runs: the operator's override, else the manifest's, else by origin. */
  isolationOf(source: string, manifest: Manifest, override: Isolation | undefined): Isolation;
  /** Delete a plugin's data dir (after its last version is removed). */
  purgeData(name: string): Effect.Effect<void>;
  audit(type: string, actor: string, data: Record<string, unknown>): Effect.Effect<unknown, StoreError>;
}

interface Package {
  readonly source: string;
  readonly kind: "folder" | "archive";
  /** Where plugin.json was read: the folder itself, or the staged archive. */
  readonly root: string;
  readonly staged?: StagedPackage;
  readonly manifest: Manifest;
  readonly config: Record<string, unknown>;
  readonly requested: Permissions;
}

const EMPTY_GRANT: Grant = { net: [], env: [], read: [], write: [] };

/** Build install, upgrade, grant and remove over the host's registry, store and Workers. */
export const makeLifecycle = (deps: LifecycleDeps) =>
  Effect.gen(function* () {
    const { registry, store, sdkDir } = deps;
    const lock = yield* Semaphore.make(1);
    const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms).toISOString());

    /** Messages about a staged package name the folder or archive it came from, not the staging folder. */
    const namedBySource = <A, E extends { message: string }>(
      staged: StagedPackage | undefined,
      effect: Effect.Effect<A, E>,
    ) =>
      staged
        ? Effect.mapError(effect, (e) => {
          const rebuilt = e as unknown as { constructor: new (f: object) => E; message: string; details?: unknown };
          return new rebuilt.constructor({
            message: rebuilt.message.replaceAll(staged.dir, staged.source),
            ...(rebuilt.details === undefined ? {} : {
              details: JSON.parse(JSON.stringify(rebuilt.details).replaceAll(staged.dir, staged.source)),
            }),
          });
        })
        : effect;
    const discardOnError = <A, E, R>(staged: StagedPackage | undefined, effect: Effect.Effect<A, E, R>) =>
      staged ? Effect.tapError(effect, () => store.discard(staged.dir)) : effect;

    /**
     * Read a package's manifest, config and permission request (an archive is staged to read it). An upgrade names
     * the version it replaces: the package must hold that plugin before its config is tried as the default. A
     * preview without a config leaves the permissions' `{field}` templates unfilled rather than require one.
     */
    const readPackage = Effect.fn("PluginLifecycle.readPackage")(function* (
      path: string,
      rawConfig: unknown,
      options: { readonly replaces?: InstalledPlugin; readonly preview?: boolean } = {},
    ) {
      const { source, kind } = yield* locatePackage(path);
      const staged = kind === "folder" ? undefined : yield* store.stage(source);
      const root = staged?.dir ?? source;
      const { replaces } = options;
      return yield* discardOnError(
        staged,
        namedBySource(
          staged,
          Effect.gen(function* () {
            const manifest = yield* readManifest(root, deps.checker);
            // Before the old config is tried: another plugin's schema would only report it as invalid.
            if (replaces && manifest.name !== replaces.name) {
              return yield* new InvalidInputError({
                message: `Cannot upgrade "${replaces.name}": "${source}" holds plugin "${manifest.name}"`,
              });
            }
            const unconfigured = options.preview === true && rawConfig === undefined;
            const config = unconfigured ? {} : yield* validateConfig(manifest, rawConfig ?? replaces?.config);
            const requested = yield* requestedPermissions(manifest, config, { keepTemplates: unconfigured });
            return { source, kind, root, staged, manifest, config, requested } as Package;
          }),
        ),
      );
    });

    /**
     * Copy a package into staging (a folder is checked in place first, for clear
     * errors), point its SDK imports at Keel's SDK, and check the stored copy's
     * module graph: the guarantee rests on this last check.
     */
    const finishPackage = Effect.fn("PluginLifecycle.finishPackage")(function* (pkg: Package) {
      const name = pkg.manifest.name;
      const noMod = new InvalidInputError({ message: `Cannot install plugin "${name}": no mod.ts in "${pkg.source}"` });
      if (pkg.kind === "folder") {
        yield* Effect.tryPromise({ try: () => Deno.stat(`${pkg.source}/mod.ts`), catch: () => noMod });
        yield* checkModuleGraph(`${pkg.source}/mod.ts`, [pkg.source, sdkDir], pkg.manifest.npm);
      }
      const staged = pkg.staged ?? (yield* store.stage(pkg.source));
      yield* discardOnError(
        staged,
        namedBySource(
          staged,
          Effect.gen(function* () {
            yield* Effect.tryPromise({ try: () => Deno.stat(`${staged.dir}/mod.ts`), catch: () => noMod });
            if (pkg.kind === "folder") {
              // The folder may have changed since it was read: what is stored must be what was checked.
              const copied = yield* readManifest(staged.dir, deps.checker);
              if ((yield* manifestHash(copied)) !== (yield* manifestHash(pkg.manifest))) {
                return yield* new ConflictError({
                  message:
                    `Cannot install plugin "${name}": "${pkg.source}/plugin.json" changed while it was installed`,
                });
              }
            }
            yield* store.pinSdkImports(staged.dir);
            yield* checkModuleGraph(`${staged.dir}/mod.ts`, [staged.dir, sdkDir], pkg.manifest.npm);
          }),
        ),
      );
      return staged;
    });

    /** An effect or workflow name another plugin's active version already serves. */
    const nameClash = (manifest: Manifest) => {
      for (const other of registry.actives()) {
        if (other.name === manifest.name) continue;
        const effect = manifest.effects.find((e) => other.manifest.effects.some((o) => o.name === e.name));
        if (effect) {
          return new ConflictError({
            message:
              `Plugin "${manifest.name}" declares effect "${effect.name}", which plugin "${other.name}" provides`,
          });
        }
        const flow = manifest.workflows.find((w) => other.manifest.workflows.some((o) => o.name === w.name));
        if (flow) {
          return new ConflictError({
            message: `Plugin "${manifest.name}" declares workflow "${flow.name}", which plugin "${other.name}" offers`,
          });
        }
      }
      return undefined;
    };

    /** Start a version and check it implements everything it declares. */
    const startChecked = Effect.fn("PluginLifecycle.startChecked")(function* (plugin: InstalledPlugin) {
      const ready = yield* deps.launch(plugin);
      const missing = [
        ...plugin.manifest.effects.map((e) => e.name).filter((n) => !ready.effects.includes(n)),
        ...plugin.manifest.workflows.map((w) => w.name).filter((n) => !ready.workflows.includes(n)),
      ];
      if (missing.length) {
        deps.stop(plugin, "it does not implement what it declares");
        return yield* new InvalidInputError({
          message: `Plugin "${plugin.name}" declares "${missing[0]}" in plugin.json but mod.ts does not implement it`,
        });
      }
    });

    const isolationFor = (pkg: Package, override: unknown) =>
      override !== undefined && override !== "worker" && override !== "process"
        ? Effect.fail(
          new InvalidInputError({
            message: `Cannot install plugin "${pkg.manifest.name}": isolation must be "worker" or "process"`,
          }),
        )
        : Effect.succeed(deps.isolationOf(pkg.source, pkg.manifest, override));

    const describeVersions = (name: string) =>
      registry.versions(name).map((p) => `${p.version} ${p.activation.replace("_", " ")}`).join(", ");

    /** Audit an operator override of refused requests: who gave what, for which manifest. */
    const auditOverride = (plugin: InstalledPlugin, action: string, actor: string) => {
      const overrides = plugin.grant.overrides ?? [];
      return overrides.length
        ? deps.audit("plugin.permission_override", actor, {
          plugin: plugin.name,
          version: plugin.version,
          action,
          overrides,
          what: overrides.map((o) => `${o}: ${overrideReason(o)}`),
          manifestHash: plugin.manifestHash,
          packageHash: plugin.packageHash,
          isolation: plugin.isolation,
        })
        : Effect.void;
    };
    const withOverrides = (grant: Grant, overrides: ReadonlyArray<string>): Grant =>
      overrides.length ? { ...grant, overrides: [...overrides] } : grant;

    const install = Effect.fn("PluginLifecycle.install")(function* (request: InstallRequest, actor: string) {
      const pkg = yield* readPackage(request.path, request.config);
      const { name, version } = pkg.manifest;
      const overrides = yield* discardOnError(
        pkg.staged,
        checkOverride(pkg.manifest, pkg.requested, request.override),
      );
      const grant = withOverrides(
        yield* discardOnError(pkg.staged, checkGrant(pkg.manifest, pkg.requested, request.grant)),
        overrides,
      );
      const same = registry.get(name, version);
      // The identical package again keeps where it runs, unless the operator says otherwise: its default depends on
      // where it comes from, and installing it from another place must not move it into Keel's process unasked.
      const isolation = same && request.isolation === undefined
        ? same.isolation
        : yield* discardOnError(pkg.staged, isolationFor(pkg, request.isolation));
      if (!same && registry.versions(name).length) {
        if (pkg.staged) yield* store.discard(pkg.staged.dir);
        return yield* new ConflictError({
          message: `Plugin "${name}" is already installed (${
            describeVersions(name)
          }): upgrade it to ${version} with "keel plugin upgrade" (POST /api/plugins/${name}/upgrade)`,
          details: { versions: registry.versions(name).map((p) => p.version) },
        });
      }
      const staged = yield* finishPackage(pkg);
      // The stored copy is what runs: a re-install must describe it exactly (its files, and so its manifest).
      if (
        same && (same.packageHash !== staged.packageHash || same.manifestHash !== (yield* manifestHash(pkg.manifest)))
      ) {
        yield* store.discard(staged.dir);
        return yield* new ConflictError({
          message:
            `Plugin "${name}" ${version} is already installed from "${same.source}" with other files: give the new files a new version and upgrade, or remove ${version} first`,
        });
      }
      const clash = nameClash(pkg.manifest);
      if (clash) {
        yield* store.discard(staged.dir);
        return yield* clash;
      }
      let path: string;
      if (same) {
        yield* store.discard(staged.dir);
        path = same.path;
      } else {
        path = yield* store.commit(staged, name, version);
      }
      const at = yield* now;
      const plugin: InstalledPlugin = {
        name,
        version,
        path,
        source: pkg.source,
        packageHash: staged.packageHash,
        manifest: pkg.manifest,
        manifestHash: yield* manifestHash(pkg.manifest),
        requested: pkg.requested,
        grant,
        config: pkg.config,
        activation: "active",
        isolation,
        installedAt: same?.installedAt ?? at,
        installedBy: same?.installedBy ?? actor,
        grantedAt: at,
        grantedBy: actor,
      };
      // Start it before recording it: a plugin that cannot start is not installed.
      // A plugin refused here leaves nothing: not its stored copy, nor (the first of its name) what it wrote at start.
      yield* startChecked(plugin).pipe(Effect.tapError(() =>
        same ? Effect.void : Effect.andThen(
          store.removeVersion(name, version),
          registry.versions(name).length ? Effect.void : deps.purgeData(name),
        )
      ));
      const previous = registry.active(name);
      const demoted = previous && previous.version !== version
        ? [{ ...previous, activation: "inactive" as const }]
        : [];
      yield* registry.commit([plugin, ...demoted]);
      yield* deps.audit("plugin.installed", actor, {
        plugin: name,
        version,
        source: pkg.source,
        manifestHash: plugin.manifestHash,
        packageHash: plugin.packageHash,
        grant,
        requested: pkg.requested,
        isolation,
      });
      yield* auditOverride(plugin, "install", actor);
      return plugin;
    });

    /** The version an upgrade is compared with: the active one, else the newest granted one. */
    const baseline = (name: string) => {
      const versions = registry.versions(name);
      if (!versions.length) {
        return Effect.fail(new NotFoundError({ message: `No plugin named "${name}" is installed` }));
      }
      const base = registry.active(name) ?? versions.filter((p) => p.activation === "inactive").at(-1);
      return base ? Effect.succeed(base) : Effect.fail(
        new ConflictError({
          message: `Plugin "${name}" has no granted version to upgrade from: grant one with "keel plugin grant"`,
        }),
      );
    };

    const readUpgrade = Effect.fn("PluginLifecycle.readUpgrade")(function* (request: UpgradeRequest) {
      const current = yield* baseline(request.name);
      const pkg = yield* readPackage(request.path, request.config, { replaces: current });
      const problem = registry.get(request.name, pkg.manifest.version)
        ? new ConflictError({
          message: `Plugin "${request.name}" ${pkg.manifest.version} is already installed (${
            registry.get(request.name, pkg.manifest.version)!.activation.replace("_", " ")
          }): an upgrade needs a new version`,
        })
        : current.manifest.kind !== pkg.manifest.kind
        ? new ConflictError({
          message:
            `Cannot upgrade "${request.name}" from a ${current.manifest.kind} to a ${pkg.manifest.kind}: remove it and install the new one`,
        })
        : undefined;
      if (problem) {
        if (pkg.staged) yield* store.discard(pkg.staged.dir);
        return yield* problem;
      }
      const isolation = yield* discardOnError(pkg.staged, isolationFor(pkg, request.isolation));
      const diff = diffManifests(current, { ...pkg, isolation });
      return { current, pkg, diff, isolation };
    });

    /**
     * The overrides an upgrade states, checked. An override is never carried: one the new version needs must be
     * stated with this upgrade, or the upgrade waits for a grant (none now). A malformed override, or one naming
     * what the plugin does not request, is refused either way. A dry run checks the same.
     */
    const upgradeOverrides = (pkg: Effect.Success<ReturnType<typeof readPackage>>, override: unknown) =>
      Effect.gen(function* () {
        const needed = pkg.requested.needsOverride ?? [];
        const stated = Array.isArray(override) ? override : [];
        const unstated = needed.filter((item) => !stated.includes(item));
        if (!unstated.length) {
          return { overrides: yield* checkOverride(pkg.manifest, pkg.requested, override), unstated };
        }
        if (override !== undefined) {
          yield* checkOverride(
            pkg.manifest,
            pkg.requested,
            Array.isArray(override) ? [...needed, ...override] : override,
          );
        }
        return { overrides: [], unstated };
      });

    const previewUpgrade = Effect.fn("PluginLifecycle.previewUpgrade")(function* (request: UpgradeRequest) {
      const { current, pkg, diff } = yield* readUpgrade(request);
      yield* discardOnError(pkg.staged, upgradeOverrides(pkg, request.override));
      if (pkg.staged) yield* store.discard(pkg.staged.dir);
      return {
        manifest: pkg.manifest,
        requested: pkg.requested,
        from: current.version,
        diff,
        carriedGrant: carryGrant(current.grant, pkg.requested),
      } satisfies UpgradePreview;
    });

    const upgrade = Effect.fn("PluginLifecycle.upgrade")(function* (request: UpgradeRequest, actor: string) {
      const { current, pkg, diff, isolation } = yield* readUpgrade(request);
      const { name, version } = pkg.manifest;
      const { overrides, unstated } = yield* discardOnError(pkg.staged, upgradeOverrides(pkg, request.override));
      const staged = yield* finishPackage(pkg);
      const clash = nameClash(pkg.manifest);
      if (clash) {
        yield* store.discard(staged.dir);
        return yield* clash;
      }
      const path = yield* store.commit(staged, name, version);
      const at = yield* now;
      const base = {
        name,
        version,
        path,
        source: pkg.source,
        packageHash: staged.packageHash,
        manifest: pkg.manifest,
        manifestHash: yield* manifestHash(pkg.manifest),
        requested: pkg.requested,
        config: pkg.config,
        isolation,
        installedAt: at,
        installedBy: actor,
      };
      const event = {
        plugin: name,
        version,
        from: current.version,
        source: pkg.source,
        manifestHash: base.manifestHash,
        packageHash: base.packageHash,
        changes: diff.lines,
        isolation,
      };
      if (diff.escalates || unstated.length) {
        const overrideLines = diff.escalates
          ? []
          : unstated.map((o) => `needs the operator override "${o}" stated again (${overrideReason(o)})`);
        const plugin: InstalledPlugin = {
          ...base,
          grant: EMPTY_GRANT,
          activation: "needs_grant",
          pendingChanges: [...diff.lines, ...overrideLines],
        };
        yield* registry.commit([plugin]).pipe(Effect.tapError(() => store.removeVersion(name, version)));
        yield* deps.audit("plugin.upgrade_held", actor, {
          ...event,
          reason: diff.escalates
            ? "it asks for more than the serving version was granted"
            : "it needs an operator override that this upgrade did not state",
          ...(unstated.length ? { overrideNeeded: unstated } : {}),
          permissionsAdded: diff.permissions.added,
          effectsAdded: diff.effects.added,
          effectsChanged: diff.effects.changed,
          usesAdded: diff.uses.added,
          recordsAdded: diff.records.added,
          npmAdded: diff.npm.added,
          ...(diff.weakerIsolation ? { weakerIsolation: diff.weakerIsolation } : {}),
        });
        return { plugin, from: current.version, diff } satisfies UpgradeResult;
      }
      const grant = withOverrides(carryGrant(current.grant, pkg.requested), overrides);
      const plugin: InstalledPlugin = { ...base, grant, activation: "active", grantedAt: at, grantedBy: actor };
      yield* startChecked(plugin).pipe(Effect.tapError(() => store.removeVersion(name, version)));
      const demoted = current.activation === "active" ? [{ ...current, activation: "inactive" as const }] : [];
      yield* registry.commit([plugin, ...demoted]).pipe(
        Effect.tapError(() =>
          Effect.andThen(Effect.sync(() => deps.stop(plugin, "upgrade failed")), store.removeVersion(name, version))
        ),
      );
      yield* deps.audit("plugin.upgraded", actor, { ...event, grant, carriedGrant: true });
      yield* auditOverride(plugin, "upgrade", actor);
      return { plugin, from: current.version, diff } satisfies UpgradeResult;
    });

    const grantVersion = Effect.fn("PluginLifecycle.grant")(function* (
      name: string,
      version: string,
      rawGrant: unknown,
      actor: string,
      rawOverride?: unknown,
    ) {
      const target = registry.get(name, version);
      if (!target) {
        return yield* new NotFoundError({
          message: registry.versions(name).length
            ? `Plugin "${name}" has no version ${version} (installed: ${describeVersions(name)})`
            : `No plugin named "${name}" is installed`,
        });
      }
      const overrides = yield* checkOverride(target.manifest, target.requested, rawOverride);
      const grant = withOverrides(yield* checkGrant(target.manifest, target.requested, rawGrant), overrides);
      const clash = nameClash(target.manifest);
      if (clash) return yield* clash;
      const previous = registry.active(name);
      const at = yield* now;
      const { pendingChanges: _p, ...rest } = target;
      const plugin: InstalledPlugin = { ...rest, grant, activation: "active", grantedAt: at, grantedBy: actor };
      yield* startChecked(plugin);
      const demoted = previous && previous.version !== version
        ? [{ ...previous, activation: "inactive" as const }]
        : [];
      yield* registry.commit([plugin, ...demoted]);
      yield* deps.audit("plugin.granted", actor, {
        plugin: name,
        version,
        manifestHash: plugin.manifestHash,
        grant,
        requested: plugin.requested,
        was: target.activation,
        ...(demoted.length ? { replaces: demoted[0].version } : {}),
      });
      yield* auditOverride(plugin, "grant", actor);
      return plugin;
    });

    const remove = Effect.fn("PluginLifecycle.remove")(function* (request: RemoveRequest, actor: string) {
      const { name, version } = request;
      const versions = registry.versions(name);
      if (!versions.length) return yield* new NotFoundError({ message: `No plugin named "${name}" is installed` });
      const targets = version === undefined ? versions : versions.filter((p) => p.version === version);
      if (!targets.length) {
        return yield* new NotFoundError({
          message: `Plugin "${name}" has no version ${version} (installed: ${describeVersions(name)})`,
        });
      }
      if (version !== undefined && targets[0].activation === "active" && versions.length > 1) {
        return yield* new ConflictError({
          message:
            `Plugin "${name}" ${version} is the active version: activate another one first ("keel plugin grant ${name} VERSION"), or remove the whole plugin`,
        });
      }
      const pinnedRuns = yield* request.pinnedRuns;
      if (pinnedRuns.length && !request.force) {
        return yield* new ConflictError({
          message: `Plugin "${name}"${version ? ` ${version}` : ""} is pinned by ${pinnedRuns.length} run${
            pinnedRuns.length === 1 ? "" : "s"
          } still running or waiting (${
            pinnedRuns.slice(0, 3).join(", ")
          }): wait for them, or force the removal (those runs are then cancelled)`,
          details: { runs: pinnedRuns },
        });
      }
      yield* registry.commit([], targets);
      for (const p of targets) {
        deps.stop(p, "removed");
        yield* store.removeVersion(name, p.version);
      }
      const whole = targets.length === versions.length;
      if (whole) yield* deps.purgeData(name);
      yield* deps.audit("plugin.removed", actor, {
        plugin: name,
        versions: targets.map((p) => p.version),
        whole,
        force: request.force === true,
        pinnedRuns,
      });
      return { name, removed: targets.map((p) => p.version), whole };
    });

    const locked = <A, E>(effect: Effect.Effect<A, E>) => lock.withPermit(effect);
    return {
      readPackage,
      discardPackage: (pkg: { staged?: StagedPackage }) => pkg.staged ? store.discard(pkg.staged.dir) : Effect.void,
      install: (request: InstallRequest, actor: string) => locked(install(request, actor)),
      previewUpgrade: (request: UpgradeRequest) => locked(previewUpgrade(request)),
      upgrade: (request: UpgradeRequest, actor: string) => locked(upgrade(request, actor)),
      grant: (name: string, version: string, grant: unknown, actor: string, override?: unknown) =>
        locked(grantVersion(name, version, grant, actor, override)),
      remove: (request: RemoveRequest, actor: string) => locked(remove(request, actor)),
      versionKey,
    };
  });

/** The lifecycle operations the plugin host exposes. */
export type Lifecycle = Effect.Success<ReturnType<typeof makeLifecycle>>;

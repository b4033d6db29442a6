/**
 * @module
 * The plugin host: installs, upgrades, grants and removes plugins (folders or
 * `.tar.gz` archives, several versions side by side: `lifecycle.ts`), runs
 * each in a Deno Worker, or in a child process under bubblewrap, whose
 * permissions are exactly its grant (every key passed, nothing inherited),
 * and speaks the RPC protocol to it. A crashed or hung plugin is retired and
 * started again on its next call; the host and the other plugins keep
 * serving. Health checks run in the background (`health.ts`).
 */
import { Context, Effect, Layer } from "effect";
import { KeelConfig } from "../config/mod.ts";
import {
  ConflictError,
  fromErrorBody,
  type GrantError,
  InvalidInputError,
  type KeelError,
  type ManifestError,
  type ModuleGraphError,
  NotFoundError,
  PermissionDeniedError,
  PluginBusyError,
  PluginCrashedError,
  PluginFailedError,
  type PluginPackageError,
  PluginTimeoutError,
  RunSuspendedError,
  type StoreError,
} from "../errors/mod.ts";
import {
  type EffectDecl,
  type Grant,
  makeSchemaChecker,
  type Manifest,
  type Permissions,
  type PreparedSchema,
  workerPermissions,
  type WorkflowDecl,
} from "../manifest/mod.ts";
import { Kv } from "../store/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import type { JournalEntry } from "../sdk/mod.ts";
import { SUSPENDED } from "../sdk/mod.ts";
import { CallFailure, type Connection, type HostCallHandler, type Isolation, openConnection } from "./_connection.ts";
import { RestartBackoff } from "./_backoff.ts";
import { type Activation, PluginRegistry, versionKey } from "./registry.ts";
import { makePluginStore } from "./store.ts";
import {
  makeLifecycle,
  type RemoveRequest,
  type UpgradePreview,
  type UpgradeRequest,
  type UpgradeResult,
} from "./lifecycle.ts";
import { DEFAULT_HEALTH, type HealthStatus, type HealthTarget, startHealthChecks } from "./health.ts";

/** A plugin version as recorded in the registry (`["plugin", name, version]`, see `registry.ts`). */
export interface InstalledPlugin {
  readonly name: string;
  readonly version: string;
  /** Keel's stored copy, `<data dir>/plugins/<name>/<version>`: what runs (see `store.ts`). */
  readonly path: string;
  /** The folder or `.tar.gz` archive it was installed from. */
  readonly source: string;
  /** SHA-256 of the package's paths and contents as installed. */
  readonly packageHash: string;
  readonly manifest: Manifest;
  readonly manifestHash: string;
  readonly requested: Permissions;
  /** What the operator granted, recorded with `manifestHash` (empty while `needs_grant`). */
  readonly grant: Grant;
  readonly config: Record<string, unknown>;
  /** `active` serves; `inactive` serves only runs pinned to it; `needs_grant` never runs until granted. */
  readonly activation: Activation;
  readonly installedAt: string;
  readonly installedBy: string;
  /** Who granted it and when (for an upgrade that carried the old grant: who upgraded). */
  readonly grantedAt?: string;
  readonly grantedBy?: string;
  /** For `needs_grant`: what the upgrade changes, in plain words. */
  readonly pendingChanges?: ReadonlyArray<string>;
  /** `worker` or `process`, fixed at install; absent in records older than isolation modes (see `isolationOf`). */
  readonly isolation?: Isolation;
}

/** A registry entry with its live state. */
export interface PluginStatus extends Omit<InstalledPlugin, "config"> {
  /** `unhealthy`: it failed several health checks in a row and is being restarted. */
  readonly state: "running" | "stopped" | "crashed" | "unhealthy";
  readonly restarts: number;
  readonly lastError?: string;
  /** How it runs: a Worker in the host, or its own sandboxed process. */
  readonly isolation: Isolation;
  /** What confines the running instance: Deno's permissions only (`deno-permissions`, `none`) or `bwrap` too. */
  readonly sandbox?: "deno-permissions" | "bwrap" | "none";
  /** The last periodic health check (see `health.ts`); absent until the first one. */
  readonly health?: HealthStatus;
}

/** What `install` needs. */
export interface InstallRequest {
  readonly path: string;
  readonly grant: unknown;
  readonly config?: unknown;
  /** Operator override of the isolation mode (else the manifest's, else by where the plugin comes from). */
  readonly isolation?: unknown;
  /** The operator's explicit override of requests Keel refuses by default (`["run:git", "net:*"]`), audited. */
  readonly override?: unknown;
}

/** Everything install can fail with. */
export type InstallError =
  | ManifestError
  | GrantError
  | InvalidInputError
  | ModuleGraphError
  | PluginPackageError
  | PluginCrashedError
  | PluginTimeoutError
  | ConflictError
  | NotFoundError
  | StoreError;

/**
 * What a plugin call can fail with: the plugin crashed, hung, was denied or
 * failed; or a workflow passed on a Keel error it got from the host (an
 * effect denied by policy, say), which keeps its own tag.
 */
export type CallError =
  | PluginCrashedError
  | PluginTimeoutError
  | PluginFailedError
  | PermissionDeniedError
  | Exclude<KeelError, RunSuspendedError>;

interface Live {
  conn?: Connection;
  restarts: number;
  lastError?: string;
  crashed: boolean;
  validators: Map<string, PreparedSchema>;
  backoff?: RestartBackoff;
}

/** The plugin host service. */
export class PluginHost extends Context.Service<PluginHost, {
  /** Read and check a plugin folder or archive without installing it (for the install prompt). */
  preview(path: string, config?: unknown): Effect.Effect<{ manifest: Manifest; requested: Permissions }, InstallError>;
  /** Install a plugin not installed yet, from a folder or `.tar.gz` archive, with the operator's grant. */
  install(request: InstallRequest, actor: string): Effect.Effect<InstalledPlugin, InstallError>;
  /** Install a new version of an installed plugin; it waits for a grant if it asks for more (see `lifecycle.ts`). */
  upgrade(request: UpgradeRequest, actor: string): Effect.Effect<UpgradeResult, InstallError>;
  /** What an upgrade would change, without storing anything. */
  previewUpgrade(request: UpgradeRequest): Effect.Effect<UpgradePreview, InstallError>;
  /** Grant one version (recorded with its manifest hash, with the operator's override if it needs one) and activate it. */
  grant(
    name: string,
    version: string,
    grant: unknown,
    actor: string,
    override?: unknown,
  ): Effect.Effect<InstalledPlugin, InstallError>;
  /** Remove one version or the whole plugin, with its stored files; refused while runs pin it, unless forced. */
  remove(
    request: RemoveRequest,
    actor: string,
  ): Effect.Effect<{ name: string; removed: string[]; whole: boolean }, NotFoundError | ConflictError | StoreError>;
  /** Every installed version, oldest first per name, with its live state. */
  readonly list: Effect.Effect<PluginStatus[]>;
  /** The active version of a plugin, or one exact version (a run's pinned one). */
  get(name: string, version?: string): Effect.Effect<InstalledPlugin, NotFoundError>;
  /** The connector and declaration serving an effect name. */
  findEffect(effect: string): Effect.Effect<{ plugin: InstalledPlugin; decl: EffectDecl }, NotFoundError>;
  /** The agent and declaration serving a workflow name. */
  findWorkflow(workflow: string): Effect.Effect<{ plugin: InstalledPlugin; decl: WorkflowDecl }, NotFoundError>;
  /**
   * Validate a value against a declared JSON Schema (cached per plugin): its violations as lines. A schema with
   * patterns is checked off the main thread under a deadline, and a check that overruns it is one line saying so.
   */
  validate(
    plugin: InstalledPlugin,
    key: string,
    schema: Record<string, unknown>,
    value: unknown,
  ): Effect.Effect<string[]>;
  callEffect(
    plugin: InstalledPlugin,
    effect: string,
    args: unknown,
    idempotencyKey: string,
  ): Effect.Effect<unknown, CallError>;
  runWorkflow(
    plugin: InstalledPlugin,
    workflow: string,
    runId: string,
    input: unknown,
    journal: ReadonlyArray<JournalEntry>,
    handler: HostCallHandler,
  ): Effect.Effect<unknown, CallError | RunSuspendedError>;
  /**
   * `runWorkflow` in plain code, for a resumed run's hot path: when `name` `version` is installed and its
   * plugin is live and ready, the call is posted before this returns, and the promise fails with what
   * `runWorkflow` fails with. Otherwise undefined (nothing was sent): the caller takes `runWorkflow`.
   */
  runWorkflowNow(
    name: string,
    version: string,
    workflow: string,
    runId: string,
    input: unknown,
    journal: ReadonlyArray<JournalEntry>,
    handler: (plugin: InstalledPlugin) => HostCallHandler,
  ): Promise<unknown> | undefined;
}>()("keel/plugins/PluginHost") {
  /** Plugin host with its registry in Deno KV. */
  static readonly layer = Layer.effect(
    PluginHost,
    Effect.gen(function* () {
      const config = yield* KeelConfig;
      const { kv } = yield* Kv;
      const audit = yield* Audit;
      const live = new Map<string, Live>();
      /**
       * Set when Keel shuts down and its plugins are stopped: no Worker or process starts after that (one would outlive
       * the host and act for a Keel that has closed), and every call that fails from then on is marked `shutdown`.
       */
      let closing = false;
      const shuttingDown = (): CallFailure =>
        new CallFailure("crashed", { tag: "PluginCrashedError", message: "Keel is shutting down" });
      const dataRoot = config.dataDir === ":memory:"
        ? Deno.makeTempDirSync({ prefix: "keel-plugins-" })
        : `${config.dataDir}/plugin-data`;
      const sdkDir = `${config.root}/core/sdk`;
      if (config.dataDir === ":memory:") {
        yield* Effect.addFinalizer(() =>
          Effect.ignore(Effect.try(() => Deno.removeSync(dataRoot, { recursive: true })))
        );
      }

      const registry = yield* PluginRegistry.load(kv);
      const checker = yield* makeSchemaChecker();
      const storeRoot = config.dataDir === ":memory:"
        ? Deno.makeTempDirSync({ prefix: "keel-store-" })
        : `${config.dataDir}/plugins`;
      if (config.dataDir === ":memory:") {
        yield* Effect.addFinalizer(() =>
          Effect.ignore(Effect.try(() => Deno.removeSync(storeRoot, { recursive: true })))
        );
      }
      const store = makePluginStore(storeRoot, sdkDir);
      yield* store.sweep;
      // What a crash in the middle of an install left: stored versions, and data of plugins, the registry does not
      // hold (the registry is written last). A plugin installed later under that name starts with nothing of it.
      const orphans = async (dir: string, keep: (name: string, entry: string) => boolean, nested: boolean) => {
        for await (const n of Deno.readDir(dir)) {
          if (!n.isDirectory || n.name.startsWith(".")) continue;
          if (!nested) {
            if (!keep(n.name, "")) await Deno.remove(`${dir}/${n.name}`, { recursive: true });
            continue;
          }
          for await (const v of Deno.readDir(`${dir}/${n.name}`)) {
            if (!keep(n.name, v.name)) await Deno.remove(`${dir}/${n.name}/${v.name}`, { recursive: true });
          }
          await Deno.remove(`${dir}/${n.name}`).catch(() => {}); // only if it is empty now
        }
      };
      yield* Effect.ignore(Effect.tryPromise(() => orphans(storeRoot, (n, v) => !!registry.get(n, v), true)));
      const known = (name: string) => registry.versions(name).length > 0;
      yield* Effect.ignore(Effect.tryPromise(() => orphans(dataRoot, known, false)));
      yield* Effect.ignore(Effect.tryPromise(() => orphans(`${dataRoot}/.deno-cache`, known, false)));

      const liveOf = (name: string): Live => {
        let l = live.get(name);
        if (!l) {
          l = { restarts: 0, crashed: false, validators: new Map() };
          live.set(name, l);
        }
        return l;
      };
      const pluginDataDir = (name: string) => {
        const dir = `${dataRoot}/${name}`;
        Deno.mkdirSync(dir, { recursive: true });
        // Absolute and real: it becomes --allow-read/--allow-write flags and bwrap mounts.
        return Deno.realPathSync(dir);
      };
      const realRoot = Deno.realPathSync(config.root);
      /** The operator's choice at install, else the manifest's, else by origin: from outside Keel's root, a process. */
      const isolationOf = (plugin: Pick<InstalledPlugin, "path" | "manifest" | "isolation">): Isolation =>
        plugin.isolation ?? plugin.manifest.isolation ??
          (`${plugin.path}/`.startsWith(`${realRoot}/`) ? "worker" : "process");
      /** Start a plugin in its isolation mode; its start (and how it is sandboxed) is audited. */
      const connect = (plugin: InstalledPlugin): Connection => {
        const dataDir = pluginDataDir(plugin.name);
        const conn = openConnection({
          isolation: isolationOf(plugin),
          name: `${plugin.name}@${plugin.version}`,
          entry: `${plugin.path}/mod.ts`,
          folder: plugin.path,
          sdkDir: Deno.realPathSync(sdkDir),
          dataDir,
          cacheDir: `${dataRoot}/.deno-cache/${plugin.name}`,
          permissions: workerPermissions(plugin.grant, dataDir),
          config: plugin.config,
          startTimeoutMs: Math.max(config.rpcTimeoutMs, 5000),
          npm: plugin.manifest.npm.length > 0,
          log: (line) => Effect.runFork(Effect.logInfo(line)),
        });
        conn.ready.then(() => {
          const sandbox = conn.sandbox;
          Effect.runFork(Effect.ignore(Effect.gen(function* () {
            // A missing sandbox layer is loud: logged as a warning and audited with the start.
            if (sandbox.warnings?.length) {
              yield* Effect.logWarning(
                `Plugin "${plugin.name}" runs with less isolation: ${sandbox.warnings.join("; ")}`,
              );
            }
            yield* audit.append({
              type: "plugin.started",
              actor: `plugin:${plugin.name}`,
              data: { plugin: plugin.name, version: plugin.version, ...sandbox },
            });
          })));
        }, () => {});
        return conn;
      };
      /** The plugin's live connection; one that died is started again once its restart backoff allows. */
      const started = async (plugin: InstalledPlugin): Promise<Connection> => {
        if (closing) throw shuttingDown();
        const l = liveOf(versionKey(plugin));
        const dead = l.conn && !l.conn.alive ? l.conn : undefined;
        if (dead) {
          const backoff = l.backoff ??= new RestartBackoff();
          const wait = backoff.wait(dead, Date.now());
          // A call waits out a short backoff; a plugin in a crash loop fails its calls at once instead.
          if (wait > 5000) {
            throw new CallFailure("crashed", {
              tag: "PluginCrashedError",
              message:
                `Plugin "${plugin.name}" crashed ${backoff.crashes} times in a row; it may restart in ${wait} ms`,
            });
          }
          if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          // Keel may have shut down while this call waited: it starts nothing then.
          if (closing) throw shuttingDown();
        }
        return start(plugin);
      };

      const start = (plugin: InstalledPlugin): Connection => {
        const l = liveOf(versionKey(plugin));
        if (l.conn?.alive) return l.conn;
        if (l.conn) l.restarts++;
        const conn = connect(plugin);
        l.conn = conn;
        l.crashed = false;
        conn.onDeath = (error) => {
          l.crashed = true;
          l.lastError = error.message;
          Effect.runFork(
            audit.append({
              type: "plugin.crashed",
              actor: `plugin:${plugin.name}`,
              data: { plugin: plugin.name, version: plugin.version, error },
            })
              .pipe(Effect.ignore),
          );
        };
        return conn;
      };
      yield* Effect.addFinalizer(() =>
        Effect.promise(() => {
          closing = true;
          const conns = [...live.values()].flatMap((l) => (l.conn ? [l.conn] : []));
          for (const conn of conns) conn.kill(shuttingDown().wire);
          // Wait (briefly) until plugin processes are reaped, so none outlives the host.
          let timer: ReturnType<typeof setTimeout> | undefined;
          const late = new Promise((resolve) => (timer = setTimeout(resolve, 2000)));
          return Promise.race([Promise.all(conns.map((c) => c.closed)), late]).finally(() => clearTimeout(timer));
        })
      );

      const healthTarget = (plugin: InstalledPlugin): HealthTarget => ({
        key: `${plugin.name}@${plugin.version}`,
        plugin: plugin.name,
        version: plugin.version,
        ...(plugin.manifest.health ?? DEFAULT_HEALTH),
        ping: (ms) =>
          Effect.tryPromise({
            try: () => {
              const l = live.get(versionKey(plugin));
              if (!l?.conn?.alive) throw new Error(`Plugin is not running: ${l?.lastError ?? "stopped"}`);
              return l.conn.request({ t: "health" }, ms);
            },
            catch: (error) => error,
          }),
        restart: (reason) =>
          Effect.sync(() => {
            if (closing) return;
            live.get(versionKey(plugin))?.conn?.kill({ tag: "PluginCrashedError", message: reason });
            start(plugin);
          }),
      });
      // Health checks cover every plugin started since Keel started; one that never ran is not woken up for them.
      const health = yield* startHealthChecks(
        Effect.sync(() => [...registry.values()].filter((p) => live.get(versionKey(p))?.conn).map(healthTarget)),
      );

      const toCallError = (plugin: string, error: unknown): CallError => {
        if (!(error instanceof CallFailure)) {
          return new PluginCrashedError({ message: `Plugin "${plugin}" failed: ${String(error)}` });
        }
        const w = error.wire;
        if (error.reason === "crashed" && closing) {
          // Cut off by the shutdown, not a crash of the plugin's own: the call's outcome is for the next start to settle.
          return new PluginCrashedError({ message: w.message, details: { plugin, shutdown: true } });
        }
        if (error.reason === "timeout") return new PluginTimeoutError({ message: w.message, details: { plugin } });
        if (error.reason === "crashed") return new PluginCrashedError({ message: w.message, details: { plugin } });
        if (error.reason === "busy") return new PluginBusyError({ message: w.message, details: { plugin } });
        if (w.tag === "PermissionDenied" || w.tag === "NotCapable") {
          return new PermissionDeniedError({
            message: `Plugin "${plugin}" was denied: ${w.message}`,
            details: { plugin, tag: w.tag },
          });
        }
        // A Keel error the plugin passed on (a workflow failing because an effect was denied) keeps its tag.
        // Only an agent passes Keel errors on; a connector claiming one (PolicyDeniedError, say) keeps it as a detail.
        const keel = registry.versions(plugin)[0]?.manifest.kind === "agent" ? fromErrorBody(w) : undefined;
        if (keel && keel._tag !== "RunSuspendedError") return keel;
        return new PluginFailedError({
          message: `Plugin "${plugin}" failed: ${w.message}`,
          // `retryable` is the plugin's own word on whether trying again may help (`PluginError.unavailable` …).
          details: {
            plugin,
            tag: w.tag,
            details: w.details,
            ...(w.retryable === undefined ? {} : { retryable: w.retryable }),
            // The plugin's word that the call may have taken effect: an irreversible effect then asks the operator.
            ...(w.outcomeUnknown === true ? { outcomeUnknown: true } : {}),
          },
        });
      };

      /** What a workflow call fails with: its run suspended (parked on a gate), or the call's error. */
      const workflowError = (plugin: string, error: unknown): CallError | RunSuspendedError =>
        error instanceof CallFailure && error.reason === "failed" && error.wire.tag === SUSPENDED
          ? new RunSuspendedError({ message: error.wire.message })
          : toCallError(plugin, error);

      const call = (plugin: InstalledPlugin, f: (conn: Connection) => Promise<unknown>) =>
        Effect.tryPromise({
          try: async () => {
            const conn = await started(plugin);
            await conn.ready;
            return await f(conn);
          },
          catch: (error) => toCallError(plugin.name, error),
        });

      /** Stop a version's Worker or process on purpose: not a crash, so not audited as one. */
      const stop = (plugin: InstalledPlugin, reason: string) => {
        const key = versionKey(plugin);
        const conn = live.get(key)?.conn;
        if (conn) {
          conn.onDeath = () => {};
          conn.kill({
            tag: "PluginCrashedError",
            message: `Plugin "${plugin.name}" ${plugin.version} stopped: ${reason}`,
          });
        }
        live.delete(key);
        health.forget(key);
      };
      const lifecycle = yield* makeLifecycle({
        registry,
        store,
        sdkDir,
        checker,
        launch: (plugin) =>
          Effect.suspend(() => {
            // A grant or upgrade that reaches here after plugins were stopped starts nothing: a Worker started now
            // would outlive the host.
            if (closing) {
              return Effect.fail(
                new PluginCrashedError({
                  message: `Plugin "${plugin.name}" was not started: Keel is shutting down`,
                  details: { plugin: plugin.name, shutdown: true },
                }),
              );
            }
            stop(plugin, "started again with a new grant");
            const conn = start(plugin);
            return Effect.tryPromise({
              try: () => conn.ready,
              catch: (error) => {
                stop(plugin, "it failed to start");
                const e = toCallError(plugin.name, error);
                return e._tag === "PluginTimeoutError"
                  ? e
                  : new PluginCrashedError({ message: `Plugin "${plugin.name}" failed to start: ${e.message}` });
              },
            });
          }),
        stop,
        isolationOf: (source, manifest, override) => isolationOf({ path: source, manifest, isolation: override }),
        purgeData: (name) =>
          Effect.ignore(Effect.tryPromise(async () => {
            await Deno.remove(`${dataRoot}/${name}`, { recursive: true }).catch(() => {});
            await Deno.remove(`${dataRoot}/.deno-cache/${name}`, { recursive: true }).catch(() => {});
          })),
        audit: (type, actor, data) => audit.append({ type, actor, data }),
      });
      const preview = Effect.fn("PluginHost.preview")(function* (path: string, rawConfig?: unknown) {
        const pkg = yield* lifecycle.readPackage(path, rawConfig, { preview: true });
        yield* lifecycle.discardPackage(pkg);
        return { manifest: pkg.manifest, requested: pkg.requested };
      });
      /** A refused lifecycle change is audited too: who tried what, and why it was refused. */
      const audited = <A, E extends { _tag: string; message: string }>(
        effect: Effect.Effect<A, E>,
        actor: string,
        data: Record<string, unknown>,
      ) =>
        Effect.tapError(effect, (error) =>
          Effect.ignore(audit.append({
            type: "plugin.refused",
            actor,
            data: { ...data, error: { tag: error._tag, message: error.message } },
          })));

      const list = Effect.sync(() =>
        [...registry.values()].map((p): PluginStatus => {
          const l = live.get(versionKey(p));
          const { config: _c, ...rest } = p;
          const checked = health.status(`${p.name}@${p.version}`);
          return {
            ...rest,
            state: health.unhealthy(`${p.name}@${p.version}`)
              ? "unhealthy"
              : l?.conn?.alive
              ? "running"
              : l?.crashed
              ? "crashed"
              : "stopped",
            restarts: l?.restarts ?? 0,
            ...(l?.lastError ? { lastError: l.lastError } : {}),
            isolation: isolationOf(p),
            ...(l?.conn ? { sandbox: l.conn.sandbox.sandbox } : {}),
            ...(checked ? { health: checked } : {}),
          };
        })
      );

      const get = (name: string, version?: string) => {
        const p = version === undefined ? registry.active(name) : registry.get(name, version);
        if (p) return Effect.succeed(p);
        const installed = registry.versions(name);
        const listed = installed.map((v) => v.version).join(", ");
        return Effect.fail(
          new NotFoundError({
            message: !installed.length
              ? `No plugin named "${name}" is installed`
              : version === undefined
              ? `Plugin "${name}" has no active version (installed: ${listed})`
              : `Plugin "${name}" ${version} is not installed (installed: ${listed})`,
          }),
        );
      };

      const findEffect = (effect: string) => {
        for (const plugin of registry.actives()) {
          const decl = plugin.manifest.effects.find((e) => e.name === effect);
          if (decl) return Effect.succeed({ plugin, decl });
        }
        return Effect.fail(new NotFoundError({ message: `No installed connector provides effect "${effect}"` }));
      };
      const findWorkflow = (workflow: string) => {
        for (const plugin of registry.actives()) {
          const decl = plugin.manifest.workflows.find((w) => w.name === workflow);
          if (decl) return Effect.succeed({ plugin, decl });
        }
        return Effect.fail(
          new NotFoundError({ message: `Unknown workflow "${workflow}": no installed agent offers it` }),
        );
      };

      const validate = (plugin: InstalledPlugin, key: string, schema: Record<string, unknown>, value: unknown) => {
        const l = liveOf(versionKey(plugin));
        let v = l.validators.get(key);
        if (!v) {
          v = checker.prepare(schema);
          l.validators.set(key, v);
        }
        return v.check(value);
      };

      return PluginHost.of({
        preview,
        install: (request, actor) => audited(lifecycle.install(request, actor), actor, { path: request.path }),
        upgrade: (request, actor) =>
          audited(lifecycle.upgrade(request, actor), actor, {
            action: "upgrade",
            plugin: request.name,
            path: request.path,
          }),
        previewUpgrade: lifecycle.previewUpgrade,
        grant: (name, version, grant, actor, override) =>
          audited(lifecycle.grant(name, version, grant, actor, override), actor, {
            action: "grant",
            plugin: name,
            version,
          }),
        remove: (request, actor) =>
          audited(lifecycle.remove(request, actor), actor, {
            action: "remove",
            plugin: request.name,
            ...(request.version ? { version: request.version } : {}),
            force: request.force === true,
          }),
        list,
        get,
        findEffect,
        findWorkflow,
        validate,
        callEffect: (plugin, effect, args, idempotencyKey) =>
          call(
            plugin,
            (conn) => conn.request({ t: "effect", name: effect, args, idempotencyKey }, config.rpcTimeoutMs),
          ),
        runWorkflow: (plugin, workflow, runId, input, journal, handler) =>
          Effect.tryPromise({
            try: () => {
              const message = { t: "workflow" as const, name: workflow, runId, input, journal };
              // A live, ready plugin gets the call at once (every run's path); otherwise start it first.
              const live = liveOf(versionKey(plugin)).conn;
              if (live?.alive && live.isReady) return live.request(message, 10 * 60_000, handler);
              return (async () => {
                const conn = await started(plugin);
                await conn.ready;
                return await conn.request(message, 10 * 60_000, handler);
              })();
            },
            catch: (error) => workflowError(plugin.name, error),
          }),
        runWorkflowNow: (name, version, workflow, runId, input, journal, handler) => {
          const plugin = registry.get(name, version);
          const conn = plugin && liveOf(versionKey(plugin)).conn;
          if (!plugin || !conn?.alive || !conn.isReady) return undefined;
          const message = { t: "workflow" as const, name: workflow, runId, input, journal };
          return conn.request(message, 10 * 60_000, handler(plugin)).catch((error) => {
            throw workflowError(plugin.name, error);
          });
        },
      });
    }),
  );
}

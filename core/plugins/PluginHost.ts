/**
 * @module
 * The plugin host: installs plugins with an explicit grant, runs each in a
 * Deno Worker whose permissions are exactly that grant (every key passed,
 * nothing inherited), and speaks the RPC protocol to it. A crashed or hung
 * plugin is retired and started again on its next call; the host and the
 * other plugins keep serving.
 */
import { Clock, Context, Effect, Layer } from "effect";
import { Validator } from "@cfworker/json-schema";
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
  PluginCrashedError,
  PluginFailedError,
  PluginTimeoutError,
  RunSuspendedError,
  type StoreError,
} from "../errors/mod.ts";
import {
  checkGrant,
  type EffectDecl,
  type Grant,
  type Manifest,
  manifestHash,
  type Permissions,
  readManifest,
  resolveRequested,
  schemaErrors,
  validateConfig,
  workerPermissions,
  type WorkflowDecl,
} from "../manifest/mod.ts";
import { Kv, kvTry } from "../store/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import type { JournalEntry } from "../sdk/mod.ts";
import { SUSPENDED } from "../sdk/mod.ts";
import { CallFailure, Connection, type HostCallHandler } from "./_connection.ts";
import { checkModuleGraph } from "./moduleGraph.ts";

/** A plugin as recorded in the registry. */
export interface InstalledPlugin {
  readonly name: string;
  readonly version: string;
  readonly path: string;
  readonly manifest: Manifest;
  readonly manifestHash: string;
  readonly requested: Permissions;
  readonly grant: Grant;
  readonly config: Record<string, unknown>;
  readonly installedAt: string;
  readonly installedBy: string;
}

/** A registry entry with its live state. */
export interface PluginStatus extends Omit<InstalledPlugin, "config"> {
  readonly state: "running" | "stopped" | "crashed";
  readonly restarts: number;
  readonly lastError?: string;
}

/** What `install` needs. */
export interface InstallRequest {
  readonly path: string;
  readonly grant: unknown;
  readonly config?: unknown;
}

/** Everything install can fail with. */
export type InstallError =
  | ManifestError
  | GrantError
  | InvalidInputError
  | ModuleGraphError
  | PluginCrashedError
  | PluginTimeoutError
  | ConflictError
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
  validators: Map<string, Validator>;
}

/** The plugin host service. */
export class PluginHost extends Context.Service<PluginHost, {
  /** Read and check a plugin folder without installing it (for the install prompt). */
  preview(path: string, config?: unknown): Effect.Effect<{ manifest: Manifest; requested: Permissions }, InstallError>;
  install(request: InstallRequest, actor: string): Effect.Effect<InstalledPlugin, InstallError>;
  readonly list: Effect.Effect<PluginStatus[]>;
  get(name: string): Effect.Effect<InstalledPlugin, NotFoundError>;
  /** The connector and declaration serving an effect name. */
  findEffect(effect: string): Effect.Effect<{ plugin: InstalledPlugin; decl: EffectDecl }, NotFoundError>;
  /** The agent and declaration serving a workflow name. */
  findWorkflow(workflow: string): Effect.Effect<{ plugin: InstalledPlugin; decl: WorkflowDecl }, NotFoundError>;
  /** Validate a value against a declared JSON Schema (cached per plugin). */
  validate(plugin: InstalledPlugin, key: string, schema: Record<string, unknown>, value: unknown): string[];
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
}>()("keel/plugins/PluginHost") {
  /** Plugin host with its registry in Deno KV. */
  static readonly layer = Layer.effect(
    PluginHost,
    Effect.gen(function* () {
      const config = yield* KeelConfig;
      const { kv } = yield* Kv;
      const audit = yield* Audit;
      const registry = new Map<string, InstalledPlugin>();
      const live = new Map<string, Live>();
      const dataRoot = config.dataDir === ":memory:"
        ? Deno.makeTempDirSync({ prefix: "keel-plugins-" })
        : `${config.dataDir}/plugin-data`;
      const sdkDir = `${config.root}/core/sdk`;
      if (config.dataDir === ":memory:") {
        yield* Effect.addFinalizer(() =>
          Effect.ignore(Effect.try(() => Deno.removeSync(dataRoot, { recursive: true })))
        );
      }

      yield* kvTry("Cannot read the plugin registry", async () => {
        for await (const e of kv.list<InstalledPlugin>({ prefix: ["plugin"] })) registry.set(e.value.name, e.value);
      });

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
        return dir;
      };

      const start = (plugin: InstalledPlugin): Connection => {
        const l = liveOf(plugin.name);
        if (l.conn?.alive) return l.conn;
        if (l.conn) l.restarts++;
        const conn = new Connection(
          `${plugin.path}/mod.ts`,
          `${plugin.name}@${plugin.version}`,
          workerPermissions(plugin.grant, pluginDataDir(plugin.name)),
          plugin.config,
          Math.max(config.rpcTimeoutMs, 5000),
        );
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
        Effect.sync(() => {
          for (const l of live.values()) l.conn?.kill({ tag: "PluginCrashedError", message: "Keel is shutting down" });
        })
      );

      const toCallError = (plugin: string, error: unknown): CallError => {
        if (!(error instanceof CallFailure)) {
          return new PluginCrashedError({ message: `Plugin "${plugin}" failed: ${String(error)}` });
        }
        const w = error.wire;
        if (error.reason === "timeout") return new PluginTimeoutError({ message: w.message, details: { plugin } });
        if (error.reason === "crashed") return new PluginCrashedError({ message: w.message, details: { plugin } });
        if (w.tag === "PermissionDenied" || w.tag === "NotCapable") {
          return new PermissionDeniedError({
            message: `Plugin "${plugin}" was denied: ${w.message}`,
            details: { plugin, tag: w.tag },
          });
        }
        // A Keel error the plugin passed on (a workflow failing because an effect was denied) keeps its tag.
        // Only an agent passes Keel errors on; a connector claiming one (PolicyDeniedError, say) keeps it as a detail.
        const keel = registry.get(plugin)?.manifest.kind === "agent" ? fromErrorBody(w) : undefined;
        if (keel && keel._tag !== "RunSuspendedError") return keel;
        return new PluginFailedError({
          message: `Plugin "${plugin}" failed: ${w.message}`,
          details: { plugin, tag: w.tag, details: w.details },
        });
      };

      const call = (plugin: InstalledPlugin, f: (conn: Connection) => Promise<unknown>) =>
        Effect.tryPromise({
          try: async () => {
            const conn = start(plugin);
            await conn.ready;
            return await f(conn);
          },
          catch: (error) => toCallError(plugin.name, error),
        });

      const preview = Effect.fn("PluginHost.preview")(function* (path: string, rawConfig?: unknown) {
        const dir = yield* Effect.try({
          try: () => Deno.realPathSync(path),
          catch: () => new InvalidInputError({ message: `Cannot install plugin: no folder at "${path}"` }),
        });
        const manifest = yield* readManifest(dir);
        const cfg = yield* validateConfig(manifest, rawConfig);
        const requested = yield* resolveRequested(manifest, cfg);
        return { manifest, requested, dir, cfg };
      });

      const install = Effect.fn("PluginHost.install")(function* (request: InstallRequest, actor: string) {
        const { manifest, requested, dir, cfg } = yield* preview(request.path, request.config);
        const grant = yield* checkGrant(manifest, requested, request.grant);
        yield* Effect.tryPromise({
          try: () => Deno.stat(`${dir}/mod.ts`),
          catch: () =>
            new InvalidInputError({ message: `Cannot install plugin "${manifest.name}": no mod.ts in "${dir}"` }),
        });
        yield* checkModuleGraph(`${dir}/mod.ts`, [dir, sdkDir]);
        const existing = registry.get(manifest.name);
        if (existing && existing.path !== dir) {
          return yield* new ConflictError({
            message: `A plugin named "${manifest.name}" is already installed from "${existing.path}"`,
          });
        }
        const millis = yield* Clock.currentTimeMillis;
        const plugin: InstalledPlugin = {
          name: manifest.name,
          version: manifest.version,
          path: dir,
          manifest,
          manifestHash: yield* manifestHash(manifest),
          requested,
          grant,
          config: cfg,
          installedAt: new Date(millis).toISOString(),
          installedBy: actor,
        };
        // Start it before recording it: a plugin that cannot start is not installed.
        const conn = new Connection(
          `${dir}/mod.ts`,
          `${plugin.name}@${plugin.version}`,
          workerPermissions(grant, pluginDataDir(plugin.name)),
          cfg,
          Math.max(config.rpcTimeoutMs, 5000),
        );
        const ready = yield* Effect.tryPromise({
          try: () => conn.ready,
          catch: (error) => {
            conn.kill({ tag: "PluginCrashedError", message: "install failed" });
            const e = toCallError(plugin.name, error);
            return e._tag === "PluginTimeoutError"
              ? e
              : new PluginCrashedError({ message: `Plugin "${plugin.name}" failed to start: ${e.message}` });
          },
        });
        const missing = [
          ...manifest.effects.map((e) => e.name).filter((n) => !ready.effects.includes(n)),
          ...manifest.workflows.map((w) => w.name).filter((n) => !ready.workflows.includes(n)),
        ];
        if (missing.length) {
          conn.kill({ tag: "PluginCrashedError", message: "install failed" });
          return yield* new InvalidInputError({
            message: `Plugin "${plugin.name}" declares "${missing[0]}" in plugin.json but mod.ts does not implement it`,
          });
        }
        yield* kvTry("Cannot record plugin", () => kv.set(["plugin", plugin.name], plugin));
        const previous = live.get(plugin.name)?.conn;
        previous?.kill({ tag: "PluginCrashedError", message: "replaced by a new install" });
        live.set(plugin.name, { restarts: 0, crashed: false, validators: new Map(), conn });
        conn.onDeath = (error) => {
          const l = liveOf(plugin.name);
          l.crashed = true;
          l.lastError = error.message;
          // The first Worker's death is audited like any restarted one's.
          Effect.runFork(Effect.ignore(audit.append({
            type: "plugin.crashed",
            actor: `plugin:${plugin.name}`,
            data: { plugin: plugin.name, version: plugin.version, error },
          })));
        };
        registry.set(plugin.name, plugin);
        yield* audit.append({
          type: "plugin.installed",
          actor,
          data: { plugin: plugin.name, version: plugin.version, manifestHash: plugin.manifestHash, grant, requested },
        });
        return plugin;
      });

      const list = Effect.sync(() =>
        [...registry.values()].map((p): PluginStatus => {
          const l = live.get(p.name);
          const { config: _c, ...rest } = p;
          return {
            ...rest,
            state: l?.conn?.alive ? "running" : l?.crashed ? "crashed" : "stopped",
            restarts: l?.restarts ?? 0,
            ...(l?.lastError ? { lastError: l.lastError } : {}),
          };
        })
      );

      const get = (name: string) => {
        const p = registry.get(name);
        return p
          ? Effect.succeed(p)
          : Effect.fail(new NotFoundError({ message: `No plugin named "${name}" is installed` }));
      };

      const findEffect = (effect: string) => {
        for (const plugin of registry.values()) {
          const decl = plugin.manifest.effects.find((e) => e.name === effect);
          if (decl) return Effect.succeed({ plugin, decl });
        }
        return Effect.fail(new NotFoundError({ message: `No installed connector provides effect "${effect}"` }));
      };
      const findWorkflow = (workflow: string) => {
        for (const plugin of registry.values()) {
          const decl = plugin.manifest.workflows.find((w) => w.name === workflow);
          if (decl) return Effect.succeed({ plugin, decl });
        }
        return Effect.fail(
          new NotFoundError({ message: `Unknown workflow "${workflow}": no installed agent offers it` }),
        );
      };

      const validate = (plugin: InstalledPlugin, key: string, schema: Record<string, unknown>, value: unknown) => {
        const l = liveOf(plugin.name);
        let v = l.validators.get(key);
        if (!v) {
          v = new Validator(schema, "2020-12", false);
          l.validators.set(key, v);
        }
        return schemaErrors(v, value);
      };

      return PluginHost.of({
        preview: (path, cfg) => Effect.map(preview(path, cfg), ({ manifest, requested }) => ({ manifest, requested })),
        // A refused install is audited too: who tried to install what, and why it was refused.
        install: (request, actor) =>
          Effect.tapError(install(request, actor), (error) =>
            Effect.ignore(audit.append({
              type: "plugin.refused",
              actor,
              data: { path: request.path, error: { tag: error._tag, message: error.message } },
            }))),
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
            try: async () => {
              const conn = start(plugin);
              await conn.ready;
              return await conn.request({ t: "workflow", name: workflow, runId, input, journal }, 10 * 60_000, handler);
            },
            catch: (error): CallError | RunSuspendedError =>
              error instanceof CallFailure && error.reason === "failed" && error.wire.tag === SUSPENDED
                ? new RunSuspendedError({ message: error.wire.message })
                : toCallError(plugin.name, error),
          }),
      });
    }),
  );
}

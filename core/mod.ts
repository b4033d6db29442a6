/**
 * @module
 * Composition of Keel's core: one Layer stack from config to orchestrator,
 * and `startKeel`, which builds it, recovers interrupted runs and serves the
 * HTTP API. `main.ts` and the tests both start Keel through here.
 */
import { Cause, Effect, Layer, ManagedRuntime } from "effect";
import { DEFAULT_HTTP_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, KeelConfig, type KeelConfigShape } from "./config/mod.ts";
import { Kv } from "./store/mod.ts";
import { Journal } from "./journal/mod.ts";
import { Audit } from "./telemetry/mod.ts";
import { Limits, Policy } from "./policy/mod.ts";
import { Memory } from "./memory/mod.ts";
import { ModelRouter } from "./models/mod.ts";
import { PluginHost } from "./plugins/mod.ts";
import { Gateway } from "./gateway/mod.ts";
import { Orchestrator } from "./orchestrator/mod.ts";
import { Hooks, Scheduler } from "./triggers/mod.ts";
import { BodyDeadlines, type KeelServer, makeApp, startServer } from "./http/mod.ts";
import type { Hono } from "hono";
import { toErrorBody } from "./errors/mod.ts";

export type { KeelConfigShape } from "./config/mod.ts";

/** Every core service, built from one configuration; `policy` replaces the policy engine (tests break it on purpose). */
export const keelLayer = (config: KeelConfigShape, overrides: { policy?: typeof Policy.layer } = {}) => {
  const stores = Kv.layer.pipe(Layer.provideMerge(KeelConfig.layer(config)));
  // The policy engine audits its reloads, so it is built with the audit log in reach.
  const policy = (overrides.policy ?? Policy.layer).pipe(Layer.provide(Audit.layer));
  const base = Layer.mergeAll(Journal.layer, Audit.layer, policy, Limits.layer, Memory.layer).pipe(
    Layer.provideMerge(stores),
  );
  return Layer.mergeAll(Scheduler.layer, Hooks.layer).pipe(
    Layer.provideMerge(Orchestrator.layer),
    Layer.provideMerge(Gateway.layer),
    Layer.provideMerge(PluginHost.layer),
    Layer.provideMerge(ModelRouter.layer),
    Layer.provideMerge(base),
  );
};

/** The services a running Keel offers. */
export type KeelServices = Layer.Success<ReturnType<typeof keelLayer>>;

/** A started Keel host. */
export interface Keel {
  readonly runtime: ManagedRuntime.ManagedRuntime<KeelServices, unknown>;
  readonly app: Hono;
  /** Base URL of the HTTP API, when serving. */
  readonly url?: string;
  /** Runs that were running at start and were resumed. */
  readonly recovered: number;
  /** Stop serving, stop plugins, close stores. */
  close(): Promise<void>;
}

/** Start failure with the tagged error that caused it (a bad policy file, a locked data dir …). */
export class KeelStartError extends Error {
  /** Wrap the tagged error body. */
  constructor(readonly body: { tag: string; message: string; details?: unknown }) {
    super(body.message);
    this.name = body.tag;
  }
}

/** Build the core, resume interrupted runs and (unless `serve: false`) listen on HTTP. */
export const startKeel = async (
  config: KeelConfigShape,
  options: { serve?: boolean; policy?: typeof Policy.layer } = {},
): Promise<Keel> => {
  const runtime = ManagedRuntime.make(keelLayer(config, { policy: options.policy }));
  const exit = await runtime.runPromiseExit(Orchestrator.use((o) => o.recover));
  if (exit._tag === "Failure") {
    await runtime.dispose().catch(() => {});
    throw new KeelStartError(toErrorBody(Cause.squash(exit.cause)));
  }
  const bodies = new BodyDeadlines(config.httpTimeoutMs ?? DEFAULT_HTTP_TIMEOUT_MS);
  const app = makeApp(runtime, config.token, bodies);
  let server: KeelServer | undefined;
  let url: string | undefined;
  if (options.serve !== false) {
    try {
      server = startServer({
        hostname: config.hostname,
        port: config.port,
        bodies,
        limits: {
          timeoutMs: bodies.timeoutMs,
          maxConnections: config.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
        },
      }, app.fetch);
    } catch (error) {
      // Nothing else started may outlive a start that failed: the runtime (stores, plugins) closes first.
      await runtime.dispose().catch(() => {});
      throw new KeelStartError({
        tag: "ListenError",
        message: `Cannot listen on ${config.hostname}:${config.port}: ${String((error as Error)?.message ?? error)}`,
        details: { hostname: config.hostname, port: config.port },
      });
    }
    url = `http://${server.addr.hostname}:${server.addr.port}`;
  }
  return {
    runtime,
    app,
    url,
    recovered: exit.value,
    close: async () => {
      await server?.shutdown();
      await runtime.runPromise(Orchestrator.use((o) => o.idle).pipe(Effect.timeout(5000), Effect.ignore));
      await runtime.dispose();
    },
  };
};

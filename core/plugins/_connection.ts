/**
 * @module
 * One live plugin Worker and the host side of the RPC protocol: request ids,
 * timeouts, a size cap on messages, and routing of a running workflow's calls
 * back to the host. A crash (an uncaught error in the Worker) or a timeout
 * fails every in-flight call with a tagged reason and retires the Worker; the
 * next call starts a fresh one. The host never lets a Worker's error reach
 * its own event loop.
 */
import type { HostCall, HostMessage, PluginMessage, WireError } from "../sdk/mod.ts";
import type { WorkerPermissions } from "../manifest/mod.ts";

/** Why a call failed, as seen from the host. */
export class CallFailure extends Error {
  /** `crashed`, `timeout` or the plugin's own error. */
  constructor(readonly reason: "crashed" | "timeout" | "failed", readonly wire: WireError) {
    super(wire.message);
  }
}

/** Answers a workflow's calls to the host; rejects with a `WireError`. */
export type HostCallHandler = (call: HostCall) => Promise<unknown>;

/** Largest message a plugin may send, in bytes of JSON. */
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

/** A started plugin Worker. */
export class Connection {
  readonly #worker: Worker;
  readonly #pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: CallFailure) => void; timer: ReturnType<typeof setTimeout> }
  >();
  readonly #runs = new Map<string, HostCallHandler>();
  #nextId = 1;
  #dead: WireError | undefined;
  /** Resolves with what the plugin implements once it answered `init`. */
  readonly ready: Promise<{ effects: ReadonlyArray<string>; workflows: ReadonlyArray<string> }>;
  /** Called once when the Worker dies. */
  onDeath: (error: WireError) => void = () => {};

  /** Start a Worker for `entry` with exactly `permissions`. */
  constructor(
    entry: string,
    name: string,
    permissions: WorkerPermissions,
    config: Record<string, unknown>,
    startTimeoutMs: number,
  ) {
    this.#worker = new Worker(new URL(`file://${entry}`), {
      type: "module",
      name,
      deno: { permissions: { ...permissions } },
    });
    let readyResolve!: (v: { effects: ReadonlyArray<string>; workflows: ReadonlyArray<string> }) => void;
    let readyReject!: (e: CallFailure) => void;
    this.ready = new Promise((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    this.ready.catch(() => {});
    const startTimer = setTimeout(() => {
      this.kill({ tag: "PluginTimeoutError", message: `Plugin "${name}" did not start within ${startTimeoutMs} ms` });
    }, startTimeoutMs);
    this.#pending.set(0, {
      resolve: (v) => {
        clearTimeout(startTimer);
        readyResolve(v as { effects: string[]; workflows: string[] });
      },
      reject: (e) => {
        clearTimeout(startTimer);
        readyReject(e);
      },
      timer: startTimer,
    });
    this.#worker.onmessage = (event: MessageEvent<PluginMessage>) => {
      try {
        this.#receive(event.data);
      } catch (error) {
        // Nothing a plugin sends may throw in the host's event loop: that would end the host.
        this.kill({ tag: "PluginCrashedError", message: `Plugin broke the protocol: ${String(error)}` });
      }
    };
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.kill({ tag: "PluginCrashedError", message: `Plugin "${name}" crashed: ${event.message}` });
    };
    this.#worker.onmessageerror = () => {
      this.kill({ tag: "PluginCrashedError", message: `Plugin "${name}" sent a message that cannot be read` });
    };
    this.#post({ t: "init", config });
  }

  /** True until the Worker crashed, timed out or was stopped. */
  get alive(): boolean {
    return this.#dead === undefined;
  }

  /** Send a request and wait for its result, at most `timeoutMs`. */
  request(
    message: { t: "effect"; name: string; args: unknown; idempotencyKey: string } | {
      t: "workflow";
      name: string;
      runId: string;
      input: unknown;
      journal: ReadonlyArray<unknown>;
    } | { t: "health" },
    timeoutMs: number,
    handler?: HostCallHandler,
  ): Promise<unknown> {
    if (this.#dead) return Promise.reject(new CallFailure("crashed", this.#dead));
    const id = this.#nextId++;
    if (message.t === "workflow" && handler) this.#runs.set(message.runId, handler);
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A plugin that does not answer may be stuck in a loop: retire it.
        this.kill({
          tag: "PluginTimeoutError",
          message: `Plugin did not answer "${describe(message)}" within ${timeoutMs} ms`,
        }, "timeout");
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#post({ ...message, id } as HostMessage);
    }).finally(() => {
      if (message.t === "workflow") this.#runs.delete(message.runId);
    });
  }

  /** Stop the Worker and fail everything in flight with `error`. */
  kill(
    error: WireError,
    reason: "crashed" | "timeout" = error.tag === "PluginTimeoutError" ? "timeout" : "crashed",
  ): void {
    if (this.#dead) return;
    this.#dead = error;
    this.#worker.terminate();
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new CallFailure(reason, error));
    }
    this.#pending.clear();
    this.#runs.clear();
    this.onDeath(error);
  }

  #post(message: HostMessage): void {
    try {
      this.#worker.postMessage(message);
    } catch (error) {
      this.kill({ tag: "PluginCrashedError", message: `Cannot send to plugin: ${String(error)}` });
    }
  }

  #settle(id: number, ok: boolean, value: unknown, error?: WireError): void {
    const p = this.#pending.get(id);
    if (!p) {
      // Every request is answered once or its Worker is retired, so this is a forgery or a flood.
      return this.kill({ tag: "PluginCrashedError", message: "Plugin broke the protocol: an answer to no request" });
    }
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if (ok) p.resolve(value);
    else p.reject(new CallFailure("failed", wireError(error)));
  }

  #receive(message: PluginMessage): void {
    if (this.#dead) return;
    if (message === null || typeof message !== "object" || typeof (message as { t?: unknown }).t !== "string") {
      return this.kill({ tag: "PluginCrashedError", message: "Plugin broke the protocol: a message without a type" });
    }
    let size = 0;
    try {
      size = JSON.stringify(message).length;
    } catch {
      return this.kill({ tag: "PluginCrashedError", message: "Plugin broke the protocol: a message that is not JSON" });
    }
    if (size > MAX_MESSAGE_BYTES) {
      return this.kill({
        tag: "PluginCrashedError",
        message: `Plugin sent a ${size}-byte message; the limit is ${MAX_MESSAGE_BYTES}`,
      });
    }
    switch (message.t) {
      case "ready":
        return this.#settle(0, true, { effects: names(message.effects), workflows: names(message.workflows) });
      case "result":
        return message.ok
          ? this.#settle(message.id, true, message.value)
          : this.#settle(message.id, false, undefined, message.error);
      case "call": {
        const { id, t: _t, ...call } = message;
        const handler = this.#runs.get((call as HostCall).runId);
        if (!handler) {
          return this.#post({
            t: "reply",
            id,
            ok: false,
            error: { tag: "InvalidInputError", message: "No workflow of this plugin is running for that run" },
          });
        }
        handler(call as HostCall).then(
          (value) => this.#post({ t: "reply", id, ok: true, value: value ?? null }),
          (error: WireError) => this.#post({ t: "reply", id, ok: false, error }),
        );
        return;
      }
      default:
        return this.kill({ tag: "PluginCrashedError", message: `Plugin broke the protocol: unknown message type` });
    }
  }
}

const describe = (m: { t: string; name?: string }) => (m.name ? `${m.t} ${m.name}` : m.t);

/** Largest `details` of a plugin's error kept, in characters of JSON: errors are journaled and audited. */
const MAX_ERROR_DETAILS = 8 * 1024;

/** A plugin's error as the host records it: string tag and message, bounded details, whatever it sent. */
const wireError = (raw: unknown): WireError => {
  const e = (raw !== null && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
  const tag = typeof e.tag === "string" && e.tag !== "" ? e.tag.slice(0, 100) : "PluginError";
  const message = typeof e.message === "string" ? e.message.slice(0, 4000) : `Plugin failed without a message`;
  if (e.details === undefined) return { tag, message };
  let size = Infinity;
  try {
    size = JSON.stringify(e.details)?.length ?? 0;
  } catch { /* not JSON: dropped below */ }
  return { tag, message, details: size <= MAX_ERROR_DETAILS ? e.details : { truncated: true, size } };
};

const names = (list: unknown): string[] =>
  Array.isArray(list) ? list.filter((n): n is string => typeof n === "string") : [];

/**
 * @module
 * One live plugin and the host side of the RPC protocol: request ids,
 * timeouts, a size cap on messages, a bound on calls in flight, and routing
 * of a running workflow's calls back to the host. The protocol is the same
 * whatever carries it: a `Transport` is either a Deno Worker in this process
 * (`worker` isolation) or a sandboxed child process speaking newline-delimited
 * JSON over stdio (`process` isolation, `_process.ts`). A crash, a timeout or
 * a protocol violation fails every in-flight call with a tagged reason and
 * retires the plugin; the host decides when to start a fresh one. The host
 * never lets a plugin's error reach its own event loop.
 */
import type { HostCall, HostMessage, PluginMessage, WireError } from "../sdk/mod.ts";
import type { WorkerPermissions } from "../manifest/mod.ts";
import { type ProcessLimits, processTransport, type SandboxReport } from "./_process.ts";

/** Why a call failed, as seen from the host. */
export class CallFailure extends Error {
  /** `crashed`, `timeout`, `busy` (too many calls in flight) or the plugin's own error. */
  constructor(readonly reason: "crashed" | "timeout" | "busy" | "failed", readonly wire: WireError) {
    super(wire.message);
  }
}

/**
 * Answers a workflow's calls to the host; rejects with a `WireError`. With
 * `trailing`, the call is the checkpoints that came with the workflow's result
 * (see `PluginMessage`): the handler takes them synchronously, before the
 * result is delivered, and records them with the run's end.
 */
export type HostCallHandler = (call: HostCall, trailing?: boolean) => Promise<unknown>;

/** Largest message a plugin may send, in bytes of JSON. */
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

/** Calls the host may have waiting on one plugin at once; more fail at once with `PluginBusyError`. */
export const MAX_IN_FLIGHT = 64;

/** Calls for runs a plugin is not executing that it may make in `STRAY_WINDOW_MS`; more retire it (a flood). */
const MAX_STRAY_CALLS = 64;
const STRAY_WINDOW_MS = 10_000;

/** How a plugin is isolated from the host. */
export type Isolation = "worker" | "process";

/** What a transport reports back to its connection. */
export interface TransportSink {
  /** One decoded message and its size in bytes (or characters) of JSON. */
  message(message: unknown, size: number): void;
  /** The plugin died or broke the transport; fail everything with `error`. */
  fail(error: WireError): void;
}

/** How a connection reaches its plugin: a Worker or a child process. */
export interface Transport {
  /** Send one message; may throw if the plugin is gone. */
  send(message: HostMessage): void;
  /** Stop the plugin for good (idempotent). */
  close(): void;
  /** Resolves once the plugin is really gone (its process reaped); never rejects. */
  readonly closed: Promise<void>;
  /** How the plugin is sandboxed, for the audit log. */
  readonly sandbox: SandboxReport;
}

/** Everything needed to start one plugin, in either isolation mode. */
export interface PluginSpec {
  readonly isolation: Isolation;
  /** `name@version`, for messages and the Worker's name. */
  readonly name: string;
  /** Real path of the plugin's `mod.ts`. */
  readonly entry: string;
  /** Real path of the plugin's folder. */
  readonly folder: string;
  /** Keel's `core/sdk` folder (the only Keel code a plugin may load). */
  readonly sdkDir: string;
  /** The plugin's data dir (its granted read/write paths live under it). */
  readonly dataDir: string;
  /** A per-plugin folder for Deno's transpile cache (process mode). */
  readonly cacheDir: string;
  /** Exactly the grant, every key set. */
  readonly permissions: WorkerPermissions;
  /** The plugin's configuration, sent with `init`. */
  readonly config: Record<string, unknown>;
  /** Milliseconds the plugin gets to answer `init`. */
  readonly startTimeoutMs: number;
  /** Whether the manifest declares npm packages (process mode allows npm resolution only then). */
  readonly npm: boolean;
  /** Heap cap and OS limits of a plugin process. */
  readonly limits?: Partial<ProcessLimits>;
  /** Where a plugin process's stderr lines go (bounded). */
  readonly log?: (line: string) => void;
  readonly maxInFlight?: number;
  /** `false`: never use bwrap, even where it works (benchmarks and tests of the fallback). */
  readonly bwrap?: boolean;
}

/** Start a plugin in its isolation mode and connect to it. */
export const openConnection = (spec: PluginSpec): Connection =>
  new Connection(
    spec.name,
    { config: spec.config, dataDir: spec.dataDir },
    spec.startTimeoutMs,
    spec.isolation,
    (sink) => spec.isolation === "process" ? processTransport(spec, sink) : workerTransport(spec, sink),
    spec.maxInFlight ?? MAX_IN_FLIGHT,
  );

/** A started plugin, Worker or process, behind the one protocol. */
export class Connection {
  readonly #transport: Transport;
  readonly #pending = new Map<
    number,
    {
      resolve: (v: unknown) => void;
      reject: (e: CallFailure) => void;
      /**
       * When the plugin is retired if it has not answered: `performance.now()` ms, which no step of the wall
       * clock moves (`init` has its own timer).
       */
      deadline: number;
      /** What was asked, for the timeout's message. */
      what: () => string;
      /** Set for a workflow request: the run it executes. */
      runId?: string;
    }
  >();
  /**
   * One timer for every request's deadline, set for the earliest: a request costs no timer of its own (on a
   * resumed run's path, a timer set after an idle moment costs tens of µs). It is left set when the requests
   * are answered, and re-set only for an earlier deadline; when it fires it retires the plugin if a request is
   * overdue, else it is set for the next deadline.
   */
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  readonly #runs = new Map<string, HostCallHandler>();
  #nextId = 1;
  /** Calls to the host in flight, per run: each running workflow gets its own bound. */
  #hostCalls = new Map<string, number>();
  #dead: WireError | undefined;
  /** Calls for runs this plugin is not executing, in the window that began at `#strayWindow`. */
  #strays = 0;
  #strayWindow = 0;
  /** Calls answered successfully: a plugin that answers is healthy enough to reset its restart backoff. */
  answered = 0;
  /** When it was started and when it died (epoch ms), for the restart backoff. */
  readonly startedAt: number = Date.now();
  diedAt: number | undefined;
  /** Resolves with what the plugin implements once it answered `init`. */
  readonly ready: Promise<{ effects: ReadonlyArray<string>; workflows: ReadonlyArray<string> }>;
  /** Whether `ready` has resolved (for callers that skip awaiting it once it has). */
  isReady = false;
  /** Called once when the plugin dies. */
  onDeath: (error: WireError) => void = () => {};

  /** Start a plugin over the transport `open` makes, and send it `init`. */
  constructor(
    readonly name: string,
    init: { readonly config: Record<string, unknown>; readonly dataDir?: string },
    startTimeoutMs: number,
    /** The plugin's isolation mode. */
    readonly isolation: Isolation,
    open: (sink: TransportSink) => Transport,
    readonly maxInFlight: number = MAX_IN_FLIGHT,
  ) {
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
      deadline: Infinity,
      what: () => "init",
      resolve: (v) => {
        clearTimeout(startTimer);
        this.isReady = true;
        readyResolve(v as { effects: string[]; workflows: string[] });
      },
      reject: (e) => {
        clearTimeout(startTimer);
        readyReject(e);
      },
    });
    const sink: TransportSink = {
      message: (message, size) => {
        try {
          this.#receive(message, size);
        } catch (error) {
          // Nothing a plugin sends may throw in the host's event loop: that would end the host.
          this.kill({ tag: "PluginCrashedError", message: `Plugin broke the protocol: ${String(error)}` });
        }
      },
      fail: (error) => this.kill(error),
    };
    try {
      this.#transport = open(sink);
    } catch (error) {
      this.#transport = deadTransport;
      this.kill({ tag: "PluginCrashedError", message: `Plugin "${name}" cannot start: ${String(error)}` });
      return;
    }
    if (this.#dead) this.#transport.close();
    else this.#post({ t: "init", ...init });
  }

  /** True until the plugin crashed, timed out or was stopped. */
  get alive(): boolean {
    return this.#dead === undefined;
  }

  /** Calls waiting for an answer. */
  get inFlight(): number {
    return this.#pending.size - (this.#pending.has(0) ? 1 : 0);
  }

  /** How the plugin is sandboxed (mode, bwrap or not, limits), for the audit log. */
  get sandbox(): SandboxReport {
    return this.#transport.sandbox;
  }

  /** Resolves once the plugin is gone for good (after `kill`, its process reaped). */
  get closed(): Promise<void> {
    return this.#transport.closed;
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
    if (this.inFlight >= this.maxInFlight) {
      // Refuse at once rather than queue without bound; the plugin keeps serving what it has.
      return Promise.reject(
        new CallFailure("busy", {
          tag: "PluginBusyError",
          message:
            `Plugin "${this.name}" already has ${this.inFlight} calls in flight; the limit is ${this.maxInFlight}`,
        }),
      );
    }
    const id = this.#nextId++;
    if (message.t === "workflow" && handler) this.#runs.set(message.runId, handler);
    return new Promise<unknown>((resolve, reject) => {
      const deadline = performance.now() + timeoutMs;
      this.#pending.set(id, {
        resolve,
        reject,
        deadline,
        what: () => `Plugin did not answer "${describe(message)}" within ${timeoutMs} ms`,
        ...(message.t === "workflow" ? { runId: message.runId } : {}),
      });
      if (deadline < this.#timerAt) this.#armTimer(deadline);
      this.#post({ ...message, id } as HostMessage);
    });
  }

  #armTimer(at: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, at - performance.now()));
  }

  /** The deadline timer fired: retire a plugin that left a request unanswered past its deadline. */
  #expire(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const [, p] of this.#pending) {
      // A plugin that does not answer may be stuck in a loop: retire it.
      if (p.deadline <= now) return this.kill({ tag: "PluginTimeoutError", message: p.what() }, "timeout");
      next = Math.min(next, p.deadline);
    }
    if (next < Infinity) this.#armTimer(next);
  }

  /** Stop the plugin and fail everything in flight with `error`. */
  kill(
    error: WireError,
    reason: "crashed" | "timeout" = error.tag === "PluginTimeoutError" ? "timeout" : "crashed",
  ): void {
    if (this.#dead) return;
    this.#dead = error;
    this.diedAt = Date.now();
    try {
      this.#transport?.close();
    } catch {
      // already gone
    }
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const [, p] of this.#pending) p.reject(new CallFailure(reason, error));
    this.#pending.clear();
    this.#runs.clear();
    this.onDeath(error);
  }

  #post(message: HostMessage): void {
    if (this.#dead) return;
    try {
      this.#transport.send(message);
    } catch (error) {
      this.kill({ tag: "PluginCrashedError", message: `Cannot send to plugin: ${String(error)}` });
    }
  }

  #settle(id: number, ok: boolean, value: unknown, error?: WireError): void {
    const p = this.#pending.get(id);
    if (!p) {
      // Every request is answered once or its plugin is retired, so this is a forgery or a flood.
      return this.kill({ tag: "PluginCrashedError", message: "Plugin broke the protocol: an answer to no request" });
    }
    this.#pending.delete(id);
    if (p.runId !== undefined) this.#runs.delete(p.runId);
    if (ok) {
      this.answered++;
      p.resolve(value);
    } else p.reject(new CallFailure("failed", wireError(error)));
  }

  /** Hand the checkpoints that came with a workflow's result to its run, before the result; false if it killed. */
  #trailing(id: number, checkpoints: unknown): boolean {
    const runId = this.#pending.get(id)?.runId;
    const handler = runId === undefined ? undefined : this.#runs.get(runId);
    if (!handler || !Array.isArray(checkpoints) || !checkpoints.length) {
      this.kill({
        tag: "PluginCrashedError",
        message: "Plugin broke the protocol: checkpoints on a result without a run",
      });
      return false;
    }
    const first = (checkpoints[0] ?? {}) as { seq?: unknown; name?: unknown };
    const call = { op: "checkpoints", runId, seq: first.seq, name: first.name, steps: checkpoints } as HostCall;
    // The run records them with its end; a refusal shows up there, not as a reply.
    handler(call, true).catch(() => {});
    return true;
  }

  #receive(message: unknown, size: number): void {
    if (this.#dead) return;
    if (message === null || typeof message !== "object" || typeof (message as { t?: unknown }).t !== "string") {
      return this.kill({ tag: "PluginCrashedError", message: "Plugin broke the protocol: a message without a type" });
    }
    if (size > MAX_MESSAGE_BYTES) {
      return this.kill({
        tag: "PluginCrashedError",
        message: `Plugin sent a ${size}-byte message; the limit is ${MAX_MESSAGE_BYTES}`,
      });
    }
    const m = message as PluginMessage;
    switch (m.t) {
      case "ready":
        return this.#settle(0, true, { effects: names(m.effects), workflows: names(m.workflows) });
      case "result":
        // `init` is answered by "ready" only: a result for it would settle it with whatever the plugin sent.
        if (m.id === 0) {
          return this.kill({ tag: "PluginCrashedError", message: "Plugin broke the protocol: a result for init" });
        }
        if (m.checkpoints !== undefined && !this.#trailing(m.id, m.checkpoints)) return;
        return m.ok ? this.#settle(m.id, true, m.value) : this.#settle(m.id, false, undefined, m.error);
      case "call": {
        const { id, t: _t, ...call } = m;
        const handler = this.#runs.get((call as HostCall).runId);
        if (!handler) {
          // A straggler of a run that just ended is answered; a stream of them is a flood: the plugin is retired.
          const now = performance.now();
          if (now - this.#strayWindow > STRAY_WINDOW_MS) {
            this.#strayWindow = now;
            this.#strays = 0;
          }
          if (++this.#strays > MAX_STRAY_CALLS) {
            return this.kill({
              tag: "PluginCrashedError",
              message: `Plugin broke the protocol: more than ${MAX_STRAY_CALLS} calls for runs it is not executing`,
            });
          }
          return this.#post({
            t: "reply",
            id,
            ok: false,
            error: { tag: "InvalidInputError", message: "No workflow of this plugin is running for that run" },
          });
        }
        const runId = (call as HostCall).runId;
        const inFlight = this.#hostCalls.get(runId) ?? 0;
        if (inFlight >= this.maxInFlight) {
          return this.#post({
            t: "reply",
            id,
            ok: false,
            error: {
              tag: "PluginBusyError",
              message:
                `Run ${runId} has ${inFlight} calls to the host in flight; the limit is ${this.maxInFlight} per run`,
            },
          });
        }
        this.#hostCalls.set(runId, inFlight + 1);
        handler(call as HostCall).then(
          (value) => this.#post({ t: "reply", id, ok: true, value: value ?? null }),
          (error: WireError) => this.#post({ t: "reply", id, ok: false, error }),
        ).finally(() => {
          const left = (this.#hostCalls.get(runId) ?? 1) - 1;
          if (left) this.#hostCalls.set(runId, left);
          else this.#hostCalls.delete(runId);
        });
        return;
      }
      case "exit":
        // Sent by the Worker entry when the plugin ends its own Worker (see `_worker_entry.ts`).
        return this.kill({
          tag: "PluginCrashedError",
          message: `Plugin "${this.name}" ended itself (exit code ${Number(m.code) || 0})`,
        });
      default:
        return this.kill({ tag: "PluginCrashedError", message: `Plugin broke the protocol: unknown message type` });
    }
  }
}

/** A Deno Worker in this process with exactly the grant's permissions (`worker` isolation). */
const workerTransport = (spec: PluginSpec, sink: TransportSink): Transport => {
  // The Worker starts at a fixed entry that imports the plugin (see `_worker_entry.ts`): every module the plugin
  // loads is then checked against its read permission, which adds only its own folder and Keel's SDK.
  const granted = spec.permissions.read;
  const read = granted === true ? true : [...(granted || []), spec.folder, spec.sdkDir];
  const worker = new Worker(new URL("./_worker_entry.ts", import.meta.url), {
    type: "module",
    name: spec.name,
    deno: { permissions: { ...spec.permissions, read } },
  });
  worker.postMessage({ url: new URL(`file://${spec.entry}`).href });
  worker.onmessage = (event: MessageEvent<unknown>) => {
    let size = 0;
    try {
      size = JSON.stringify(event.data)?.length ?? 0;
    } catch {
      return sink.fail({ tag: "PluginCrashedError", message: "Plugin broke the protocol: a message that is not JSON" });
    }
    sink.message(event.data, size);
  };
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault();
    sink.fail({ tag: "PluginCrashedError", message: `Plugin "${spec.name}" crashed: ${event.message}` });
  };
  worker.onmessageerror = () => {
    sink.fail({ tag: "PluginCrashedError", message: `Plugin "${spec.name}" sent a message that cannot be read` });
  };
  return {
    send: (message) => worker.postMessage(message),
    close: () => worker.terminate(),
    closed: Promise.resolve(),
    sandbox: { isolation: "worker", sandbox: "deno-permissions" },
  };
};

const deadTransport: Transport = {
  send: () => {
    throw new Error("plugin is not running");
  },
  close: () => {},
  closed: Promise.resolve(),
  sandbox: { isolation: "worker", sandbox: "deno-permissions" },
};

const describe = (m: { t: string; name?: string }) => (m.name ? `${m.t} ${m.name}` : m.t);

/** Largest `details` of a plugin's error kept, in characters of JSON: errors are journaled and audited. */
const MAX_ERROR_DETAILS = 8 * 1024;

/** A plugin's error as the host records it: string tag and message, bounded details, whatever it sent. */
const wireError = (raw: unknown): WireError => {
  const e = (raw !== null && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
  const tag = typeof e.tag === "string" && e.tag !== "" ? e.tag.slice(0, 100) : "PluginError";
  const message = typeof e.message === "string" ? e.message.slice(0, 4000) : `Plugin failed without a message`;
  const retryable = {
    ...(typeof e.retryable === "boolean" ? { retryable: e.retryable } : {}),
    ...(e.outcomeUnknown === true ? { outcomeUnknown: true } : {}),
  };
  if (e.details === undefined) return { tag, message, ...retryable };
  let size = Infinity;
  try {
    size = JSON.stringify(e.details)?.length ?? 0;
  } catch { /* not JSON: dropped below */ }
  return { tag, message, details: size <= MAX_ERROR_DETAILS ? e.details : { truncated: true, size }, ...retryable };
};

const names = (list: unknown): string[] =>
  Array.isArray(list) ? list.filter((n): n is string => typeof n === "string") : [];

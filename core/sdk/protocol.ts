/**
 * @module
 * The wire protocol between the Keel host and a plugin Worker or process.
 * One message shape for both isolation modes; every message is plain JSON so
 * it crosses `postMessage` and a stdio pipe alike.
 */
import type { ModelRequest } from "./model.ts";
import type { MemoryOp } from "./memory.ts";

/** A recorded workflow step, sent to the plugin so it can replay without asking. */
export interface JournalEntry {
  readonly seq: number;
  readonly kind: "step" | "effect" | "memory" | "model" | "timer" | "approval" | "child";
  readonly name: string;
  readonly value: unknown;
}

/** What a workflow asks of the operator with `ctx.approval` (see `WorkflowContext`). */
export interface ApprovalRequest {
  /** Shown to the operator: what they are deciding. */
  readonly message: string;
  /** Who should decide (shown; default "operator"). */
  readonly approver?: string;
  /** How long the approval stays open; default one day, at most 30 days. */
  readonly timeoutSeconds?: number;
  /** Facts to show next to the message (recorded with the approval). */
  readonly details?: unknown;
}

/** The operator's answer to `ctx.approval`. */
export interface ApprovalAnswer {
  readonly approved: boolean;
  readonly actor: string;
  readonly note?: string;
  /** When it was decided (ISO time). */
  readonly at: string;
}

/** An error crossing the boundary: a tag, a message and whether a retry may help. */
export interface WireError {
  readonly tag: string;
  readonly message: string;
  readonly details?: unknown;
  /** Whether trying the same call again may succeed, when the plugin knows (`PluginError`'s `retryable`). */
  readonly retryable?: boolean;
  /** The call may have taken effect though it failed (`PluginError`'s `outcomeUnknown`). */
  readonly outcomeUnknown?: boolean;
}

/** Host → plugin messages. */
export type HostMessage =
  | {
    readonly t: "init";
    readonly config: Record<string, unknown>;
    /** The plugin's data dir: its `read`/`write` grants are relative to it (the same path in every isolation mode). */
    readonly dataDir?: string;
  }
  | {
    readonly t: "effect";
    readonly id: number;
    readonly name: string;
    readonly args: unknown;
    readonly idempotencyKey: string;
  }
  | {
    readonly t: "workflow";
    readonly id: number;
    readonly name: string;
    readonly runId: string;
    readonly input: unknown;
    readonly journal: ReadonlyArray<JournalEntry>;
  }
  | { readonly t: "health"; readonly id: number }
  | { readonly t: "reply"; readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly t: "reply"; readonly id: number; readonly ok: false; readonly error: WireError };

/** One checkpointed step's result, as a workflow sends it to be recorded. */
export interface Checkpoint {
  readonly seq: number;
  readonly name: string;
  readonly value: unknown;
}

/** Requests a running workflow makes of the host (answered with a `reply`). */
export type HostCall =
  | {
    /** One step's result (what SDKs before batching sent; still answered). */
    readonly op: "checkpoint";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly value: unknown;
  }
  | {
    /**
     * Several steps' results in journal order, recorded in one write. `seq` and
     * `name` are the first step's. The rest of a run's checkpoints ride on its
     * workflow `result` message instead (see `PluginMessage`).
     */
    readonly op: "checkpoints";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly steps: ReadonlyArray<Checkpoint>;
  }
  | {
    readonly op: "effect";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly args: unknown;
  }
  | {
    readonly op: "memory.remember";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly item: MemoryInput;
  }
  | {
    readonly op: "model.generate";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly request: ModelRequest;
  }
  | {
    /** A durable timer: wake at `until` (epoch ms) or `ms` after the host first sees it. */
    readonly op: "sleep";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly until?: number;
    readonly ms?: number;
  }
  | {
    readonly op: "approval";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly request: ApprovalRequest;
  }
  | {
    /** Start a child workflow (once) and wait for it; answered `{ ok, output }` or `{ ok: false, error }`. */
    readonly op: "child";
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly workflow: string;
    readonly input: unknown;
  }
  | {
    readonly op: MemoryOp;
    readonly runId: string;
    readonly seq: number;
    readonly name: string;
    readonly args: unknown;
  };

/** Plugin → host messages. */
export type PluginMessage =
  | {
    readonly t: "ready";
    readonly effects: ReadonlyArray<string>;
    readonly workflows: ReadonlyArray<string>;
  }
  /**
   * A workflow's result may carry the checkpoints it had not sent yet: the host
   * records them in the same commit as the run's end.
   */
  | {
    readonly t: "result";
    readonly id: number;
    readonly ok: true;
    readonly value: unknown;
    readonly checkpoints?: ReadonlyArray<Checkpoint>;
  }
  | {
    readonly t: "result";
    readonly id: number;
    readonly ok: false;
    readonly error: WireError;
    readonly checkpoints?: ReadonlyArray<Checkpoint>;
  }
  | ({ readonly t: "call"; readonly id: number } & HostCall)
  /** The plugin is ending itself (`Deno.exit`, `self.close()`); sent by Keel's Worker entry, not by plugin code. */
  | { readonly t: "exit"; readonly code: number };

/** What a workflow may ask memory to remember. */
export interface MemoryInput {
  readonly text: string;
  readonly kind: "fact" | "preference" | "note" | "summary" | "record-ref";
  readonly tags?: ReadonlyArray<string>;
}

/** The tag the host uses to tell a workflow it must stop here and wait. */
export const SUSPENDED = "RunSuspended";

/**
 * @module
 * The audit log: semantic events (what, who, which rule, latency), each
 * carrying the hash of the one before it, so `verify` can tell when the chain
 * was edited. Events are indexed by run for `GET /api/audit?runId=`.
 */
import { Clock, Context, Effect, Layer } from "effect";
import { Kv, kvTry } from "../store/mod.ts";
import type { StoreError } from "../errors/mod.ts";
import { canonicalJson, sha256Hex } from "../manifest/mod.ts";

/** One audited event. */
export interface AuditEvent {
  readonly seq: number;
  readonly at: string;
  /** Dotted event type, e.g. `effect.dispatched`, `approval.approved`, `plugin.installed`. */
  readonly type: string;
  /** Who caused it: `operator`, `plugin:<name>`, `system`. */
  readonly actor: string;
  readonly runId?: string;
  readonly data: Record<string, unknown>;
  readonly prevHash: string;
  readonly hash: string;
}

/** What a caller supplies; sequence, time and hashes are the log's. */
export type AuditInput = Pick<AuditEvent, "type" | "actor" | "runId" | "data">;

/** The audit log service. */
export class Audit extends Context.Service<Audit, {
  append(event: AuditInput): Effect.Effect<AuditEvent, StoreError>;
  list(filter: { runId?: string; limit?: number }): Effect.Effect<AuditEvent[], StoreError>;
  /** Recompute the hash chain; returns the first broken sequence number, if any. */
  readonly verify: Effect.Effect<{ ok: boolean; checked: number; brokenAt?: number }, StoreError>;
}>()("keel/telemetry/Audit") {
  /** Audit log on Deno KV. */
  static readonly layer = Layer.effect(
    Audit,
    Effect.gen(function* () {
      const { kv } = yield* Kv;
      const hashOf = (e: Omit<AuditEvent, "hash">) => sha256Hex(canonicalJson(e));
      const append = Effect.fn("Audit.append")(function* (input: AuditInput) {
        const millis = yield* Clock.currentTimeMillis;
        return yield* kvTry("Cannot append to the audit log", async () => {
          for (;;) {
            const head = await kv.get<{ seq: number; hash: string }>(["audit_head"]);
            const seq = (head.value?.seq ?? 0) + 1;
            const base = {
              seq,
              at: new Date(millis).toISOString(),
              type: input.type,
              actor: input.actor,
              ...(input.runId ? { runId: input.runId } : {}),
              data: JSON.parse(JSON.stringify(input.data ?? {})),
              prevHash: head.value?.hash ?? "",
            };
            const event: AuditEvent = { ...base, hash: await hashOf(base) };
            const op = kv.atomic().check(head).set(["audit_head"], { seq, hash: event.hash }).set(
              ["audit", seq],
              event,
            );
            if (event.runId) op.set(["audit_by_run", event.runId, seq], seq);
            if ((await op.commit()).ok) return event;
          }
        });
      });
      const list = Effect.fn("Audit.list")(function* (filter: { runId?: string; limit?: number }) {
        const limit = Math.min(filter.limit ?? 1000, 10_000);
        return yield* kvTry("Cannot read the audit log", async () => {
          const out: AuditEvent[] = [];
          if (filter.runId) {
            const seqs: number[] = [];
            for await (const e of kv.list<number>({ prefix: ["audit_by_run", filter.runId] }, { limit })) {
              seqs.push(e.value);
            }
            for (let i = 0; i < seqs.length; i += 10) {
              const got = await kv.getMany<AuditEvent[]>(seqs.slice(i, i + 10).map((s) => ["audit", s]));
              for (const g of got) if (g.value) out.push(g.value);
            }
            return out;
          }
          for await (const e of kv.list<AuditEvent>({ prefix: ["audit"] }, { limit, reverse: true })) out.push(e.value);
          return out.reverse();
        });
      });
      const verify = kvTry("Cannot verify the audit log", async () => {
        let prev = "";
        let checked = 0;
        for await (const e of kv.list<AuditEvent>({ prefix: ["audit"] })) {
          const { hash, ...rest } = e.value;
          if (rest.prevHash !== prev || (await hashOf(rest)) !== hash) {
            return { ok: false, checked, brokenAt: rest.seq };
          }
          prev = hash;
          checked++;
        }
        return { ok: true, checked };
      });
      return Audit.of({ append, list, verify });
    }),
  );
}

/**
 * @module
 * The audit log: semantic events (what, who, which rule, latency), each
 * carrying the hash of the one before it, so `verify` can tell when the chain
 * was edited. An event takes its sequence number and that hash when the
 * commit that stores it is built, so the chain follows commit order; if that
 * commit fails, the chain goes back and the next event takes its place.
 * Events are indexed by run for `GET /api/audit?runId=`; the index entries
 * ride on a later commit (`store/GroupCommit.ts`), and a start indexes what a
 * crash left unindexed, from the `audit_indexed` mark.
 */
import { Clock, Context, Effect, Layer } from "effect";
import { type GroupWrite, Kv, kvTry } from "../store/mod.ts";
import type { StoreError } from "../errors/mod.ts";
import { createHash } from "node:crypto";
import { canonicalJson } from "../manifest/mod.ts";

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

/** How far the by-run index goes: every event up to this sequence number is indexed. */
const INDEXED_KEY = ["audit_indexed"];

/**
 * Index the events a crash left unindexed: those after `INDEXED_KEY` (their index entries ride on a later
 * commit than the events), or every event when there is no mark yet (a new data dir, or one from KV layout
 * 2, which indexed each event with it: setting an entry again changes nothing).
 */
const reindex = async (kv: Deno.Kv, last: number) => {
  const mark = (await kv.get<number>(INDEXED_KEY)).value ?? 0;
  if (mark >= last) return;
  let op = kv.atomic();
  let n = 0;
  for await (const e of kv.list<AuditEvent>({ start: ["audit", mark + 1], end: ["audit", last + 1] })) {
    if (e.value.runId) op.set(["audit_by_run", e.value.runId, e.value.seq], e.value.seq);
    if (++n % 400 === 0) {
      await op.set(INDEXED_KEY, e.value.seq).commit();
      op = kv.atomic();
    }
  }
  await op.set(INDEXED_KEY, last).commit();
};

/** A point of the chain: an event's sequence number and hash. */
export interface AuditAnchor {
  readonly seq: number;
  readonly hash: string;
}

/** What `verify` found. */
export interface AuditVerdict {
  /** The chain is unbroken and, if an anchor was given, holds it. */
  readonly ok: boolean;
  readonly checked: number;
  /** The first event whose links or hash do not hold. */
  readonly brokenAt?: number;
  /** The newest event (none in an empty log): save it elsewhere and pass it as the anchor of a later check. */
  readonly head?: AuditAnchor;
  /** The anchor's check, when one was given. */
  readonly anchor?: AuditAnchor & { readonly held: boolean; readonly problem?: string };
}

/** What a caller supplies; sequence, time and hashes are the log's. */
export type AuditInput = Pick<AuditEvent, "type" | "actor" | "runId" | "data">;

/** An audit event's write: the event exists once the write was applied to a commit. */
export interface AuditWrite extends GroupWrite {
  readonly event: () => AuditEvent;
  /**
   * Hash the event now, as if it were chained next: for a write that waits for something else (a Worker) before
   * its commit is built. The hash is used if the chain's head is still the same when the write is applied, and
   * made again otherwise.
   */
  readonly ahead: () => void;
}

/** An event prepared up to its place in the chain (`Audit.draft`). */
export interface AuditDraft {
  readonly input: AuditInput;
  /** `canonicalJson` of the data. */
  readonly dataJson: string;
  /** A copy of the data, made from `dataJson`. */
  readonly data: Record<string, unknown>;
}

/** The audit log service. */
export class Audit extends Context.Service<Audit, {
  append(event: AuditInput): Effect.Effect<AuditEvent, StoreError>;
  /**
   * Chain an event without writing it: the caller carries `write` in its own
   * grouped commit (a run and its audit event in one transaction). Only for
   * writes that go through the group committer, which keeps their order.
   */
  prepare(event: AuditInput): Effect.Effect<{ write: AuditWrite }>;
  /** `prepare`, synchronously, at `millis`: for a commit that must decide inside its own critical section. */
  prepareNow(event: AuditInput, millis: number): { write: AuditWrite };
  /**
   * `prepareNow` in two parts: `draft` does the work that does not depend on the chain (the event's data
   * in canonical form, and its copy) ahead of time; `seal` makes the write, which chains the event
   * (sequence, hash) when it is applied to its commit.
   */
  draft(event: AuditInput): AuditDraft;
  seal(draft: AuditDraft, millis: number): { write: AuditWrite };
  list(filter: { runId?: string; limit?: number }): Effect.Effect<AuditEvent[], StoreError>;
  /**
   * Recompute the hash chain; returns the first broken sequence number, if any, and the head (the newest event's
   * sequence number and hash). Given an anchor (a head saved earlier, outside the data dir), also checks that the
   * event at its sequence number still has its hash: the chain alone cannot show its newest events removed.
   */
  verify(anchor?: AuditAnchor): Effect.Effect<AuditVerdict, StoreError>;
}>()("keel/telemetry/Audit") {
  /** Audit log on Deno KV. */
  static readonly layer = Layer.effect(
    Audit,
    Effect.gen(function* () {
      const { kv, group } = yield* Kv;
      // Hashing is synchronous (node:crypto), so an event is chained while its commit is built and can
      // share that commit with the run write beside it.
      const hashOf = (e: Omit<AuditEvent, "hash">) => createHash("sha256").update(canonicalJson(e)).digest("hex");
      // One host owns the data dir, so the chain's head lives here, read once from the newest event.
      // No head record is written: the newest event is the head.
      const lastEvent = async () => {
        for await (const e of kv.list<AuditEvent>({ prefix: ["audit"] }, { reverse: true, limit: 1 })) {
          return { seq: e.value.seq, hash: e.value.hash };
        }
        return { seq: 0, hash: "" };
      };
      let head = yield* kvTry("Cannot read the audit log", lastEvent);
      const mark = yield* kvTry(
        "Cannot read the audit log",
        async () => (await kv.get<number>(INDEXED_KEY)).value ?? 0,
      );
      if (head.seq - mark > 10_000) {
        yield* Effect.logInfo(
          `Indexing ${head.seq - mark} audit events by run (once, after an upgrade or a crash)`,
        );
      }
      yield* kvTry("Cannot index the audit log", () => reindex(kv, head.seq));
      const draft = (input: AuditInput): AuditDraft => {
        const dataJson = canonicalJson(input.data ?? {});
        // A copy: the caller's object may change before the commit serializes it.
        return { input, dataJson, data: JSON.parse(dataJson) };
      };
      /**
       * The write that stores a draft. The event is chained (sequence, hash of the one before) when the write is
       * applied to its commit, so events take their places in the order their commits are built, which is the
       * order they commit in. If that commit fails, the chain goes back to where it was before it.
       */
      const seal = ({ input, dataJson: data, data: copy }: AuditDraft, millis: number) => {
        const at = new Date(millis).toISOString();
        let event: AuditEvent | undefined;
        let before: { seq: number; hash: string } | undefined;
        /** The hash made ahead, and the head it was made after (heads are replaced, never changed). */
        let guess: { after: { seq: number; hash: string }; hash: string } | undefined;
        // `canonicalJson` of the event without its hash, built directly (keys in sorted order): one short
        // string to hash. `verify` recomputes it the general way.
        const hashAfter = (prev: { seq: number; hash: string }) =>
          createHash("sha256").update(
            `{"actor":${JSON.stringify(input.actor)},"at":"${at}","data":${data},"prevHash":"${prev.hash}"${
              input.runId ? `,"runId":${JSON.stringify(input.runId)}` : ""
            },"seq":${prev.seq + 1},"type":${JSON.stringify(input.type)}}`,
          ).digest("hex");
        const write: AuditWrite = {
          apply: (op) => {
            before = head;
            const seq = head.seq + 1;
            const sealed: AuditEvent = {
              seq,
              at,
              type: input.type,
              actor: input.actor,
              ...(input.runId ? { runId: input.runId } : {}),
              data: copy,
              prevHash: head.hash,
              hash: guess?.after === head ? guess.hash : hashAfter(head),
            };
            event = sealed;
            head = { seq, hash: sealed.hash };
            op.set(["audit", seq], sealed);
            // The by-run index entry (and the mark of how far the index goes) rides on a later commit when it
            // can; a restart indexes what a crash left unindexed (see `reindex`). Only a rider moves the mark:
            // riders are made in sequence order and commit in that order, so every event before it is indexed.
            const entry = (o: Deno.AtomicOperation) => {
              if (sealed.runId) o.set(["audit_by_run", sealed.runId, seq], seq);
            };
            const rider: GroupWrite = { apply: (o) => entry(o.set(INDEXED_KEY, seq)), mutations: 2, bytes: 128 };
            if (!group.ride(rider)) entry(op);
          },
          mutations: 3,
          bytes: data.length + 512,
          settled: (ok) => {
            // A failed commit lost this event (and any after it in the same commit): chain from before it.
            if (!ok && before && before.seq < head.seq) head = before;
          },
          event: () => {
            if (!event) throw new Error("the audit event is chained when its write is applied");
            return event;
          },
          ahead: () => {
            guess = { after: head, hash: hashAfter(head) };
          },
        };
        return { write };
      };
      const prepareNow = (input: AuditInput, millis: number) => seal(draft(input), millis);
      // Untraced: called for every run event, on the hot path.
      const prepare = Effect.fnUntraced(function* (input: AuditInput) {
        return prepareNow(input, yield* Clock.currentTimeMillis);
      });
      const append = Effect.fn("Audit.append")(function* (input: AuditInput) {
        const { write } = yield* prepare(input);
        // A failed commit puts the chain back itself (`settled`).
        yield* kvTry("Cannot append to the audit log", () => group.submit(write));
        return write.event();
      });
      const list = Effect.fn("Audit.list")(function* (filter: { runId?: string; limit?: number }) {
        const limit = Math.min(filter.limit ?? 1000, 10_000);
        return yield* kvTry("Cannot read the audit log", async () => {
          const out: AuditEvent[] = [];
          if (filter.runId) {
            // Index entries still riding are committed first.
            await group.flushRiders();
            // The run's newest events, like the log's below.
            const seqs: number[] = [];
            for await (
              const e of kv.list<number>({ prefix: ["audit_by_run", filter.runId] }, { limit, reverse: true })
            ) {
              seqs.push(e.value);
            }
            seqs.reverse();
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
      const verify = (anchor?: AuditAnchor) =>
        kvTry("Cannot verify the audit log", async (): Promise<AuditVerdict> => {
          let prev = "";
          let checked = 0;
          let head: AuditAnchor | undefined;
          let atAnchor: string | undefined;
          let brokenAt: number | undefined;
          for await (const e of kv.list<AuditEvent>({ prefix: ["audit"] })) {
            const { hash, ...rest } = e.value;
            if (rest.prevHash !== prev || (await hashOf(rest)) !== hash) {
              brokenAt = rest.seq;
              break;
            }
            if (anchor && rest.seq === anchor.seq) atAnchor = hash;
            prev = hash;
            head = { seq: rest.seq, hash };
            checked++;
          }
          const held = anchor === undefined ? undefined : atAnchor === anchor.hash;
          const problem = anchor === undefined || held
            ? undefined
            : atAnchor !== undefined
            ? `event ${anchor.seq} has another hash: events up to it were changed, or removed and written again`
            : brokenAt !== undefined && brokenAt <= anchor.seq
            ? `the chain breaks at event ${brokenAt}, at or before the anchor's event ${anchor.seq}`
            : `event ${anchor.seq} is gone: the log ends at event ${head?.seq ?? 0}, so newer events were removed`;
          return {
            ok: brokenAt === undefined && held !== false,
            checked,
            ...(brokenAt !== undefined ? { brokenAt } : {}),
            ...(head ? { head } : {}),
            ...(anchor ? { anchor: { ...anchor, held: held!, ...(problem ? { problem } : {}) } } : {}),
          };
        });
      return Audit.of({ append, prepare, prepareNow, draft, seal, list, verify });
    }),
  );
}

/**
 * @module
 * Group commit for Deno KV: writes submitted while a commit is in flight are
 * carried together by the next atomic operation, so many checkpoints (from one
 * run or many) cost one SQLite transaction. Writes commit in the order they
 * were submitted; each caller's promise resolves once its write is durable in
 * the KV file, and rejects if the batch carrying it failed.
 *
 * Only blind writes go through here (no `check`): one failed check would fail
 * every write in its batch. Callers that need compare-and-set commit directly.
 * That is safe for the run journal because one host owns a data dir (the
 * data-dir lock) and runs one pass of a run at a time.
 */

/** A write to carry in a group: it adds its mutations to the shared atomic operation. */
export interface GroupWrite {
  readonly apply: (op: Deno.AtomicOperation) => void;
  /** Mutations it adds (Deno KV allows 1,000 per atomic operation). */
  readonly mutations: number;
  /** About how many bytes it writes (Deno KV allows 800 KiB per atomic operation). */
  readonly bytes: number;
  /**
   * What the write belongs to (a run id). Once a batch carrying a scope fails,
   * later writes of that scope are refused: a run's end is never recorded
   * after one of its checkpoints was lost.
   */
  readonly scope?: string;
}

/** Figures for the bench and `GET /healthz`-style diagnostics. */
export interface GroupCommitStats {
  readonly commits: number;
  readonly writes: number;
  readonly largestBatch: number;
  /** KV mutations and about how many bytes the grouped writes carried. */
  readonly mutations: number;
  readonly bytes: number;
  /** Milliseconds spent waiting for commits. */
  readonly busyMs: number;
}

/** The group committer over one KV handle. */
export interface GroupCommitter {
  /** Write durably, sharing a commit with whatever else is waiting. */
  submit(write: GroupWrite): Promise<void>;
  /**
   * Run `task` (which may read and commit with checks) alone, in order with the
   * grouped writes: after every write submitted before it, before every write
   * submitted after it.
   */
  exclusive<T>(task: () => Promise<T>): Promise<T>;
  readonly stats: () => GroupCommitStats;
}

const MAX_MUTATIONS = 900;
const MAX_BYTES = 600 * 1024;

interface Waiting extends GroupWrite {
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  /** Set for an exclusive task instead of a write. */
  readonly task?: () => Promise<void>;
}

/** Make a group committer; `kv` must stay open while writes are submitted. */
export const makeGroupCommitter = (kv: Deno.Kv): GroupCommitter => {
  const queue: Waiting[] = [];
  let running = false;
  let commits = 0;
  let writes = 0;
  let largestBatch = 0;
  let busyMs = 0;
  let mutationsTotal = 0;
  let bytesTotal = 0;
  const poisoned = new Set<string>();

  const drain = async () => {
    running = true;
    try {
      while (queue.length) {
        if (queue[0].task) {
          const item = queue.shift()!;
          await item.task!().then(item.resolve, item.reject);
          continue;
        }
        const batch: Waiting[] = [];
        let mutations = 0;
        let bytes = 0;
        while (queue.length) {
          const next = queue[0];
          if (next.task) break;
          if (batch.length && (mutations + next.mutations > MAX_MUTATIONS || bytes + next.bytes > MAX_BYTES)) break;
          batch.push(queue.shift()!);
          mutations += next.mutations;
          bytes += next.bytes;
        }
        const op = kv.atomic();
        try {
          for (const w of batch) w.apply(op);
          const began = performance.now();
          const res = await op.commit();
          busyMs += performance.now() - began;
          if (!res.ok) throw new Error("the atomic write was refused");
          commits++;
          writes += batch.length;
          mutationsTotal += mutations;
          bytesTotal += bytes;
          largestBatch = Math.max(largestBatch, batch.length);
          for (const w of batch) w.resolve();
        } catch (error) {
          for (const w of batch) {
            if (w.scope !== undefined) poisoned.add(w.scope);
            w.reject(error);
          }
        }
      }
    } finally {
      running = false;
    }
  };

  return {
    submit: (write) =>
      new Promise<void>((resolve, reject) => {
        if (write.scope !== undefined && poisoned.has(write.scope)) {
          return reject(new Error(`an earlier write of "${write.scope}" failed; refusing later ones`));
        }
        queue.push({ ...write, resolve, reject });
        if (!running) {
          // Start after the current tick: writes made together (a run and its audit event) share the commit.
          running = true;
          queueMicrotask(drain);
        }
      }),
    exclusive: <T>(task: () => Promise<T>) =>
      new Promise<T>((resolve, reject) => {
        let value: T;
        queue.push({
          apply: () => {},
          mutations: 0,
          bytes: 0,
          task: async () => {
            value = await task();
          },
          resolve: () => resolve(value),
          reject,
        });
        if (!running) {
          running = true;
          queueMicrotask(drain);
        }
      }),
    stats: () => ({ commits, writes, largestBatch, mutations: mutationsTotal, bytes: bytesTotal, busyMs }),
  };
};

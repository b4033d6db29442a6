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
 *
 * **Riders.** Index entries that a restart can rebuild from the records they
 * index (a run's place in the active-runs index, an approval's in the pending
 * index, an audit event's in the by-run index) need not make the commit that
 * writes the record any larger: `ride` carries them in a later commit that is
 * shared by several writes anyway, or alone after `RIDE_MS` (a lone write,
 * which someone waits on, goes as small as it is). A rider made while a write
 * is applied waits for that write's commit: it never lands before the record
 * it indexes, and it is dropped if that commit fails.
 *
 * Each write may ask to be told whether its commit succeeded (`settled`: the
 * audit chain goes back after a failed one). Once a batch carrying a scope
 * (a run) fails, later writes of that scope are refused until `forgive`: the
 * run's next pass, which reads its journal back, is its new writer. `close` (after the last
 * `flushRiders`, when the store closes) refuses later writes and stops riders.
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
  /**
   * Told once whether the commit that carried this write succeeded (`true`) or failed (`false`), before
   * the next batch is built. Whoever commits a write directly calls it the same way.
   */
  readonly settled?: (ok: boolean) => void;
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
  /** Commits that carried riders and nothing else (`flushRiders`, or riders alone after `RIDE_MS`). */
  readonly riderCommits: number;
  /** Batches whose commit failed. */
  readonly failedCommits: number;
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
  /**
   * Carry an index write in a later commit (see "Riders" above). Only while
   * a grouped write is applied to its commit: the rider goes only once that
   * commit succeeded. Anywhere else (a direct commit) this returns false and
   * the caller writes the entry itself.
   */
  ride(write: GroupWrite): boolean;
  /** Commit the riders now; resolves once they (and everything submitted before) are durable. */
  flushRiders(): Promise<void>;
  /**
   * A new writer of `scope` starts from what the store holds (a run's next pass read its journal back): writes
   * of the scope are accepted again. Any still queued from before are refused: they belong to the old writer.
   */
  forgive(scope: string): void;
  /** Riders waiting (for diagnostics and tests). */
  readonly riders: () => number;
  /** Stop: later writes are refused and riders no longer retry (after `flushRiders`, when the store closes). */
  close(): void;
  readonly stats: () => GroupCommitStats;
}

/** How long riders wait for another commit to carry them before they commit alone. */
export const RIDE_MS = 25;
/** Riders ride on a commit of at least this many writes. */
const RIDE_MIN_BATCH = 2;

const MAX_MUTATIONS = 900;
const MAX_BYTES = 600 * 1024;

interface Waiting extends GroupWrite {
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  /** Set for an exclusive task instead of a write. */
  readonly task?: () => Promise<void>;
}

const refused = (scope: string) => new Error(`an earlier write of "${scope}" failed; refusing later ones`);

/** Make a group committer; `kv` must stay open while writes are submitted. */
export const makeGroupCommitter = (
  kv: Deno.Kv,
  /** How long riders wait for a shared commit before they go alone (`RIDE_MS`; tests set it far off). */
  options: { readonly rideMs?: number } = {},
): GroupCommitter => {
  const rideMs = options.rideMs ?? RIDE_MS;
  const queue: Waiting[] = [];
  let running = false;
  let commits = 0;
  let writes = 0;
  let largestBatch = 0;
  let busyMs = 0;
  let mutationsTotal = 0;
  let bytesTotal = 0;
  let riderCommits = 0;
  let failedCommits = 0;
  const poisoned = new Set<string>();
  /** Riders ready for the next commit, oldest first. */
  const riders: GroupWrite[] = [];
  /** Set only while a batch's writes are applied: the riders they make, which ride only if the batch commits. */
  let provisional: GroupWrite[] | undefined;
  let rideTimer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;
  const scheduleRiders = () => {
    if (closed || rideTimer !== undefined || !riders.length) return;
    rideTimer = setTimeout(() => {
      rideTimer = undefined;
      if (riders.length) flushRiders().catch(() => {});
    }, rideMs);
    Deno.unrefTimer(rideTimer);
  };

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
          if (next.scope !== undefined && poisoned.has(next.scope)) {
            // Submitted before an earlier write of its scope failed (while that one's commit was in flight).
            queue.shift();
            next.settled?.(false);
            next.reject(refused(next.scope));
            continue;
          }
          if (batch.length && (mutations + next.mutations > MAX_MUTATIONS / 2 || bytes + next.bytes > MAX_BYTES)) {
            break;
          }
          batch.push(queue.shift()!);
          mutations += next.mutations;
          bytes += next.bytes;
        }
        if (!batch.length) continue;
        // Riders, oldest first, ride on a commit that is shared anyway (or one made for them): a lone
        // write, which someone is waiting on, goes as small as it is.
        const carried: GroupWrite[] = [];
        if (batch.length >= RIDE_MIN_BATCH || batch.every((w) => w.mutations === 0)) {
          while (riders.length && mutations + riders[0].mutations <= MAX_MUTATIONS) {
            const r = riders.shift()!;
            carried.push(r);
            mutations += r.mutations;
            bytes += r.bytes;
          }
        }
        let made: GroupWrite[] = [];
        try {
          // Inside the try: a closed store fails this batch's writes, not the process.
          const op = kv.atomic();
          for (const r of carried) r.apply(op);
          // Riders are made only while the batch's writes are applied (synchronously): they are this batch's.
          provisional = made;
          try {
            for (const w of batch) w.apply(op);
          } finally {
            provisional = undefined;
          }
          const began = performance.now();
          const res = await op.commit();
          busyMs += performance.now() - began;
          if (!res.ok) throw new Error("the atomic write was refused");
          commits++;
          writes += batch.length;
          mutationsTotal += mutations;
          bytesTotal += bytes;
          largestBatch = Math.max(largestBatch, batch.length);
          riders.push(...made);
          if (batch.every((w) => w.mutations === 0) && carried.length) riderCommits++;
          for (const r of carried) r.settled?.(true);
          for (const w of batch) w.settled?.(true);
          for (const w of batch) w.resolve();
        } catch (error) {
          // Riders made by this batch's writes go with them; carried ones (their records are durable) wait for
          // the next commit.
          failedCommits++;
          riders.unshift(...carried);
          made = [];
          for (const w of batch) w.settled?.(false);
          for (const w of batch) {
            if (w.scope !== undefined) poisoned.add(w.scope);
            w.reject(error);
          }
        }
        // A queue that stays busy with lone writes never carries riders: the timer sends them alone.
        scheduleRiders();
      }
    } finally {
      running = false;
      scheduleRiders();
    }
  };

  const enqueue = (item: Waiting) => {
    if (closed) return item.reject(new Error("the store is closed"));
    queue.push(item);
    if (!running) {
      // Start after the current tick: writes made together (a run and its audit event) share the commit.
      running = true;
      queueMicrotask(drain);
    }
  };
  const flushOnce = () =>
    new Promise<void>((resolve, reject) => {
      if (rideTimer !== undefined) clearTimeout(rideTimer);
      rideTimer = undefined;
      // An empty write: its batch carries the riders (and those of every write before it).
      enqueue({ apply: () => {}, mutations: 0, bytes: 0, resolve, reject });
    });
  /** Commit until no rider waits (a commit carries at most `MAX_MUTATIONS` of them; bounded under load). */
  const flushRiders = async () => {
    await flushOnce();
    for (let i = 0; riders.length && i < 100; i++) await flushOnce();
  };

  return {
    submit: (write) =>
      new Promise<void>((resolve, reject) => {
        if (write.scope !== undefined && poisoned.has(write.scope)) return reject(refused(write.scope));
        enqueue({ ...write, resolve, reject });
      }),
    ride: (write) => {
      if (!provisional) return false;
      provisional.push(write);
      return true;
    },
    flushRiders,
    forgive: (scope) => {
      if (!poisoned.delete(scope)) return;
      for (let i = queue.length - 1; i >= 0; i--) {
        const w = queue[i];
        if (w.scope !== scope) continue;
        queue.splice(i, 1);
        w.settled?.(false);
        w.reject(refused(scope));
      }
    },
    riders: () => riders.length,
    close: () => {
      closed = true;
      if (rideTimer !== undefined) clearTimeout(rideTimer);
      rideTimer = undefined;
    },
    exclusive: <T>(task: () => Promise<T>) =>
      new Promise<T>((resolve, reject) => {
        let value: T;
        enqueue({
          apply: () => {},
          mutations: 0,
          bytes: 0,
          task: async () => {
            value = await task();
          },
          resolve: () => resolve(value),
          reject,
        });
      }),
    stats: () => ({
      commits,
      writes,
      largestBatch,
      mutations: mutationsTotal,
      bytes: bytesTotal,
      busyMs,
      riderCommits,
      failedCommits,
    }),
  };
};

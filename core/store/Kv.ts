/**
 * @module
 * The Deno KV store and the data-dir lock. One host process owns a data dir:
 * the lock is an OS file lock (released by the kernel when the process dies,
 * even by `kill -9`), so a second owner is refused with a clear error while a
 * crashed owner never leaves a stale lock behind.
 */
import { Context, Effect, Layer } from "effect";
import { DataDirLockedError, StoreError } from "../errors/mod.ts";
import { KeelConfig } from "../config/mod.ts";
import { type GroupCommitter, makeGroupCommitter } from "./GroupCommit.ts";

/** The Deno KV handle shared by the journal, approvals, registry and audit. */
export class Kv extends Context.Service<Kv, {
  readonly kv: Deno.Kv;
  /** Blind writes batched into shared atomic commits (see `GroupCommit.ts`). */
  readonly group: GroupCommitter;
}>()("keel/store/Kv") {
  /** Opens `<dataDir>/keel.kv` (or in memory) after taking the data-dir lock. */
  static readonly layer = Layer.effect(
    Kv,
    Effect.gen(function* () {
      const config = yield* KeelConfig;
      if (config.dataDir !== ":memory:") yield* lockDataDir(config.dataDir);
      const path = config.dataDir === ":memory:" ? ":memory:" : `${config.dataDir}/keel.kv`;
      const kv = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: () => Deno.openKv(path),
          catch: (cause) => new StoreError({ message: `Cannot open Deno KV at "${path}": ${String(cause)}` }),
        }),
        (kv) => Effect.sync(() => kv.close()),
      );
      yield* checkSchema(kv, path);
      const group = makeGroupCommitter(kv);
      // Riders still waiting are committed before the store closes (this runs before `kv.close` above).
      yield* Effect.addFinalizer(() =>
        Effect.promise(() => group.flushRiders().catch(() => {})).pipe(Effect.andThen(Effect.sync(() => group.close())))
      );
      return Kv.of({ kv, group });
    }),
  );
}

/**
 * The KV layout version this Keel writes; a data dir from a newer Keel is refused, never rewritten. An older
 * layout is read as it is and marked with this version, so an older Keel then refuses it. 2: completed
 * checkpoints are stored in chunks (`journal/Journal.ts`). 3: index entries may lag their records by a
 * commit ("Riders" in `GroupCommit.ts`); a restart sweeps and rebuilds them. 4: runs are indexed by creation time
 * (`run_created`, for the run list), which a Keel of layout 3 would not keep up.
 */
export const KV_SCHEMA_VERSION = 4;

const checkSchema = (kv: Deno.Kv, path: string) =>
  Effect.flatMap(
    kvTry("Cannot read the KV schema version", async () => {
      const current = await kv.get<number>(["meta", "schema"]);
      if (current.value === null || current.value < KV_SCHEMA_VERSION) {
        await kv.atomic().check(current).set(["meta", "schema"], KV_SCHEMA_VERSION).commit();
        return KV_SCHEMA_VERSION;
      }
      return current.value;
    }),
    (version) =>
      version > KV_SCHEMA_VERSION
        ? Effect.fail(
          new StoreError({
            message:
              `Deno KV at "${path}" has layout version ${version}; this Keel understands up to ${KV_SCHEMA_VERSION}: upgrade Keel`,
          }),
        )
        : Effect.void,
  );

/** Take the exclusive lock on a data dir for the lifetime of the scope. */
export const lockDataDir = (dataDir: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        Deno.mkdirSync(dataDir, { recursive: true });
        const file = Deno.openSync(`${dataDir}/keel.lock`, { read: true, write: true, create: true });
        if (!file.tryLockSync(true)) {
          file.close();
          return undefined;
        }
        file.truncateSync(0);
        file.writeSync(new TextEncoder().encode(`${Deno.pid}\n`));
        return file;
      },
      catch: (cause) => new StoreError({ message: `Cannot use data dir "${dataDir}": ${String(cause)}` }),
    }).pipe(
      Effect.flatMap((file) =>
        file === undefined
          ? Effect.fail(
            new DataDirLockedError({
              message: `Data dir "${dataDir}" is in use by another Keel process${ownerOf(dataDir)}`,
              details: { dataDir },
            }),
          )
          : Effect.succeed(file)
      ),
    ),
    // Unlock, then close. An flock belongs to the open file, not the fd: a process being spawned from any thread of
    // this one holds a copy of every fd until it execs, and that copy alone would keep the lock after `close()`.
    (file) => Effect.sync(() => file.unlockSync()).pipe(Effect.ensuring(Effect.sync(() => file.close()))),
  );

const ownerOf = (dataDir: string): string => {
  try {
    const pid = Deno.readTextFileSync(`${dataDir}/keel.lock`).trim();
    return pid ? ` (pid ${pid})` : "";
  } catch {
    return "";
  }
};

/** Wrap a KV promise, naming what was being done when it failed. */
export const kvTry = <A>(what: string, f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (cause) => new StoreError({ message: `${what}: ${String(cause)}` }) });

/**
 * @module
 * Checks values against JSON Schemas that plugin authors wrote. A schema's
 * `pattern` runs on JavaScript's backtracking regular expressions, and Keel
 * refuses at install only the patterns that can take exponential time
 * (`patternRisk`): `^\d*\d*x$` still takes seconds on 60 KB of digits, and on
 * Keel's main thread that stalls every run and the API. So a schema that
 * holds a regular expression (`pattern`, `patternProperties`) is checked in a
 * separate process with no permissions (`_schema_check_entry.ts`), started on
 * first use, one check at a time under a deadline (each schema's checks in
 * their own queue, the queues taken in turn); at the deadline Keel kills
 * it (a Worker cannot be used: terminating one does not stop a regular
 * expression that is running, whose thread keeps a core busy until it ends)
 * and the check fails with a line saying so. The next check starts a new
 * process. The process lives under a CPU-time limit (`ulimit -t`) that Keel
 * retires it well before: if Keel dies (kill -9) while a check is stuck, its
 * process dies of the limit instead of keeping a core busy for days. A
 * `format` counts as a regular expression: the validator checks
 * most formats with its own, and `url`'s backtracks exponentially. Schemas
 * without regular expressions are checked on the main thread, as before: they
 * cost no extra hop.
 */
import { Effect, type Scope } from "effect";
import { Validator } from "@cfworker/json-schema";
import type { JsonSchema } from "./Manifest.ts";
import { schemaErrors } from "./schemaErrors.ts";

/** How long one check against a schema with patterns may take before it is stopped and refused. */
export const SCHEMA_CHECK_DEADLINE_MS = 1000;

/** A schema made ready to check values against, on the main thread or in the schema-check process. */
export interface PreparedSchema {
  /** Whether checks go to the schema-check process (the schema holds a regular expression). */
  readonly isolated: boolean;
  /** The first violations of a value as `field …` lines (see `schemaErrors`); none when it matches. */
  check(value: unknown): Effect.Effect<string[]>;
}

/** Prepares schemas whose checks cannot stall Keel's main thread (see the module doc). */
export interface SchemaChecker {
  /** Compile a schema (throws what `new Validator` throws) and say where its checks run. */
  prepare(schema: JsonSchema): PreparedSchema;
  /** The schema-check process running now, if one is (its pid): for diagnostics and tests. */
  processId(): number | undefined;
}

/**
 * Whether a schema holds a regular expression that a value is matched against: its own (`pattern`,
 * `patternProperties`) or a `format`'s, which the validator checks with regular expressions of its own (`url`'s,
 * `(?:[a-z…0-9]+-?)*[a-z…0-9]+`, backtracks exponentially: 34 characters took two seconds, each one more doubles it).
 */
export const hasPatterns = (schema: unknown): boolean => {
  if (schema === null || typeof schema !== "object") return false;
  if (Array.isArray(schema)) return schema.some(hasPatterns);
  for (const [k, v] of Object.entries(schema)) {
    if ((k === "pattern" || k === "format") && typeof v === "string") return true;
    if (k === "patternProperties" && v !== null && typeof v === "object" && Object.keys(v).length) return true;
    if (hasPatterns(v)) return true;
  }
  return false;
};

type Outcome = { errors: string[] } | { failed: string };

/**
 * CPU seconds the schema-check process may use in all (`ulimit -t`): what an orphan stuck in a regular expression
 * burns at most after Keel died. Keel retires the process after `RETIRE_MS` of wall time, which it cannot have
 * outspent in CPU (or half the limit, if lower), so a live Keel never meets the limit.
 */
export const SCHEMA_CHECK_CPU_SECONDS = 120;
const RETIRE_MS = 60_000;

/** How long the schema-check process may take to start (a cold `deno run` under load), not part of a check's deadline. */
const START_MS = 30_000;

/** The schema-check process: one check at a time, killed at a check's deadline and started again on the next. */
const makeProcess = (deadlineMs: number, cpuSeconds: number) => {
  const entry = new URL("./_schema_check_entry.ts", import.meta.url);
  // Keel's own configuration, for its import map and node_modules.
  const config = decodeURIComponent(new URL("../../deno.json", import.meta.url).pathname);
  let current: Running | undefined;
  let closed = false;

  interface Running {
    readonly child: Deno.ChildProcess;
    readonly writer: WritableStreamDefaultWriter<Uint8Array>;
    readonly ready: Promise<void>;
    readonly ended: Promise<unknown>;
    readonly startedAt: number;
    answer?: (message: Record<string, unknown> | undefined) => void;
  }

  const start = (): Running => {
    // No --allow-* flag: the process may read no file (its modules load anyway), reach no host, run nothing. Started
    // through sh for its CPU-time limit (Deno cannot set one); `exec` leaves Deno as the process Keel kills.
    const deno = [
      Deno.execPath(),
      "run",
      "--no-prompt",
      `--config=${config}`,
      "--no-lock",
      "--cached-only",
      "--no-remote",
      "--v8-flags=--max-old-space-size=512",
      entry.href,
    ];
    const child = new Deno.Command("/bin/sh", {
      args: ["-c", `ulimit -t ${cpuSeconds} && exec "$0" "$@"`, ...deno],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    let readyNow: () => void = () => {};
    let notReady: (e: Error) => void = () => {};
    const ready = new Promise<void>((resolve, reject) => {
      readyNow = resolve;
      notReady = reject;
    });
    const running: Running = {
      child,
      writer: child.stdin.getWriter(),
      ready,
      ended: Promise.resolve(),
      startedAt: performance.now(),
    };
    const onLine = (line: string) => {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line);
      } catch {
        return;
      }
      if (message.ready === true) readyNow();
      else running.answer?.(message);
    };
    (running as { ended: Promise<unknown> }).ended = (async () => {
      let parts: string[] = [];
      try {
        for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
          let from = 0;
          for (let nl = chunk.indexOf("\n"); nl !== -1; nl = chunk.indexOf("\n", from)) {
            parts.push(chunk.slice(from, nl));
            onLine(parts.join(""));
            parts = [];
            from = nl + 1;
          }
          if (from < chunk.length) parts.push(chunk.slice(from));
        }
      } catch {
        // Killed: the stream ends either way.
      }
      notReady(new Error("the schema-check process stopped before it was ready"));
      running.writer.abort().catch(() => {});
      running.answer?.(undefined);
      if (current === running) current = undefined;
      await child.status;
    })();
    return running;
  };

  const stop = (running: Running) => {
    if (current === running) current = undefined;
    try {
      running.child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    return running.ended;
  };

  const once = async (id: number, schema: JsonSchema, value: unknown): Promise<Outcome> => {
    if (closed) return { failed: "Keel is shutting down" };
    // Before anything starts: a value that is not JSON (a BigInt, a cycle, which a Worker's structured clone carries)
    // threw here after the deadline's timer was set, so the check died as a defect and the timer killed the process
    // a second later, in the middle of whatever check it was doing by then.
    let line: Uint8Array;
    try {
      line = new TextEncoder().encode(JSON.stringify({ id, schema, value }) + "\n");
    } catch (error) {
      return { failed: `the value is not JSON (${error instanceof Error ? error.message : String(error)})` };
    }
    // Retired before it can have spent its CPU-time limit (see SCHEMA_CHECK_CPU_SECONDS): between checks, so none fails.
    if (current && performance.now() - current.startedAt > Math.min(RETIRE_MS, cpuSeconds * 500)) await stop(current);
    let running: Running;
    try {
      running = current ??= start();
    } catch (error) {
      return { failed: `the schema-check process could not start: ${error instanceof Error ? error.message : error}` };
    }
    let late: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        running.ready,
        new Promise((_, reject) => {
          late = setTimeout(() => {
            stop(running);
            reject(new Error(`the schema-check process did not start within ${START_MS / 1000} s`));
          }, START_MS);
        }),
      ]);
    } catch (error) {
      return { failed: error instanceof Error ? error.message : String(error) };
    } finally {
      clearTimeout(late);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const answered = new Promise<Outcome>((resolve) => {
      running.answer = (m) =>
        resolve(
          m === undefined
            ? { failed: "the schema-check process stopped before it answered" }
            : Array.isArray(m.errors)
            ? { errors: m.errors as string[] }
            : { failed: String(m.failed) },
        );
      timer = setTimeout(() => {
        // The check is stuck in a regular expression: only killing the process stops it.
        stop(running);
        resolve({
          failed: `the check against the schema's patterns took longer than ${deadlineMs} ms and was stopped`,
        });
      }, deadlineMs);
    });
    running.writer.write(line).catch(() => {});
    try {
      return await answered;
    } finally {
      clearTimeout(timer);
      running.answer = undefined;
    }
  };

  /**
   * Checks wait in one queue per schema, taken in turn: a schema whose values each take the deadline (one plugin's
   * slow pattern, sent again and again) delays another schema's check by at most one deadline, not by its whole queue.
   */
  const queues = new Map<number, Array<() => Promise<void>>>();
  /** Schemas with checks waiting, in the order they take their turns. */
  const turns: number[] = [];
  /** The schema whose check is running: it takes its next turn when that check ends. */
  let runningId: number | undefined;
  /** The loop taking checks in turn runs while there are any (`drained` when it ends). */
  let pumping = false;
  let drained: Promise<void> = Promise.resolve();
  const pump = () => {
    if (pumping) return;
    pumping = true;
    drained = (async () => {
      try {
        for (let id = turns.shift(); id !== undefined; id = turns.shift()) {
          const queue = queues.get(id)!;
          runningId = id;
          await queue.shift()!();
          runningId = undefined;
          // Its next check goes to the back of the line, behind the schemas that arrived while this one ran.
          if (!queue.length) queues.delete(id);
          else if (!turns.includes(id)) turns.push(id);
        }
      } finally {
        pumping = false;
      }
    })();
  };

  return {
    processId: () => current?.child.pid,
    check: (id: number, schema: JsonSchema, value: unknown): Promise<Outcome> => {
      const { promise, resolve } = Promise.withResolvers<Outcome>();
      const queue = queues.get(id) ?? [];
      queues.set(id, queue);
      if (id !== runningId && !turns.includes(id)) turns.push(id);
      queue.push(() => once(id, schema, value).then(resolve, (error) => resolve({ failed: String(error) })));
      pump();
      return promise;
    },
    close: async () => {
      closed = true;
      // The check in flight ends as "stopped"; the queued ones see `closed`.
      if (current) await stop(current);
      await drained;
    },
  };
};

/** A schema checker whose process (started on first use) ends with the scope. */
export const makeSchemaChecker = (
  deadlineMs: number = SCHEMA_CHECK_DEADLINE_MS,
  cpuSeconds: number = SCHEMA_CHECK_CPU_SECONDS,
): Effect.Effect<SchemaChecker, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(Effect.sync(() => makeProcess(deadlineMs, cpuSeconds)), (p) => Effect.promise(p.close)),
    (process): SchemaChecker => {
      let ids = 0;
      return {
        processId: process.processId,
        prepare: (schema) => {
          const validator = new Validator(schema, "2020-12", false);
          if (!hasPatterns(schema)) {
            return { isolated: false, check: (value) => Effect.sync(() => schemaErrors(validator, value)) };
          }
          const id = ++ids;
          return {
            isolated: true,
            check: (value) =>
              Effect.map(
                Effect.promise(() => process.check(id, schema, value)),
                (o) => "errors" in o ? o.errors : [o.failed],
              ),
          };
        },
      };
    },
  );

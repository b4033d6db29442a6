/**
 * @module
 * Cron schedules declared on workflows (`"schedule": {"cron", "tz", "input"}`
 * in an agent's manifest). One timer, set to the earliest next fire time of
 * every schedule of an active plugin version, wakes the scheduler; no
 * polling. On waking it starts each due schedule's run with the idempotent
 * run id `cron_<workflow>_<fireTimeMs>`, so a crash or restart around a fire
 * never starts the same slot twice, and records the last fire in Deno KV
 * (`["schedule", workflow]`). Fires missed while Keel was down are caught up
 * once at start: only the most recent missed slot runs. A schedule seen for
 * the first time (or whose cron or time zone changed) starts counting from
 * then, never from the past. The timer is re-armed when a plugin is
 * installed, upgraded, granted or removed (`refresh`) and at least hourly.
 */
import { Clock, Context, Cron, Effect, Layer } from "effect";
import type { StoreError } from "../errors/mod.ts";
import { toErrorBody } from "../errors/mod.ts";
import { Kv, kvTry } from "../store/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { Orchestrator } from "../orchestrator/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import { cronMatches } from "../manifest/mod.ts";

/** A schedule as `GET /api/schedules` shows it. */
export interface ScheduleView {
  readonly workflow: string;
  /** The agent and the active version that declares it. */
  readonly plugin: string;
  readonly version: string;
  readonly cron: string;
  readonly tz: string;
  readonly input: Record<string, unknown>;
  /** When it fires next (ISO time). */
  readonly nextFireAt: string;
  /** The last slot it fired for, and that run's id. */
  readonly lastFireAt?: string;
  readonly lastRunId?: string;
}

/** What the scheduler keeps per schedule in Deno KV (`["schedule", workflow]`). */
interface ScheduleRecord {
  /** `cron|tz`: when it changes, the schedule counts from the change. */
  readonly spec: string;
  /** Slots at or before this time (epoch ms) are never fired: when Keel first saw this schedule. */
  readonly since: number;
  readonly lastFireMs?: number;
  readonly lastRunId?: string;
}

interface Live {
  readonly workflow: string;
  readonly plugin: string;
  readonly version: string;
  readonly cron: Cron.Cron;
  readonly expression: string;
  readonly tz: string;
  readonly input: Record<string, unknown>;
}

/** Longest single wait: the timer is re-armed at least this often (clock changes, DST). */
const MAX_NAP_MS = 60 * 60_000;

/** The id of the run a schedule starts for one slot. */
export const cronRunId = (workflow: string, fireMs: number): string => `cron_${workflow}_${fireMs}`;

/** The latest slot at or before `nowMs` that is after `afterMs`, if any: the one slot a (late) wake fires. */
export const dueSlot = (cron: Cron.Cron, afterMs: number, nowMs: number): number | undefined => {
  const slot = Cron.prev(cron, new Date(nowMs + 1)).getTime();
  return slot > afterMs ? slot : undefined;
};

/** The scheduler service. */
export class Scheduler extends Context.Service<Scheduler, {
  /** Every schedule of an active plugin version, with its next fire time. */
  readonly list: Effect.Effect<ScheduleView[], StoreError>;
  /** Re-read schedules now (after a plugin was installed, upgraded, granted or removed) and re-arm the timer. */
  readonly refresh: Effect.Effect<void>;
}>()("keel/triggers/Scheduler") {
  /** The scheduler: its timer runs for the lifetime of the layer. */
  static readonly layer = Layer.effect(
    Scheduler,
    Effect.gen(function* () {
      const { kv } = yield* Kv;
      const host = yield* PluginHost;
      const orchestrator = yield* Orchestrator;
      const audit = yield* Audit;

      /** Schedules of active agent versions; the first agent offering a workflow serves it, as for runs. */
      const current = Effect.map(host.list, (plugins) => {
        const out = new Map<string, Live>();
        for (const p of plugins) {
          if (p.activation !== "active" || p.manifest.kind !== "agent") continue;
          for (const w of p.manifest.workflows) {
            if (!w.schedule || out.has(w.name)) continue;
            const tz = w.schedule.tz ?? "UTC";
            const parsed = Cron.parse(w.schedule.cron, tz);
            // Checked at install; one from an older Keel that does not parse, or never fires, is skipped, not fatal:
            // `Cron.next` would throw for it and stop every schedule.
            if (parsed._tag === "Failure" || !cronMatches(parsed.success)) continue;
            out.set(w.name, {
              workflow: w.name,
              plugin: p.name,
              version: p.version,
              cron: parsed.success,
              expression: w.schedule.cron,
              tz,
              input: w.schedule.input ?? {},
            });
          }
        }
        return out;
      });

      const readRecords = kvTry("Cannot read schedules", async () => {
        const out = new Map<string, ScheduleRecord>();
        for await (const e of kv.list<ScheduleRecord>({ prefix: ["schedule"] })) out.set(e.key[1] as string, e.value);
        return out;
      });
      const write = (workflow: string, record: ScheduleRecord) =>
        kvTry("Cannot record schedule", () => kv.set(["schedule", workflow], record));

      /** Start the run for one slot; a failure to start is audited and the slot still counts as fired. */
      const fire = Effect.fn("Scheduler.fire")(function* (s: Live, record: ScheduleRecord, slot: number, now: number) {
        const runId = cronRunId(s.workflow, slot);
        const started = yield* Effect.result(
          orchestrator.start(s.workflow, s.input, `schedule:${s.workflow}`, {
            runId,
            trigger: { kind: "cron", id: s.workflow },
          }),
        );
        yield* write(s.workflow, { ...record, lastFireMs: slot, lastRunId: runId });
        yield* audit.append({
          type: started._tag === "Success" ? "schedule.fired" : "schedule.failed",
          actor: `schedule:${s.workflow}`,
          ...(started._tag === "Success" ? { runId } : {}),
          data: {
            workflow: s.workflow,
            plugin: s.plugin,
            version: s.version,
            cron: s.expression,
            tz: s.tz,
            slot: new Date(slot).toISOString(),
            lateMs: now - slot,
            ...(started._tag === "Failure" ? { error: toErrorBody(started.failure) } : {}),
          },
        });
      });

      /** Fire what is due, forget schedules that went away; returns the next fire time (epoch ms). */
      const tick = Effect.fn("Scheduler.tick")(function* () {
        const now = yield* Clock.currentTimeMillis;
        const schedules = yield* current;
        const records = yield* readRecords;
        let next = Number.POSITIVE_INFINITY;
        for (const s of schedules.values()) {
          const spec = `${s.expression}|${s.tz}`;
          const record = records.get(s.workflow);
          if (!record || record.spec !== spec) {
            yield* write(s.workflow, { spec, since: now });
          } else {
            const slot = dueSlot(s.cron, Math.max(record.since, record.lastFireMs ?? -Infinity), now);
            if (slot !== undefined) yield* fire(s, record, slot, now);
          }
          next = Math.min(next, Cron.next(s.cron, new Date(now)).getTime());
        }
        for (const workflow of records.keys()) {
          if (!schedules.has(workflow)) {
            yield* kvTry("Cannot forget schedule", () => kv.delete(["schedule", workflow]));
          }
        }
        return next;
      });

      let dirty = false;
      let wake: (() => void) | undefined;
      const nap = (ms: number) =>
        Effect.callback<void>((resume) => {
          if (dirty) return resume(Effect.void);
          const timer = setTimeout(() => resume(Effect.void), ms);
          wake = () => resume(Effect.void);
          return Effect.sync(() => {
            clearTimeout(timer);
            wake = undefined;
          });
        });

      const loop = Effect.gen(function* () {
        for (;;) {
          dirty = false;
          const next = yield* tick().pipe(
            // A store failure is retried in a few seconds rather than ending the timer.
            Effect.catchCause((cause) =>
              Effect.andThen(
                Effect.logError("Scheduler could not check its schedules", cause),
                Effect.map(Clock.currentTimeMillis, (ms) => ms + 5000),
              )
            ),
          );
          const now = yield* Clock.currentTimeMillis;
          yield* nap(Math.max(0, Math.min(next - now, MAX_NAP_MS)));
        }
      });
      yield* Effect.forkScoped(loop);

      const list = Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis;
        const schedules = yield* current;
        const records = yield* readRecords;
        return [...schedules.values()].map((s): ScheduleView => {
          const record = records.get(s.workflow);
          const fired = record?.spec === `${s.expression}|${s.tz}` ? record : undefined;
          return {
            workflow: s.workflow,
            plugin: s.plugin,
            version: s.version,
            cron: s.expression,
            tz: s.tz,
            input: s.input,
            nextFireAt: Cron.next(s.cron, new Date(now)).toISOString(),
            ...(fired?.lastFireMs !== undefined
              ? { lastFireAt: new Date(fired.lastFireMs).toISOString(), lastRunId: fired.lastRunId }
              : {}),
          };
        });
      });

      const refresh = Effect.sync(() => {
        dirty = true;
        wake?.();
      });

      return Scheduler.of({ list, refresh });
    }),
  );
}

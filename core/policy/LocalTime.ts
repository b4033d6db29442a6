/**
 * @module
 * Wall-clock time in a named time zone, for quiet hours, budget days and the
 * `context.hour`/`context.weekday` a condition sees. Pure: the same instant
 * and zone always give the same answer (the zone rules come from the
 * runtime's ICU data), so a decision stays a function of its request.
 */

/** An instant as a clock on the wall in some zone shows it. */
export interface LocalTime {
  /** `2025-03-31` */
  readonly date: string;
  /** `2025-03` */
  readonly month: string;
  readonly hour: number;
  readonly minute: number;
  /** `mon` … `sun` */
  readonly weekday: string;
}

const WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const formatters = new Map<string, Intl.DateTimeFormat>();

const formatter = (timeZone: string): Intl.DateTimeFormat => {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      weekday: "short",
      hourCycle: "h23",
    });
    formatters.set(timeZone, f);
  }
  return f;
};

/** Is `timeZone` an IANA zone name this runtime knows (`UTC`, `Europe/Berlin`)? */
export const isTimeZone = (timeZone: string): boolean => {
  try {
    formatter(timeZone);
    return true;
  } catch {
    return false;
  }
};

/** The time zone this host runs in (what `context.hour` is measured in). */
export const hostTimeZone = (): string => new Intl.DateTimeFormat().resolvedOptions().timeZone ?? "UTC";

const pad = (n: number) => String(n).padStart(2, "0");

const QUARTER_MS = 15 * 60_000;
/** Zone offsets by zone and quarter hour: every offset in use is whole quarter hours, so are its changes. */
const offsets = new Map<string, Map<number, number>>();

/** Minutes `timeZone` is ahead of UTC at `epochMs` (an unknown zone is UTC). */
export const zoneOffsetMinutes = (epochMs: number, timeZone: string): number => {
  if (timeZone === "UTC" || !isTimeZone(timeZone)) return 0;
  const quarter = Math.floor(epochMs / QUARTER_MS);
  let byQuarter = offsets.get(timeZone);
  const cached = byQuarter?.get(quarter);
  if (cached !== undefined) return cached;
  const parts: Record<string, string> = {};
  for (const p of formatter(timeZone).formatToParts(epochMs)) parts[p.type] = p.value;
  const wall = Date.UTC(
    Number(parts.year),
    Number(parts.month) - 1,
    Number(parts.day),
    Number(parts.hour),
    Number(parts.minute),
  );
  const offset = Math.round((wall - Math.floor(epochMs / 60_000) * 60_000) / 60_000);
  if (!byQuarter) offsets.set(timeZone, byQuarter = new Map());
  if (byQuarter.size >= 4096) byQuarter.clear();
  byQuarter.set(quarter, offset);
  return offset;
};

/** The minute of the day (0–1439) a wall clock in `timeZone` shows at `epochMs`. */
export const minuteOfDay = (epochMs: number, timeZone: string): number => {
  const m = (Math.floor(epochMs / 60_000) + zoneOffsetMinutes(epochMs, timeZone)) % 1440;
  return m < 0 ? m + 1440 : m;
};

/** The wall-clock reading of `epochMs` in `timeZone` (an unknown zone reads as UTC). */
export const localTime = (epochMs: number, timeZone: string): LocalTime => {
  const d = new Date(epochMs + zoneOffsetMinutes(epochMs, timeZone) * 60_000);
  const date = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  return {
    date,
    month: date.slice(0, 7),
    hour: d.getUTCHours(),
    minute: d.getUTCMinutes(),
    weekday: WEEKDAYS[d.getUTCDay()],
  };
};

/** Parse `HH:MM` (24-hour) into minutes after midnight. */
export const parseClock = (text: string): number | undefined => {
  const m = /^([01][0-9]|2[0-3]):([0-5][0-9])$/.exec(text.trim());
  return m ? Number(m[1]) * 60 + Number(m[2]) : undefined;
};

/** Is the minute of day `m` inside the window from `from` up to (not including) `to`? Wraps past midnight. */
export const inWindow = (m: number, from: number, to: number): boolean =>
  from === to ? false : from < to ? m >= from && m < to : m >= from || m < to;

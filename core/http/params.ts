/**
 * @module
 * Strict readers for what the API takes: a query's seconds (`?wait=`,
 * `?delay=`) and an ISO time (`startAt`, `at`), where `Number()` and
 * `Date.parse` accept too much (an empty string is 0, `0x10` is 16, 30
 * February rolls over to March); and a request body, read only up to a cap
 * and a deadline (`BodyDeadlines`).
 */
import { Effect } from "effect";
import { InvalidInputError, RequestTimeoutError } from "../errors/mod.ts";

/** Seconds as plain decimal digits (`5`, `0.5`), from 0 to `max`; undefined when the query leaves it out. */
export const querySeconds = (
  raw: string | undefined,
  name: string,
  max: number,
): Effect.Effect<number | undefined, InvalidInputError> => {
  if (raw === undefined) return Effect.succeed(undefined);
  const value = /^\d{1,12}(\.\d{1,6})?$/.test(raw) ? Number(raw) : NaN;
  return value <= max ? Effect.succeed(value) : Effect.fail(
    new InvalidInputError({ message: `Query "${name}" must be seconds between 0 and ${max}: got "${raw}"` }),
  );
};

/** A list's `?limit=`: plain digits from 1 to `max`, `fallback` when left out. */
export const queryLimit = (
  raw: string | undefined,
  fallback: number,
  max: number,
): Effect.Effect<number, InvalidInputError> => {
  if (raw === undefined) return Effect.succeed(fallback);
  const value = /^\d{1,6}$/.test(raw) ? Number(raw) : NaN;
  return value >= 1 && value <= max ? Effect.succeed(value) : Effect.fail(
    new InvalidInputError({ message: `Query "limit" must be an integer from 1 to ${max}: got "${raw}"` }),
  );
};

const ISO_TIME = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.\d{1,9})?)?(Z|[+-](\d\d):(\d\d))$/;

/**
 * Epoch milliseconds of an ISO 8601 time with a zone (`2030-01-01T09:00:00Z`, `…+02:00`), or NaN: the date must
 * exist (no 30 February) and every field be in range.
 */
export const parseIsoTime = (raw: unknown): number => {
  const m = typeof raw === "string" ? ISO_TIME.exec(raw) : null;
  if (!m) return NaN;
  const [year, month, day, hour, minute, second, offH, offM] = [m[1], m[2], m[3], m[4], m[5], m[6], m[8], m[9]]
    .map((part) => Number(part ?? 0));
  const date = new Date(Date.UTC(year, month - 1, day));
  const exists = date.getUTCFullYear() === year && date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
  if (!exists || hour > 23 || minute > 59 || second > 59 || offH > 23 || offM > 59) return NaN;
  return Date.parse(raw as string);
};

/**
 * Request bodies being read, so that one sweep can stop those that take too long: a peer that declares a body and then
 * sends it a byte a minute, or never finishes it, would otherwise hold its route (and what it buffered) forever.
 * Reading a body adds an entry and removes it, with no timer of its own (a timer costs tens of microseconds after an
 * idle moment); the HTTP server calls `expire` on its own tick.
 */
export class BodyDeadlines {
  /** `timeoutMs`: how long a body may take to arrive, from the moment its route starts to read it. */
  constructor(readonly timeoutMs: number) {}

  readonly #reading = new Map<ReadableStreamDefaultReader<Uint8Array>, number>();
  readonly #expired = new WeakSet<ReadableStreamDefaultReader<Uint8Array>>();

  /** Stop every read that started more than `timeoutMs` ago: its reader is cancelled and it ends as `"timed_out"`. */
  expire(): void {
    const now = performance.now();
    for (const [reader, started] of this.#reading) {
      if (now - started <= this.timeoutMs) continue;
      this.#reading.delete(reader);
      this.#expired.add(reader);
      reader.cancel().catch(() => {});
    }
  }

  /** Read a request body up to `cap` bytes: the bytes, `"too_large"` (the rest is not read) or `"timed_out"`. */
  async read(req: Request, cap: number): Promise<Uint8Array | "too_large" | "timed_out"> {
    const declared = Number(req.headers.get("content-length") ?? NaN);
    if (Number.isFinite(declared) && declared > cap) {
      await req.body?.cancel().catch(() => {});
      return "too_large";
    }
    if (!req.body) return new Uint8Array();
    const reader = req.body.getReader();
    this.#reading.set(reader, performance.now());
    const chunks: Uint8Array[] = [];
    let total = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        total += value.length;
        if (total > cap) {
          await reader.cancel().catch(() => {});
          return "too_large";
        }
        chunks.push(value);
      }
    } finally {
      this.#reading.delete(reader);
    }
    if (this.#expired.has(reader)) return "timed_out";
    const out = new Uint8Array(total);
    let at = 0;
    for (const chunk of chunks) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }
}

/** The 408 for a request body that did not arrive within `bodies.timeoutMs`. */
export const bodyTimeout = (bodies: BodyDeadlines): RequestTimeoutError =>
  new RequestTimeoutError({
    message: `Request body did not arrive within ${bodies.timeoutMs} ms (KEEL_HTTP_TIMEOUT_MS)`,
    details: { timeoutMs: bodies.timeoutMs },
  });

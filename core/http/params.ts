/**
 * @module
 * Strict readers for what the API takes: a query's seconds (`?wait=`,
 * `?delay=`) and an ISO time (`startAt`, `at`), where `Number()` and
 * `Date.parse` accept too much (an empty string is 0, `0x10` is 16, 30
 * February rolls over to March); and a request body, read only up to a cap.
 */
import { Effect } from "effect";
import { InvalidInputError } from "../errors/mod.ts";

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

/** Read a request body up to `cap` bytes; undefined when it is larger (the rest is not read). */
export const readCapped = async (req: Request, cap: number): Promise<Uint8Array | undefined> => {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (Number.isFinite(declared) && declared > cap) {
    await req.body?.cancel().catch(() => {});
    return undefined;
  }
  if (!req.body) return new Uint8Array();
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > cap) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
};

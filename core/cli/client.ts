/**
 * @module
 * What every CLI command shares: the error type that prints as one line, the
 * HTTP client for a running Keel (URL and token from the environment or the
 * data dir), JSON flag parsing, and the yes/no prompt.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { parsePort } from "../config/mod.ts";

/** A mistake the operator can fix; printed as `error: <message>`, exit 1, no stack. */
export class UsageError extends Error {}

/** An environment variable, treating empty as unset. */
export const env = (name: string): string | undefined => Deno.env.get(name) || undefined;
/** The data dir: `KEEL_DATA_DIR` or `./.keel`. */
export const dataDir = (): string => env("KEEL_DATA_DIR") ?? "./.keel";

/** The API token: `KEEL_TOKEN`, or the one Keel saved in the data dir. */
export const readToken = (): string | undefined => {
  if (env("KEEL_TOKEN")) return env("KEEL_TOKEN");
  try {
    return Deno.readTextFileSync(`${dataDir()}/token`).trim();
  } catch {
    return undefined;
  }
};

/** Where the running Keel is: `KEEL_URL` (an http(s) URL; a trailing `/` is dropped) or 127.0.0.1:`KEEL_PORT`. */
export const keelUrl = (): string => {
  const given = env("KEEL_URL");
  if (given === undefined) return `http://127.0.0.1:${parsePort(env("KEEL_PORT"), 8787)}`;
  let url: URL | undefined;
  try {
    url = new URL(given);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || url.search || url.hash) {
    throw new UsageError(`KEEL_URL must be an http(s) URL such as http://127.0.0.1:8787: got "${given}"`);
  }
  return given.replace(/\/+$/, "");
};

/**
 * Seconds a command waits for Keel's answer beyond a `?wait=` it asked for: `KEEL_CLIENT_TIMEOUT` (1 to 86400),
 * default 120 (a forced cancel waits up to 10 s, an undo runs compensations).
 */
export const clientTimeout = (): number => {
  const raw = env("KEEL_CLIENT_TIMEOUT");
  if (raw === undefined) return 120;
  const seconds = /^\d{1,5}$/.test(raw) ? Number(raw) : NaN;
  if (!(seconds >= 1 && seconds <= 86_400)) {
    throw new UsageError(`KEEL_CLIENT_TIMEOUT must be seconds from 1 to 86400: got "${raw}"`);
  }
  return seconds;
};

/** Call the running Keel's API; a failure becomes a one-line `UsageError`. */
export const api = async (method: string, path: string, body?: unknown): Promise<any> => {
  const base = keelUrl();
  const token = readToken();
  // Something that takes the connection and never answers (a hung process, another service) is not waited for
  // forever: the request's own `?wait=` plus the client timeout.
  const wait = Number(new URL(path, "http://keel").searchParams.get("wait") ?? 0) || 0;
  const seconds = Math.ceil(wait) + clientTimeout();
  const signal = AbortSignal.timeout(seconds * 1000);
  const late = () => new UsageError(`Keel at ${base} did not answer within ${seconds} s (KEEL_CLIENT_TIMEOUT)`);
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, {
      method,
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch {
    if (signal.aborted) throw late();
    throw new UsageError(`Keel is not running at ${base}: start it with "deno task start"`);
  }
  const json = await res.json().catch(() => {
    if (signal.aborted) throw late();
    return {};
  });
  if (!res.ok) {
    const e = json?.error ?? { tag: `HTTP ${res.status}`, message: res.statusText };
    throw new UsageError(`${e.tag}: ${e.message}`);
  }
  return json;
};

/** Parse a JSON flag value, or say which flag is wrong. */
export const parseJson = (flag: string, text: string | undefined): unknown => {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(`--${flag} must be JSON: ${(error as Error).message}`);
  }
};

/** Print a value as indented JSON. */
export const print = (value: unknown): void => console.log(JSON.stringify(value, null, 2));

/** Ask yes/no at a terminal; without one the answer is no. */
export const confirm = (question: string): boolean => {
  if (!Deno.stdin.isTerminal()) return false;
  const answer = prompt(`${question} [y/N]`);
  return answer !== null && /^y(es)?$/i.test(answer.trim());
};

/** `parseArgs` with strict options; an unknown flag is a `UsageError`. */
export const flagsOf = <T extends ParseArgsConfig["options"]>(args: string[], options: T) => {
  try {
    return parseArgs({
      args,
      options: { help: { type: "boolean", short: "h" }, ...options },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
};

/** Refuse positional arguments past the first `n`; `what` names the command in the message. */
export const atMost = (positionals: ReadonlyArray<string>, n: number, what: string): void => {
  if (positionals.length <= n) return;
  const takes = n === 0 ? "no arguments" : n === 1 ? "one argument" : `${n} arguments`;
  throw new UsageError(`${what} takes ${takes}: got also "${positionals[n]}"`);
};

/** One CLI command group: its help text and its handler. */
export interface Command {
  readonly summary: ReadonlyArray<string>;
  readonly help: string;
  run(args: string[]): Promise<void>;
}

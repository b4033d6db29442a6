/**
 * @module
 * The grant: what the operator approved at install, a subset of what the
 * manifest requests (after its `{config}` templates are filled in with the
 * operator's config). The grant, not the manifest, decides the Worker's
 * permissions, and every permission key is always passed: Deno inherits
 * whatever is left out.
 */
import { Effect } from "effect";
import { Validator } from "@cfworker/json-schema";
import { GrantError, InvalidInputError } from "../errors/mod.ts";
import type { Manifest, Permissions } from "./Manifest.ts";
import { schemaErrors } from "./Manifest.ts";

/** What the operator granted. Paths are relative to the plugin's data dir. */
export interface Grant {
  readonly net: ReadonlyArray<string>;
  readonly env: ReadonlyArray<string>;
  readonly read: ReadonlyArray<string>;
  readonly write: ReadonlyArray<string>;
}

/** Every Deno permission key, set explicitly for a plugin Worker. */
export interface WorkerPermissions {
  readonly env: string[] | false;
  readonly net: string[] | false;
  readonly read: string[] | false;
  readonly write: string[] | false;
  readonly run: false;
  readonly ffi: false;
  readonly sys: false;
  readonly import: false;
}

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/** Check the operator's config against the manifest's config schema. */
export const validateConfig = (manifest: Manifest, config: unknown) =>
  Effect.gen(function* () {
    const value = config ?? {};
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return yield* new InvalidInputError({ message: `Config for plugin "${manifest.name}" must be a JSON object` });
    }
    if (manifest.config) {
      const errors = schemaErrors(new Validator(manifest.config, "2020-12", false), value);
      if (errors.length) {
        return yield* new InvalidInputError({
          message: `Config for plugin "${manifest.name}" is invalid: ${errors[0]}`,
          details: { errors },
        });
      }
    }
    return value as Record<string, unknown>;
  });

/** The manifest's requested permissions with `{field}` templates filled from config. */
export const resolveRequested = (manifest: Manifest, config: Record<string, unknown>) =>
  Effect.gen(function* () {
    const fill = (entry: string) =>
      entry.replace(/\{([A-Za-z0-9_]+)\}/g, (_m, key: string) => {
        const v = config[key];
        return typeof v === "string" || typeof v === "number" ? String(v) : `{${key}}`;
      });
    const requested: Permissions = {
      net: manifest.permissions.net.map(fill),
      env: manifest.permissions.env,
      read: manifest.permissions.read.map(fill),
      write: manifest.permissions.write.map(fill),
    };
    const unfilled = [...requested.net, ...requested.read, ...requested.write].find((e) => /\{[A-Za-z0-9_]+\}/.test(e));
    if (unfilled) {
      return yield* new InvalidInputError({
        message: `Plugin "${manifest.name}" needs config to resolve permission "${unfilled}"`,
      });
    }
    for (const net of requested.net) {
      const problem = netProblem(net);
      if (problem) {
        return yield* new GrantError({ message: `Plugin "${manifest.name}" requests net "${net}": ${problem}` });
      }
    }
    for (const path of [...requested.read, ...requested.write]) {
      const problem = pathProblem(path);
      if (problem) {
        return yield* new GrantError({ message: `Plugin "${manifest.name}" requests path "${path}": ${problem}` });
      }
    }
    return requested;
  });

const netProblem = (entry: string): string | undefined => {
  const match = HOST_PORT.exec(entry);
  if (!match) return "a net permission must be a literal host:port";
  const port = Number(match[2]);
  if (port < 1 || port > 65535) return "port out of range";
  // Any spelling of the unspecified address (0, 0.0, 0x0, [::], [::ffff:0.0.0.0] …) reaches every local port.
  if (/^(0x)?0*(\.(0x)?0*){0,3}$/i.test(match[1]) || /^\[[0:]*(ffff:)?[0:.]*\]$/i.test(match[1])) {
    return "wildcard hosts are never granted";
  }
  return undefined;
};

const pathProblem = (path: string): string | undefined => {
  if (path.startsWith("/")) return "paths are relative to the plugin's data dir";
  if (path.split("/").some((part) => part === "..")) return "paths may not leave the plugin's data dir";
  return undefined;
};

/** Parse an operator grant from JSON and check it is within what was requested. */
export const checkGrant = (manifest: Manifest, requested: Permissions, raw: unknown) =>
  Effect.gen(function* () {
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      return yield* new InvalidInputError({
        message: `Grant for plugin "${manifest.name}" must be an object like {"net": ["host:port"]}`,
      });
    }
    const known = ["net", "env", "read", "write"];
    const extra = Object.keys(raw).find((k) => !known.includes(k));
    if (extra) {
      return yield* new GrantError({
        message: `Grant for plugin "${manifest.name}" names "${extra}": Keel never grants it to a plugin`,
      });
    }
    const grant: Record<string, string[]> = {};
    for (const key of known as Array<keyof Grant>) {
      const list = (raw as Record<string, unknown>)[key] ?? [];
      if (!Array.isArray(list) || list.some((v) => typeof v !== "string")) {
        return yield* new InvalidInputError({ message: `Grant field "${key}" must be a list of strings` });
      }
      const beyond = list.find((v: string) => !requested[key].includes(v));
      if (beyond !== undefined) {
        return yield* new GrantError({
          message: `Grant for plugin "${manifest.name}" gives ${key} "${beyond}", which the plugin did not request`,
          details: { requested: requested[key] },
        });
      }
      grant[key] = [...new Set(list as string[])];
    }
    return grant as unknown as Grant;
  });

/** The complete Worker permission set for a grant; nothing is left to inherit. */
export const workerPermissions = (grant: Grant, pluginDataDir: string): WorkerPermissions => {
  const paths = (list: ReadonlyArray<string>) =>
    list.length ? list.map((p) => `${pluginDataDir}/${p}`.replace(/\/\.?$/, "")) : false;
  return {
    env: grant.env.length ? [...grant.env] : false,
    net: grant.net.length ? [...grant.net] : false,
    read: paths(grant.read),
    write: paths(grant.write),
    run: false,
    ffi: false,
    sys: false,
    import: false,
  };
};

/** Plain-words lines describing a set of permissions, for the install prompt. */
export const describePermissions = (p: Permissions | Grant): string[] => {
  const lines: string[] = [];
  for (const n of p.net) lines.push(`connect to ${n}`);
  for (const e of p.env) lines.push(`read environment variable ${e}`);
  for (const r of p.read) lines.push(`read <plugin data>/${r}`);
  for (const w of p.write) lines.push(`write <plugin data>/${w}`);
  return lines.length ? lines : ["nothing: no network, files or environment"];
};

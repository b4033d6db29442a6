/**
 * @module
 * The grant: what the operator approved at install, a subset of what the
 * manifest requests (after its `{config}` templates are filled in with the
 * operator's config). The grant, not the manifest, decides the Worker's
 * permissions, and every permission key is always passed: Deno inherits
 * whatever is left out.
 *
 * Some requests Keel refuses by default: `run`, `ffi`, `sys`, `all`, a net
 * entry that is not one literal `host:port` (`*`, a host without a port, an
 * unspecified address like `0.0.0.0:80`), and a path outside the plugin's
 * data dir. The operator may grant them anyway with an explicit override that
 * names each one exactly (`run:git`, `net:*`, `read:/srv/shared` …); it is
 * recorded in the grant, audited, and never carried to another version.
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
  /** Requests Keel refuses by default that the operator overrode, each named exactly (see `overrideItems`). */
  readonly overrides?: ReadonlyArray<string>;
}

/** Every Deno permission key, set explicitly for a plugin Worker (`true` only through an operator override). */
export interface WorkerPermissions {
  readonly env: string[] | boolean;
  readonly net: string[] | boolean;
  readonly read: string[] | boolean;
  readonly write: string[] | boolean;
  readonly run: string[] | boolean;
  readonly ffi: string[] | boolean;
  readonly sys: string[] | boolean;
  readonly import: boolean;
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

/**
 * The manifest's requested permissions with `{field}` templates filled from
 * config. Requests Keel refuses by default are not refused here: they are
 * listed in `needsOverride` (`run`, `run:git`, `net:*`, `read:/etc` …) and
 * left out of the ordinary lists; `checkOverride` decides. With
 * `keepTemplates` (a preview without config) an entry config would fill is
 * listed as written, unjudged: only its filled form can be judged.
 */
export const requestedPermissions = (
  manifest: Manifest,
  config: Record<string, unknown>,
  options: { readonly keepTemplates?: boolean } = {},
) =>
  Effect.gen(function* () {
    const fill = (entry: string) =>
      entry.replace(/\{([A-Za-z0-9_]+)\}/g, (_m, key: string) => {
        const v = config[key];
        return typeof v === "string" || typeof v === "number" ? String(v) : `{${key}}`;
      });
    const p = manifest.permissions;
    const net = p.net.map(fill);
    const read = p.read.map(fill);
    const write = p.write.map(fill);
    const templated = (entry: string) => /\{[A-Za-z0-9_]+\}/.test(entry);
    const unfilled = [...net, ...read, ...write].find(templated);
    if (unfilled && !options.keepTemplates) {
      return yield* new InvalidInputError({
        message: `Plugin "${manifest.name}" needs config to resolve permission "${unfilled}"`,
      });
    }
    const needsOverride: string[] = powerRequests(manifest);
    for (const entry of net) {
      if (templated(entry)) continue;
      const problem = netProblem(entry);
      if (problem === undefined) continue;
      if (!overridableNet(entry)) {
        return yield* new GrantError({ message: `Plugin "${manifest.name}" requests net "${entry}": ${problem}` });
      }
      needsOverride.push(`net:${entry}`);
    }
    for (const [key, list] of [["read", read], ["write", write]] as const) {
      for (const path of list) if (!templated(path) && pathProblem(path)) needsOverride.push(`${key}:${path}`);
    }
    // Deno reads `*` in an env name as a wildcard: `*` is the whole environment (Keel's token, API keys).
    for (const name of p.env) if (name.includes("*")) needsOverride.push(`env:${name}`);
    const ordinary = (list: string[], key: string) => list.filter((e) => !needsOverride.includes(`${key}:${e}`));
    const requested: Permissions = {
      net: ordinary(net, "net"),
      env: ordinary([...p.env], "env"),
      read: ordinary(read, "read"),
      write: ordinary(write, "write"),
      ...(needsOverride.length ? { needsOverride: [...new Set(needsOverride)] } : {}),
    };
    return requested;
  });

/** The manifest's requests for `all`, `run`, `ffi` and `sys`, as override items (`run`, `run:git` …). */
export const powerRequests = (manifest: Manifest): string[] =>
  (["all", "run", "ffi", "sys"] as const).flatMap((key) => {
    const value = manifest.permissions[key];
    return value === true ? [key] : Array.isArray(value) ? value.map((v) => `${key}:${v}`) : [];
  });

/**
 * The requested permissions, refusing (with a `GrantError` that names what to
 * pass) any request Keel grants only with an override the operator did not give.
 */
export const resolveRequested = (manifest: Manifest, config: Record<string, unknown>, override?: unknown) =>
  Effect.gen(function* () {
    const requested = yield* requestedPermissions(manifest, config);
    yield* checkOverride(manifest, requested, override);
    return requested;
  });

/** Why Keel refuses a request item by default, in words. */
export const overrideReason = (item: string): string => {
  const [key, ...rest] = item.split(":");
  const value = rest.join(":");
  if (key === "all") return "every permission, with no limit";
  if (key === "run") return value ? `runs program "${value}" outside any sandbox Keel controls` : "runs any program";
  if (key === "ffi") return value ? `loads native library "${value}"` : "loads any native library";
  if (key === "sys") return value ? `reads system information "${value}"` : "reads any system information";
  if (key === "env") {
    return value === "*"
      ? "reads every environment variable, Keel's token and API keys included"
      : `reads every environment variable whose name matches "${value}"`;
  }
  if (key === "net") {
    const problem = netProblem(value);
    return value === "*"
      ? "connects to any host"
      : problem === "wildcard hosts are never granted"
      ? `reaches every local address on a port ("${value}"): ${problem}`
      : `connects to "${value}" on any port: ${problem}`;
  }
  return `${key === "read" ? "reads" : "writes"} "${value}", outside its data dir: ${pathProblem(value)}`;
};

/**
 * Check the operator's override (a list of strings) against what a request
 * needs: it must name every item in `needsOverride` exactly and nothing else.
 * Returns the items overridden (empty when none were needed).
 */
export const checkOverride = (manifest: Manifest, requested: Permissions, raw: unknown) =>
  Effect.gen(function* () {
    if (raw !== undefined && (!Array.isArray(raw) || raw.some((v) => typeof v !== "string"))) {
      return yield* new InvalidInputError({
        message: `Field "override" must be a list of strings like ["run:git", "net:*"]`,
      });
    }
    const given = [...new Set((raw ?? []) as string[])];
    const needed = requested.needsOverride ?? [];
    const extra = given.find((item) => !needed.includes(item));
    if (extra !== undefined) {
      return yield* new GrantError({
        message: `Override for plugin "${manifest.name}" names "${extra}", which the plugin does not request${
          needed.length ? ` (it needs an override for: ${needed.join(", ")})` : " (it needs no override)"
        }`,
        details: { needsOverride: needed },
      });
    }
    const missing = needed.filter((item) => !given.includes(item));
    if (missing.length) {
      const flags = missing.map((m) => `--override ${m}`).join(" ");
      return yield* new GrantError({
        message: `Plugin "${manifest.name}" requests "${missing[0]}" (${
          overrideReason(missing[0])
        }), which Keel never grants without an operator override: to grant it anyway, pass ${flags} (API: "override": ${
          JSON.stringify(missing)
        })`,
        details: { needsOverride: needed, missing },
      });
    }
    return needed.filter((item) => given.includes(item));
  });

/** A net entry Deno understands that Keel refuses only by default: `*`, a bare host, or an unspecified address. */
const overridableNet = (entry: string): boolean =>
  entry === "*" || /^[A-Za-z0-9.-]+$/.test(entry) || netProblem(entry) === "wildcard hosts are never granted";

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
    for (const key of known as Array<"net" | "env" | "read" | "write">) {
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

/** The complete Worker permission set for a grant and its overrides; nothing is left to inherit. */
export const workerPermissions = (grant: Grant, pluginDataDir: string): WorkerPermissions => {
  const overrides = grant.overrides ?? [];
  if (overrides.includes("all")) {
    return { env: true, net: true, read: true, write: true, run: true, ffi: true, sys: true, import: true };
  }
  const of = (key: string) =>
    overrides.filter((o) => o === key || o.startsWith(`${key}:`)).map((o) => o.slice(key.length + 1));
  /** `true` when the whole key was overridden, else the list (false when empty). */
  const list = (values: string[]): string[] | boolean =>
    values.includes("") || values.includes("*") ? true : values.length ? values : false;
  const inData = (p: string) => normalize(p.startsWith("/") ? p : `${pluginDataDir}/${p}`);
  const paths = (granted: ReadonlyArray<string>, key: string) =>
    list([...granted.map((p) => `${pluginDataDir}/${p}`.replace(/\/\.?$/, "")), ...of(key).map(inData)]);
  return {
    env: grant.env.length || of("env").length ? [...grant.env, ...of("env")] : false,
    net: list([...grant.net, ...of("net")]),
    read: paths(grant.read, "read"),
    write: paths(grant.write, "write"),
    run: list(of("run")),
    ffi: list(of("ffi")),
    sys: list(of("sys")),
    import: false,
  };
};

/** An absolute path with `.` and `..` segments resolved, without touching the file system. */
const normalize = (path: string): string => {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return `/${out.join("/")}`;
};

/** Plain-words lines describing a set of permissions, for the install prompt. */
export const describePermissions = (p: Permissions | Grant): string[] => {
  const lines: string[] = [];
  for (const n of p.net) lines.push(`connect to ${n}`);
  for (const e of p.env) lines.push(`read environment variable ${e}`);
  for (const r of p.read) lines.push(`read <plugin data>/${r}`);
  for (const w of p.write) lines.push(`write <plugin data>/${w}`);
  const special = "needsOverride" in p ? p.needsOverride : "overrides" in p ? p.overrides : undefined;
  for (const o of special ?? []) lines.push(`${overrideReason(o)} [${o}: only with an operator override]`);
  return lines.length ? lines : ["nothing: no network, files or environment"];
};

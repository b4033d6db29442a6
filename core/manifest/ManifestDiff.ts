/**
 * @module
 * What an upgrade changes, compared with the version that serves today: the
 * permissions it requests, its effects' declarations, the effects it asks
 * Keel for, the record collections it reads and writes, its isolation and
 * npm packages. Anything that gives the plugin more power than the operator
 * granted (a new permission, a new or changed effect, a new `uses`, child
 * workflow or record collection, weaker isolation, a new npm package)
 * `escalates`: the
 * upgrade is installed but waits for a new grant. The same diff is shown to
 * the operator in plain words.
 */
import { canonicalJson } from "./Manifest.ts";
import type { EffectDecl, Manifest, Permissions, RecordsAccess } from "./Manifest.ts";
import type { Grant } from "./Grant.ts";

/** One side of a comparison: a manifest with its resolved permission request. */
export interface ManifestSide {
  readonly manifest: Manifest;
  readonly requested: Permissions;
  /** How it runs, when the host decided already (else the manifest's choice counts). */
  readonly isolation?: "worker" | "process";
}

/** What changes from one version to another. */
export interface ManifestDiff {
  /** True when the new version may do something the old grant did not cover. */
  readonly escalates: boolean;
  /** True when the kind (connector/agent) changes: never an upgrade. */
  readonly kindChanged: boolean;
  readonly permissions: { readonly added: Permissions; readonly removed: Permissions };
  readonly effects: {
    readonly added: ReadonlyArray<string>;
    readonly removed: ReadonlyArray<string>;
    /** Effect name → the declaration fields that changed (description changes are not listed here). */
    readonly changed: Readonly<Record<string, ReadonlyArray<string>>>;
  };
  readonly uses: { readonly added: ReadonlyArray<string>; readonly removed: ReadonlyArray<string> };
  readonly npm: { readonly added: ReadonlyArray<string>; readonly removed: ReadonlyArray<string> };
  /** Record collections it reads or writes that the serving version did not, and those it no longer does. */
  readonly records: { readonly added: RecordsAccess; readonly removed: RecordsAccess };
  /** The new isolation when it is weaker than the old one. */
  readonly weakerIsolation?: { readonly from: string; readonly to: string };
  /** Every change in plain words, most important first. */
  readonly lines: ReadonlyArray<string>;
}

const KEYS = ["net", "env", "read", "write"] as const;
/** The parts of an effect declaration a grant covers; `description` is prose, not power. */
const DECL_FIELDS = [
  "class",
  "idempotency",
  "input",
  "output",
  "compensate",
  "retry",
  "backoff",
  "rateLimit",
  "cost",
] as const;

const minus = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) => a.filter((x) => !b.includes(x));

const permissionWords = (key: typeof KEYS[number], value: string) =>
  key === "net"
    ? `connect to ${value}`
    : key === "env"
    ? `read environment variable ${value}`
    : `${key} <plugin data>/${value}`;

/** The old grant, narrowed to what the new version still requests. */
export const carryGrant = (grant: Grant, requested: Permissions): Grant => ({
  net: grant.net.filter((x) => requested.net.includes(x)),
  env: grant.env.filter((x) => requested.env.includes(x)),
  read: grant.read.filter((x) => requested.read.includes(x)),
  write: grant.write.filter((x) => requested.write.includes(x)),
});

/** Compare the serving version with an upgrade. */
export const diffManifests = (from: ManifestSide, to: ManifestSide): ManifestDiff => {
  const added = Object.fromEntries(
    KEYS.map((k) => [k, minus(to.requested[k], from.requested[k])]),
  ) as unknown as Permissions;
  const removed = Object.fromEntries(
    KEYS.map((k) => [k, minus(from.requested[k], to.requested[k])]),
  ) as unknown as Permissions;
  // Requests only an operator override grants (run, net:* …): a new one always needs a new grant and override.
  const overridesAdded = minus(to.requested.needsOverride ?? [], from.requested.needsOverride ?? []);
  const overridesRemoved = minus(from.requested.needsOverride ?? [], to.requested.needsOverride ?? []);
  if (overridesAdded.length) Object.assign(added, { needsOverride: overridesAdded });
  if (overridesRemoved.length) Object.assign(removed, { needsOverride: overridesRemoved });
  const oldEffects = new Map<string, EffectDecl>(from.manifest.effects.map((e) => [e.name, e]));
  const newEffects = new Map<string, EffectDecl>(to.manifest.effects.map((e) => [e.name, e]));
  const effectsAdded = [...newEffects.keys()].filter((n) => !oldEffects.has(n));
  const effectsRemoved = [...oldEffects.keys()].filter((n) => !newEffects.has(n));
  const changed: Record<string, string[]> = {};
  const redescribed: string[] = [];
  for (const [name, next] of newEffects) {
    const prev = oldEffects.get(name);
    if (!prev) continue;
    const fields = DECL_FIELDS.filter((f) => canonicalJson(prev[f] ?? null) !== canonicalJson(next[f] ?? null));
    if (fields.length) changed[name] = fields;
    else if (prev.description !== next.description) redescribed.push(name);
  }
  const usesAdded = minus(to.manifest.uses, from.manifest.uses);
  const usesRemoved = minus(from.manifest.uses, to.manifest.uses);
  const childrenAdded = minus(to.manifest.children ?? [], from.manifest.children ?? []);
  const recordsOf = (m: Manifest): RecordsAccess => m.records ?? { read: [], write: [] };
  const recordsAdded: RecordsAccess = {
    read: minus(recordsOf(to.manifest).read, recordsOf(from.manifest).read),
    write: minus(recordsOf(to.manifest).write, recordsOf(from.manifest).write),
  };
  const recordsRemoved: RecordsAccess = {
    read: minus(recordsOf(from.manifest).read, recordsOf(to.manifest).read),
    write: minus(recordsOf(from.manifest).write, recordsOf(to.manifest).write),
  };
  const npmAdded = minus(to.manifest.npm, from.manifest.npm);
  const npmRemoved = minus(from.manifest.npm, to.manifest.npm);
  const isolationOf = (side: ManifestSide) => side.isolation ?? side.manifest.isolation;
  const weakerIsolation = isolationOf(to) === "worker" && isolationOf(from) !== "worker"
    ? { from: isolationOf(from) ?? "the host's choice", to: "worker" }
    : undefined;
  const kindChanged = from.manifest.kind !== to.manifest.kind;

  const lines: string[] = [];
  if (kindChanged) lines.push(`changes kind from ${from.manifest.kind} to ${to.manifest.kind}`);
  for (const o of overridesAdded) lines.push(`asks for "${o}", which only an operator override grants (new)`);
  for (const k of KEYS) for (const v of added[k]) lines.push(`asks to ${permissionWords(k, v)} (new)`);
  for (const name of effectsAdded) {
    const e = newEffects.get(name)!;
    lines.push(`adds effect ${name} (${e.class}): ${e.description}`);
  }
  for (const [name, fields] of Object.entries(changed)) {
    const prev = oldEffects.get(name)!;
    const next = newEffects.get(name)!;
    const classNote = fields.includes("class") ? ` (class ${prev.class} → ${next.class})` : "";
    lines.push(`changes effect ${name}: ${fields.join(", ")}${classNote}`);
  }
  for (const u of usesAdded) lines.push(`asks Keel for effect ${u} (new)`);
  for (const c of childrenAdded) lines.push(`starts another agent's workflow ${c} as a child (new)`);
  for (const c of recordsAdded.read) lines.push(`asks to read records in collection ${c} (new)`);
  for (const c of recordsAdded.write) lines.push(`asks to write records in collection ${c} (new)`);
  for (const p of npmAdded) lines.push(`imports npm package ${p} (new)`);
  if (weakerIsolation) {
    lines.push(`runs as an in-process Worker instead of ${weakerIsolation.from} (weaker isolation)`);
  }
  for (const k of KEYS) for (const v of removed[k]) lines.push(`no longer asks to ${permissionWords(k, v)}`);
  for (const o of overridesRemoved) lines.push(`no longer asks for "${o}"`);
  for (const name of effectsRemoved) lines.push(`drops effect ${name}`);
  for (const u of usesRemoved) lines.push(`no longer asks Keel for effect ${u}`);
  for (const c of recordsRemoved.read) lines.push(`no longer reads records in collection ${c}`);
  for (const c of recordsRemoved.write) lines.push(`no longer writes records in collection ${c}`);
  for (const p of npmRemoved) lines.push(`no longer imports npm package ${p}`);
  for (const name of redescribed) lines.push(`describes effect ${name} differently`);
  const oldFlows = new Map(from.manifest.workflows.map((w) => [w.name, w]));
  for (const w of to.manifest.workflows) {
    const prev = oldFlows.get(w.name);
    if (!prev) lines.push(`adds workflow ${w.name}`);
    else if (canonicalJson(prev.input) !== canonicalJson(w.input)) {
      lines.push(`changes the input of workflow ${w.name}`);
    }
  }
  for (const name of oldFlows.keys()) {
    if (!to.manifest.workflows.some((w) => w.name === name)) lines.push(`drops workflow ${name}`);
  }

  const escalates = kindChanged || KEYS.some((k) => added[k].length > 0) || overridesAdded.length > 0 ||
    effectsAdded.length > 0 ||
    Object.keys(changed).length > 0 || usesAdded.length > 0 || childrenAdded.length > 0 || npmAdded.length > 0 ||
    recordsAdded.read.length > 0 || recordsAdded.write.length > 0 || weakerIsolation !== undefined;
  return {
    escalates,
    kindChanged,
    permissions: { added, removed },
    effects: { added: effectsAdded, removed: effectsRemoved, changed },
    uses: { added: usesAdded, removed: usesRemoved },
    npm: { added: npmAdded, removed: npmRemoved },
    records: { added: recordsAdded, removed: recordsRemoved },
    ...(weakerIsolation ? { weakerIsolation } : {}),
    lines,
  };
};

/**
 * @module
 * The plugin registry: every installed plugin version, keyed by name and
 * version in Deno KV (`["plugin", name, version]`), with at most one active
 * version per name. The in-memory map is a cache of KV; every change is one
 * atomic commit that checks the versionstamps it read, so an activation
 * (new version active, old one inactive) lands whole or not at all.
 */
import { Effect } from "effect";
import { type StoreError } from "../errors/mod.ts";
import { kvTry } from "../store/mod.ts";
import type { InstalledPlugin } from "./PluginHost.ts";

/**
 * Where a version stands: `active` serves new runs and effects; `inactive`
 * was granted but another version serves (runs pinned to it still use it);
 * `needs_grant` was installed by an upgrade that asks for more than the old
 * grant covered, and never runs until the operator grants it.
 */
export type Activation = "active" | "inactive" | "needs_grant";

/** Compare two semver strings (build metadata ignored, a pre-release sorts before its release). */
export const compareSemver = (a: string, b: string): number => {
  const parse = (v: string) => {
    const [core, pre] = v.split("+")[0].split(/-(.*)/s);
    return { nums: core.split(".").map(Number), pre: pre ?? "" };
  };
  const x = parse(a);
  const y = parse(b);
  for (let i = 0; i < 3; i++) if (x.nums[i] !== y.nums[i]) return x.nums[i] - y.nums[i];
  if (x.pre === y.pre) return a < b ? -1 : a > b ? 1 : 0;
  if (!x.pre) return 1;
  if (!y.pre) return -1;
  const xs = x.pre.split(".");
  const ys = y.pre.split(".");
  for (let i = 0; i < Math.max(xs.length, ys.length); i++) {
    if (xs[i] === undefined) return -1;
    if (ys[i] === undefined) return 1;
    const xn = /^\d+$/.test(xs[i]);
    const yn = /^\d+$/.test(ys[i]);
    if (xn && yn && Number(xs[i]) !== Number(ys[i])) return Number(xs[i]) - Number(ys[i]);
    if (xn !== yn) return xn ? -1 : 1;
    if (xs[i] !== ys[i]) return xs[i] < ys[i] ? -1 : 1;
  }
  return 0;
};

/** `name@version`: the key of a plugin version in the host's maps. */
export const versionKey = (p: { readonly name: string; readonly version: string }): string => `${p.name}@${p.version}`;

/** The registry over a Deno KV handle. */
export class PluginRegistry {
  readonly #kv: Deno.Kv;
  readonly #byKey = new Map<string, InstalledPlugin>();
  readonly #stamps = new Map<string, string>();

  private constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  /** Load every version from KV; a record from before versions (`["plugin", name]`) becomes its active version. */
  static load(kv: Deno.Kv): Effect.Effect<PluginRegistry, StoreError> {
    const registry = new PluginRegistry(kv);
    return kvTry("Cannot read the plugin registry", async () => {
      const legacy: Deno.KvEntry<InstalledPlugin>[] = [];
      for await (const e of kv.list<InstalledPlugin>({ prefix: ["plugin"] })) {
        if (e.key.length === 2) legacy.push(e);
        else registry.#remember(e.value, e.versionstamp);
      }
      for (const e of legacy) {
        const old = e.value as InstalledPlugin & { activation?: Activation };
        const record: InstalledPlugin = {
          ...old,
          source: old.source ?? old.path,
          packageHash: old.packageHash ?? "",
          activation: old.activation ?? "active",
        };
        const res = await kv.atomic().check(e).delete(e.key).set(["plugin", record.name, record.version], record)
          .commit();
        if (res.ok) registry.#remember(record, res.versionstamp);
      }
      return registry;
    });
  }

  #remember(p: InstalledPlugin, stamp: string) {
    this.#byKey.set(versionKey(p), p);
    this.#stamps.set(versionKey(p), stamp);
  }

  /** Every installed version, by name, oldest version first. */
  values(): InstalledPlugin[] {
    return [...this.#byKey.values()].sort((a, b) =>
      a.name === b.name ? compareSemver(a.version, b.version) : a.name < b.name ? -1 : 1
    );
  }

  /** Every installed version of one plugin, oldest first. */
  versions(name: string): InstalledPlugin[] {
    return this.values().filter((p) => p.name === name);
  }

  /** One exact version. */
  get(name: string, version: string): InstalledPlugin | undefined {
    return this.#byKey.get(`${name}@${version}`);
  }

  /** The version serving a name, if any. */
  active(name: string): InstalledPlugin | undefined {
    return this.versions(name).find((p) => p.activation === "active");
  }

  /** Every active version. */
  actives(): InstalledPlugin[] {
    return this.values().filter((p) => p.activation === "active");
  }

  /** Write versions and delete others in one atomic commit, checking nothing changed underneath. */
  commit(put: ReadonlyArray<InstalledPlugin>, remove: ReadonlyArray<InstalledPlugin> = []): Effect.Effect<
    void,
    StoreError
  > {
    return kvTry("Cannot record plugin", async () => {
      const op = this.#kv.atomic();
      for (const p of [...put, ...remove]) {
        const key = ["plugin", p.name, p.version];
        op.check({ key, versionstamp: this.#stamps.get(versionKey(p)) ?? null });
      }
      for (const p of put) op.set(["plugin", p.name, p.version], p);
      for (const p of remove) op.delete(["plugin", p.name, p.version]);
      const res = await op.commit();
      if (!res.ok) throw new Error("the registry changed underneath this change; try again");
      for (const p of remove) {
        this.#byKey.delete(versionKey(p));
        this.#stamps.delete(versionKey(p));
      }
      for (const p of put) this.#remember(p, res.versionstamp);
    });
  }
}

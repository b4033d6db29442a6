/**
 * @module
 * `canonicalJson` hashes manifests, approval digests and the audit chain: its
 * output must never change, or stored hashes stop matching. It is checked
 * here against the definition it replaced (`JSON.stringify` with a replacer
 * that sorts each object's keys) on fixed edge cases and on random values.
 */
import assert from "node:assert/strict";
import { canonicalJson } from "../../core/manifest/mod.ts";

/** The original definition. */
const reference = (value: unknown): string =>
  JSON.stringify(
    value,
    (_key, v) =>
      v !== null && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]))
        : v,
  );

Deno.test("canonicalJson matches its reference definition on edge cases", () => {
  const cases: unknown[] = [
    null,
    0,
    -0,
    1.5e300,
    NaN,
    Infinity,
    "",
    'quote " backslash \\ newline \n tab \t nul \u0000 emoji 🚀 lone surrogate \ud800',
    true,
    [],
    {},
    [undefined, () => 1, Symbol("s"), null, 1],
    { b: 1, a: 2, A: 3, "10": 4, "9": 5, é: 6, "": 7 },
    { u: undefined, f: () => 1, s: Symbol("x"), keep: 1 },
    { nested: { z: [{ y: 1, x: [2, { w: 3, v: 4 }] }], a: null } },
    { date: new Date(0), inner: { when: new Date(86_400_000) } },
    { custom: { toJSON: (key: string) => `key was ${key}` }, list: [{ toJSON: (k: string) => k }] },
    [new Number(3), new String("s"), new Boolean(false)],
    { sparse: [1, , 3] },
    { map: new Map([["a", 1]]), set: new Set([1]) },
    Object.assign(Object.create({ inherited: 1 }), { own: 2 }),
  ];
  for (const value of cases) assert.equal(canonicalJson(value), reference(value), String(reference(value)));
});

Deno.test("canonicalJson matches its reference definition on 2,000 random values", () => {
  let seed = 42;
  const rand = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
  const word = () => {
    const chars = 'abcABC019_-é"\\\n🚀 ';
    let out = "";
    for (let i = Math.floor(rand() * 6); i > 0; i--) out += [...chars][Math.floor(rand() * [...chars].length)];
    return out;
  };
  const value = (depth: number): unknown => {
    const pick = Math.floor(rand() * (depth > 3 ? 6 : 9));
    switch (pick) {
      case 0:
        return null;
      case 1:
        return Math.floor(rand() * 2000) - 1000;
      case 2:
        return rand() * 1e6;
      case 3:
        return word();
      case 4:
        return rand() < 0.5;
      case 5:
        return undefined;
      case 6:
        return Array.from({ length: Math.floor(rand() * 5) }, () => value(depth + 1));
      default: {
        const o: Record<string, unknown> = {};
        for (let i = Math.floor(rand() * 6); i > 0; i--) o[word()] = value(depth + 1);
        return o;
      }
    }
  };
  for (let i = 0; i < 2000; i++) {
    const v = { root: value(0), list: [value(1), value(1)] };
    assert.equal(canonicalJson(v), reference(v));
  }
});

/**
 * @module
 * The `.tar.gz` reader behind archive installs, on archives made by the OS
 * `tar` and on hand-made hostile ones: every refusal happens while the
 * archive is read in memory, before anything reaches the disk, and names
 * the entry and the reason. The store writes what the reader returns into a
 * fresh staging folder only (see `lifecycle_attacks_test.ts` for the same
 * archives through the real API).
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import {
  gunzip,
  normaliseEntryPath,
  PACKAGE_LIMITS,
  parseTar,
  readTarGz,
  stripTopFolder,
} from "../../core/plugins/archive.ts";
import { gzip, osTarGz, paxEntry, tar, type TarEntry, writeTarGz } from "../_support/tar.ts";

const text = (e: { kind: string; data?: Uint8Array }) => new TextDecoder().decode(e.data);
const refusal = async (entries: ReadonlyArray<TarEntry>, options: { truncate?: boolean } = {}) => {
  const dir = await Deno.makeTempDir({ prefix: "keel-archive-" });
  try {
    const path = `${dir}/p.tar.gz`;
    await Deno.writeFile(path, await gzip(tar(entries, options)));
    const exit = await Effect.runPromiseExit(readTarGz(path));
    assert.equal(exit._tag, "Failure", "the archive is refused");
    const error = exit._tag === "Failure" ? (exit.cause.reasons[0] as { error?: any }).error : undefined;
    assert.equal(error?._tag, "PluginPackageError");
    assert.ok(error.message.startsWith(`Cannot install plugin archive "${path}": `), error.message);
    return error.message as string;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
};
const file = (name: string, data = "x") => ({ name, data });

Deno.test("readTarGz() reads an archive made by the OS tar and makes its single top folder the root", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-archive-" });
  try {
    await Deno.mkdir(`${dir}/echo/lib`, { recursive: true });
    await Deno.writeTextFile(`${dir}/echo/plugin.json`, '{"name":"echo"}');
    await Deno.writeTextFile(`${dir}/echo/lib/util.ts`, "export const x = 1;\n");
    const flat = await Effect.runPromise(readTarGz(await osTarGz(`${dir}/echo`, `${dir}/flat.tar.gz`)));
    assert.deepEqual(flat.map((e) => `${e.kind} ${e.path}`).sort(), [
      "dir lib",
      "file lib/util.ts",
      "file plugin.json",
    ]);
    const topped = await Effect.runPromise(readTarGz(await osTarGz(`${dir}/echo`, `${dir}/top.tgz`, { top: "echo" })));
    assert.deepEqual(topped.map((e) => e.path).sort(), ["lib", "lib/util.ts", "plugin.json"]);
    assert.equal(text(topped.find((e) => e.path === "plugin.json")!), '{"name":"echo"}');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readTarGz() reads pax and GNU long names longer than 100 bytes", async () => {
  const long = `${"d".repeat(60)}/${"f".repeat(80)}.ts`;
  const dir = await Deno.makeTempDir({ prefix: "keel-archive-" });
  try {
    const path = await writeTarGz(`${dir}/long.tar.gz`, [
      paxEntry({ path: long }),
      file("ignored-short-name", "pax"),
      { name: "././@LongLink", type: "L", data: `${long}.gnu\0` },
      file("ignored-too", "gnu"),
      { name: "plugin.json", data: "{}", prefix: "" },
    ]);
    const entries = await Effect.runPromise(readTarGz(path));
    assert.deepEqual(entries.map((e) => e.path), [long, `${long}.gnu`, "plugin.json"]);
    assert.equal(text(entries[0]), "pax");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("normaliseEntryPath() keeps relative names and refuses every way out of the root", () => {
  assert.equal(normaliseEntryPath("./a//b/"), "a/b");
  assert.equal(normaliseEntryPath("./"), undefined);
  assert.equal(normaliseEntryPath("a/.../b"), "a/.../b", '"..." is a plain name');
  for (const bad of ["../x", "a/../../x", "a/..", "/etc/passwd", "C:/x", "a\\..\\x", "a\0b"]) {
    assert.throws(() => normaliseEntryPath(bad), Error, bad);
  }
});

const hostile: Array<[string, ReadonlyArray<TarEntry>, RegExp]> = [
  ["a ../ entry", [file("plugin.json"), file("../evil.ts")], /"\.\.\/evil\.ts" climbs out/],
  ["a nested ../ entry", [file("plugin.json"), file("lib/../../../evil.ts")], /climbs out/],
  ["an absolute path", [file("plugin.json"), file("/tmp/keel-evil.ts")], /absolute path/],
  ["a symlink entry", [file("plugin.json"), { name: "mod.ts", type: "2", linkname: "/etc/passwd" }], /is a symlink/],
  ["a hardlink entry", [file("plugin.json"), { name: "mod.ts", type: "1", linkname: "/etc/passwd" }], /hardlink/],
  ["a character device", [file("plugin.json"), { name: "tty", type: "3" }], /character device/],
  ["a block device", [file("plugin.json"), { name: "sda", type: "4" }], /block device/],
  ["a FIFO", [file("plugin.json"), { name: "pipe", type: "6" }], /FIFO/],
  ["a pax path with ../", [file("plugin.json"), paxEntry({ path: "../../evil.ts" }), file("fine.ts")], /climbs out/],
  ["a pax linkpath", [file("plugin.json"), paxEntry({ linkpath: "/etc/passwd" }), file("fine.ts")], /link/],
  ["a GNU long name with ../", [{ name: "././@LongLink", type: "L", data: "../x\0" }, file("y")], /climbs out/],
  ["a global pax path", [{ ...paxEntry({ path: "../../evil" }), type: "g" }, file("plugin.json")], /global/],
  ["the same path twice", [file("plugin.json"), file("mod.ts", "a"), file("./mod.ts", "b")], /appears twice/],
  ["a file inside a file", [file("plugin.json"), file("mod.ts"), file("mod.ts/x.ts")], /inside a file/],
  ["an unknown entry type", [file("plugin.json"), { name: "odd", type: "Z" }], /unsupported type/],
  ["a bad checksum", [file("plugin.json"), { ...file("mod.ts"), badChecksum: true }], /bad checksum/],
  ["a size beyond the data", [file("plugin.json"), { ...file("mod.ts"), size: 4096 }], /ends in the middle/],
];
for (const [what, entries, why] of hostile) {
  Deno.test(`readTarGz() refuses an archive with ${what}`, async () => {
    assert.match(await refusal(entries), why);
  });
}

Deno.test("readTarGz() refuses a truncated archive and bytes that are not gzip", async () => {
  assert.match(await refusal([file("plugin.json")], { truncate: true }), /no end marker/);
  const dir = await Deno.makeTempDir({ prefix: "keel-archive-" });
  try {
    await Deno.writeFile(`${dir}/plain.tar.gz`, tar([file("plugin.json")]));
    const exit = await Effect.runPromiseExit(readTarGz(`${dir}/plain.tar.gz`));
    assert.match(JSON.stringify(exit), /not gzip-compressed/);
    await Deno.writeFile(`${dir}/corrupt.tar.gz`, new Uint8Array([0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8]));
    assert.match(JSON.stringify(await Effect.runPromiseExit(readTarGz(`${dir}/corrupt.tar.gz`))), /corrupt/);
    assert.match(JSON.stringify(await Effect.runPromiseExit(readTarGz(`${dir}/missing.tar.gz`))), /no such file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readTarGz() refuses more entries or bytes than PACKAGE_LIMITS allows", async () => {
  const many = Array.from({ length: PACKAGE_LIMITS.maxEntries + 1 }, (_, i) => file(`f${i}.txt`, ""));
  assert.match(await refusal(many), /more than 2000 files and folders/);
  const chunk = "x".repeat(1024 * 1024);
  const big = Array.from({ length: 33 }, (_, i) => file(`big${i}.bin`, chunk));
  assert.match(await refusal(big), /add up to more than 33554432 bytes/);
});

Deno.test("gunzip() stops a gzip bomb at its cap while inflating", async () => {
  // 64 MiB of zeros compresses to about 64 KiB: inflating it whole is what a bomb wants.
  const bomb = await gzip(new Uint8Array(64 * 1024 * 1024));
  assert.ok(bomb.length < 200 * 1024, `bomb is ${bomb.length} bytes`);
  await assert.rejects(gunzip(bomb, 1024 * 1024), /inflates to more than 1048576 bytes/);
  const dir = await Deno.makeTempDir({ prefix: "keel-archive-" });
  try {
    await Deno.writeFile(`${dir}/bomb.tar.gz`, bomb);
    assert.match(JSON.stringify(await Effect.runPromiseExit(readTarGz(`${dir}/bomb.tar.gz`))), /inflates to more/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseTar() checks every entry before returning any", () => {
  // The bad entry is last: nothing of the archive is returned, so nothing of it can be written.
  const bytes = tar([file("plugin.json"), file("mod.ts"), file("../../late.ts")]);
  assert.throws(() => parseTar(bytes), /climbs out/);
});

Deno.test("stripTopFolder() strips one top folder only when it holds plugin.json", () => {
  const e = (path: string) => ({ kind: "file" as const, path, data: new Uint8Array() });
  assert.deepEqual(stripTopFolder([e("x/plugin.json"), e("x/mod.ts")]).map((x) => x.path), ["plugin.json", "mod.ts"]);
  assert.deepEqual(stripTopFolder([e("x/mod.ts"), e("y/plugin.json")]).map((x) => x.path), [
    "x/mod.ts",
    "y/plugin.json",
  ]);
  assert.deepEqual(stripTopFolder([e("plugin.json"), e("x/plugin.json")]).map((x) => x.path), [
    "plugin.json",
    "x/plugin.json",
  ]);
});

/**
 * @module
 * A `.tar.gz` reader that refuses what a plugin archive must never hold
 * before anything is written: entries that climb out (`../`), absolute paths,
 * symlinks, hardlinks, devices and FIFOs, duplicate paths, and archives with
 * too many entries or too many bytes (a gzip bomb stops at the cap while it
 * is still being inflated). Written here rather than taken from npm so that
 * every entry is checked in memory first and the whole archive is refused
 * when one entry is bad: no extractor decides what reaches the disk.
 *
 * It reads ustar, GNU long names (`L`) and pax headers (`x`; a global `g`
 * header is accepted only when it does not set a path, as `git archive`
 * writes one with the commit id). Gzip is inflated with the platform's
 * `DecompressionStream`.
 */
import { Effect } from "effect";
import { PluginPackageError } from "../errors/mod.ts";

/** Limits a plugin package (an archive or a folder) must stay within. */
export interface PackageLimits {
  /** Files and folders, together. */
  readonly maxEntries: number;
  /** Bytes of all files together, uncompressed. */
  readonly maxBytes: number;
}

/** Keel's limits for a plugin package: 2,000 entries, 32 MiB. */
export const PACKAGE_LIMITS: PackageLimits = { maxEntries: 2000, maxBytes: 32 * 1024 * 1024 };

/** One checked archive entry; `path` is relative, normalised, and never climbs out. */
export type ArchiveEntry =
  | { readonly kind: "file"; readonly path: string; readonly data: Uint8Array }
  | { readonly kind: "dir"; readonly path: string };

const BLOCK = 512;
const decoder = new TextDecoder("utf-8", { fatal: true });

const refuse = (source: string, why: string, details: Record<string, unknown> = {}) =>
  new PluginPackageError({
    message: `Cannot install plugin archive "${source}": ${why}`,
    details: { source, ...details },
  });

/** Control characters (a newline, say) are never in an entry's name: `packageHash` takes one entry per line. */
// deno-lint-ignore no-control-regex
export const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/**
 * Check a relative entry path and return it normalised (`./a//b/` → `a/b`);
 * undefined for the archive root itself. Throws the reason it is refused.
 */
export const normaliseEntryPath = (raw: string): string | undefined => {
  if (CONTROL_CHARS.test(raw)) throw new Error(`entry ${JSON.stringify(raw)} has a control character in its name`);
  if (raw.includes("\\")) throw new Error(`entry ${JSON.stringify(raw)} has a backslash in its name`);
  if (raw.startsWith("/") || /^[A-Za-z]:/.test(raw)) {
    throw new Error(`entry ${JSON.stringify(raw)} has an absolute path`);
  }
  const parts = raw.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.some((p) => p === "..")) throw new Error(`entry ${JSON.stringify(raw)} climbs out with ".."`);
  if (parts.some((p) => new TextEncoder().encode(p).length > 255)) {
    throw new Error(`entry ${JSON.stringify(raw)} has a name longer than 255 bytes`);
  }
  return parts.length ? parts.join("/") : undefined;
};

const field = (block: Uint8Array, start: number, length: number): Uint8Array => {
  const bytes = block.subarray(start, start + length);
  const end = bytes.indexOf(0);
  return end === -1 ? bytes : bytes.subarray(0, end);
};
const text = (bytes: Uint8Array): string => decoder.decode(bytes);
const octal = (block: Uint8Array, start: number, length: number): number => {
  const bytes = block.subarray(start, start + length);
  if (bytes[0] & 0x80) {
    // GNU base-256: only ever needed past 8 GiB, far beyond any limit here.
    return Number.POSITIVE_INFINITY;
  }
  const s = new TextDecoder().decode(bytes).replace(/[\0 ]+$/g, "").replace(/^[ ]+/, "");
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) return Number.NaN;
  return parseInt(s, 8);
};

const checksumOk = (block: Uint8Array): boolean => {
  const stored = octal(block, 148, 8);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i];
  return stored === sum;
};

/** Parse pax records (`"<len> key=value\n"`…) into a map. */
const paxRecords = (data: Uint8Array): Map<string, string> => {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space === -1) throw new Error("a pax header is malformed");
    const length = Number(new TextDecoder().decode(data.subarray(at, space)));
    if (!Number.isInteger(length) || length <= 0 || at + length > data.length) {
      throw new Error("a pax header is malformed");
    }
    const record = text(data.subarray(space + 1, at + length - 1));
    const eq = record.indexOf("=");
    if (eq === -1) throw new Error("a pax header is malformed");
    records.set(record.slice(0, eq), record.slice(eq + 1));
    at += length;
  }
  return records;
};

const TYPE_NAMES: Record<string, string> = {
  "1": "a hardlink",
  "2": "a symlink",
  "3": "a character device",
  "4": "a block device",
  "6": "a FIFO",
  "K": "a long link name (only links use it)",
  "S": "a sparse file",
  "V": "a volume label",
  "M": "a multi-volume continuation",
};

/**
 * Read every entry of an uncompressed tar stream held in memory. Throws the
 * first reason the archive is refused; checks everything before returning.
 */
export const parseTar = (tar: Uint8Array, limits: PackageLimits = PACKAGE_LIMITS): ArchiveEntry[] => {
  const entries: ArchiveEntry[] = [];
  const kinds = new Map<string, "file" | "dir">();
  let total = 0;
  let at = 0;
  let longName: string | undefined;
  let pax: Map<string, string> | undefined;
  let ended = false;
  while (at + BLOCK <= tar.length) {
    const block = tar.subarray(at, at + BLOCK);
    at += BLOCK;
    if (block.every((b) => b === 0)) {
      ended = true;
      break;
    }
    if (!checksumOk(block)) throw new Error(`header at byte ${at - BLOCK} has a bad checksum: not a tar archive`);
    const type = String.fromCharCode(block[156] || 0x30);
    const paxSize = pax?.get("size");
    const size = paxSize !== undefined ? Number(paxSize) : octal(block, 124, 12);
    if (!Number.isSafeInteger(size) || size < 0) throw new Error(`header at byte ${at - BLOCK} has a bad size`);
    if (size > limits.maxBytes) {
      throw new Error(`an entry is ${size} bytes; a plugin may hold at most ${limits.maxBytes} bytes in all`);
    }
    if (at + size > tar.length) throw new Error("the archive ends in the middle of an entry");
    const data = tar.subarray(at, at + size);
    at += Math.ceil(size / BLOCK) * BLOCK;

    if (type === "x") {
      pax = paxRecords(data);
      if (pax.has("linkpath")) throw new Error("an entry is a link (pax linkpath)");
      continue;
    }
    if (type === "g") {
      const global = paxRecords(data);
      if (global.has("path") || global.has("linkpath") || global.has("size")) {
        throw new Error("a global pax header sets a path or size for every entry");
      }
      continue;
    }
    if (type === "L") {
      if (size > 4096) throw new Error("a long name is longer than 4096 bytes");
      longName = text(field(data, 0, data.length));
      continue;
    }

    const magic = new TextDecoder().decode(block.subarray(257, 263));
    const prefix = magic === "ustar\0" ? text(field(block, 345, 155)) : "";
    const name = pax?.get("path") ?? longName ?? (prefix ? `${prefix}/` : "") + text(field(block, 0, 100));
    longName = undefined;
    pax = undefined;

    const why = TYPE_NAMES[type];
    if (why) throw new Error(`entry ${JSON.stringify(name)} is ${why}; a plugin archive holds only files and folders`);
    if (!["0", "7", "5"].includes(type)) {
      throw new Error(`entry ${JSON.stringify(name)} has unsupported type ${JSON.stringify(type)}`);
    }
    const kind = type === "5" ? "dir" : "file";
    const path = normaliseEntryPath(name);
    if (path === undefined) {
      if (kind === "dir") continue;
      throw new Error(`entry ${JSON.stringify(name)} is a file without a name`);
    }
    if (kinds.has(path)) {
      if (kind === "dir" && kinds.get(path) === "dir") continue;
      throw new Error(`entry ${JSON.stringify(path)} appears twice`);
    }
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join("/");
      if (kinds.get(parent) === "file") throw new Error(`entry ${JSON.stringify(path)} is inside a file`);
      kinds.set(parent, "dir");
    }
    kinds.set(path, kind);
    if (kinds.size > limits.maxEntries) {
      throw new Error(`it has more than ${limits.maxEntries} files and folders`);
    }
    if (kind === "file") {
      total += size;
      if (total > limits.maxBytes) throw new Error(`its files add up to more than ${limits.maxBytes} bytes`);
      entries.push({ kind, path, data });
    } else {
      entries.push({ kind, path });
    }
  }
  if (!ended) throw new Error("the archive has no end marker: it is truncated or not a tar archive");
  if (pax || longName !== undefined) throw new Error("the archive ends after an extended header");
  return entries;
};

/** Inflate gzip bytes, refusing output beyond `cap` bytes while inflating (a gzip bomb stops there). */
export const gunzip = async (gz: Uint8Array, cap: number): Promise<Uint8Array> => {
  if (gz[0] !== 0x1f || gz[1] !== 0x8b) throw new Error("it is not gzip-compressed (expected a .tar.gz)");
  const stream = new Blob([gz as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new DecompressionStream("gzip"));
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await reader.read();
      } catch {
        throw new Error("its gzip data is corrupt");
      }
      if (next.done) break;
      size += next.value.length;
      if (size > cap) throw new Error(`it inflates to more than ${cap} bytes`);
      chunks.push(next.value);
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
};

/** Tar overhead allowed on top of the file bytes: a header and padding per entry, plus the end marker. */
const tarCap = (limits: PackageLimits) => limits.maxBytes + (limits.maxEntries * 3 + 4) * BLOCK;

/**
 * Read and check a `.tar.gz` plugin archive at `path`. If its files sit in one
 * top-level folder holding `plugin.json`, that folder is the plugin's root.
 */
export const readTarGz = (
  path: string,
  limits: PackageLimits = PACKAGE_LIMITS,
): Effect.Effect<ArchiveEntry[], PluginPackageError> =>
  Effect.tryPromise({
    try: async () => {
      const info = await Deno.stat(path);
      if (!info.isFile) throw new Error("it is not a file");
      if (info.size > tarCap(limits)) throw new Error(`it is ${info.size} bytes; at most ${tarCap(limits)} are read`);
      const entries = parseTar(await gunzip(await Deno.readFile(path), tarCap(limits)), limits);
      return stripTopFolder(entries);
    },
    catch: (cause) =>
      refuse(path, cause instanceof Deno.errors.NotFound ? "no such file" : (cause as Error).message ?? String(cause)),
  });

/** Archives made with `tar czf x.tar.gz x/` hold `x/plugin.json`: make `x` the root. */
export const stripTopFolder = (entries: ArchiveEntry[]): ArchiveEntry[] => {
  if (entries.some((e) => e.path === "plugin.json")) return entries;
  const tops = new Set(entries.map((e) => e.path.split("/")[0]));
  if (tops.size !== 1) return entries;
  const [top] = tops;
  if (!entries.some((e) => e.kind === "file" && e.path === `${top}/plugin.json`)) return entries;
  return entries.filter((e) => e.path !== top).map((e) => ({ ...e, path: e.path.slice(top.length + 1) }));
};

/** The `plugin.json` of an archive, parsed but not validated (for the CLI's install and upgrade prompts). */
export const readArchiveManifest = (
  path: string,
  limits: PackageLimits = PACKAGE_LIMITS,
): Effect.Effect<unknown, PluginPackageError> =>
  Effect.flatMap(readTarGz(path, limits), (entries) => {
    const file = entries.find((e) => e.kind === "file" && e.path === "plugin.json");
    if (!file || file.kind !== "file") return Effect.fail(refuse(path, "it holds no plugin.json"));
    return Effect.try({
      try: () => JSON.parse(new TextDecoder().decode(file.data)) as unknown,
      catch: (cause) => refuse(path, `its plugin.json is not JSON: ${(cause as Error).message}`),
    });
  });

/**
 * @module
 * A tiny tar writer for tests: builds the archives a hostile package author
 * could hand Keel — `../` and absolute names, symlink, hardlink and device
 * entries, pax and GNU long-name headers, duplicates — which the OS `tar`
 * refuses to write on purpose. Output is plain ustar, optionally gzipped.
 */

/** One entry to write; `type` is the raw ustar typeflag ("0" file, "5" dir, "2" symlink …). */
export interface TarEntry {
  readonly name: string;
  readonly type?: string;
  readonly data?: Uint8Array | string;
  readonly linkname?: string;
  readonly mode?: number;
  /** Written into the ustar `prefix` field (names longer than 100 bytes). */
  readonly prefix?: string;
  /** Override the size field (to lie about it). */
  readonly size?: number;
  /** Corrupt the checksum. */
  readonly badChecksum?: boolean;
}

const encoder = new TextEncoder();

const put = (block: Uint8Array, offset: number, length: number, text: string) => {
  const bytes = encoder.encode(text);
  block.set(bytes.subarray(0, length), offset);
};
const octal = (n: number, length: number) => n.toString(8).padStart(length - 1, "0");

/** One 512-byte header block. */
export const tarHeader = (e: TarEntry, size: number): Uint8Array => {
  const block = new Uint8Array(512);
  put(block, 0, 100, e.name);
  put(block, 100, 8, octal(e.mode ?? 0o644, 8));
  put(block, 108, 8, octal(0, 8));
  put(block, 116, 8, octal(0, 8));
  put(block, 124, 12, octal(e.size ?? size, 12));
  put(block, 136, 12, octal(0, 12));
  put(block, 148, 8, "        ");
  put(block, 156, 1, e.type ?? "0");
  put(block, 157, 100, e.linkname ?? "");
  put(block, 257, 6, "ustar\0");
  put(block, 263, 2, "00");
  if (e.prefix) put(block, 345, 155, e.prefix);
  let sum = 0;
  for (const b of block) sum += b;
  put(block, 148, 8, `${octal(e.badChecksum ? sum + 1 : sum, 7)}\0`);
  return block;
};

/** An uncompressed tar of `entries`, ending with the two zero blocks unless `truncate`. */
export const tar = (entries: ReadonlyArray<TarEntry>, options: { truncate?: boolean } = {}): Uint8Array => {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const data = typeof e.data === "string" ? encoder.encode(e.data) : e.data ?? new Uint8Array();
    parts.push(tarHeader(e, data.length));
    if (data.length) {
      const padded = new Uint8Array(Math.ceil(data.length / 512) * 512);
      padded.set(data);
      parts.push(padded);
    }
  }
  if (!options.truncate) parts.push(new Uint8Array(1024));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/** A pax extended header entry setting `records` for the next entry. */
export const paxEntry = (records: Record<string, string>): TarEntry => {
  let text = "";
  for (const [key, value] of Object.entries(records)) {
    const body = ` ${key}=${value}\n`;
    let length = body.length + 1;
    while (`${length}${body}`.length !== length) length = `${length}${body}`.length;
    text += `${length}${body}`;
  }
  return { name: "PaxHeader", type: "x", data: text };
};

/** Gzip bytes with the platform's CompressionStream. */
export const gzip = async (bytes: Uint8Array): Promise<Uint8Array> =>
  new Uint8Array(
    await new Response(new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new CompressionStream("gzip")))
      .arrayBuffer(),
  );

/** Write a `.tar.gz` of `entries` to `path`. */
export const writeTarGz = async (path: string, entries: ReadonlyArray<TarEntry>): Promise<string> => {
  await Deno.writeFile(path, await gzip(tar(entries)));
  return path;
};

/** `tar -czf archive -C dir .` with the OS tar (GNU tar on Debian). */
export const osTarGz = async (dir: string, archive: string, options: { top?: string } = {}): Promise<string> => {
  const args = options.top ? ["-czf", archive, "-C", `${dir}/..`, options.top] : ["-czf", archive, "-C", dir, "."];
  const out = await new Deno.Command("tar", { args, stderr: "piped" }).output();
  if (!out.success) throw new Error(`tar failed: ${new TextDecoder().decode(out.stderr)}`);
  return archive;
};

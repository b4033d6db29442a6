/**
 * @module
 * The plugins store, `<data dir>/plugins/<name>/<version>/`: Keel's own copy
 * of every installed plugin version, so that editing (or deleting) the folder
 * a plugin was installed from never changes what runs. A package (a folder or
 * a `.tar.gz` archive) is read into memory and checked whole first — no links,
 * devices, `../` or absolute paths, within `PACKAGE_LIMITS` — then written
 * into a fresh staging folder inside the store, and moved into place only
 * once it is fully checked. Nothing is ever written outside the store.
 *
 * How the stored copy still reaches the SDK: a plugin imports Keel's SDK by a
 * path relative to where it was written (`../../core/sdk/mod.ts`), which
 * means nothing once it is copied. So the store rewrites exactly those
 * imports: every import specifier that, resolved from the stored copy, leaves
 * the plugin's folder and ends in `core/sdk/<file>` (a file of Keel's SDK) is
 * replaced, as a quoted string literal in that module, by the `file://` URL of
 * Keel's own `core/sdk/<file>`. Nothing else is rewritten; the module graph
 * check then runs on the stored copy and still refuses anything outside the
 * copy and Keel's SDK. The rewritten SDK imports also keep a stored plugin on
 * the protocol of the Keel that runs it, rather than a stale copy of the SDK.
 */
import { Effect } from "effect";
import { InvalidInputError, ModuleGraphError, PluginPackageError, StoreError } from "../errors/mod.ts";
import { sha256Hex } from "../manifest/mod.ts";
import { type ArchiveEntry, CONTROL_CHARS, PACKAGE_LIMITS, type PackageLimits, readTarGz } from "./archive.ts";

/** A package written to a staging folder inside the store. */
export interface StagedPackage {
  /** The staging folder (inside the store). */
  readonly dir: string;
  /** What the operator named: the folder or the archive. */
  readonly source: string;
  readonly kind: "folder" | "archive";
  /** SHA-256 over the package's paths and contents, before the SDK imports are rewritten. */
  readonly packageHash: string;
  readonly files: number;
  readonly bytes: number;
}

/** True for a path the store reads as a `.tar.gz` archive rather than a folder. */
export const isArchivePath = (path: string): boolean => /\.(tar\.gz|tgz)$/i.test(path);

const refuse = (source: string, why: string, details: Record<string, unknown> = {}) =>
  new PluginPackageError({
    message: `Cannot install plugin from "${source}": ${why}`,
    details: { source, ...details },
  });

/**
 * Where a plugin package is (its real path) and whether it is a folder or a `.tar.gz` archive. Anything else is
 * refused here, so the API and the CLI say the same about a bad path.
 */
export const locatePackage = (
  path: string,
): Effect.Effect<{ source: string; kind: "folder" | "archive" }, InvalidInputError | PluginPackageError> =>
  Effect.gen(function* () {
    const { source, info } = yield* Effect.try({
      try: () => {
        const source = Deno.realPathSync(path);
        return { source, info: Deno.statSync(source) };
      },
      catch: () =>
        new InvalidInputError({ message: `Cannot install plugin: no folder or .tar.gz archive at "${path}"` }),
    });
    if (info.isDirectory) return { source, kind: "folder" as const };
    if (info.isFile && isArchivePath(source)) return { source, kind: "archive" as const };
    return yield* refuse(path, "it is neither a folder nor a .tar.gz archive");
  });

/** Read a plugin folder into checked entries: no links or special files, within `limits`; `.git` is skipped. */
export const readFolder = (
  root: string,
  limits: PackageLimits = PACKAGE_LIMITS,
): Effect.Effect<ArchiveEntry[], PluginPackageError> =>
  Effect.tryPromise({
    try: async () => {
      const entries: ArchiveEntry[] = [];
      let bytes = 0;
      const walk = async (rel: string): Promise<void> => {
        const dir = rel ? `${root}/${rel}` : root;
        const names = [];
        for await (const e of Deno.readDir(dir)) names.push(e.name);
        for (const name of names.sort()) {
          if (!rel && name === ".git") continue;
          const path = rel ? `${rel}/${name}` : name;
          if (CONTROL_CHARS.test(name)) {
            throw new Error(`${JSON.stringify(path)} has a control character in its name`);
          }
          const info = await Deno.lstat(`${root}/${path}`);
          if (info.isSymlink) {
            throw new Error(`"${path}" is a symlink; Keel stores plugins as plain files, so it refuses links`);
          }
          if (entries.length >= limits.maxEntries) {
            throw new Error(`it has more than ${limits.maxEntries} files and folders`);
          }
          if (info.isDirectory) {
            entries.push({ kind: "dir", path });
            await walk(path);
          } else if (info.isFile) {
            bytes += info.size;
            if (bytes > limits.maxBytes) throw new Error(`its files add up to more than ${limits.maxBytes} bytes`);
            entries.push({ kind: "file", path, data: await Deno.readFile(`${root}/${path}`) });
          } else {
            throw new Error(`"${path}" is not a file or folder (a device, socket or FIFO)`);
          }
        }
      };
      await walk("");
      return entries;
    },
    catch: (cause) => refuse(root, (cause as Error)?.message ?? String(cause)),
  });

/**
 * SHA-256 over sorted paths and file contents, one entry per line: identifies a package whatever its source. A path
 * with a control character (a newline could forge lines) is refused, as the readers refuse it.
 */
export const packageHash = async (entries: ReadonlyArray<ArchiveEntry>): Promise<string> => {
  const lines: string[] = [];
  for (const e of [...entries].sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0)) {
    if (CONTROL_CHARS.test(e.path)) {
      throw new Error(`entry ${JSON.stringify(e.path)} has a control character in its name`);
    }
    if (e.kind === "dir") {
      lines.push(`d ${e.path}`);
      continue;
    }
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", e.data as Uint8Array<ArrayBuffer>));
    lines.push(`f ${e.path} ${Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("")}`);
  }
  return await sha256Hex(lines.join("\n"));
};

/** A `file://` URL for an absolute path, each segment percent-encoded. */
export const fileUrl = (path: string): string => `file://${path.split("/").map(encodeURIComponent).join("/")}`;

interface InfoDependency {
  readonly specifier: string;
  readonly code?: { readonly specifier?: string };
  readonly type?: { readonly specifier?: string };
}
interface InfoModule {
  readonly specifier: string;
  readonly local?: string;
  readonly dependencies?: ReadonlyArray<InfoDependency>;
}

/** The plugins store rooted at `root`; SDK imports are pointed at Keel's `sdkDir`. */
export const makePluginStore = (root: string, sdkDir: string, limits: PackageLimits = PACKAGE_LIMITS) => {
  const staging = `${root}/.staging`;

  /** Where a version lives. */
  const versionDir = (name: string, version: string) => `${root}/${name}/${version}`;

  /** Write checked entries into a new folder; `createNew` everywhere, so nothing existing is followed or replaced. */
  const write = async (dir: string, entries: ReadonlyArray<ArchiveEntry>) => {
    await Deno.mkdir(dir, { recursive: false, mode: 0o755 });
    for (const e of entries) {
      const target = `${dir}/${e.path}`;
      if (e.kind === "dir") {
        await Deno.mkdir(target, { recursive: true, mode: 0o755 });
      } else {
        await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true, mode: 0o755 });
        await Deno.writeFile(target, e.data, { createNew: true, mode: 0o644 });
      }
    }
  };

  /** Read a folder or archive, check it whole, and write it to a new staging folder inside the store. */
  const stage = Effect.fn("PluginStore.stage")(function* (source: string) {
    const { kind } = yield* locatePackage(source);
    const entries = kind === "folder" ? yield* readFolder(source, limits) : yield* readTarGz(source, limits);
    const hash = yield* Effect.promise(() => packageHash(entries));
    const dir = `${staging}/${crypto.randomUUID()}`;
    yield* Effect.tryPromise({
      try: async () => {
        await Deno.mkdir(staging, { recursive: true });
        await write(dir, entries);
      },
      catch: (cause) => new StoreError({ message: `Cannot write plugin package into the store: ${String(cause)}` }),
    }).pipe(Effect.tapError(() => discard(dir)));
    const files = entries.filter((e) => e.kind === "file");
    return {
      dir,
      source,
      kind,
      packageHash: hash,
      files: files.length,
      bytes: files.reduce((n, e) => n + (e.kind === "file" ? e.data.length : 0), 0),
    } satisfies StagedPackage;
  });

  /** Point every import of Keel's SDK in a staged copy at Keel's own `core/sdk`; returns how many were rewritten. */
  const pinSdkImports = Effect.fn("PluginStore.pinSdkImports")(function* (dir: string) {
    const output = yield* Effect.tryPromise({
      try: () =>
        new Deno.Command(Deno.execPath(), {
          args: ["info", "--json", "--no-config", "--no-lock", "--no-remote", "--no-npm", `${dir}/mod.ts`],
          stdout: "piped",
          stderr: "piped",
          env: { NO_COLOR: "1" },
        }).output(),
      catch: (cause) => new ModuleGraphError({ message: `Cannot resolve the plugin's imports: ${String(cause)}` }),
    });
    if (!output.success) {
      const stderr = new TextDecoder().decode(output.stderr).trim().split("\n")[0];
      return yield* new ModuleGraphError({ message: `Cannot resolve the plugin's imports: ${stderr}` });
    }
    const info = JSON.parse(new TextDecoder().decode(output.stdout)) as { modules: InfoModule[] };
    const realDir = Deno.realPathSync(dir);
    const realSdk = Deno.realPathSync(sdkDir);
    const inside = (path: string, parent: string) => path === parent || path.startsWith(`${parent}/`);
    const rewrites = new Map<string, Map<string, string>>();
    for (const m of info.modules) {
      if (!m.local || !m.dependencies) continue;
      const local = Deno.realPathSync(m.local);
      if (!inside(local, realDir)) continue;
      for (const dep of m.dependencies) {
        for (const resolved of [dep.code?.specifier, dep.type?.specifier]) {
          if (!resolved?.startsWith("file://")) continue;
          const path = decodeURIComponent(new URL(resolved).pathname);
          if (inside(path, realDir) || inside(path, dir)) continue;
          const at = path.lastIndexOf("/core/sdk/");
          if (at === -1) continue;
          const rel = path.slice(at + "/core/sdk/".length);
          let target: string;
          try {
            target = Deno.realPathSync(`${realSdk}/${rel}`);
          } catch {
            continue;
          }
          if (!inside(target, realSdk)) continue;
          const url = fileUrl(target);
          if (dep.specifier === url) continue;
          const forFile = rewrites.get(local) ?? new Map<string, string>();
          forFile.set(dep.specifier, url);
          rewrites.set(local, forFile);
        }
      }
    }
    let count = 0;
    for (const [file, specs] of rewrites) {
      let text = yield* Effect.promise(() => Deno.readTextFile(file));
      for (const [spec, url] of specs) {
        for (const q of [`"`, `'`, "`"]) {
          const before = text;
          text = text.replaceAll(`${q}${spec}${q}`, `${q}${url}${q}`);
          if (text !== before) count++;
        }
      }
      yield* Effect.tryPromise({
        try: () => Deno.writeTextFile(file, text),
        catch: (cause) => new StoreError({ message: `Cannot write "${file}" in the store: ${String(cause)}` }),
      });
    }
    return count;
  });

  /** Move a staged package to `<root>/<name>/<version>`; an unregistered leftover there is replaced. */
  const commit = Effect.fn("PluginStore.commit")(function* (staged: StagedPackage, name: string, version: string) {
    const target = versionDir(name, version);
    yield* Effect.tryPromise({
      try: async () => {
        await Deno.mkdir(`${root}/${name}`, { recursive: true });
        await Deno.remove(target, { recursive: true }).catch((e) => {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        });
        await Deno.rename(staged.dir, target);
      },
      catch: (cause) => new StoreError({ message: `Cannot move plugin "${name}" ${version} into the store: ${cause}` }),
    });
    return target;
  });

  /** Remove a folder inside the store, ignoring one that is already gone. */
  const discard = (dir: string) =>
    Effect.ignore(Effect.tryPromise(async () => {
      if (!dir.startsWith(`${root}/`)) throw new Error(`refusing to remove "${dir}": not inside the plugins store`);
      await Deno.remove(dir, { recursive: true });
    }));

  /** Remove one stored version, and the plugin's folder when it was the last. */
  const removeVersion = (name: string, version: string) =>
    Effect.andThen(
      discard(versionDir(name, version)),
      Effect.ignore(Effect.tryPromise(() => Deno.remove(`${root}/${name}`))),
    );

  /** Drop staging folders a crash left behind. */
  const sweep = Effect.ignore(Effect.tryPromise(() => Deno.remove(staging, { recursive: true })));

  return { root, versionDir, stage, pinSdkImports, commit, discard, removeVersion, sweep };
};

/** The plugins store: staging, SDK import pinning, and stored versions. */
export type PluginStore = ReturnType<typeof makePluginStore>;

/**
 * @module
 * `process` isolation: a plugin in its own OS process, so a runaway plugin
 * (a heap bomb, an endless loop, a signal to "its own" pid) is killed without
 * harming the host. The child is `deno run` (`Deno.execPath()`) with
 * `--no-prompt`, exactly the grant's `--allow-net/env/read/write` and nothing
 * else (run, ffi, sys or all only when the operator overrode Keel's refusal of
 * them, see `Grant.ts`; never import), `--cached-only --no-remote`,
 * `--no-npm` unless the manifest declares npm packages, `--no-config
 * --no-lock`, a V8 heap cap (`--max-old-space-size`), and a cleared
 * environment holding only the granted variables. The main module is the
 * SDK's `_process_entry.ts`, which imports the plugin's `mod.ts` (so its
 * module graph is checked against `--allow-read`, which adds only the
 * plugin's folder and `core/sdk` to the grant) and lets an unmodified
 * `definePlugin(…)` speak the protocol over stdio: one JSON message per line
 * on stdin/stdout; stderr goes to the host log, bounded.
 *
 * Two more layers, each used when the machine has it and reported (and
 * audited) when it does not:
 *
 * - OS limits via util-linux `prlimit` (or `ulimit` in `/bin/sh`): data
 *   segment (bounds ArrayBuffers and other memory outside the V8 heap), open
 *   files, file size, no core dumps. `RLIMIT_AS` is useless with V8 (it
 *   reserves tens of GB of address space up front) and `RLIMIT_NPROC` counts
 *   every process of the user (and root ignores it), so neither is set; the
 *   plugin has no `run` permission anyway.
 * - `bwrap` (Debian's `bubblewrap`): new user, pid, ipc, uts, cgroup and,
 *   unless net is granted, network namespaces; no capabilities; uid/gid
 *   65534; dies with the host; a root file system holding only the Deno
 *   binary and the libraries it links (`ldd`), the plugin's folder and Keel's
 *   `core/sdk` (read-only), its data dir and transpile cache (read-write),
 *   `/dev` basics and a private `/tmp`; no `/proc`, no `/etc` (except DNS
 *   files when net is granted), no home. A denied path is not merely refused
 *   by Deno: it does not exist. Operator overrides widen this only as far as
 *   they must: a path outside the data dir is bound (read-only unless write
 *   was overridden), `run` or `ffi` binds `/usr`, `/bin`, `/lib*` read-only
 *   and sets `PATH`, and `all` runs without bwrap (reported as a warning).
 *   Declared npm packages are read from Deno's npm cache, bound read-only.
 *   Without bwrap the child still gets
 *   `setpriv --no-new-privs --pdeathsig KILL --bounding-set -all`.
 */
import type { HostMessage } from "../sdk/mod.ts";
import type { PluginSpec, Transport, TransportSink } from "./_connection.ts";
import { MAX_MESSAGE_BYTES } from "./_connection.ts";

/** Resource limits of a plugin process. */
export interface ProcessLimits {
  /** V8 old-space cap (`--max-old-space-size`), MB. */
  readonly heapMb: number;
  /** `RLIMIT_DATA`, MB: heap plus memory outside it (ArrayBuffers, thread stacks). */
  readonly dataMb: number;
  /** `RLIMIT_NOFILE`. */
  readonly openFiles: number;
  /** `RLIMIT_FSIZE`, MB: the largest file the plugin can write. */
  readonly fileSizeMb: number;
}

/** Limits used unless the host says otherwise. */
export const DEFAULT_LIMITS: ProcessLimits = { heapMb: 256, dataMb: 256 + 2048, openFiles: 256, fileSizeMb: 1024 };

/** How a running plugin is sandboxed, as audited with `plugin.started`. */
export interface SandboxReport {
  readonly isolation: "worker" | "process";
  /** `deno-permissions` (a Worker), `bwrap`, or `none` (a plain child process: Deno's permissions only). */
  readonly sandbox: "deno-permissions" | "bwrap" | "none";
  /** The OS mechanism that applies the limits, if any. */
  readonly osLimits?: "prlimit" | "ulimit" | "none";
  readonly limits?: ProcessLimits;
  /** Layers this machine could not provide. */
  readonly warnings?: ReadonlyArray<string>;
  /** The plugin process (or its bwrap), once spawned. */
  readonly pid?: number;
}

/** The sandboxing tools found on this machine. */
export interface SandboxTools {
  /** Path of a `bwrap` that was seen to work here. */
  readonly bwrap?: string;
  /** Why bwrap is not used, when it is not. */
  readonly bwrapProblem?: string;
  readonly prlimit?: string;
  readonly setpriv?: string;
  readonly sh?: string;
  /** Shared libraries the Deno binary links, as `[real path, path it is loaded from]`. */
  readonly libs: ReadonlyArray<readonly [string, string]>;
}

const which = (name: string): string | undefined => {
  for (const dir of ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch {
      // not here
    }
  }
  return undefined;
};

const run = async (command: string, args: string[]) => {
  try {
    const out = await new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
    const text = (b: Uint8Array) => new TextDecoder().decode(b);
    return { ok: out.success, stdout: text(out.stdout), stderr: text(out.stderr) };
  } catch (error) {
    return { ok: false, stdout: "", stderr: String(error) };
  }
};

/** The libraries `ldd` says the Deno binary needs; the usual library folders when ldd is missing. */
const denoLibs = async (deno: string): Promise<Array<readonly [string, string]>> => {
  const ldd = await run(which("ldd") ?? "ldd", [deno]);
  const libs: Array<readonly [string, string]> = [];
  if (ldd.ok) {
    for (const m of ldd.stdout.matchAll(/(?:=>\s*)?(\/[^\s]+)\s+\(0x/g)) {
      try {
        libs.push([Deno.realPathSync(m[1]), m[1]]);
      } catch {
        // listed but absent: the loader does not need it
      }
    }
  }
  if (libs.length) return libs;
  return ["/lib", "/lib64", "/usr/lib", "/usr/lib64"].flatMap((dir) => {
    try {
      return [[Deno.realPathSync(dir), dir] as const];
    } catch {
      return [];
    }
  });
};

let npmCacheProbe: Promise<string | undefined> | undefined;

/** The host's Deno npm cache folder (`deno info --json`), once per process; undefined if Deno does not say. */
export const hostNpmCache = (): Promise<string | undefined> =>
  npmCacheProbe ??= (async () => {
    const out = await run(Deno.execPath(), ["info", "--json"]);
    try {
      const dir = (JSON.parse(out.stdout) as { npmCache?: string }).npmCache;
      return dir ? Deno.realPathSync(dir) : undefined;
    } catch {
      return undefined;
    }
  })();

/**
 * Point a plugin's own Deno cache at the host's npm cache (a symlink
 * `<cacheDir>/npm`), so a declared npm package loads with `--cached-only`
 * and nothing is downloaded or copied.
 */
const linkNpmCache = (cacheDir: string, npmCache: string) => {
  const link = `${cacheDir}/npm`;
  try {
    if (Deno.readLinkSync(link) === npmCache) return;
    Deno.removeSync(link);
  } catch {
    // not a link (yet)
  }
  Deno.symlinkSync(npmCache, link);
};

let probed: Promise<SandboxTools> | undefined;

/**
 * Find `bwrap`, `prlimit`, `setpriv` and the Deno binary's libraries, once
 * per process, and check that bwrap really runs here (user namespaces may be
 * disabled, as in many containers).
 */
export const sandboxTools = (): Promise<SandboxTools> =>
  probed ??= (async (): Promise<SandboxTools> => {
    const deno = Deno.execPath();
    const libs = await denoLibs(deno);
    const found = { prlimit: which("prlimit"), setpriv: which("setpriv"), sh: which("sh"), libs };
    const bwrap = which("bwrap");
    if (!bwrap) return { ...found, bwrapProblem: "bwrap is not installed (Debian package bubblewrap)" };
    const probe = await run(bwrap, [...bwrapBase(false), ...binds(deno, libs), "--", deno, "--version"]);
    if (!probe.ok) {
      const why = probe.stderr.trim().split("\n")[0] ?? "";
      return { ...found, bwrapProblem: `bwrap cannot run here: ${why}` };
    }
    return { ...found, bwrap };
  })();

const bwrapBase = (shareNet: boolean): string[] => [
  "--unshare-all",
  ...(shareNet ? ["--share-net"] : []),
  "--die-with-parent",
  "--new-session",
  "--cap-drop",
  "ALL",
  "--uid",
  "65534",
  "--gid",
  "65534",
  "--hostname",
  "keel-plugin",
];

const binds = (deno: string, libs: ReadonlyArray<readonly [string, string]>): string[] => [
  "--ro-bind",
  deno,
  deno,
  ...libs.flatMap(([real, at]) => ["--ro-bind", real, at]),
  "--dev",
  "/dev",
  "--tmpfs",
  "/tmp",
];

/** Files name resolution needs, bound read-only only when the plugin may use the network. */
const NET_FILES = ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf"];

/** Environment names never passed to a plugin process: they configure the loader or Deno itself. */
const RESERVED_ENV = /^(LD_|DENO_|NPM_CONFIG_)|^(NODE_OPTIONS|NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|SSL_CERT_DIR)$/i;

const isRoot = () => {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
};

/** A command line that starts a plugin process. */
export interface ProcessCommand {
  readonly command: string;
  readonly args: ReadonlyArray<string>;
  readonly env: Readonly<Record<string, string>>;
  readonly report: SandboxReport;
}

/**
 * The exact command that runs `spec` as a sandboxed process, given the tools
 * this machine has. `env` holds the granted variables' values, read by the
 * host.
 */
export const processCommand = (
  spec: Pick<PluginSpec, "entry" | "folder" | "sdkDir" | "dataDir" | "cacheDir" | "permissions" | "npm"> & {
    /** The host's npm cache (for declared npm packages), bound read-only under bwrap. */
    readonly npmCacheDir?: string;
  },
  tools: SandboxTools,
  limits: ProcessLimits,
  env: Readonly<Record<string, string>>,
): ProcessCommand => {
  const p = spec.permissions;
  const all = p.run === true && p.ffi === true && p.sys === true && p.read === true && p.write === true;
  const list = (flag: string, values: ReadonlyArray<string> | boolean) =>
    values === true ? [flag] : values && values.length ? [`${flag}=${values.join(",")}`] : [];
  const envNames = p.env === true ? true : p.env ? p.env.filter((name) => !RESERVED_ENV.test(name)) : false;
  const deno = Deno.execPath();
  const denoArgs = [
    "run",
    "--no-prompt",
    "--no-config",
    "--no-lock",
    "--cached-only",
    "--no-remote",
    ...(spec.npm ? [] : ["--no-npm"]),
    `--v8-flags=--max-old-space-size=${limits.heapMb}`,
    ...(all ? ["--allow-all"] : [
      ...list("--allow-net", p.net),
      ...list("--allow-env", envNames),
      // Reading its own code is how a computed import() of it is allowed (see _process_entry.ts).
      ...list("--allow-read", p.read === true ? true : [spec.folder, spec.sdkDir, ...(p.read || [])]),
      ...list("--allow-write", p.write),
      // Only through an operator override (Grant.ts): never otherwise.
      ...list("--allow-run", p.run),
      ...list("--allow-ffi", p.ffi),
      ...list("--allow-sys", p.sys),
    ]),
    `${spec.sdkDir}/_process_entry.ts`,
    new URL(`file://${spec.entry}`).href,
  ];
  const childEnv: Record<string, string> = {};
  for (const name of envNames === true ? [] : envNames || []) if (env[name] !== undefined) childEnv[name] = env[name];
  // A program the operator let it run is found on the usual PATH (its environment is otherwise cleared).
  if (p.run) childEnv.PATH = "/usr/local/bin:/usr/bin:/bin";
  // Set after the granted variables so a grant cannot redirect Deno's own.
  Object.assign(childEnv, { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", DENO_DIR: spec.cacheDir });
  const warnings: string[] = [];
  const dropped = (p.env === true ? [] : p.env || []).filter((name) => RESERVED_ENV.test(name));
  if (dropped.length) warnings.push(`environment ${dropped.join(", ")} is never passed to a plugin process`);

  let inner: string[];
  let sandbox: SandboxReport["sandbox"];
  if (tools.bwrap && !all) {
    sandbox = "bwrap";
    const rw = [spec.dataDir, spec.cacheDir];
    const ro = [spec.folder, spec.sdkDir, ...(spec.npmCacheDir ? [spec.npmCacheDir] : [])];
    // Paths outside the data dir that an operator override granted, and what a granted program or library needs.
    const outside = (values: ReadonlyArray<string> | boolean) =>
      Array.isArray(values) ? values.filter((v) => ![...rw, ...ro].some((d) => `${v}/`.startsWith(`${d}/`))) : [];
    const system = p.run || p.ffi ? ["/usr", "/bin", "/lib", "/lib64", "/sbin"] : [];
    const optional = [
      ...[...system, ...outside(p.read), ...outside(p.ffi)].map((path) => ["--ro-bind-try", path] as const),
      ...outside(p.write).map((path) => ["--bind-try", path] as const),
    ];
    // Parents before children, so a nested bind is not hidden by its parent's.
    const mounts = [
      ...ro.map((path) => ["--ro-bind", path] as const),
      ...rw.map((path) => ["--bind", path] as const),
      ...optional,
    ]
      .sort((a, b) => a[1].length - b[1].length)
      .flatMap(([flag, path]) => [flag, path, path]);
    const shareNet = p.net === true || (p.net !== false && p.net.length > 0);
    inner = [
      tools.bwrap,
      ...bwrapBase(shareNet),
      ...binds(deno, tools.libs),
      ...mounts,
      ...(shareNet ? NET_FILES.flatMap((f) => ["--ro-bind-try", f, f]) : []),
      "--chdir",
      spec.dataDir,
      "--",
      deno,
      ...denoArgs,
    ];
  } else {
    sandbox = "none";
    warnings.push(
      all
        ? `no bwrap: the operator overrode Keel's refusal of "all", so the plugin process sees the host's file system`
        : `no bwrap: the plugin process sees the host's file system (${tools.bwrapProblem ?? "not found"})`,
    );
    inner = [
      ...(tools.setpriv
        // Only root can drop the bounding set; for anyone else it holds no capabilities anyway.
        ? [
          tools.setpriv,
          "--no-new-privs",
          "--pdeathsig",
          "KILL",
          ...(isRoot() ? ["--bounding-set", "-all"] : []),
          "--",
        ]
        : []),
      deno,
      ...denoArgs,
    ];
    if (!tools.setpriv) warnings.push("no setpriv: the plugin process is not tied to the host's life");
  }

  const mb = (n: number) => n * 1024 * 1024;
  let osLimits: SandboxReport["osLimits"];
  let argv: string[];
  if (tools.prlimit) {
    osLimits = "prlimit";
    argv = [
      tools.prlimit,
      `--data=${mb(limits.dataMb)}`,
      `--nofile=${limits.openFiles}`,
      `--fsize=${mb(limits.fileSizeMb)}`,
      "--core=0",
      "--",
      ...inner,
    ];
  } else if (tools.sh) {
    osLimits = "ulimit";
    const script = `ulimit -c 0 -d ${limits.dataMb * 1024} -n ${limits.openFiles} -f ${
      limits.fileSizeMb * 2048
    } && exec "$@"`;
    argv = [tools.sh, "-c", script, "keel-plugin", ...inner];
  } else {
    osLimits = "none";
    warnings.push("no prlimit or sh: the plugin process runs without OS limits (the heap cap still applies)");
    argv = inner;
  }
  return {
    command: argv[0],
    args: argv.slice(1),
    env: childEnv,
    report: { isolation: "process", sandbox, osLimits, limits, ...(warnings.length ? { warnings } : {}) },
  };
};

/** Lines of a plugin's stderr forwarded to the host log per minute; the rest are counted and dropped. */
const LOG_LINES_PER_MINUTE = 120;
/** Longest stderr line forwarded, in characters. */
const LOG_LINE_CHARS = 1000;
/** How much of a plugin's last stderr is kept to explain its death. */
const STDERR_TAIL = 8 * 1024;
/** Most bytes sent to a plugin process and not yet read by it; past this it is retired (it stopped reading). */
const MAX_UNREAD_BYTES = 64 * 1024 * 1024;

/**
 * Start `spec` as a sandboxed child process and speak the protocol over its
 * stdio. Sends made before the process is spawned are queued.
 */
export const processTransport = (spec: PluginSpec, sink: TransportSink): Transport => {
  const limits: ProcessLimits = { ...DEFAULT_LIMITS, ...spec.limits };
  if (spec.limits?.heapMb !== undefined && spec.limits.dataMb === undefined) {
    (limits as { dataMb: number }).dataMb = spec.limits.heapMb + 2048;
  }
  const encoder = new TextEncoder();
  let child: Deno.ChildProcess | undefined;
  let writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  let closing = false;
  const queued: Uint8Array[] = [];
  let stderrTail = "";
  let resolveClosed!: () => void;
  const closed = new Promise<void>((resolve) => (resolveClosed = resolve));
  const report: { value: SandboxReport } = {
    value: { isolation: "process", sandbox: "none", limits },
  };

  const fail = (message: string) => {
    if (!closing) sink.fail({ tag: "PluginCrashedError", message });
  };

  /** Bytes handed to the process's stdin and not yet taken by it. */
  let unread = 0;
  const write = (bytes: Uint8Array) => {
    // A plugin that does not read what it is sent (while it writes) must not make the host buffer without bound.
    if (unread > 0 && unread + bytes.length > MAX_UNREAD_BYTES) {
      return fail(`Plugin does not read its input: ${unread} bytes sent to it are still unread`);
    }
    unread += bytes.length;
    // A failed write means the process is gone or closed its stdin: its exit (or the call's timeout) says why.
    writer!.write(bytes).then(() => (unread -= bytes.length), () => {});
  };

  const readMessages = async (stream: ReadableStream<Uint8Array>) => {
    // Lines are cut from bytes, and a line longer than the cap is refused before it is all buffered.
    let parts: Uint8Array[] = [];
    let length = 0;
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      let start = 0;
      while (start < chunk.length) {
        const newline = chunk.indexOf(10, start);
        const end = newline < 0 ? chunk.length : newline;
        if (end > start) {
          parts.push(chunk.subarray(start, end));
          length += end - start;
        }
        if (length > MAX_MESSAGE_BYTES) {
          return sink.fail({
            tag: "PluginCrashedError",
            message: `Plugin sent a message of more than ${MAX_MESSAGE_BYTES} bytes; the limit is ${MAX_MESSAGE_BYTES}`,
          });
        }
        if (newline < 0) break;
        start = newline + 1;
        if (length === 0) continue;
        const line = parts.length === 1 ? parts[0] : concat(parts, length);
        const size = length;
        parts = [];
        length = 0;
        let message: unknown;
        try {
          message = JSON.parse(decoder.decode(line));
        } catch {
          return sink.fail({
            tag: "PluginCrashedError",
            message: "Plugin broke the protocol: a line of output that is not JSON",
          });
        }
        sink.message(message, size);
        if (closing) return;
      }
    }
  };

  const readStderr = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    let partial = "";
    let windowStart = Date.now();
    let sent = 0;
    let dropped = 0;
    for await (const chunk of stream) {
      const text = decoder.decode(chunk, { stream: true });
      stderrTail = (stderrTail + text).slice(-STDERR_TAIL);
      const lines = (partial + text).split("\n");
      partial = lines.pop()!.slice(-LOG_LINE_CHARS);
      for (const line of lines) {
        if (line === "") continue;
        const now = Date.now();
        if (now - windowStart > 60_000) {
          if (dropped) spec.log?.(`[${spec.name}] … ${dropped} lines of output dropped`);
          windowStart = now;
          sent = 0;
          dropped = 0;
        }
        if (sent++ < LOG_LINES_PER_MINUTE) spec.log?.(`[${spec.name}] ${line.slice(0, LOG_LINE_CHARS)}`);
        else dropped++;
      }
    }
  };

  const why = (status: Deno.CommandStatus): string => {
    const oom = /out of memory|heap limit|Allocation failed/i.test(stderrTail);
    if (oom) return `Plugin "${spec.name}" ran out of memory (heap cap ${limits.heapMb} MB) and was stopped`;
    const last = stderrTail.trim().split("\n").filter((l) => /error/i.test(l)).at(-1)?.trim().slice(0, 500);
    // Under bwrap the plugin is its init's child: a signal comes back as exit code 128 + n.
    const signal = status.signal ?? (status.code > 128 ? SIGNALS[status.code - 128] : undefined);
    const how = status.signal
      ? `was killed by ${status.signal}`
      : `exited with code ${status.code}${signal ? ` (killed by ${signal})` : ""}`;
    return `Plugin "${spec.name}" crashed: its process ${how}${last ? `: ${last}` : ""}`;
  };

  const start = async () => {
    const found = await sandboxTools();
    const tools = spec.bwrap === false ? { ...found, bwrap: undefined, bwrapProblem: "bwrap disabled for it" } : found;
    if (closing) return resolveClosed();
    const env: Record<string, string> = {};
    for (const name of Array.isArray(spec.permissions.env) ? spec.permissions.env : []) {
      const value = Deno.env.get(name);
      if (value !== undefined) env[name] = value;
    }
    Deno.mkdirSync(spec.cacheDir, { recursive: true });
    const npmCacheDir = spec.npm ? await hostNpmCache() : undefined;
    if (npmCacheDir) linkNpmCache(spec.cacheDir, npmCacheDir);
    // bwrap mounts and --allow-* flags need absolute, real paths.
    const real = (path: string) => Deno.realPathSync(path);
    const paths = { folder: real(spec.folder), sdkDir: real(spec.sdkDir), dataDir: real(spec.dataDir) };
    const command = processCommand(
      { ...spec, ...paths, cacheDir: real(spec.cacheDir), entry: real(spec.entry), npmCacheDir },
      tools,
      limits,
      env,
    );
    report.value = command.report;
    child = new Deno.Command(command.command, {
      args: [...command.args],
      clearEnv: true,
      env: { ...command.env },
      cwd: spec.dataDir,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    report.value = { ...command.report, pid: child.pid };
    writer = child.stdin.getWriter();
    for (const bytes of queued.splice(0)) write(bytes);
    if (closing) child.kill("SIGKILL");
    const out = readMessages(child.stdout).catch(() => {});
    const err = readStderr(child.stderr).catch(() => {});
    const status = await child.status;
    // Give the pipes a moment to drain so the death can be explained; a grandchild may hold them open.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise((resolve) => (timer = setTimeout(resolve, 500)));
    await Promise.race([Promise.all([out, err]), late]);
    clearTimeout(timer);
    fail(why(status));
    resolveClosed();
  };
  start().catch((error) => {
    fail(`Plugin "${spec.name}" cannot start its process: ${String(error)}`);
    resolveClosed();
  });

  return {
    send(message: HostMessage) {
      const bytes = encoder.encode(JSON.stringify(message) + "\n");
      if (writer) write(bytes);
      else queued.push(bytes);
    },
    close() {
      if (closing) return;
      closing = true;
      try {
        child?.kill("SIGKILL");
      } catch {
        // already exited
      }
      writer?.close().catch(() => {});
    },
    closed,
    get sandbox() {
      return report.value;
    },
  };
};

const SIGNALS: Record<number, string> = {
  4: "SIGILL",
  5: "SIGTRAP",
  6: "SIGABRT",
  7: "SIGBUS",
  9: "SIGKILL",
  11: "SIGSEGV",
  15: "SIGTERM",
  24: "SIGXCPU",
  25: "SIGXFSZ",
};

const concat = (parts: Uint8Array[], length: number): Uint8Array => {
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/**
 * @module
 * Keel as a real child process, for crash tests: `deno run -A main.ts serve`
 * with its own data dir, port and token, stdout and stderr collected so a
 * failing test can print them. `kill()` is a real SIGKILL (`kill -9`): no
 * finalizer, no flush, the kernel drops the process's sockets and file locks.
 * Also `runCli()`, one invocation of Keel's CLI against a running host.
 */
import { ROOT, TEST_TOKEN } from "./keel.ts";

/** A free TCP port on 127.0.0.1 (bound, read, closed; the OS does not hand it out again right away). */
export const freePort = (): number => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
};

/** The parent's environment without any KEEL_* variable, plus `extra`. */
const childEnv = (extra: Record<string, string>): Record<string, string> => {
  const env = Deno.env.toObject();
  for (const name of Object.keys(env)) if (name.startsWith("KEEL_")) delete env[name];
  return { ...env, NO_COLOR: "1", ...extra };
};

/** An API answer: status and parsed JSON body. */
export interface ApiResponse {
  readonly status: number;
  readonly body: any;
}

/** Call a Keel API at `url` with the test token. */
export const callApi = async (url: string, method: string, path: string, body?: unknown): Promise<ApiResponse> => {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body: parsed };
};

/** Collects a child's output as it arrives. */
class OutputLog {
  readonly lines: string[] = [];
  #text = "";
  add(stream: string, chunk: string) {
    this.#text += chunk;
    for (const line of chunk.split("\n")) if (line !== "") this.lines.push(`[${stream}] ${line}`);
  }
  get text() {
    return this.#text;
  }
}

const drain = async (stream: ReadableStream<Uint8Array>, name: string, log: OutputLog): Promise<void> => {
  const decoder = new TextDecoder();
  for await (const chunk of stream) log.add(name, decoder.decode(chunk, { stream: true }));
};

/** A Keel child process. */
export interface KeelProcess {
  readonly pid: number;
  readonly port: number;
  readonly url: string;
  readonly dataDir: string;
  /** Exit status, once the process has ended and its output is read. */
  readonly exited: Promise<Deno.CommandStatus>;
  /** Everything the process printed so far, stdout and stderr interleaved by line. */
  output(): string;
  /** Call its API with the test token. */
  api(method: string, path: string, body?: unknown): Promise<ApiResponse>;
  /** `kill -9`, then wait for the process to be gone. Safe to call twice or after exit. */
  kill(): Promise<Deno.CommandStatus>;
  /** SIGTERM (Keel shuts down cleanly), then wait; SIGKILL after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<Deno.CommandStatus>;
}

/** Options for `spawnKeel`. */
export interface SpawnOptions {
  /** Data dir (KEEL_DATA_DIR); reuse one to restart on the same state. */
  readonly dataDir: string;
  /** KEEL_PORT; default a free port. */
  readonly port?: number;
  /** Extra environment. KEEL_POLICIES is not set, so Keel uses the repo's `policies/`. */
  readonly env?: Record<string, string>;
}

/** Start `deno run -A main.ts serve` without waiting for it to come up. */
export const spawnKeel = (options: SpawnOptions): KeelProcess => {
  const port = options.port ?? freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "serve"],
    cwd: ROOT,
    clearEnv: true,
    env: childEnv({
      KEEL_DATA_DIR: options.dataDir,
      KEEL_PORT: String(port),
      KEEL_TOKEN: TEST_TOKEN,
      ...options.env,
    }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log = new OutputLog();
  const readers = Promise.all([drain(child.stdout, "out", log), drain(child.stderr, "err", log)]);
  const exited = (async () => {
    const status = await child.status;
    await readers.catch(() => {});
    return status;
  })();
  let gone = false;
  exited.then(() => (gone = true), () => (gone = true));
  const signal = (sig: Deno.Signal) => {
    if (gone) return;
    try {
      child.kill(sig);
    } catch {
      // already exited
    }
  };
  return {
    pid: child.pid,
    port,
    url,
    dataDir: options.dataDir,
    exited,
    output: () => log.lines.join("\n"),
    api: (method, path, body) => callApi(url, method, path, body),
    kill() {
      signal("SIGKILL");
      return exited;
    },
    async stop(timeoutMs = 10_000) {
      signal("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
      await Promise.race([exited, late]);
      clearTimeout(timer);
      signal("SIGKILL");
      return await exited;
    },
  };
};

/** Poll GET /healthz until it answers 200; fail early, with the output, if the process exits. */
export const waitUntilUp = async (keel: KeelProcess, timeoutMs = 60_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  let exited: Deno.CommandStatus | undefined;
  keel.exited.then((s) => (exited = s), () => {});
  for (;;) {
    if (exited) {
      throw new Error(`Keel exited with code ${exited.code} before it was up:\n${keel.output()}`);
    }
    try {
      const res = await fetch(`${keel.url}/healthz`);
      await res.body?.cancel();
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`Keel did not come up within ${timeoutMs} ms:\n${keel.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

/**
 * Spawn Keel and wait until /healthz answers. Kills it if it does not come up.
 * If someone else took the free port between `freePort()` and Keel binding it,
 * tries again on another port (unless the port was given).
 */
export const startKeelProcess = async (options: SpawnOptions): Promise<KeelProcess> => {
  for (let attempt = 1;; attempt++) {
    const keel = spawnKeel(options);
    try {
      await waitUntilUp(keel);
      return keel;
    } catch (error) {
      await keel.kill();
      const portTaken = /AddrInUse|address already in use/i.test(keel.output());
      if (!portTaken || options.port !== undefined || attempt >= 3) throw error;
    }
  }
};

/** Install the shipped smtp connector (granted only that host:port) and the onboarding agent over HTTP. */
export const installOnboardingOver = async (
  api: (method: string, path: string, body?: unknown) => Promise<ApiResponse>,
  smtp: { host: string; port: number },
): Promise<void> => {
  const a = await api("POST", "/api/plugins", {
    path: `${ROOT}/plugins/smtp`,
    grant: { net: [`${smtp.host}:${smtp.port}`] },
    config: { host: smtp.host, port: smtp.port, from: "Keel <keel@example.test>" },
  });
  if (a.status !== 201) throw new Error(`smtp install failed (${a.status}): ${JSON.stringify(a.body)}`);
  const b = await api("POST", "/api/plugins", { path: `${ROOT}/agents/onboarding`, grant: {} });
  if (b.status !== 201) throw new Error(`onboarding install failed (${b.status}): ${JSON.stringify(b.body)}`);
};

/** What one CLI invocation printed. */
export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run `deno run -A main.ts ...args` against the Keel at `url` (KEEL_URL, KEEL_TOKEN set); killed after `timeoutMs`. */
export const runCli = async (
  args: string[],
  options: { url: string; token?: string; timeoutMs?: number },
): Promise<CliResult> => {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), options.timeoutMs ?? 120_000);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: ROOT,
    clearEnv: true,
    env: childEnv({ KEEL_URL: options.url, KEEL_TOKEN: options.token ?? TEST_TOKEN }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: abort.signal,
  }).output().finally(() => clearTimeout(timer));
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
};

/** Poll `check` until it returns a value other than undefined; fail with `what()` after `timeoutMs`. */
export const eventually = async <A>(
  check: () => Promise<A | undefined>,
  what: () => string,
  timeoutMs = 30_000,
): Promise<A> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

/** `promise`, or a rejection naming `what` after `timeoutMs` (the timer never outlives the call). */
export const withTimeout = async <A>(promise: Promise<A>, timeoutMs: number, what: string): Promise<A> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${timeoutMs} ms: ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
};

/**
 * @module
 * The two isolation modes behind one protocol. The same unmodified plugin
 * (`tests/fixtures/process/runaway`) runs as a Worker and as a sandboxed
 * process; each mode is held to the same per-call rules (timeout, in-flight
 * bound, crash handling). The exact command line of a plugin process is
 * checked flag by flag, and a real Keel shows which mode each plugin got and
 * restarts a crashed plugin process.
 */
import assert from "node:assert/strict";
import { openConnection, type PluginSpec } from "../../core/plugins/_connection.ts";
import { DEFAULT_LIMITS, processCommand, type SandboxTools, sandboxTools } from "../../core/plugins/_process.ts";
import { RestartBackoff } from "../../core/plugins/_backoff.ts";
import { ROOT, startTestKeel } from "../_support/keel.ts";
import { runCli } from "../_support/process.ts";

const RUNAWAY = `${ROOT}/tests/fixtures/process/runaway`;
const SDK = `${ROOT}/core/sdk`;

const permissions = (dataDir: string, more: Partial<PluginSpec["permissions"]> = {}): PluginSpec["permissions"] => ({
  env: false,
  net: false,
  read: [dataDir],
  write: [dataDir],
  run: false,
  ffi: false,
  sys: false,
  import: false,
  ...more,
});

/** Start the runaway fixture in `isolation`, with a fresh data dir; `close()` stops it and removes the dirs. */
const startRunaway = async (isolation: "worker" | "process", extra: Partial<PluginSpec> = {}) => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-iso-data-" });
  const cacheDir = await Deno.makeTempDir({ prefix: "keel-iso-cache-" });
  const logged: string[] = [];
  const conn = openConnection({
    isolation,
    name: "runaway@0.1.0",
    entry: `${RUNAWAY}/mod.ts`,
    folder: RUNAWAY,
    sdkDir: SDK,
    dataDir,
    cacheDir,
    permissions: permissions(dataDir),
    config: { port: 9 },
    startTimeoutMs: 20_000,
    npm: false,
    log: (line) => logged.push(line),
    ...extra,
  });
  await conn.ready;
  return {
    conn,
    logged,
    call: (name: string, args: unknown = {}, timeoutMs = 20_000) =>
      conn.request({ t: "effect", name: `runaway.${name}`, args, idempotencyKey: "k" }, timeoutMs),
    async close() {
      conn.kill({ tag: "PluginCrashedError", message: "test over" });
      await conn.closed;
      await Deno.remove(dataDir, { recursive: true });
      await Deno.remove(cacheDir, { recursive: true });
    },
  };
};

/** The reason and wire tag a failed call carries. */
const failure = async (p: Promise<unknown>) => {
  const error = await p.then(() => assert.fail("the call should have failed"), (e) => e);
  return { reason: error.reason as string, tag: error.wire?.tag as string, message: error.message as string };
};

const FAKE_TOOLS: SandboxTools = {
  bwrap: "/usr/bin/bwrap",
  prlimit: "/usr/bin/prlimit",
  setpriv: "/usr/bin/setpriv",
  sh: "/bin/sh",
  libs: [["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"]],
};
const SPEC = {
  entry: "/plugins/p/mod.ts",
  folder: "/plugins/p",
  sdkDir: "/keel/core/sdk",
  dataDir: "/data/p",
  cacheDir: "/data/.deno-cache/p",
  npm: false,
};

/** The `deno run …` part of a command line. */
const denoArgs = (args: ReadonlyArray<string>) => args.slice(args.lastIndexOf(Deno.execPath()) + 1);
/** Every `--flag src dest` triple of a bwrap command line. */
const mounts = (args: ReadonlyArray<string>, flag: string) =>
  args.flatMap((a, i) => (a === flag ? [`${args[i + 1]} -> ${args[i + 2]}`] : []));

Deno.test("processCommand() passes a plugin process exactly its grant and nothing more", () => {
  const cmd = processCommand(
    { ...SPEC, permissions: permissions("/data/p/files", { env: ["API_KEY", "LD_PRELOAD"], write: false }) },
    FAKE_TOOLS,
    DEFAULT_LIMITS,
    { API_KEY: "k-123", LD_PRELOAD: "/evil.so" },
  );
  const deno = denoArgs(cmd.args);
  assert.deepEqual(deno, [
    "run",
    "--no-prompt",
    "--no-config",
    "--no-lock",
    "--cached-only",
    "--no-remote",
    "--no-npm",
    "--v8-flags=--max-old-space-size=256",
    "--allow-env=API_KEY",
    "--allow-read=/plugins/p,/keel/core/sdk,/data/p/files",
    "/keel/core/sdk/_process_entry.ts",
    "file:///plugins/p/mod.ts",
  ]);
  for (const arg of cmd.args) {
    assert.ok(!/^(-A|--allow-(all|run|ffi|sys|import|hrtime))\b/.test(arg), `no power beyond the grant: ${arg}`);
  }
  assert.deepEqual(Object.keys(cmd.env).sort(), ["API_KEY", "DENO_DIR", "DENO_NO_UPDATE_CHECK", "NO_COLOR"]);
  assert.equal(cmd.env.API_KEY, "k-123");
  assert.equal(cmd.env.DENO_DIR, "/data/.deno-cache/p");
  assert.match(cmd.report.warnings?.join(" ") ?? "", /LD_PRELOAD is never passed/);
});

Deno.test("processCommand() wraps a plugin process in prlimit and a bwrap that shows it only its own files", () => {
  const cmd = processCommand({ ...SPEC, permissions: permissions("/data/p") }, FAKE_TOOLS, DEFAULT_LIMITS, {});
  assert.equal(cmd.command, "/usr/bin/prlimit");
  const mb = (n: number) => n * 1024 * 1024;
  assert.deepEqual(cmd.args.slice(0, 5), [
    `--data=${mb(DEFAULT_LIMITS.dataMb)}`,
    `--nofile=${DEFAULT_LIMITS.openFiles}`,
    `--fsize=${mb(DEFAULT_LIMITS.fileSizeMb)}`,
    "--core=0",
    "--",
  ]);
  const args = cmd.args.slice(5);
  assert.equal(args[0], "/usr/bin/bwrap");
  for (const flag of ["--unshare-all", "--die-with-parent", "--new-session"]) assert.ok(args.includes(flag), flag);
  assert.ok(!args.includes("--share-net"), "no network namespace sharing without a net grant");
  assert.equal(args[args.indexOf("--cap-drop") + 1], "ALL");
  assert.equal(args[args.indexOf("--uid") + 1], "65534");
  assert.deepEqual(
    mounts(args, "--ro-bind").sort(),
    [
      `${Deno.execPath()} -> ${Deno.execPath()}`,
      "/keel/core/sdk -> /keel/core/sdk",
      "/plugins/p -> /plugins/p",
      "/usr/lib/x86_64-linux-gnu/libc.so.6 -> /lib/x86_64-linux-gnu/libc.so.6",
    ].sort(),
  );
  assert.deepEqual(mounts(args, "--bind").sort(), ["/data/.deno-cache/p -> /data/.deno-cache/p", "/data/p -> /data/p"]);
  assert.ok(!args.includes("--proc"), "no /proc in the sandbox");
  assert.deepEqual(cmd.report, {
    isolation: "process",
    sandbox: "bwrap",
    osLimits: "prlimit",
    limits: DEFAULT_LIMITS,
  });

  const net = processCommand(
    { ...SPEC, permissions: permissions("/data/p", { net: ["smtp.example.com:587"] }) },
    FAKE_TOOLS,
    DEFAULT_LIMITS,
    {},
  );
  assert.ok(net.args.includes("--share-net"), "a net grant needs the host's network");
  assert.ok(denoArgs(net.args).includes("--allow-net=smtp.example.com:587"));
  assert.ok(mounts(net.args, "--ro-bind-try").includes("/etc/resolv.conf -> /etc/resolv.conf"), "DNS works");
});

Deno.test("processCommand() without bwrap or prlimit says so and still ties the child to the host", () => {
  const cmd = processCommand(
    { ...SPEC, permissions: permissions("/data/p") },
    { ...FAKE_TOOLS, bwrap: undefined, bwrapProblem: "bwrap cannot run here: No permissions", prlimit: undefined },
    DEFAULT_LIMITS,
    {},
  );
  assert.equal(cmd.command, "/bin/sh");
  assert.match(cmd.args[1], /^ulimit -c 0 -d \d+ -n 256 -f \d+ && exec "\$@"$/);
  const setpriv = cmd.args.indexOf("/usr/bin/setpriv");
  assert.ok(setpriv > 0, "setpriv wraps deno");
  assert.deepEqual(cmd.args.slice(setpriv + 1, setpriv + 4), ["--no-new-privs", "--pdeathsig", "KILL"]);
  assert.equal(cmd.report.sandbox, "none");
  assert.equal(cmd.report.osLimits, "ulimit");
  assert.match(cmd.report.warnings?.join(" ") ?? "", /no bwrap: .*No permissions/);
});

Deno.test("RestartBackoff doubles from 100 ms to 30 s and starts afresh after a healthy instance", () => {
  const b = new RestartBackoff();
  let t = 1_000_000;
  const delays: number[] = [];
  for (let i = 0; i < 11; i++) {
    const dead = { startedAt: t, diedAt: t + 50, answered: 0 };
    delays.push(b.wait(dead, t + 50));
    assert.equal(b.wait(dead, t + 50), delays.at(-1), "a death is counted once");
    t += 60_000;
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
  assert.equal(b.wait({ startedAt: t, diedAt: t + 10, answered: 1 }, t + 10), 100, "answering a call resets it");
  assert.equal(b.wait({ startedAt: t, diedAt: t + 20_000, answered: 0 }, t + 20_000), 100, "uptime resets it");
  assert.equal(b.wait({ startedAt: t, diedAt: t + 50, answered: 0 }, t + 150), 100, "waited from the death");
});

for (const isolation of ["worker", "process"] as const) {
  Deno.test(`an unmodified definePlugin() plugin serves calls in ${isolation} isolation`, async () => {
    const p = await startRunaway(isolation);
    try {
      assert.equal(p.conn.isolation, isolation);
      assert.deepEqual(await p.call("echo", { value: "hi" }), { value: "hi" });
      const denied = await failure(p.call("read_file", { path: "/etc/passwd" }));
      assert.equal(denied.tag, "PermissionDenied", denied.message);
      assert.deepEqual(await p.call("echo", { value: "still" }), { value: "still" });
    } finally {
      await p.close();
    }
  });

  Deno.test(
    `more than 64 calls in flight fail at once with PluginBusyError in ${isolation} isolation, and the plugin keeps serving`,
    async () => {
      const p = await startRunaway(isolation);
      try {
        const slow = Array.from({ length: 64 }, () => p.call("sleep", { ms: 300 }));
        assert.equal(p.conn.inFlight, 64);
        const busy = await failure(p.call("echo", { value: "one too many" }));
        assert.equal(busy.reason, "busy");
        assert.equal(busy.tag, "PluginBusyError");
        assert.match(busy.message, /the limit is 64/);
        assert.ok(p.conn.alive, "refusing a call does not retire the plugin");
        for (const result of await Promise.all(slow)) assert.deepEqual(result, { slept: 300 });
        assert.deepEqual(await p.call("echo", { value: "after" }), { value: "after" });
      } finally {
        await p.close();
      }
    },
  );

  Deno.test(
    `a call that times out retires the plugin and fails every call in flight with PluginTimeoutError (${isolation})`,
    async () => {
      const p = await startRunaway(isolation);
      try {
        const other = failure(p.call("sleep", { ms: 60_000 }, 60_000));
        const spin = await failure(p.call("spin", {}, 1000));
        assert.equal(spin.tag, "PluginTimeoutError");
        const bystander = await other;
        assert.equal(bystander.reason, "timeout");
        assert.equal(bystander.tag, "PluginTimeoutError");
        assert.ok(!p.conn.alive);
        assert.equal(
          (await failure(p.call("echo", { value: "x" }))).reason,
          "crashed",
          "a retired plugin answers nothing",
        );
      } finally {
        await p.close();
      }
    },
  );

  Deno.test(
    `a call made after an answered one with an earlier deadline still times out (one deadline timer) (${isolation})`,
    async () => {
      const p = await startRunaway(isolation);
      try {
        // The answered call leaves the deadline timer set for its own deadline; the spin's is later.
        assert.deepEqual(await p.call("echo", { value: "quick" }, 300), { value: "quick" });
        const began = Date.now();
        const spin = await failure(p.call("spin", {}, 800));
        assert.equal(spin.tag, "PluginTimeoutError");
        assert.match(spin.message, /within 800 ms/);
        // Not retired at the answered call's deadline: the spin had its own 800 ms.
        assert.ok(Date.now() - began >= 700, `retired after ${Date.now() - began} ms`);
        assert.ok(!p.conn.alive);
      } finally {
        await p.close();
      }
    },
  );

  Deno.test(`a step of the wall clock retires no plugin early (deadlines are monotonic) (${isolation})`, async () => {
    const p = await startRunaway(isolation);
    const realNow = Date.now;
    try {
      // The answered call leaves the deadline timer set for 100 ms; the sleep's own deadline is a minute away.
      assert.deepEqual(await p.call("echo", { value: "quick" }, 100), { value: "quick" });
      const slow = p.call("sleep", { ms: 400 }, 60_000);
      // What an NTP step or a resumed laptop does to the wall clock while the sleep is in flight.
      Date.now = () => realNow() + 11 * 60_000;
      assert.deepEqual(await slow, { slept: 400 });
      assert.ok(p.conn.alive);
    } finally {
      Date.now = realNow;
      await p.close();
    }
  });

  Deno.test(`a plugin that exits fails its calls in flight with a tagged error (${isolation})`, async () => {
    const p = await startRunaway(isolation);
    try {
      const other = failure(p.call("sleep", { ms: 60_000 }, 60_000));
      // A process's exit closes its pipes; a Worker ends without an event, so Keel's Worker entry says so first.
      const exit = await failure(p.call("exit", {}, 3000));
      const bystander = await other;
      assert.equal(exit.tag, "PluginCrashedError");
      assert.match(exit.message, isolation === "process" ? /exited with code 3/ : /ended itself \(exit code 3\)/);
      assert.equal(bystander.tag, "PluginCrashedError");
      assert.ok(!p.conn.alive);
    } finally {
      await p.close();
    }
  });
}

Deno.test("a plugin process that exhausts its heap is stopped, and the host says why", async () => {
  const p = await startRunaway("process", { limits: { heapMb: 64 } });
  try {
    const oom = await failure(p.call("heap_bomb"));
    assert.equal(oom.tag, "PluginCrashedError");
    assert.match(oom.message, /ran out of memory \(heap cap 64 MB\)/);
  } finally {
    await p.close();
  }
});

Deno.test("console.log in a plugin process goes to the host log, bounded, and never into the protocol", async () => {
  const p = await startRunaway("process");
  try {
    assert.deepEqual(await p.call("chatter", { lines: 500 }), { printed: 500 });
    assert.deepEqual(await p.call("echo", { value: "clean" }), { value: "clean" });
    const chatter = p.logged.filter((l) => l.includes("chatter line"));
    assert.equal(chatter.length, 120, "at most 120 lines a minute reach the host log");
    assert.ok(chatter.every((l) => l.startsWith("[runaway@0.1.0] ")), "each line names its plugin");
  } finally {
    await p.close();
  }
});

Deno.test("a plugin process writing raw bytes to stdout is stopped with PluginCrashedError", async () => {
  const p = await startRunaway("process");
  try {
    const garbage = await failure(p.call("stdout_garbage"));
    assert.equal(garbage.tag, "PluginCrashedError");
    assert.match(garbage.message, /not JSON/);
  } finally {
    await p.close();
  }
});

Deno.test("a plugin process sending 100 MB is stopped at the 8 MB cap with PluginCrashedError", async () => {
  const p = await startRunaway("process");
  try {
    const huge = await failure(p.call("huge_message", { mb: 100 }));
    assert.equal(huge.tag, "PluginCrashedError");
    assert.match(huge.message, /more than 8388608 bytes; the limit is 8388608/);
  } finally {
    await p.close();
  }
});

Deno.test("without bwrap a plugin process still runs under exactly its Deno permissions and says so", async () => {
  const p = await startRunaway("process", { bwrap: false });
  try {
    assert.deepEqual(await p.call("echo", { value: "plain" }), { value: "plain" });
    const denied = await failure(p.call("read_file", { path: "/etc/passwd" }));
    assert.equal(denied.tag, "PermissionDenied", denied.message);
    assert.equal(p.conn.sandbox.sandbox, "none");
    assert.match(p.conn.sandbox.warnings?.join(" ") ?? "", /no bwrap/);
  } finally {
    await p.close();
  }
});

Deno.test("a plugin process sees its own pid namespace under bwrap", async (t) => {
  const tools = await sandboxTools();
  if (!tools.bwrap) {
    console.warn(
      `SKIPPED (loudly): bwrap is not usable here, so plugin processes are not in a sandbox: ${tools.bwrapProblem}`,
    );
    return;
  }
  const p = await startRunaway("process");
  try {
    await t.step("its pid is small: it cannot even name the host's processes", async () => {
      const { pid } = await p.call("whoami") as { pid: number };
      assert.ok(pid < 10, `pid ${pid}`);
      assert.equal(p.conn.sandbox.sandbox, "bwrap");
    });
  } finally {
    await p.close();
  }
});

Deno.test(
  "Keel runs plugins from outside its folder as processes and its own as Workers, unless the operator says otherwise",
  async () => {
    const outside = await Deno.makeTempDir({ prefix: "keel-third-party-" });
    const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 30_000 });
    try {
      // A third-party copy of the fixture, importing Keel's SDK by absolute path.
      await Deno.mkdir(`${outside}/runaway`);
      await Deno.copyFile(`${RUNAWAY}/plugin.json`, `${outside}/runaway/plugin.json`);
      const source = await Deno.readTextFile(`${RUNAWAY}/mod.ts`);
      await Deno.writeTextFile(
        `${outside}/runaway/mod.ts`,
        source.replace('"../../../../core/sdk/mod.ts"', JSON.stringify(`${SDK}/mod.ts`)),
      );
      const third = await k.api("POST", "/api/plugins", {
        path: `${outside}/runaway`,
        grant: { read: ["."], write: ["."] },
        config: { port: 9 },
      });
      assert.equal(third.status, 201, JSON.stringify(third.body));
      assert.equal(third.body.plugin.isolation, "process");
      const own = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/process/driver`, grant: {} });
      assert.equal(own.status, 201, JSON.stringify(own.body));
      assert.equal(own.body.plugin.isolation, "worker");
      const forced = await k.api("POST", "/api/plugins", {
        path: `${ROOT}/tests/fixtures/hostile/benign`,
        grant: {},
        isolation: "process",
      });
      assert.equal(forced.status, 201, JSON.stringify(forced.body));
      assert.equal(forced.body.plugin.isolation, "process");
      const bad = await k.api("POST", "/api/plugins", {
        path: `${ROOT}/tests/fixtures/hostile/unimplemented`,
        grant: {},
        isolation: "vm",
      });
      assert.equal(bad.status, 400, JSON.stringify(bad.body));
      assert.match(bad.body.error.message, /isolation must be "worker" or "process"/);

      const list = (await k.api("GET", "/api/plugins")).body.plugins;
      const by = (name: string) => list.find((p: any) => p.name === name);
      assert.equal(by("runaway").isolation, "process");
      assert.equal(by("driver").isolation, "worker");
      assert.equal(by("benign").isolation, "process");
      const tools = await sandboxTools();
      assert.equal(by("runaway").sandbox, tools.bwrap ? "bwrap" : "none");
      assert.equal(by("driver").sandbox, "deno-permissions");

      const cli = await runCli(["plugin", "list"], { url: k.url });
      assert.equal(cli.code, 0, cli.stderr);
      assert.match(cli.stdout, /runaway \(connector\).*\n.*0\.1\.0 .*running, process/);
      assert.match(cli.stdout, /driver \(agent\).*\n.*0\.1\.0 .*running, worker\n/);

      const audit = (await k.api("GET", "/api/audit?limit=1000")).body.events;
      const started = audit.find((e: any) => e.type === "plugin.started" && e.data.plugin === "runaway");
      assert.ok(started, "the start is audited with how the plugin is sandboxed");
      assert.equal(started.data.isolation, "process");
      assert.deepEqual(started.data.limits, DEFAULT_LIMITS);
    } finally {
      await k.close();
      await Deno.remove(outside, { recursive: true });
    }
  },
);

Deno.test("a crashed plugin process is restarted with backoff, its crash and restart audited", async () => {
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 30_000 });
  const run = async (effect: string, args: unknown) => {
    const r = await k.api("POST", "/api/workflows/drive_runaway/runs?wait=60", { input: { effect, args } });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    return r.body;
  };
  try {
    const installed = await k.api("POST", "/api/plugins", {
      path: RUNAWAY,
      grant: {},
      config: { port: 9 },
      isolation: "process",
    });
    assert.equal(installed.status, 201, JSON.stringify(installed.body));
    assert.equal(
      (await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/process/driver`, grant: {} }))
        .status,
      201,
    );
    const restarts = async () =>
      (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) => p.name === "runaway").restarts;

    const crashed = await run("runaway.exit", {});
    assert.equal(crashed.status, "failed");
    assert.equal(crashed.error.tag, "PluginCrashedError", JSON.stringify(crashed.error));
    const state = (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) => p.name === "runaway");
    assert.equal(state.state, "crashed");
    assert.match(state.lastError, /exited with code 3/);

    const served = await run("runaway.echo", { value: "back" });
    assert.equal(served.status, "succeeded", JSON.stringify(served));
    assert.deepEqual(served.output.result, { value: "back" });
    assert.equal(await restarts(), 1);

    const audit = (await k.api("GET", "/api/audit?limit=1000")).body.events;
    assert.ok(audit.some((e: any) => e.type === "plugin.crashed" && e.data.plugin === "runaway"), "plugin.crashed");
    const starts = audit.filter((e: any) => e.type === "plugin.started" && e.data.plugin === "runaway");
    assert.equal(starts.length, 2, "the first start and the restart are both audited");
  } finally {
    await k.close();
  }
});

/**
 * @module
 * One Keel owns a data dir. A second Keel on the same dir — in this process
 * or another — is refused with `DataDirLockedError` while the first runs,
 * and the refused start changes nothing; once the owner stops (even by
 * SIGKILL) the dir can be opened again and its state is intact.
 */
import assert from "node:assert/strict";
import { KeelStartError } from "../../core/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const startError = async (dataDir: string): Promise<KeelStartError> => {
  let second: TestKeel | undefined;
  try {
    second = await startTestKeel({ dataDir });
  } catch (error) {
    assert.ok(error instanceof KeelStartError, `expected a KeelStartError, got ${error}`);
    return error;
  } finally {
    await second?.close();
  }
  assert.fail("a second Keel started on a data dir that is in use");
};

const ENV = (dataDir: string) => ({
  KEEL_DATA_DIR: dataDir,
  KEEL_PORT: "0",
  KEEL_HOST: "127.0.0.1",
  KEEL_TOKEN: "store-test-token",
  KEEL_POLICIES: `${ROOT}/policies`,
  KEEL_URL: "",
  NO_COLOR: "1",
});

Deno.test("a second Keel on the same data dir is refused with DataDirLockedError while the first runs", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-lock-" });
  try {
    const first = await startTestKeel({ dataDir });
    try {
      const error = await startError(dataDir);
      assert.equal(error.body.tag, "DataDirLockedError");
      assert.equal(error.message, `Data dir "${dataDir}" is in use by another Keel process (pid ${Deno.pid})`);
      assert.deepEqual(error.body.details, { dataDir });
      // The refused start did not disturb the owner.
      const { status, body } = await first.api("GET", "/api/audit/verify");
      assert.equal(status, 200);
      assert.equal(body.ok, true);
      assert.equal((await first.api("GET", "/api/plugins")).status, 200);
    } finally {
      await first.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("after the first Keel closes, a new one starts on the same data dir and keeps its state", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-lock-" });
  try {
    const first = await startTestKeel({ dataDir });
    let installed: unknown;
    try {
      const res = await first.api("POST", "/api/plugins", { path: `${ROOT}/agents/onboarding`, grant: {} });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      installed = res.body.plugin.manifestHash;
      await startError(dataDir);
    } finally {
      await first.close();
    }
    const again = await startTestKeel({ dataDir });
    try {
      const { body } = await again.api("GET", "/api/plugins");
      assert.deepEqual(body.plugins.map((p: { name: string; manifestHash: string }) => [p.name, p.manifestHash]), [
        ["onboarding", installed],
      ]);
      const events = (await again.api("GET", "/api/audit")).body.events.map((e: { type: string }) => e.type);
      assert.ok(events.includes("plugin.installed"), events.join(", "));
      assert.equal((await again.api("GET", "/api/audit/verify")).body.ok, true);
    } finally {
      await again.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

/** The fd numbers of this process open on `path` (Linux: read from `/proc/self/fd`). */
const fdsOn = (path: string): number[] =>
  [...Deno.readDirSync("/proc/self/fd")].flatMap((entry) => {
    try {
      return Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === path ? [Number(entry.name)] : [];
    } catch {
      return []; // the fd of the directory listing itself, already closed
    }
  });

Deno.test({
  name: "close() frees the data dir even while another fd shares the lock's open file (a child being spawned)",
  // A process spawned from any thread (in `deno test --parallel`, any test file) holds a copy of every fd of this
  // process until it execs. The copy is stood in for by dup(2): same open file, so the same flock.
  ignore: Deno.build.os !== "linux",
  async fn() {
    const dataDir = await Deno.makeTempDir({ prefix: "keel-lock-" });
    const libc = Deno.dlopen("libc.so.6", {
      dup: { parameters: ["i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
    });
    let copy = -1;
    try {
      const first = await startTestKeel({ dataDir });
      try {
        const [fd] = fdsOn(await Deno.realPath(`${dataDir}/keel.lock`));
        assert.ok(fd !== undefined, "the running Keel has its lock file open");
        copy = libc.symbols.dup(fd);
        assert.ok(copy >= 0, "dup(2) of the lock fd");
      } finally {
        await first.close();
      }
      const again = await startTestKeel({ dataDir }); // refused with DataDirLockedError if close() left the lock
      await again.close();
    } finally {
      if (copy >= 0) libc.symbols.close(copy);
      libc.close();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});

Deno.test("`main.ts serve` on a data dir another Keel owns exits 1 with a one-line DataDirLockedError message", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-lock-" });
  try {
    const first = await startTestKeel({ dataDir });
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}/main.ts`, "serve"],
        cwd: dataDir,
        env: ENV(dataDir),
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 1);
      assert.equal(
        stderr.trim(),
        `Keel cannot start: Data dir "${dataDir}" is in use by another Keel process (pid ${Deno.pid})`,
      );
      assert.doesNotMatch(stderr, /^\s+at /m);
      assert.equal((await first.api("GET", "/api/plugins")).status, 200, "the owner is unaffected");
    } finally {
      await first.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("a Keel process killed with SIGKILL leaves no stale lock: the next Keel starts on its data dir", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-lock-" });
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}/main.ts`, "serve"],
      cwd: dataDir,
      env: ENV(dataDir),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderrText = new Response(child.stderr).text();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let stdout = "";
    try {
      const deadline = Date.now() + 30_000;
      while (!/Keel is listening on http:\/\/127\.0\.0\.1:\d+/.test(stdout)) {
        assert.ok(Date.now() < deadline, `serve did not start: ${stdout}`);
        const { value, done } = await reader.read();
        if (done) assert.fail(`serve exited before listening: ${stdout}\n${await stderrText}`);
        stdout += value;
      }
      const locked = await startError(dataDir);
      assert.equal(locked.body.tag, "DataDirLockedError");
      assert.match(locked.message, new RegExp(`\\(pid ${child.pid}\\)$`));
    } finally {
      child.kill("SIGKILL");
      await reader.cancel();
      await child.status;
      await stderrText;
    }
    const next = await startTestKeel({ dataDir });
    try {
      assert.equal((await next.api("GET", "/api/plugins")).status, 200);
    } finally {
      await next.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

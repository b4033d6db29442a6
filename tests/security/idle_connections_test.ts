/**
 * @module
 * Idle TCP connections from any local process (no token needed): Deno.serve alone has no connection cap or idle
 * timeout. When they used up Keel's file descriptors, the `EMFILE` from accept() rejected Deno.serve's own promise and
 * the whole Keel process exited ("Too many open files"), its runs with it; later, Keel survived but could not answer
 * while they were held. Now Keel holds at most `KEEL_MAX_CONNECTIONS` (256 by default), closing the longest idle one
 * for each new one, so it answers even while they are held. Here the limit is 1,024 file descriptors (`prlimit`,
 * util-linux) to keep it quick.
 */
import assert from "node:assert/strict";
import { freePort } from "../_support/process.ts";
import { ROOT, TEST_TOKEN } from "../_support/keel.ts";

const hasPrlimit = (() => {
  try {
    return new Deno.Command("prlimit", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
})();
if (!hasPrlimit) {
  console.error("SKIPPED idle_connections_test: prlimit (util-linux) is not installed; .ci/run installs it");
}

// With the default cap Keel never holds more than 256; with a cap above the descriptor limit, running out of
// descriptors makes the longest idle connections give way instead.
for (const [cap, what] of [[undefined, "the default cap"], ["5000", "a cap above the descriptor limit"]] as const) {
  Deno.test({
    name:
      `a thousand idle connections from a local process do not end Keel, which answers while they are held (${what})`,
    ignore: !hasPrlimit,
  }, () => holdIdle(cap));
}

async function holdIdle(cap: string | undefined) {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-fd-" });
  const port = freePort();
  // Deno raises its soft limit to the hard one at start, so both are set.
  const child = new Deno.Command("prlimit", {
    args: ["--nofile=1024:1024", Deno.execPath(), "run", "-A", "main.ts", "serve"],
    cwd: ROOT,
    env: {
      KEEL_DATA_DIR: dataDir,
      KEEL_PORT: String(port),
      KEEL_TOKEN: TEST_TOKEN,
      NO_COLOR: "1",
      ...(cap ? { KEEL_MAX_CONNECTIONS: cap } : {}),
    },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 120; i++) {
      const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then(
        (r) => r.body?.cancel().then(() => r.ok),
        () => false,
      );
      if (ok) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    for (let i = 0; i < 1100; i++) {
      try {
        conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch {
        break;
      }
    }
    await new Promise((r) => setTimeout(r, 2000));
    const held = conns.length;
    const whileHeld = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.json(), (e) => String(e));
    assert.equal(
      (whileHeld as { ok?: boolean }).ok,
      true,
      `healthz while ${held} are held: ${JSON.stringify(whileHeld)}`,
    );
    assert.ok(held > 1000, `only ${held} connections opened`);
    for (const c of conns.splice(0)) c.close();
    await new Promise((r) => setTimeout(r, 1000));
    const health = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.json(), (e) => String(e));
    const exited = await Promise.race([
      child.status.then((s) => s.code),
      new Promise((r) => setTimeout(() => r(null), 500)),
    ]);
    assert.equal(exited, null, `Keel exited with code ${exited}`);
    assert.equal((health as { ok?: boolean }).ok, true, `healthz: ${JSON.stringify(health)}`);
  } finally {
    for (const c of conns) c.close();
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    const err = await new Response(child.stderr).text();
    const uncaught = err.split("\n").filter((l) => l.includes("Uncaught"));
    if (uncaught.length) console.log(uncaught.join("\n"));
    await child.status;
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

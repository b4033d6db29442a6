/**
 * @module
 * A grant that reaches the plugin host after Keel closed starts nothing. The
 * host's shutdown stopped every plugin it knew; a Worker started after that
 * would outlive the host and act for a Keel that has closed. Here the new
 * version's module reports to a loopback witness as it loads, so a Worker
 * started by the late grant is seen, not assumed.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { PluginHost } from "../../core/plugins/mod.ts";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { variant } from "../fixtures/lifecycle/variant.ts";

Deno.test("a grant after Keel closed is refused and starts no Worker", async () => {
  const loads: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {}, onError: () => new Response() },
    (req) => {
      loads.push(new URL(req.url).pathname);
      return new Response("ok");
    },
  );
  const port = server.addr.port;
  // A data dir of the test's own: the helper would delete its own at close, and the stored plugin with it.
  const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
  let k: TestKeel | undefined = await startTestKeel({ dataDir });
  try {
    const v1 = await variant("echo", { version: "1.0.0" });
    assert.equal((await k.api("POST", "/api/plugins", { path: v1, grant: {} })).status, 201);
    // 2.0.0 asks for the network (so it waits for a grant) and reports to the witness when its module loads.
    const v2 = await variant("echo", {
      version: "2.0.0",
      manifest: (m) => ({ ...m, permissions: { net: [`127.0.0.1:${port}`] } }),
    });
    await Deno.writeTextFile(
      `${v2}/version.ts`,
      `export const VERSION = "2.0.0";\nawait fetch("http://127.0.0.1:${port}/loaded").then((r) => r.body?.cancel());\n`,
    );
    const up = await k.api("POST", "/api/plugins/lc-echo/upgrade", { path: v2 });
    assert.equal(up.status, 201, JSON.stringify(up.body));
    assert.equal(up.body.plugin.activation, "needs_grant", JSON.stringify(up.body));

    const host = await k.keel.runtime.runPromise(Effect.gen(function* () {
      return yield* PluginHost;
    }));
    await k.close();
    k = undefined;
    const exit = await Effect.runPromiseExit(
      host.grant("lc-echo", "2.0.0", { net: [`127.0.0.1:${port}`] }, "operator"),
    );
    assert.equal(exit._tag, "Failure", "a grant after close succeeded");
    // Long enough for a started Worker to load its module and call out (it does within ~100 ms).
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(loads, [], "the closed Keel started the granted version");
  } finally {
    await k?.close();
    await server.shutdown();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

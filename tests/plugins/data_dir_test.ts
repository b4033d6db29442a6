/**
 * @module
 * A connector's handlers are told their data dir (`ctx.dataDir`), the folder its `read`/`write` grants are relative
 * to, in both isolation modes: a note written there is on disk in `<data dir>/plugin-data/<name>/`, and it is still
 * there for the plugin after a restart of Keel.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { callEffect } from "../_support/plugins.ts";

for (const isolation of ["worker", "process"] as const) {
  Deno.test(`a ${isolation} plugin's handlers know its data dir and can keep files there across restarts`, async () => {
    const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
    let k: TestKeel | undefined;
    try {
      k = await startTestKeel({ dataDir });
      const res = await k.api("POST", "/api/plugins", {
        path: `${ROOT}/tests/fixtures/datadir`,
        grant: { read: ["."], write: ["."] },
        isolation,
      });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const expected = `${await Deno.realPath(dataDir)}/plugin-data/datadir`;
      const first = await callEffect(k, "dd.note", { line: "one" });
      assert.deepEqual(first, { dataDir: expected, notes: "one\n" });
      assert.equal(await Deno.readTextFile(`${expected}/notes.txt`), "one\n");
      await k.close();

      k = await startTestKeel({ dataDir });
      assert.deepEqual(await callEffect(k, "dd.note", { line: "two" }), { dataDir: expected, notes: "one\ntwo\n" });
    } finally {
      await k?.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  });
}

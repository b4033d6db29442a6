/**
 * @module
 * The API token on first start: `serve` without `KEEL_TOKEN` makes one, saves it in `<data dir>/token` (mode 0600)
 * once Keel owns the data dir, and prints it; the token printed is the token saved and the one the API takes. The next
 * start reads it and prints nothing about it.
 */
import assert from "node:assert/strict";
import { startKeelProcess } from "../_support/process.ts";

Deno.test("the first start prints and saves one token, the API takes it, and the next start keeps it quietly", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-token-" });
  try {
    const first = await startKeelProcess({ dataDir, env: { KEEL_TOKEN: "" } });
    let token: string;
    try {
      // /healthz answers a moment before the line is printed and drained from the pipe.
      for (let i = 0; i < 100 && !first.output().includes("API token"); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      const line = first.output().split("\n").find((l) => l.includes("API token"));
      const printed = line?.match(/API token \(also saved in (.+)\/token\): ([0-9a-f]{48})$/);
      assert.ok(printed, `no token line in:\n${first.output()}`);
      token = printed[2];
      assert.equal((await Deno.readTextFile(`${dataDir}/token`)).trim(), token);
      assert.equal((await Deno.stat(`${dataDir}/token`)).mode! & 0o777, 0o600);
      const res = await fetch(`${first.url}/api/plugins`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200, await res.text());
    } finally {
      await first.stop();
    }
    const second = await startKeelProcess({ dataDir, env: { KEEL_TOKEN: "" } });
    try {
      for (let i = 0; i < 100 && !second.output().includes("Keel is listening"); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(second.output(), /Keel is listening/);
      assert.ok(!second.output().includes("API token"), second.output());
      assert.equal((await Deno.readTextFile(`${dataDir}/token`)).trim(), token);
      const res = await fetch(`${second.url}/api/plugins`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200, await res.text());
    } finally {
      await second.stop();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

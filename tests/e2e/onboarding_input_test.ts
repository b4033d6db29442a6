/**
 * @module
 * `onboard_client` with an address the smtp connector can never send to: a
 * control character (DEL, NUL, ESC…) passes `\s`-based patterns, so the run
 * used to be accepted, park on the operator's approval, and only fail inside
 * the connector (a bare `TypeError`) after the operator approved. Such input is
 * refused when the run is started, and by the `email.send` schema at the Gateway.
 */
import assert from "node:assert/strict";
import { installOnboarding, startTestKeel } from "../_support/keel.ts";
import { startSmtpPeer } from "../_support/smtp_peer.ts";

Deno.test("`onboard_client` refuses an email address holding a control character before anything runs", async () => {
  const peer = await startSmtpPeer();
  const k = await startTestKeel();
  try {
    await installOnboarding(k, peer);
    for (const email of ["ada\u007f@client.test", "ada@client\u0000.test", "ada\u001b[2J@client.test"]) {
      const r = await k.api("POST", "/api/workflows/onboard_client/runs?wait=10", { input: { name: "Ada", email } });
      assert.equal(r.status, 400, `${JSON.stringify(email)}: ${JSON.stringify(r.body)}`);
    }
    assert.equal((await k.api("GET", "/api/approvals?status=pending")).body.approvals.length, 0, "nothing to approve");
    assert.equal(peer.received.length, 0);
  } finally {
    await k.close();
    await peer.close();
  }
});

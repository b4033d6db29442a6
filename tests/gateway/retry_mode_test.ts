/**
 * @module
 * A write is retried only under its idempotency key, whatever its own
 * `retry` field claims. The manifest loader already refuses `retry:
 * "idempotent-key"` or `"backoff"` on a write without a key; these checks
 * hold the Gateway's own rule (`retryModeOf`) to it too, so a declaration
 * that reached it some other way is still never resent blindly.
 */
import assert from "node:assert/strict";
import { nextRetryDelay, retryModeOf } from "../../core/gateway/mod.ts";

const failure = { _tag: "PluginCrashedError" };

Deno.test("a write without an idempotency key is never retried, even if its retry field asks for it", () => {
  for (const retry of ["idempotent-key", "backoff", "none"] as const) {
    const decl = { class: "write" as const, idempotency: "none" as const, retry };
    assert.equal(retryModeOf(decl), "fail", `retry: ${retry}`);
    assert.equal(nextRetryDelay(decl, failure, 1, 0, 0.5), undefined, `retry: ${retry}`);
  }
  // The same write with a key is retried (the check above is about the key, not about writes).
  const keyed = { class: "write" as const, idempotency: "key" as const, retry: "idempotent-key" as const };
  assert.equal(retryModeOf(keyed), "retry");
  assert.notEqual(nextRetryDelay(keyed, failure, 1, 0, 0.5), undefined);
});

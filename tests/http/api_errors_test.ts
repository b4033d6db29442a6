/**
 * @module
 * The HTTP API against bad requests, over a real in-process Keel with the
 * shipped smtp connector and onboarding agent installed: every bad request
 * gets a JSON error with the status its tag maps to, and changes nothing
 * (no run is started, no approval is decided, no audit event is written).
 */
import assert from "node:assert/strict";
import { installOnboarding, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { startSmtpPeer } from "../_support/smtp_peer.ts";

interface Reply {
  readonly status: number;
  readonly contentType: string | null;
  readonly body: any;
}

/** A request with full control over the auth header and the raw body. */
const request = async (
  k: TestKeel,
  method: string,
  path: string,
  options: { auth?: string | null; body?: string } = {},
): Promise<Reply> => {
  const headers: Record<string, string> = { "content-type": "application/json" };
  const auth = options.auth === undefined ? `Bearer ${TEST_TOKEN}` : options.auth;
  if (auth !== null) headers.authorization = auth;
  const res = await fetch(`${k.url}${path}`, { method, headers, body: options.body });
  return { status: res.status, contentType: res.headers.get("content-type"), body: await res.json() };
};

/** The state a refused request must leave as it was. */
const state = async (k: TestKeel) => {
  const audit = await k.api("GET", "/api/audit");
  const approvals = await k.api("GET", "/api/approvals");
  const plugins = await k.api("GET", "/api/plugins");
  assert.equal(audit.status, 200);
  assert.equal(approvals.status, 200);
  return {
    events: audit.body.events.map((e: { seq: number; type: string }) => `${e.seq} ${e.type}`),
    approvals: approvals.body.approvals,
    plugins: plugins.body.plugins.map((p: { name: string; state: string }) => `${p.name} ${p.state}`),
  };
};

/** Run `f` and check the audit log, approvals and plugins are exactly as before. */
const changesNothing = async <T>(k: TestKeel, f: () => Promise<T>): Promise<T> => {
  const before = await state(k);
  const result = await f();
  assert.deepEqual(await state(k), before, "the failed request changed nothing");
  return result;
};

/** Assert a JSON error reply with this status and tag; returns the message. */
const isError = (reply: Reply, status: number, tag: string): string => {
  assert.equal(reply.status, status, JSON.stringify(reply.body));
  assert.match(reply.contentType ?? "", /^application\/json/);
  assert.deepEqual(Object.keys(reply.body), ["error"]);
  assert.equal(reply.body.error.tag, tag, JSON.stringify(reply.body));
  assert.equal(typeof reply.body.error.message, "string");
  assert.doesNotMatch(reply.body.error.message, /\n\s+at /, "no stack trace");
  return reply.body.error.message;
};

const runsStarted = async (k: TestKeel) =>
  (await k.api("GET", "/api/audit")).body.events.filter((e: { type: string }) => e.type === "run.started").length;

const ADA = { name: "Ada Lovelace", email: "ada@example.test" };

Deno.test("the HTTP API answers bad requests with a clear JSON error and changes nothing", async (t) => {
  const peer = await startSmtpPeer();
  const k = await startTestKeel();
  try {
    await installOnboarding(k, peer);
    const routes = k.keel.app.routes.filter((r) => r.method !== "ALL");
    const apiRoutes = routes.filter((r) => r.path.startsWith("/api/"));
    assert.ok(apiRoutes.length >= 9, `found the API routes: ${apiRoutes.map((r) => r.path)}`);
    const concrete = (path: string) => path.replace(":name", "onboard_client").replace(":id", "nothing_here");

    await t.step("starting an unknown workflow is a 404 NotFoundError and starts no run", async () => {
      await changesNothing(k, async () => {
        const reply = await request(k, "POST", "/api/workflows/offboard_client/runs", {
          body: JSON.stringify({ input: ADA }),
        });
        assert.equal(
          isError(reply, 404, "NotFoundError"),
          'Unknown workflow "offboard_client": no installed agent offers it',
        );
      });
      assert.equal(await runsStarted(k), 0);
    });

    await t.step(
      "input failing the workflow's schema is a 400 InvalidInputError naming the field and starts no run",
      async () => {
        const cases: Array<[unknown, string]> = [
          [{ name: "Ada" }, "email"],
          [{ name: "Ada", email: 42 }, "email"],
          [{ name: "Ada", email: "not an address" }, "email"],
          [{ name: "", email: "ada@example.test" }, "name"],
          [{ ...ADA, phone: "+44 20 7946 0000" }, "phone"],
          [undefined, "name"],
        ];
        for (const [input, field] of cases) {
          await changesNothing(k, async () => {
            const reply = await request(k, "POST", "/api/workflows/onboard_client/runs", {
              body: JSON.stringify(input === undefined ? {} : { input }),
            });
            const message = isError(reply, 400, "InvalidInputError");
            assert.ok(message.startsWith('Input for workflow "onboard_client" is invalid: '), message);
            assert.ok(message.includes(`"${field}"`), `names "${field}": ${message}`);
            assert.ok(Array.isArray(reply.body.error.details?.errors), "details list the problems");
          });
        }
        assert.equal(await runsStarted(k), 0);
      },
    );

    await t.step("`?wait=abc` (or out of range) is a 400 InvalidInputError and starts no run", async () => {
      for (const wait of ["abc", "-1", "301", "Infinity", "1e9", "NaN", "", "%20", "0x10", "1e1"]) {
        await changesNothing(k, async () => {
          const start = await request(k, "POST", `/api/workflows/onboard_client/runs?wait=${wait}`, {
            body: JSON.stringify({ input: ADA }),
          });
          assert.equal(
            isError(start, 400, "InvalidInputError"),
            `Query "wait" must be seconds between 0 and 300: got "${decodeURIComponent(wait)}"`,
          );
          const get = await request(k, "GET", `/api/runs/run_unknown?wait=${wait}`);
          isError(get, 400, "InvalidInputError");
        });
      }
      assert.equal(await runsStarted(k), 0);
    });

    await t.step(
      "a start with a field it does not take (a delay meant for the query) is a 400 and starts no run",
      async () => {
        for (const extra of [{ delay: 5 }, { inputs: ADA }, { runId: "mine" }]) {
          await changesNothing(k, async () => {
            const start = await request(k, "POST", "/api/workflows/onboard_client/runs", {
              body: JSON.stringify({ input: ADA, ...extra }),
            });
            assert.match(
              isError(start, 400, "InvalidInputError"),
              new RegExp(`^Unknown field "${Object.keys(extra)[0]}": a run's start takes input, startAt, priority`),
            );
          });
        }
        assert.equal(await runsStarted(k), 0);
      },
    );

    await t.step("an unknown run is a 404 NotFoundError", async () => {
      await changesNothing(k, async () => {
        const reply = await request(k, "GET", "/api/runs/run_unknown");
        assert.equal(isError(reply, 404, "NotFoundError"), 'No run with id "run_unknown"');
      });
    });

    await t.step("approving or denying an unknown approval id is a 404 NotFoundError", async () => {
      for (const verb of ["approve", "deny"]) {
        await changesNothing(k, async () => {
          const reply = await request(k, "POST", `/api/approvals/apr_unknown/${verb}`, { body: "{}" });
          assert.equal(isError(reply, 404, "NotFoundError"), 'No approval with id "apr_unknown"');
        });
      }
    });

    await t.step("bad query values on the list routes are a 400 InvalidInputError", async () => {
      await changesNothing(k, async () => {
        assert.match(
          isError(await request(k, "GET", "/api/approvals?status=bogus"), 400, "InvalidInputError"),
          /Query "status" must be one of pending, approved, denied, used, expired, invalidated: got "bogus"/,
        );
        for (const limit of ["0", "abc", "1.5", "10001"]) {
          isError(await request(k, "GET", `/api/audit?limit=${limit}`), 400, "InvalidInputError");
        }
      });
    });

    await t.step("a malformed JSON body is a 400 InvalidInputError on every POST route", async () => {
      const posts = apiRoutes.filter((r) => r.method === "POST");
      assert.ok(posts.length >= 4, posts.map((r) => r.path).join(", "));
      for (const route of posts) {
        for (const body of ["{not json", '{"input": ', "[]", "42", '"text"']) {
          await changesNothing(k, async () => {
            const reply = await request(k, "POST", concrete(route.path), { body });
            assert.equal(
              isError(reply, 400, "InvalidInputError"),
              "Request body must be a JSON object",
              `${route.path} ${body}`,
            );
          });
        }
      }
      assert.equal(await runsStarted(k), 0);
    });

    await t.step(
      "a body over 4 MiB is a 413 and one nested over 128 levels a 400, on every POST and PUT route",
      async () => {
        const routes = apiRoutes.filter((r) => r.method === "POST" || r.method === "PUT");
        const big = `{"input":"${"x".repeat(4 * 1024 * 1024)}"}`;
        const deep = `{"args":${"[".repeat(20_000)}${"]".repeat(20_000)}}`;
        for (const route of routes) {
          await changesNothing(k, async () => {
            const path = concrete(route.path);
            const declared = await request(k, route.method, path, { body: big });
            assert.match(isError(declared, 413, "PayloadTooLargeError"), /Request body is over 4194304 bytes/, path);
            // Streamed with no length: read only up to the cap.
            let sent = 0;
            const stream = new ReadableStream<Uint8Array>({
              pull(controller) {
                if (sent >= 64 * 1024 * 1024) return controller.close();
                sent += 256 * 1024;
                controller.enqueue(new Uint8Array(256 * 1024).fill(0x20));
              },
            });
            const res = await fetch(`${k.url}${path}`, {
              method: route.method,
              headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
              body: stream,
              duplex: "half",
            } as RequestInit);
            const streamed = {
              status: res.status,
              contentType: res.headers.get("content-type"),
              body: await res.json(),
            };
            isError(streamed, 413, "PayloadTooLargeError");
            assert.ok(sent < 64 * 1024 * 1024, `${path}: the whole streamed body was read (${sent} bytes)`);
            const nested = await request(k, route.method, path, { body: deep });
            assert.equal(isError(nested, 400, "InvalidInputError"), "Request body nests deeper than 128 levels", path);
          });
        }
        assert.equal(await runsStarted(k), 0);
      },
    );

    await t.step("a missing or wrong bearer token is a 401 UnauthorizedError on every /api route", async () => {
      const auths: Array<string | null> = [
        null,
        "",
        "Bearer",
        "Bearer wrong-token",
        `Bearer ${TEST_TOKEN}x`,
        `Bearer ${TEST_TOKEN.slice(0, -1)}`,
        `Basic ${TEST_TOKEN}`,
        TEST_TOKEN,
      ];
      for (const route of [...apiRoutes, { method: "GET", path: "/api/no-such-route" }]) {
        for (const auth of auths) {
          await changesNothing(k, async () => {
            const reply = await request(k, route.method, concrete(route.path), {
              auth,
              body: route.method === "POST" ? JSON.stringify({ input: ADA, path: "/tmp", grant: {} }) : undefined,
            });
            assert.match(isError(reply, 401, "UnauthorizedError"), /Missing or wrong bearer token/);
          });
        }
        // A token in the query string does not count either.
        const reply = await request(k, route.method, `${concrete(route.path)}?token=${TEST_TOKEN}`, { auth: null });
        isError(reply, 401, "UnauthorizedError");
      }
      assert.equal(await runsStarted(k), 0);
    });

    await t.step("`/healthz` and `/openapi.json` answer without a token", async () => {
      for (const auth of [null, "Bearer wrong-token"]) {
        const health = await request(k, "GET", "/healthz", { auth });
        assert.equal(health.status, 200);
        assert.equal(health.body.ok, true);
        assert.equal(typeof health.body.version, "string");
        const doc = await request(k, "GET", "/openapi.json", { auth });
        assert.equal(doc.status, 200);
        assert.equal(doc.body.openapi, "3.1.0");
      }
    });

    await t.step(
      "an id no record can have (3,000 characters, odd characters) is a 404, or a 400 in a query",
      async () => {
        for (const id of ["r".repeat(3000), "run%2F..%2Fx", "run%20x"]) {
          await changesNothing(k, async () => {
            for (
              const [method, path] of [
                ["GET", `/api/runs/${id}`],
                ["POST", `/api/runs/${id}/cancel`],
                ["POST", `/api/runs/${id}/undo`],
                ["POST", `/api/runs/${id}/replay`],
                ["POST", `/api/approvals/${id}/approve`],
                ["POST", `/api/approvals/${id}/deny`],
                ["DELETE", `/api/hooks/${id}`],
              ]
            ) {
              const reply = await request(k, method, path, method === "POST" ? { body: "{}" } : {});
              assert.match(
                isError(reply, 404, "NotFoundError"),
                /^No (run|approval|webhook) with id "/,
                `${method} ${path}`,
              );
            }
            isError(await request(k, "GET", `/api/audit?runId=${id}`), 400, "InvalidInputError");
          });
        }
      },
    );

    await t.step("an input over 48 KiB is a 413 PayloadTooLargeError and starts no run", async () => {
      await changesNothing(k, async () => {
        const reply = await request(k, "POST", "/api/workflows/onboard_client/runs", {
          body: JSON.stringify({ input: { ...ADA, name: "A".repeat(49 * 1024) } }),
        });
        assert.match(isError(reply, 413, "PayloadTooLargeError"), /is \d+ bytes of JSON; a run takes at most 49152/);
      });
      assert.equal(await runsStarted(k), 0);
    });

    await t.step("an unknown route is a 404 NotFoundError in JSON", async () => {
      await changesNothing(k, async () => {
        assert.equal(
          isError(await request(k, "GET", "/nope", { auth: null }), 404, "NotFoundError"),
          "No route for GET /nope",
        );
        assert.equal(isError(await request(k, "GET", "/api/nope"), 404, "NotFoundError"), "No route for GET /api/nope");
        isError(await request(k, "DELETE", "/api/plugins"), 404, "NotFoundError");
        isError(await request(k, "PUT", "/api/approvals/apr_x/approve", { body: "{}" }), 404, "NotFoundError");
        isError(await request(k, "GET", "/api/workflows/onboard_client/runs"), 404, "NotFoundError");
      });
    });

    let approvalId = "";
    let runId = "";
    await t.step(
      "a run that needs approval pauses with a pending approval recording the rule and policy hash",
      async () => {
        const started = await k.api("POST", "/api/workflows/onboard_client/runs?wait=60", { input: ADA });
        assert.equal(started.status, 202, JSON.stringify(started.body));
        assert.equal(started.body.status, "waiting_approval", JSON.stringify(started.body));
        runId = started.body.runId;
        approvalId = started.body.waitingFor.approvalId;
        const { body } = await k.api("GET", "/api/approvals?status=pending");
        assert.equal(body.approvals.length, 1);
        const approval = body.approvals[0];
        assert.equal(approval.id, approvalId);
        assert.equal(approval.runId, runId);
        assert.equal(approval.effect, "email.send");
        assert.equal(approval.rule, "gate-irreversible");
        assert.match(approval.policyHash, /^[0-9a-f]{64}$/);
        assert.equal(await runsStarted(k), 1);
      },
    );

    await t.step("approving with bad fields is a 400 and leaves the approval pending and the run waiting", async () => {
      const bad = [{ note: 5 }, { note: "n".repeat(2001) }, { by: "x".repeat(65) }, { by: "<script>" }, {
        resolution: "maybe",
      }];
      for (const body of bad) {
        await changesNothing(k, async () => {
          const reply = await request(k, "POST", `/api/approvals/${approvalId}/approve`, {
            body: JSON.stringify(body),
          });
          assert.match(isError(reply, 400, "InvalidInputError"), /^Field "(note|by|resolution)" must be/);
        });
      }
      // A resolution belongs to an unknown outcome only: on this policy gate (or on a deny) it is a mix-up.
      for (const verb of ["approve", "deny"]) {
        await changesNothing(k, async () => {
          const reply = await request(k, "POST", `/api/approvals/${approvalId}/${verb}`, {
            body: JSON.stringify({ resolution: "retry" }),
          });
          assert.match(
            isError(reply, 400, "InvalidInputError"),
            /^A resolution is given only when approving an unknown outcome: approval "apr_\w+" is an effect approval$/,
          );
        });
      }
      const run = await k.api("GET", `/api/runs/${runId}`);
      assert.equal(run.body.status, "waiting_approval");
      assert.equal(peer.received.length, 0, "nothing was sent");
    });

    await t.step("approving resumes the run, and the email is sent once", async () => {
      const reply = await request(k, "POST", `/api/approvals/${approvalId}/approve`, {
        body: JSON.stringify({ note: "looks right", by: "ops" }),
      });
      assert.equal(reply.status, 200, JSON.stringify(reply.body));
      assert.equal(reply.body.approval.status, "approved");
      assert.equal(reply.body.approval.decidedBy, "operator:ops");
      const run = await k.api("GET", `/api/runs/${runId}?wait=60`);
      assert.equal(run.body.status, "succeeded", JSON.stringify(run.body));
      assert.equal(peer.received.length, 1);
    });

    await t.step(
      "approving twice, or denying after approving, is a 409 ConflictError and changes nothing",
      async () => {
        for (const verb of ["approve", "deny", "approve"]) {
          await changesNothing(k, async () => {
            const reply = await request(k, "POST", `/api/approvals/${approvalId}/${verb}`, { body: "{}" });
            assert.match(isError(reply, 409, "ConflictError"), new RegExp(`^Approval "${approvalId}" is already `));
          });
        }
        assert.equal(peer.received.length, 1, "the email was not sent again");
        assert.equal(await runsStarted(k), 1);
      },
    );
  } finally {
    await k.close();
    await peer.close();
  }
});

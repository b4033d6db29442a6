/**
 * @module
 * `POST /api/plugins` with bad input: every malformed manifest, bad grant or
 * bad config is a 400 with `{error: {tag, message, details}}`, and installs
 * nothing: `GET /api/plugins` is unchanged and no `plugin.installed` audit
 * event is written (at most a `plugin.refused` one). A good install still
 * works afterwards.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const BAD = `${ROOT}/tests/fixtures/bad`;
const CASES: ReadonlyArray<{ fixture: string; field?: string; says: ReadonlyArray<string> }> =
  JSON.parse(Deno.readTextFileSync(`${BAD}/cases.json`)).cases;
const SMTP = `${ROOT}/plugins/smtp`;
const smtpConfig = { host: "127.0.0.1", port: 2525, from: "Keel <keel@example.test>" };

interface AuditEvent {
  readonly seq: number;
  readonly type: string;
  readonly data: { error?: { tag: string } };
}

/** The installed plugins and the audit log. */
const snapshot = async (k: TestKeel) => {
  const plugins = await k.api("GET", "/api/plugins");
  const audit = await k.api("GET", "/api/audit");
  assert.equal(plugins.status, 200);
  assert.equal(audit.status, 200);
  return { plugins: plugins.body.plugins, events: audit.body.events as AuditEvent[] };
};

/**
 * A refused install leaves the plugin list exactly as it was, and the audit
 * log gains at most the record of the refusal (`plugin.refused`, with the
 * error's tag): never `plugin.installed` or anything else.
 */
const assertNothingInstalled = (
  before: Awaited<ReturnType<typeof snapshot>>,
  after: Awaited<ReturnType<typeof snapshot>>,
  tag?: string,
) => {
  assert.deepEqual(after.plugins, before.plugins, "the plugin list is unchanged");
  assert.deepEqual(after.events.slice(0, before.events.length), before.events, "earlier audit events are untouched");
  const added = after.events.slice(before.events.length);
  assert.ok(added.length <= 1, `at most the refusal is audited: ${JSON.stringify(added)}`);
  for (const e of added) {
    assert.equal(e.type, "plugin.refused", JSON.stringify(e));
    if (tag) assert.equal(e.data.error?.tag, tag, JSON.stringify(e));
  }
};

/** POST /api/plugins, expect `status` with error `tag`, and that nothing changed. */
const refused = async (k: TestKeel, body: unknown, status: number, tag: string) => {
  const before = await snapshot(k);
  const res = await k.api("POST", "/api/plugins", body);
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.deepEqual(Object.keys(res.body), ["error"]);
  assert.equal(res.body.error.tag, tag, JSON.stringify(res.body));
  assert.equal(typeof res.body.error.message, "string");
  assert.doesNotMatch(res.body.error.message, /\n\s+at /, "no stack trace");
  assertNothingInstalled(before, await snapshot(k), tag);
  return res.body.error as { tag: string; message: string; details?: Record<string, unknown> };
};

const installedEvents = async (k: TestKeel) =>
  (await k.api("GET", "/api/audit")).body.events.filter((e: { type: string }) => e.type === "plugin.installed");

Deno.test("`POST /api/plugins` refuses bad manifests, grants and config with a 400 and installs nothing", async (t) => {
  const k = await startTestKeel();
  try {
    for (const { fixture, field, says } of CASES) {
      await t.step(
        `it rejects tests/fixtures/bad/${fixture} with a ManifestError naming the file${
          field ? ` and field "${field}"` : ""
        } and installs nothing`,
        async () => {
          const error = await refused(k, { path: `${BAD}/${fixture}`, grant: {} }, 400, "ManifestError");
          const file = `${BAD}/${fixture}/plugin.json`;
          assert.ok(error.message.includes(`"${file}"`), error.message);
          if (field) assert.ok(error.message.includes(`field "${field}"`), error.message);
          for (const words of says) assert.ok(error.message.includes(words), `says ${words}: ${error.message}`);
          assert.equal(error.details?.file, file);
        },
      );
    }

    await t.step("it rejects a folder without plugin.json with a ManifestError and installs nothing", async () => {
      const error = await refused(k, { path: `${BAD}/no-manifest`, grant: {} }, 400, "ManifestError");
      assert.match(error.message, /no plugin\.json there/);
    });

    await t.step("it rejects a path that is not a folder with an InvalidInputError", async () => {
      const error = await refused(k, { path: `${BAD}/does-not-exist`, grant: {} }, 400, "InvalidInputError");
      assert.equal(error.message, `Cannot install plugin: no folder or .tar.gz archive at "${BAD}/does-not-exist"`);
    });

    await t.step("it rejects a request without a path or without a grant with an InvalidInputError", async () => {
      assert.match((await refused(k, { grant: {} }, 400, "InvalidInputError")).message, /Field "path"/);
      assert.match((await refused(k, { path: "", grant: {} }, 400, "InvalidInputError")).message, /Field "path"/);
      const noGrant = await refused(k, { path: SMTP, config: smtpConfig }, 400, "InvalidInputError");
      assert.match(noGrant.message, /Field "grant" is required/);
    });

    await t.step("it rejects a body that is not a JSON object with an InvalidInputError", async () => {
      for (const raw of ["{not json", "[1,2]", '"smtp"', "null"]) {
        const before = await snapshot(k);
        const res = await fetch(`${k.url}/api/plugins`, {
          method: "POST",
          headers: { authorization: "Bearer test-token", "content-type": "application/json" },
          body: raw,
        });
        assert.equal(res.status, 400, raw);
        assert.deepEqual(await res.json(), {
          error: { tag: "InvalidInputError", message: "Request body must be a JSON object" },
        });
        assertNothingInstalled(before, await snapshot(k));
      }
    });

    await t.step("it rejects a grant beyond what the plugin requests with a GrantError", async () => {
      const error = await refused(
        k,
        { path: SMTP, config: smtpConfig, grant: { net: ["127.0.0.1:2525", "smtp.example.com:25"] } },
        400,
        "GrantError",
      );
      assert.equal(
        error.message,
        'Grant for plugin "smtp" gives net "smtp.example.com:25", which the plugin did not request',
      );
      assert.deepEqual(error.details, { requested: ["127.0.0.1:2525"] });
    });

    await t.step('it rejects a grant naming "run" with a GrantError', async () => {
      const error = await refused(
        k,
        { path: SMTP, config: smtpConfig, grant: { net: ["127.0.0.1:2525"], run: ["/bin/sh"] } },
        400,
        "GrantError",
      );
      assert.match(error.message, /names "run": Keel never grants it to a plugin/);
    });

    await t.step("it rejects a grant that is not an object with an InvalidInputError", async () => {
      await refused(k, { path: SMTP, config: smtpConfig, grant: ["127.0.0.1:2525"] }, 400, "InvalidInputError");
    });

    await t.step(
      "it rejects config failing the plugin's config schema with an InvalidInputError naming the field",
      async () => {
        const error = await refused(
          k,
          { path: SMTP, config: { ...smtpConfig, port: "twenty-five" }, grant: { net: ["127.0.0.1:2525"] } },
          400,
          "InvalidInputError",
        );
        assert.match(error.message, /^Config for plugin "smtp" is invalid: field "port"/);
        const missing = await refused(k, { path: SMTP, grant: { net: [] } }, 400, "InvalidInputError");
        assert.match(missing.message, /Config for plugin "smtp" is invalid: field "(host|port|from)" is required/);
      },
    );

    await t.step(
      "it installs the smtp connector once the request is right, with the net entry filled from config",
      async () => {
        const res = await k.api("POST", "/api/plugins", {
          path: SMTP,
          config: smtpConfig,
          grant: { net: ["127.0.0.1:2525"] },
        });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        assert.equal(res.body.plugin.name, "smtp");
        assert.deepEqual(res.body.plugin.grant, { net: ["127.0.0.1:2525"], env: [], read: [], write: [] });
        assert.deepEqual(res.body.plugin.requested.net, ["127.0.0.1:2525"]);
        assert.equal(res.body.plugin.config, undefined, "config (which may hold secrets) is not echoed");
        assert.equal((await installedEvents(k)).length, 1);
      },
    );

    await t.step("it still refuses bad manifests afterwards and leaves the installed plugin as it was", async () => {
      const before = await snapshot(k);
      assert.deepEqual(before.plugins.map((p: { name: string }) => p.name), ["smtp"]);
      await refused(k, { path: `${BAD}/bad-version`, grant: {} }, 400, "ManifestError");
      await refused(k, { path: `${BAD}/permission-import`, grant: {} }, 400, "ManifestError");
      await refused(k, { path: SMTP, config: smtpConfig, grant: { net: ["127.0.0.1:25"] } }, 400, "GrantError");
      const after = await snapshot(k);
      assert.deepEqual(after.plugins, before.plugins);
      assert.deepEqual(after.events.slice(0, before.events.length), before.events);
      assert.ok(after.events.slice(before.events.length).every((e) => e.type === "plugin.refused"));
      assert.equal((await installedEvents(k)).length, 1);
    });
  } finally {
    await k.close();
  }
});

/**
 * @module
 * Unit tests for grants: the operator's config is checked against the
 * manifest's config schema, `{field}` templates in requested permissions are
 * filled from it, and a grant may give at most what was requested and never
 * a power Keel withholds from plugins.
 */
import assert from "node:assert/strict";
import { Cause, Effect } from "effect";
import {
  checkGrant,
  describePermissions,
  type Manifest,
  type Permissions,
  readManifest,
  requestedPermissions,
  resolveRequested,
  validateConfig,
  validateManifest,
  workerPermissions,
} from "../../core/manifest/mod.ts";
import { ROOT } from "../_support/keel.ts";

const failureOf = async <A, E>(effect: Effect.Effect<A, E>): Promise<E> => {
  const exit = await Effect.runPromiseExit(effect);
  if (exit._tag === "Success") assert.fail(`expected a failure, got ${JSON.stringify(exit.value)}`);
  return Cause.squash(exit.cause) as E;
};

const smtp = await Effect.runPromise(readManifest(`${ROOT}/plugins/smtp`));
const smtpConfig = { host: "127.0.0.1", port: 2525, from: "Keel <keel@example.test>" };

/** A connector manifest with the given permissions (and a permissive config schema). */
const withPermissions = (permissions: Record<string, string[]>): Promise<Manifest> =>
  Effect.runPromise(validateManifest({
    name: "files",
    version: "1.0.0",
    kind: "connector",
    description: "test connector",
    permissions,
  }, "files/plugin.json"));

Deno.test("the net template {host}:{port} is filled from the operator's config", async () => {
  const config = await Effect.runPromise(validateConfig(smtp, smtpConfig));
  const requested = await Effect.runPromise(resolveRequested(smtp, config));
  assert.deepEqual(requested, { net: ["127.0.0.1:2525"], env: [], read: [], write: [] });
});

Deno.test("a permission template whose config field is missing is an InvalidInputError naming the permission", async () => {
  const m = await withPermissions({ net: ["{host}:{port}"] });
  const error = await failureOf(resolveRequested(m, { host: "127.0.0.1" }));
  assert.equal(error._tag, "InvalidInputError");
  assert.match(error.message, /needs config to resolve permission "127\.0\.0\.1:\{port\}"/);
});

Deno.test("requested net and path permissions that could never be granted are a GrantError", async () => {
  const cases: Array<[Record<string, string[]>, RegExp]> = [
    [{ net: ["0.0.0.0:25"] }, /wildcard hosts are never granted/],
    [{ net: ["*.example.com:25"] }, /a net permission must be a literal host:port|wildcard/],
    [{ net: ["smtp.example.com"] }, /literal host:port/],
    [{ net: ["smtp.example.com:70000"] }, /port out of range/],
    [{ read: ["/etc/passwd"] }, /relative to the plugin's data dir/],
    [{ write: ["notes/../../keel.kv"] }, /may not leave the plugin's data dir/],
  ];
  for (const [permissions, why] of cases) {
    const m = await withPermissions(permissions);
    const error = await failureOf(resolveRequested(m, {}));
    assert.equal(error._tag, "GrantError", JSON.stringify(permissions));
    assert.match(error.message, why);
  }
});

Deno.test("config failing the manifest's config schema is an InvalidInputError naming the field", async () => {
  const cases: Array<[unknown, string]> = [
    [{ host: "127.0.0.1", port: "twenty-five", from: "a@b.c" }, "port"],
    [{ host: "127.0.0.1", port: 2525 }, "from"],
    [{ ...smtpConfig, port: 0 }, "port"],
    [{ ...smtpConfig, tls: true }, "tls"],
  ];
  for (const [config, field] of cases) {
    const error = await failureOf(validateConfig(smtp, config));
    assert.equal(error._tag, "InvalidInputError");
    assert.ok(error.message.startsWith('Config for plugin "smtp" is invalid: '), error.message);
    assert.ok(error.message.includes(field), `names ${field}: ${error.message}`);
  }
});

Deno.test("config naming a field the config schema does not take says it is not allowed", async () => {
  const error = await failureOf(validateConfig(smtp, { ...smtpConfig, tls: true }));
  assert.equal(error.message, 'Config for plugin "smtp" is invalid: field "tls" is not allowed');
});

Deno.test("requestedPermissions() keeping templates lists {field} entries as written, for a preview without config", async () => {
  const m = await withPermissions({ net: ["{host}:{port}", "*"], read: ["{dir}/in"] });
  const requested = await Effect.runPromise(requestedPermissions(m, {}, { keepTemplates: true }));
  assert.deepEqual(requested, {
    net: ["{host}:{port}"],
    env: [],
    read: ["{dir}/in"],
    write: [],
    needsOverride: ["net:*"],
  });
  const error = await failureOf(requestedPermissions(m, {}));
  assert.match(error.message, /needs config to resolve permission "\{host\}:\{port\}"/);
});

Deno.test("config that is not a JSON object is an InvalidInputError", async () => {
  for (const config of [[], "host=x", 42]) {
    const error = await failureOf(validateConfig(smtp, config));
    assert.equal(error._tag, "InvalidInputError");
    assert.equal(error.message, 'Config for plugin "smtp" must be a JSON object');
  }
});

const requested: Permissions = { net: ["127.0.0.1:2525"], env: ["SMTP_PASSWORD"], read: ["inbox"], write: [] };

Deno.test("a grant may give what was requested, or less, and duplicates collapse", async () => {
  assert.deepEqual(await Effect.runPromise(checkGrant(smtp, requested, {})), {
    net: [],
    env: [],
    read: [],
    write: [],
  });
  assert.deepEqual(
    await Effect.runPromise(
      checkGrant(smtp, requested, { net: ["127.0.0.1:2525", "127.0.0.1:2525"], read: ["inbox"] }),
    ),
    { net: ["127.0.0.1:2525"], env: [], read: ["inbox"], write: [] },
  );
});

Deno.test("a grant beyond what the plugin requested is a GrantError naming the extra entry", async () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ net: ["127.0.0.1:2525", "127.0.0.1:25"] }, 'net "127.0.0.1:25"'],
    [{ env: ["HOME"] }, 'env "HOME"'],
    [{ write: ["inbox"] }, 'write "inbox"'],
  ];
  for (const [grant, named] of cases) {
    const error = await failureOf(checkGrant(smtp, requested, grant));
    assert.equal(error._tag, "GrantError");
    assert.ok(error.message.includes(`gives ${named}, which the plugin did not request`), error.message);
  }
});

Deno.test('a grant naming a power Keel never grants ("run", "ffi", "sys", "all") is a GrantError', async () => {
  for (const key of ["run", "ffi", "sys", "all"]) {
    const error = await failureOf(checkGrant(smtp, requested, { net: [], [key]: true }));
    assert.equal(error._tag, "GrantError");
    assert.equal(error.message, `Grant for plugin "smtp" names "${key}": Keel never grants it to a plugin`);
  }
});

Deno.test("a grant that is not an object of string lists is an InvalidInputError", async () => {
  for (const grant of [null, [], "all", 1]) {
    const error = await failureOf(checkGrant(smtp, requested, grant));
    assert.equal(error._tag, "InvalidInputError");
    assert.match(error.message, /must be an object like/);
  }
  for (const grant of [{ net: "127.0.0.1:2525" }, { net: [2525] }]) {
    const error = await failureOf(checkGrant(smtp, requested, grant));
    assert.equal(error._tag, "InvalidInputError");
    assert.equal(error.message, 'Grant field "net" must be a list of strings');
  }
});

Deno.test("worker permissions set every Deno permission key and deny run, ffi, sys and import", () => {
  const none = workerPermissions({ net: [], env: [], read: [], write: [] }, "/data/plugins/x");
  assert.deepEqual(none, {
    env: false,
    net: false,
    read: false,
    write: false,
    run: false,
    ffi: false,
    sys: false,
    import: false,
  });
  const some = workerPermissions(
    { net: ["127.0.0.1:2525"], env: ["TOKEN"], read: ["inbox", "."], write: ["out/"] },
    "/data/plugins/x",
  );
  assert.deepEqual(some.net, ["127.0.0.1:2525"]);
  assert.deepEqual(some.env, ["TOKEN"]);
  assert.deepEqual(some.read, ["/data/plugins/x/inbox", "/data/plugins/x"]);
  assert.deepEqual(some.write, ["/data/plugins/x/out"]);
  assert.equal(some.run, false);
  assert.equal(some.ffi, false);
});

Deno.test("permissions are described in plain words for the install prompt", () => {
  assert.deepEqual(describePermissions(requested), [
    "connect to 127.0.0.1:2525",
    "read environment variable SMTP_PASSWORD",
    "read <plugin data>/inbox",
  ]);
  assert.deepEqual(describePermissions({ net: [], env: [], read: [], write: [] }), [
    "nothing: no network, files or environment",
  ]);
});

/**
 * @module
 * Unit tests for `plugin.json` parsing: the shipped manifests parse, and every
 * malformed manifest under `tests/fixtures/bad/` is refused with a
 * `ManifestError` whose message names the file and the field at fault.
 */
import assert from "node:assert/strict";
import { Cause, Effect } from "effect";
import {
  canonicalJson,
  type Manifest,
  manifestHash,
  patternRisk,
  readManifest,
  validateManifest,
} from "../../core/manifest/mod.ts";
import { ROOT } from "../_support/keel.ts";

const BAD = `${ROOT}/tests/fixtures/bad`;

/** Run an effect that must fail and return its error. */
const failureOf = async <A, E>(effect: Effect.Effect<A, E>): Promise<E> => {
  const exit = await Effect.runPromiseExit(effect);
  if (exit._tag === "Success") assert.fail(`expected a failure, got ${JSON.stringify(exit.value)}`);
  return Cause.squash(exit.cause) as E;
};

const smtpJson = () => JSON.parse(Deno.readTextFileSync(`${ROOT}/plugins/smtp/plugin.json`));
const onboardingJson = () => JSON.parse(Deno.readTextFileSync(`${ROOT}/agents/onboarding/plugin.json`));

Deno.test("the shipped smtp connector manifest parses with its effect, config schema and templated net permission", async () => {
  const m: Manifest = await Effect.runPromise(readManifest(`${ROOT}/plugins/smtp`));
  assert.equal(m.name, "smtp");
  assert.equal(m.kind, "connector");
  assert.match(m.version, /^\d+\.\d+\.\d+$/);
  assert.deepEqual(m.permissions, { net: ["{host}:{port}"], env: [], read: [], write: [] });
  assert.deepEqual(m.effects.map((e) => [e.name, e.class, e.idempotency]), [["email.send", "irreversible", "none"]]);
  assert.deepEqual(m.uses, []);
  assert.deepEqual(m.workflows, []);
  assert.equal(m.config?.type, "object");
});

Deno.test("the shipped onboarding agent manifest parses with its workflow and the effects it uses", async () => {
  const m = await Effect.runPromise(readManifest(`${ROOT}/agents/onboarding`));
  assert.equal(m.name, "onboarding");
  assert.equal(m.kind, "agent");
  assert.deepEqual(m.permissions, { net: [], env: [], read: [], write: [] });
  assert.deepEqual(m.effects, []);
  assert.deepEqual(m.uses, ["email.send"]);
  assert.deepEqual(m.workflows.map((w) => w.name), ["onboard_client"]);
});

Deno.test("a manifest's hash is stable and does not depend on key order", async () => {
  const a = await Effect.runPromise(validateManifest(smtpJson(), "a/plugin.json"));
  const reordered = Object.fromEntries(Object.entries(smtpJson()).reverse());
  const b = await Effect.runPromise(validateManifest(reordered, "b/plugin.json"));
  const hashA = await Effect.runPromise(manifestHash(a));
  assert.match(hashA, /^[0-9a-f]{64}$/);
  assert.equal(await Effect.runPromise(manifestHash(b)), hashA);
  assert.equal(
    canonicalJson({ b: 1, a: { d: 2, c: [3, { f: 4, e: 5 }] } }),
    '{"a":{"c":[3,{"e":5,"f":4}],"d":2},"b":1}',
  );
  const bumped = await Effect.runPromise(validateManifest({ ...smtpJson(), version: "9.9.9" }, "c/plugin.json"));
  assert.notEqual(await Effect.runPromise(manifestHash(bumped)), hashA);
});

/** Each fixture folder under tests/fixtures/bad, the field its error must name, and other words it must contain. */
const BAD_MANIFESTS: ReadonlyArray<{ fixture: string; field?: string; says: ReadonlyArray<string> }> =
  JSON.parse(Deno.readTextFileSync(`${BAD}/cases.json`)).cases;

Deno.test("every folder under tests/fixtures/bad has a case saying what its error must name", () => {
  const folders = [...Deno.readDirSync(BAD)].filter((e) => e.isDirectory).map((e) => e.name).sort();
  assert.deepEqual([...BAD_MANIFESTS.map((c) => c.fixture), "no-manifest"].sort(), folders);
});

for (const { fixture, field, says } of BAD_MANIFESTS) {
  Deno.test(
    `readManifest refuses tests/fixtures/bad/${fixture} with a ManifestError naming the file${
      field ? ` and field "${field}"` : ""
    }`,
    async () => {
      const file = `${BAD}/${fixture}/plugin.json`;
      const error = await failureOf(readManifest(`${BAD}/${fixture}`));
      assert.equal(error._tag, "ManifestError");
      assert.ok(error.message.includes(`"${file}"`), `message names the file: ${error.message}`);
      if (field) assert.ok(error.message.includes(`field "${field}"`), `message names the field: ${error.message}`);
      for (const words of says) assert.ok(error.message.includes(words), `message says ${words}: ${error.message}`);
      assert.equal((error.details as { file?: string }).file, file);
      assert.ok(!/\n\s+at /.test(error.message), "no stack trace in the message");
    },
  );
}

Deno.test("readManifest on a folder without plugin.json says there is no plugin.json there", async () => {
  const error = await failureOf(readManifest(`${BAD}/no-manifest`));
  assert.equal(error._tag, "ManifestError");
  assert.equal(error.message, `Cannot install plugin from "${BAD}/no-manifest": no plugin.json there`);
});

/** Validate the shipped smtp manifest after `edit`, expecting a ManifestError mentioning `field`. */
const refuses = async (raw: unknown, field: string, words: string[] = []) => {
  const error = await failureOf(validateManifest(raw, "x/plugin.json"));
  assert.equal(error._tag, "ManifestError");
  assert.ok(error.message.startsWith('Invalid manifest "x/plugin.json": '), error.message);
  assert.ok(error.message.includes(`field "${field}"`), `names field ${field}: ${error.message}`);
  for (const w of words) assert.ok(error.message.includes(w), `says ${w}: ${error.message}`);
};

Deno.test("validateManifest refuses an agent that declares effects and a connector that offers workflows", async () => {
  await refuses({ ...onboardingJson(), effects: smtpJson().effects }, "effects", ["only for connectors"]);
  await refuses({ ...smtpJson(), workflows: onboardingJson().workflows }, "workflows", ["only for agents"]);
});

Deno.test("validateManifest refuses unknown top-level keys, bad names and bad effect names", async () => {
  await refuses({ ...smtpJson(), colour: "red" }, "colour");
  await refuses({ ...smtpJson(), name: "Smtp Server" }, "name");
  const m = smtpJson();
  m.effects[0].name = "send";
  await refuses(m, "effects.0.name");
  await refuses({ ...onboardingJson(), uses: ["email"] }, "uses.0");
});

Deno.test("validateManifest takes an agent's records by exact collection name, refuses wildcards, other spellings and connectors, and keeps an old manifest's hash", async () => {
  const m = await Effect.runPromise(
    validateManifest({ ...onboardingJson(), records: { read: ["contacts", "leads"] } }, "x/plugin.json"),
  );
  assert.deepEqual(m.records, { read: ["contacts", "leads"], write: [] });
  for (const name of ["*", "Contacts", "contacts/..", "../invoices", "le\u0430ds", "contacts ", "", "a".repeat(64)]) {
    await refuses({ ...onboardingJson(), records: { write: [name] } }, "records.write.0");
  }
  await refuses({ ...onboardingJson(), records: { read: ["a", "a"] } }, "records.read");
  await refuses({ ...onboardingJson(), records: { delete: ["a"] } }, "records.delete");
  await refuses({ ...smtpJson(), records: { read: ["contacts"] } }, "records", ["only for agents"]);
  // A manifest written before the field parses without it, so its hash (recorded with its grant) is unchanged.
  const old = await Effect.runPromise(validateManifest(onboardingJson(), "x/plugin.json"));
  assert.equal("records" in old, false);
});

Deno.test("validateManifest refuses unusable workflow input and config schemas", async () => {
  const agent = onboardingJson();
  agent.workflows[0].input = { type: "object", properties: { name: { type: "text" } } };
  await refuses(agent, "workflows.0.input", ["not a usable JSON Schema", '"text"']);
  await refuses({ ...smtpJson(), config: { $ref: "#/nowhere" } }, "config", ["not a usable JSON Schema"]);
});

Deno.test("validateManifest accepts the JSON Schema forms plugins really use", async () => {
  const m = smtpJson();
  m.effects[0].input = {
    type: "object",
    properties: {
      to: { anyOf: [{ type: "string", format: "email" }, { type: "array", items: { type: "string" } }] },
      tags: { type: "array", prefixItems: [{ type: "string" }], items: false },
      meta: { type: ["object", "null"], patternProperties: { "^x-": { type: "string" } } },
      id: { $ref: "#/$defs/id" },
    },
    $defs: { id: { type: "string", pattern: "^[a-z]+$" } },
  };
  const parsed = await Effect.runPromise(validateManifest(m, "x/plugin.json"));
  assert.equal(parsed.effects[0].input.type, "object");
});

Deno.test("validateManifest reports a forbidden permission even when other fields are also wrong", async () => {
  // run/ffi/sys/all parse (an operator override may grant them, Grant.ts); import and hrtime never do.
  await refuses({ ...smtpJson(), version: "1.0", permissions: { net: [], import: ["x:443"] } }, "permissions.import");
});

Deno.test("patternRisk() refuses patterns whose matching can take exponential time, and lets ordinary ones through", () => {
  for (
    const risky of ["^(a+)+$", "(a|a)*", "^([a-z]+)*$", "^(a*)*$", "((ab)*)+", "^(\\w+\\s?)*$", "(x+){2,}", "(.)\\1"]
  ) {
    assert.ok(patternRisk(risky), risky);
  }
  for (
    const ordinary of [
      "^[^@\\s<>]+@[^@\\s<>]+$",
      "^\\d{3}-\\d{4}$",
      "^(\\+|-)?\\d+$",
      "^[a-z]([a-z0-9-]*[a-z0-9])?$",
      "^[A-Za-z0-9_.:-]{1,100}$",
      "a{2,}b+",
      "^(?:https?)://[^/]+$",
      "[(+)*]+",
    ]
  ) {
    assert.equal(patternRisk(ordinary), undefined, ordinary);
  }
});

/**
 * @module
 * Keel never starts with a policy it misread: a bad policy file stops
 * `startKeel` with a `KeelStartError` naming the file and line, and stops
 * the real `main.ts serve` process with a non-zero exit and a one-line
 * reason on stderr (no stack trace). The failed start leaves the data dir
 * free for the next attempt.
 */
import assert from "node:assert/strict";
import { KeelStartError } from "../../core/mod.ts";
import { ROOT, startTestKeel } from "../_support/keel.ts";

const FIXTURES = `${ROOT}/tests/fixtures/policies`;
const read = (folder: string, name = "policy.yaml") => Deno.readTextFileSync(`${FIXTURES}/${folder}/${name}`);

const startError = async (options: Parameters<typeof startTestKeel>[0]): Promise<KeelStartError> => {
  try {
    const keel = await startTestKeel(options);
    await keel.close();
  } catch (error) {
    assert.ok(error instanceof KeelStartError, `expected a KeelStartError, got ${error}`);
    return error;
  }
  assert.fail("Keel started with a bad policy");
};

const CASES: ReadonlyArray<[string, Record<string, string>, string, number]> = [
  ["a YAML syntax error", { "policy.yaml": read("bad-yaml") }, "policy.yaml", 8],
  ["an unknown decision", { "policy.yaml": read("bad-decision") }, "policy.yaml", 9],
  ["an unknown effect class", { "policy.yaml": read("bad-class") }, "policy.yaml", 7],
  ["a bad approval expiry", { "policy.yaml": read("bad-expires") }, "policy.yaml", 9],
  [
    "a rule id used in two files",
    { "a.yaml": read("duplicate-ids", "a.yaml"), "b.yaml": read("duplicate-ids", "b.yaml") },
    "b.yaml",
    6,
  ],
];

for (const [what, policies, name, line] of CASES) {
  Deno.test(`startTestKeel with a policy file containing ${what} throws KeelStartError naming ${name} line ${line}`, async () => {
    const dataDir = await Deno.makeTempDir({ prefix: "keel-badpolicy-" });
    try {
      const error = await startError({ policies, dataDir });
      assert.equal(error.body.tag, "PolicyFileError");
      assert.equal(error.name, "PolicyFileError");
      assert.match(error.message, new RegExp(`^Policy file ".*/${name.replace(".", "\\.")}" line ${line}: `));
      const details = error.body.details as { file: string; line: number };
      assert.ok(details.file.endsWith(`/${name}`), details.file);
      assert.equal(details.line, line);
    } finally {
      await Deno.remove(dataDir, { recursive: true });
    }
  });
}

Deno.test("a failed start leaves the data dir unlocked, so Keel starts on it once the policy is fixed", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-badpolicy-" });
  try {
    await startError({ policies: { "policy.yaml": read("bad-decision") }, dataDir });
    const keel = await startTestKeel({ dataDir, policies: { "policy.yaml": "default: deny\nrules: []\n" } });
    try {
      const { status, body } = await keel.api("GET", "/api/plugins");
      assert.equal(status, 200);
      assert.deepEqual(body, { plugins: [] });
    } finally {
      await keel.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

/** Run `main.ts serve` against a policy folder and a fresh data dir; it must not start. */
const serveWith = async (policiesDir: string) => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-serve-badpolicy-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}/main.ts`, "serve"],
      cwd: dataDir,
      env: {
        KEEL_POLICIES: policiesDir,
        KEEL_DATA_DIR: dataDir,
        KEEL_PORT: "0",
        KEEL_HOST: "127.0.0.1",
        KEEL_TOKEN: "serve-test-token",
        KEEL_URL: "",
        NO_COLOR: "1",
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
};

Deno.test("`main.ts serve` with a policy type error exits non-zero, naming file and line on stderr without a stack trace", async () => {
  const { code, stdout, stderr } = await serveWith(`${FIXTURES}/bad-expires`);
  assert.notEqual(code, 0);
  assert.equal(
    stderr.trim(),
    `Keel cannot start: Policy file "${FIXTURES}/bad-expires/policy.yaml" line 9: rule "gate-email": approval "expires" must look like 30m, 72h or 7d (at most 366d)`,
  );
  assert.doesNotMatch(stderr, /^\s+at /m, "no stack frames");
  assert.doesNotMatch(stdout, /listening/);
});

Deno.test("`main.ts serve` with a policy YAML syntax error exits non-zero, naming file and line on stderr without a stack trace", async () => {
  const { code, stdout, stderr } = await serveWith(`${FIXTURES}/bad-yaml`);
  assert.notEqual(code, 0);
  assert.match(stderr, /^Keel cannot start: Policy file ".*\/bad-yaml\/policy\.yaml" line 8: /);
  assert.equal(stderr.trim().split("\n").length, 1, `one line: ${stderr}`);
  assert.doesNotMatch(stderr, /^\s+at /m, "no stack frames");
  assert.doesNotMatch(stdout, /listening/);
});

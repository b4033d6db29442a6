/**
 * @module
 * Adversarial tests of code a plugin loads at run time through `blob:` and
 * `data:` URLs: Deno's permissions do not gate such imports and the
 * install-time module graph check cannot see them, so what must hold is that
 * the loaded code runs under the plugin's own grant and nothing more. The
 * hostile connector `tests/fixtures/hostile/dynamic_code` is installed twice,
 * once per isolation mode, and each attempt (read `~/.ssh`, reach an
 * ungranted host, read an ungranted env variable, import a file by literal
 * URL) must fail with `PermissionDeniedError`, audited as `effect.failed`,
 * leaking nothing. Deno can create and import blob: URLs inside a Worker and
 * a plugin process alike (the self-contained case shows it).
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const FIXTURE = `${ROOT}/tests/fixtures/hostile/dynamic_code`;
const SECRET_ENV = `canary-env-${crypto.randomUUID()}`;
const SECRET_FILE = `canary-file-${crypto.randomUUID()}`;
const SSH_KEY = `-----BEGIN OPENSSH PRIVATE KEY----- canary-${crypto.randomUUID()}`;
const UNGRANTED_BODY = `canary-ungranted-${crypto.randomUUID()}`;
const CANARIES = [SECRET_ENV, SECRET_FILE, SSH_KEY, UNGRANTED_BODY, "PRIVATE KEY"];
const EFFECTS = ["blob_read", "data_read", "blob_fetch", "data_fetch", "blob_env", "blob_import_file", "blob_eval"];

/** A copy of the fixture named `name`, importing Keel's SDK by absolute URL. */
const copyAs = async (tmp: string, name: string) => {
  const dir = `${tmp}/${name}`;
  await Deno.mkdir(dir, { recursive: true });
  const swap = (text: string) =>
    text.replaceAll("dynamic_code", name).replace('"../../../../core/sdk/mod.ts"', `"file://${ROOT}/core/sdk/mod.ts"`);
  for (const file of ["plugin.json", "mod.ts"]) {
    await Deno.writeTextFile(`${dir}/${file}`, swap(await Deno.readTextFile(`${FIXTURE}/${file}`)));
  }
  return dir;
};

const driver = (names: string[]) => ({
  "plugin.json": JSON.stringify({
    name: "dyn-driver",
    version: "0.1.0",
    kind: "agent",
    description: "Drives the dynamic code tests' connectors",
    uses: names.flatMap((n) => EFFECTS.map((e) => `${n}.${e}`)),
    workflows: [{ name: "drive_dynamic", description: "Call one effect", input: { type: "object" } }],
  }),
  "mod.ts": `import { definePlugin, type WorkflowContext } from "file://${ROOT}/core/sdk/mod.ts";
definePlugin({ workflows: {
  async drive_dynamic(ctx: WorkflowContext, input: { effect: string; args: unknown }) {
    return { result: await ctx.effect(input.effect, input.args) };
  },
} });
`,
});

const drive = async (k: TestKeel, effect: string, args: unknown = {}) => {
  const started = await k.api("POST", "/api/workflows/drive_dynamic/runs?wait=60", { input: { effect, args } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const audit = (await k.api("GET", `/api/audit?runId=${started.body.runId}`)).body.events;
  return { run: started.body, audit };
};

const assertNoLeak = (o: unknown) => {
  const text = JSON.stringify(o);
  for (const canary of CANARIES) assert.ok(!text.includes(canary), `leaked "${canary}" in ${text.slice(0, 1500)}`);
};

/** Denied with PermissionDeniedError naming `mentions`, audited as effect.failed, nothing leaked. */
const assertDenied = (o: { run: any; audit: any[] }, effect: string, mentions: string) => {
  const show = JSON.stringify(o.run).slice(0, 1500);
  assert.equal(o.run.status, "failed", show);
  const step = o.run.steps.find((s: any) => s.kind === "effect" && s.name === effect);
  assert.equal(step?.error?.tag, "PermissionDeniedError", show);
  assert.ok(step.error.message.includes(mentions), `"${step.error.message}" should name ${mentions}`);
  const event = o.audit.find((e: any) => e.type === "effect.failed" && e.data?.effect === effect);
  assert.equal(event?.data.error.tag, "PermissionDeniedError", JSON.stringify(o.audit).slice(0, 1500));
  assertNoLeak(o);
};

Deno.test("code loaded through blob: and data: URLs gets no more than the plugin's grant, in both modes", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "keel-dynamic-" });
  await Deno.mkdir(`${tmp}/home/.ssh`, { recursive: true });
  const sshKey = `${tmp}/home/.ssh/id_rsa`;
  await Deno.writeTextFile(sshKey, SSH_KEY);
  await Deno.writeTextFile(`${tmp}/secret.json`, JSON.stringify({ secret: SECRET_FILE }));
  const ungranted = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => new Response(UNGRANTED_BODY));
  Deno.env.set("KEEL_DYN_SECRET", SECRET_ENV);
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 15_000 });
  try {
    const modes = [["dyncw", "worker"], ["dyncp", "process"]] as const;
    await Deno.mkdir(`${tmp}/driver`);
    for (const [file, text] of Object.entries(driver(modes.map(([n]) => n)))) {
      await Deno.writeTextFile(`${tmp}/driver/${file}`, text);
    }
    const d = await k.api("POST", "/api/plugins", { path: `${tmp}/driver`, grant: {}, isolation: "worker" });
    assert.equal(d.status, 201, JSON.stringify(d.body));
    for (const [name, isolation] of modes) {
      const r = await k.api("POST", "/api/plugins", { path: await copyAs(tmp, name), grant: {}, isolation });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const e = (effect: string) => `${name}.${effect}`;

      await t.step(`${isolation}: blob: code may run, with no more power than the plugin`, async () => {
        const o = await drive(k, e("blob_eval"));
        assert.equal(o.run.status, "succeeded", JSON.stringify(o.run).slice(0, 1500));
        assert.deepEqual(o.run.output.result, { value: 42 });
        assert.ok(o.audit.some((x: any) => x.type === "effect.succeeded" && x.data.effect === e("blob_eval")));
      });
      await t.step(`${isolation}: blob: code reading ~/.ssh/id_rsa fails with PermissionDeniedError`, async () => {
        // Under bwrap the file is not even there; Deno's denial comes first either way.
        assertDenied(await drive(k, e("blob_read"), { path: sshKey }), e("blob_read"), ".ssh/id_rsa");
      });
      await t.step(`${isolation}: data: code reading ~/.ssh/id_rsa fails with PermissionDeniedError`, async () => {
        assertDenied(await drive(k, e("data_read"), { path: sshKey }), e("data_read"), ".ssh/id_rsa");
      });
      const url = `http://127.0.0.1:${ungranted.addr.port}/`;
      await t.step(`${isolation}: blob: code fetching an ungranted host fails with PermissionDeniedError`, async () => {
        assertDenied(await drive(k, e("blob_fetch"), { url }), e("blob_fetch"), `127.0.0.1:${ungranted.addr.port}`);
      });
      await t.step(`${isolation}: data: code fetching an ungranted host fails with PermissionDeniedError`, async () => {
        assertDenied(await drive(k, e("data_fetch"), { url }), e("data_fetch"), `127.0.0.1:${ungranted.addr.port}`);
      });
      await t.step(
        `${isolation}: blob: code reading an ungranted env variable fails with PermissionDeniedError`,
        async () => {
          assertDenied(await drive(k, e("blob_env"), { name: "KEEL_DYN_SECRET" }), e("blob_env"), "KEEL_DYN_SECRET");
        },
      );
      await t.step(
        `${isolation}: blob: code importing a file:// JSON literal fails with PermissionDeniedError`,
        async () => {
          const o = await drive(k, e("blob_import_file"), { target: `file://${tmp}/secret.json` });
          assertDenied(o, e("blob_import_file"), "secret.json");
        },
      );
    }
    await t.step("after it all the host serves and the audit log holds no secret", async () => {
      const health = await fetch(`${k.url}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
      assert.equal((await k.api("GET", "/api/audit/verify")).body.ok, true);
      assertNoLeak((await k.api("GET", "/api/audit?limit=10000")).body.events);
    });
  } finally {
    await k.close();
    await ungranted.shutdown();
    Deno.env.delete("KEEL_DYN_SECRET");
    await Deno.remove(tmp, { recursive: true });
  }
});

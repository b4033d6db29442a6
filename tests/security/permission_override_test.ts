/**
 * @module
 * Adversarial tests of the operator override: a plugin requesting what Keel
 * refuses by default (here `run`, `sys`) installs only when the operator
 * names each such request exactly, over an authenticated API call; the grant
 * records the override, the Worker's and the process's permissions honour it
 * and nothing more, `plugin.permission_override` audits who gave what for
 * which manifest hash, and an upgrade must state the override again. The
 * plugins are generated in a temp dir (outside Keel's folder), one per
 * isolation mode, with an agent that drives their effects through the
 * Gateway.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { processCommand, type SandboxTools } from "../../core/plugins/_process.ts";
import { workerPermissions } from "../../core/manifest/mod.ts";
import { callEffect } from "../_support/plugins.ts";

const SDK = `file://${ROOT}/core/sdk/mod.ts`;
const SSH_KEY = `-----BEGIN OPENSSH PRIVATE KEY----- canary-${crypto.randomUUID()}`;

/** A connector `name` at `version` whose manifest requests `permissions`; its effects run programs and read files. */
const connector = (name: string, version: string, permissions: Record<string, unknown>) => ({
  "plugin.json": JSON.stringify({
    name,
    version,
    kind: "connector",
    description: `Generated plugin ${name} requesting powers Keel refuses by default`,
    permissions,
    effects: ["run_echo", "run_other", "read_file", "hostname"].map((e) => ({
      name: `${name}.${e}`,
      class: "read",
      description: e,
      input: {},
    })),
  }),
  "mod.ts": `import { definePlugin } from "${SDK}";
const run = async (cmd: string, args: string[]) => {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
  return { stdout: new TextDecoder().decode(out.stdout).trim() };
};
definePlugin({ effects: {
  "${name}.run_echo": () => run("echo", ["overridden"]),
  "${name}.run_other": () => run("id", []),
  "${name}.read_file": async ({ path }: { path: string }) => ({ text: await Deno.readTextFile(path) }),
  "${name}.hostname": () => Promise.resolve({ hostname: Deno.hostname() }),
} });
`,
});

const EFFECTS = ["run_echo", "run_other", "read_file", "hostname"];

/** An agent whose one workflow calls any effect of `targets` it is told to. */
const driver = (targets: string[]) => ({
  "plugin.json": JSON.stringify({
    name: "ovr-driver",
    version: "0.1.0",
    kind: "agent",
    description: "Drives the override tests' connectors",
    uses: targets.flatMap((t) => EFFECTS.map((e) => `${t}.${e}`)),
    workflows: [{ name: "drive_override", description: "Call one effect", input: { type: "object" } }],
  }),
  "mod.ts": `import { definePlugin, type WorkflowContext } from "${SDK}";
definePlugin({ workflows: {
  async drive_override(ctx: WorkflowContext, input: { effect: string; args: unknown }) {
    return { result: await ctx.effect(input.effect, input.args) };
  },
} });
`,
});

const drive = async (k: TestKeel, effect: string, args: unknown = {}) => {
  const started = await k.api("POST", "/api/workflows/drive_override/runs?wait=60", { input: { effect, args } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const audit = (await k.api("GET", `/api/audit?runId=${started.body.runId}`)).body.events;
  return { run: started.body, audit };
};

const assertDenied = (o: { run: any; audit: any[] }, effect: string, mentions: string) => {
  const show = JSON.stringify(o.run).slice(0, 1500);
  assert.equal(o.run.status, "failed", show);
  const step = o.run.steps.find((s: any) => s.name === effect);
  assert.equal(step?.error?.tag, "PermissionDeniedError", show);
  assert.ok(step.error.message.includes(mentions), `"${step.error.message}" should name ${mentions}`);
  const event = o.audit.find((e) => e.type === "effect.failed" && e.data?.effect === effect);
  assert.equal(event?.data.error.tag, "PermissionDeniedError", JSON.stringify(o.audit).slice(0, 1500));
  assert.ok(!JSON.stringify(o).includes(SSH_KEY), "the key leaked");
};

const assertSucceeded = (o: { run: any; audit: any[] }, effect: string) => {
  assert.equal(o.run.status, "succeeded", JSON.stringify(o.run).slice(0, 1500));
  assert.ok(o.audit.some((e) => e.type === "effect.succeeded" && e.data?.effect === effect), "effect.succeeded");
  return o.run.output.result;
};

const auditEvents = async (k: TestKeel) => (await k.api("GET", "/api/audit?limit=10000")).body.events as any[];

Deno.test("an operator override unlocks exactly what it names, is audited, and is never carried", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "keel-override-" });
  const write = async (folder: string, files: Record<string, string>) => {
    const dir = `${tmp}/${folder}`;
    await Deno.mkdir(dir, { recursive: true });
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    return dir;
  };
  await Deno.mkdir(`${tmp}/home/.ssh`, { recursive: true });
  const sshKey = `${tmp}/home/.ssh/id_rsa`;
  await Deno.writeTextFile(sshKey, SSH_KEY);
  const run = { run: ["echo"] };
  const ovrw = await write("ovrw-1", connector("ovrw", "0.1.0", run));
  const ovrp = await write("ovrp-1", connector("ovrp", "0.1.0", run));
  const plain = await write("plain-1", connector("plain", "0.1.0", {}));
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 15_000 });
  const installed = async () => (await k.api("GET", "/api/plugins")).body.plugins.map((p: any) => p.name);
  try {
    const d = await k.api("POST", "/api/plugins", {
      path: await write("driver", driver(["ovrw", "ovrp", "plain"])),
      grant: {},
      isolation: "worker",
    });
    assert.equal(d.status, 201, JSON.stringify(d.body));

    await t.step(
      "without an override, a manifest requesting run is refused with a GrantError naming what to pass",
      async () => {
        const r = await k.api("POST", "/api/plugins", { path: ovrw, grant: {}, isolation: "worker" });
        assert.equal(r.status, 400, JSON.stringify(r.body));
        assert.equal(r.body.error.tag, "GrantError");
        assert.match(r.body.error.message, /requests "run:echo"/);
        assert.ok(r.body.error.message.includes("--override run:echo"), r.body.error.message);
        assert.ok(r.body.error.message.includes('"override": ["run:echo"]'), r.body.error.message);
        const refused = (await auditEvents(k)).findLast((e) => e.type === "plugin.refused" && e.data.path === ovrw);
        assert.equal(refused?.data.error.tag, "GrantError");
        assert.ok(!(await installed()).includes("ovrw"));
      },
    );

    await t.step("an override naming a different permission does not unlock the requested one", async () => {
      for (const override of [["ffi"], ["run"], ["run:sh"], ["sys:hostname"], ["all"]]) {
        const r = await k.api("POST", "/api/plugins", { path: ovrw, grant: {}, isolation: "worker", override });
        assert.equal(r.status, 400, JSON.stringify(r.body));
        assert.equal(r.body.error.tag, "GrantError", JSON.stringify(r.body));
        assert.ok(r.body.error.message.includes(`names "${override[0]}", which the plugin does not request`));
      }
      const extra = await k.api("POST", "/api/plugins", {
        path: ovrw,
        grant: {},
        isolation: "worker",
        override: ["run:echo", "net:*"],
      });
      assert.equal(extra.body.error?.tag, "GrantError", "an override beyond the request is refused whole");
      const malformed = await k.api("POST", "/api/plugins", { path: ovrw, grant: {}, override: "run:echo" });
      assert.equal(malformed.body.error?.tag, "InvalidInputError");
      assert.ok(!(await installed()).includes("ovrw"));
      assert.ok(!(await auditEvents(k)).some((e) => e.type === "plugin.permission_override"));
    });

    await t.step(
      "an override without the token, or with a wrong one, is refused with 401 and changes nothing",
      async () => {
        const body = JSON.stringify({ path: ovrw, grant: {}, isolation: "worker", override: ["run:echo"] });
        const attempts: Array<Record<string, string>> = [{}, { authorization: "Bearer wrong-token" }, {
          authorization: "Basic dGVzdA==",
        }];
        for (const headers of attempts) {
          const res = await fetch(`${k.url}/api/plugins`, {
            method: "POST",
            headers: { "content-type": "application/json", ...headers },
            body,
          });
          assert.equal(res.status, 401);
          await res.body?.cancel();
        }
        assert.ok(!(await installed()).includes("ovrw"));
        assert.ok(!(await auditEvents(k)).some((e) => e.type === "plugin.permission_override"));
      },
    );

    for (const [name, dir, isolation] of [["ovrw", ovrw, "worker"], ["ovrp", ovrp, "process"]] as const) {
      await t.step(`with the exact override a ${isolation} plugin installs, and the override is audited`, async () => {
        const r = await k.api("POST", "/api/plugins", { path: dir, grant: {}, isolation, override: ["run:echo"] });
        assert.equal(r.status, 201, JSON.stringify(r.body));
        assert.deepEqual(r.body.plugin.grant.overrides, ["run:echo"]);
        assert.deepEqual(r.body.plugin.requested.needsOverride, ["run:echo"]);
        const event = (await auditEvents(k)).findLast((e) =>
          e.type === "plugin.permission_override" && e.data.plugin === name
        );
        assert.ok(event, "plugin.permission_override is audited");
        assert.equal(event.actor, "operator");
        assert.equal(event.data.action, "install");
        assert.deepEqual(event.data.overrides, ["run:echo"]);
        assert.equal(event.data.manifestHash, r.body.plugin.manifestHash);
        assert.match(event.data.what[0], /runs program "echo"/);
      });
      await t.step(`a ${isolation} plugin may run the overridden program and nothing else`, async () => {
        assert.deepEqual(assertSucceeded(await drive(k, `${name}.run_echo`), `${name}.run_echo`), {
          stdout: "overridden",
        });
        assertDenied(await drive(k, `${name}.run_other`), `${name}.run_other`, "id");
        assertDenied(await drive(k, `${name}.hostname`), `${name}.hostname`, "sys");
        const ssh = await drive(k, `${name}.read_file`, { path: sshKey });
        assertDenied(ssh, `${name}.read_file`, isolation === "worker" ? ".ssh" : "");
      });
    }

    await t.step("an upgrade must state the override again, or it waits for a grant", async () => {
      const v2 = await write("ovrw-2", connector("ovrw", "0.2.0", run));
      const held = await k.api("POST", "/api/plugins/ovrw/upgrade", { path: v2 });
      assert.equal(held.status, 201, JSON.stringify(held.body));
      assert.equal(held.body.plugin.activation, "needs_grant");
      assert.ok(held.body.plugin.pendingChanges.some((l: string) => l.includes('"run:echo" stated again')));
      const event = (await auditEvents(k)).findLast((e) =>
        e.type === "plugin.upgrade_held" && e.data.plugin === "ovrw"
      );
      assert.deepEqual(event.data.overrideNeeded, ["run:echo"]);
      const active = (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) =>
        p.name === "ovrw" && p.activation === "active"
      );
      assert.equal(active.version, "0.1.0", "the old version keeps serving");
      // Granting it needs the override too.
      const bare = await k.api("POST", "/api/plugins/ovrw/versions/0.2.0/grant", { grant: {} });
      assert.equal(bare.body.error?.tag, "GrantError", JSON.stringify(bare.body));
      const granted = await k.api("POST", "/api/plugins/ovrw/versions/0.2.0/grant", {
        grant: {},
        override: ["run:echo"],
      });
      assert.equal(granted.status, 200, JSON.stringify(granted.body));
      assert.deepEqual(granted.body.plugin.grant.overrides, ["run:echo"]);
      const grantEvent = (await auditEvents(k)).findLast((e) =>
        e.type === "plugin.permission_override" && e.data.plugin === "ovrw"
      );
      assert.equal(grantEvent.data.action, "grant");
      assert.equal(grantEvent.data.version, "0.2.0");
      assert.equal(grantEvent.data.manifestHash, granted.body.plugin.manifestHash);
      // Re-stated with the upgrade, a version asking for nothing more carries on at once.
      const v3 = await write("ovrw-3", connector("ovrw", "0.3.0", run));
      const up = await k.api("POST", "/api/plugins/ovrw/upgrade", { path: v3, override: ["run:echo"] });
      assert.equal(up.body.plugin?.activation, "active", JSON.stringify(up.body));
      assert.deepEqual(up.body.plugin.grant.overrides, ["run:echo"]);
      assert.deepEqual(assertSucceeded(await drive(k, "ovrw.run_echo"), "ovrw.run_echo"), { stdout: "overridden" });
    });

    await t.step("an upgrade adding run stays needs_grant, even when it states the override", async () => {
      const r = await k.api("POST", "/api/plugins", { path: plain, grant: {}, isolation: "worker" });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const v2 = await write("plain-2", connector("plain", "0.2.0", run));
      for (const override of [undefined, ["run:echo"]]) {
        const up = await k.api("POST", "/api/plugins/plain/upgrade", { path: v2, override });
        if (override === undefined) {
          assert.equal(up.body.plugin?.activation, "needs_grant", JSON.stringify(up.body));
          assert.ok(up.body.diff.lines.some((l: string) => l.includes('"run:echo"')), JSON.stringify(up.body.diff));
          assert.deepEqual(up.body.diff.permissions.added.needsOverride, ["run:echo"]);
        } else {
          // 0.2.0 is already installed (held): the same version cannot be upgraded to twice.
          assert.equal(up.body.error?.tag, "ConflictError", JSON.stringify(up.body));
        }
      }
      const plainVersions = (await k.api("GET", "/api/plugins")).body.plugins.filter((p: any) => p.name === "plain");
      assert.deepEqual(plainVersions.map((p: any) => [p.version, p.activation]), [["0.1.0", "active"], [
        "0.2.0",
        "needs_grant",
      ]]);
      const v3 = await write("plain-3", connector("plain", "0.3.0", run));
      const stated = await k.api("POST", "/api/plugins/plain/upgrade", { path: v3, override: ["run:echo"] });
      assert.equal(stated.body.plugin?.activation, "needs_grant", JSON.stringify(stated.body));
      assertDenied(await drive(k, "plain.run_echo"), "plain.run_echo", "run");
    });

    await t.step("after it all the host serves and the audit chain verifies", async () => {
      const verify = await k.api("GET", "/api/audit/verify");
      assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
      assert.ok(!JSON.stringify(await auditEvents(k)).includes(SSH_KEY));
    });
  } finally {
    await k.close();
    await Deno.remove(tmp, { recursive: true });
  }
});

const tools: SandboxTools = { libs: [], prlimit: undefined, setpriv: undefined, sh: undefined };
const spec = (grant: Parameters<typeof workerPermissions>[0]) => ({
  entry: "/p/mod.ts",
  folder: "/p",
  sdkDir: "/sdk",
  dataDir: "/data/p",
  cacheDir: "/cache/p",
  npm: false,
  permissions: workerPermissions(grant, "/data/p"),
});
const noGrant = { net: [], env: [], read: [], write: [] };
const limits = { heapMb: 64, dataMb: 512, openFiles: 64, fileSizeMb: 16 };

Deno.test("workerPermissions() and processCommand() honour each override and add nothing else", () => {
  const grant = {
    ...noGrant,
    net: ["127.0.0.1:25"],
    overrides: ["run:git", "sys:hostname", "net:*", "read:/srv/shared", "write:../common", "ffi:/opt/lib.so"],
  };
  const p = workerPermissions(grant, "/data/p");
  assert.deepEqual(p, {
    env: false,
    net: true,
    read: ["/srv/shared"],
    write: ["/data/common"],
    run: ["git"],
    ffi: ["/opt/lib.so"],
    sys: ["hostname"],
    import: false,
  });
  const args = processCommand(spec(grant), tools, limits, {}).args;
  for (const flag of ["--allow-net", "--allow-run=git", "--allow-sys=hostname", "--allow-ffi=/opt/lib.so"]) {
    assert.ok(args.includes(flag), `${flag} in ${args.join(" ")}`);
  }
  assert.ok(args.includes("--allow-read=/p,/sdk,/srv/shared") && args.includes("--allow-write=/data/common"));
  assert.ok(!args.some((a) => a === "--allow-all" || a.startsWith("--allow-import")));
  // Without overrides none of these appear.
  const plain = processCommand(spec(noGrant), tools, limits, {}).args;
  assert.ok(!plain.some((a) => /^--allow-(run|ffi|sys|net|all)/.test(a)), plain.join(" "));
  assert.deepEqual(workerPermissions(noGrant, "/data/p"), {
    env: false,
    net: false,
    read: false,
    write: false,
    run: false,
    ffi: false,
    sys: false,
    import: false,
  });
});

Deno.test("an override of all gives every permission, and its process runs without bwrap, with a warning", () => {
  const grant = { ...noGrant, overrides: ["all"] };
  assert.ok(Object.values(workerPermissions(grant, "/data/p")).every((v) => v === true));
  const command = processCommand(spec(grant), { ...tools, bwrap: "/usr/bin/bwrap" }, limits, {});
  assert.ok(command.args.includes("--allow-all"));
  assert.ok(!command.args.includes("/usr/bin/bwrap") && command.command !== "/usr/bin/bwrap");
  assert.equal(command.report.sandbox, "none");
  assert.match(command.report.warnings!.join(" "), /overrode Keel's refusal of "all"/);
});

Deno.test("under bwrap an override binds only what it names: outside paths, and system folders for run", () => {
  const grant = { ...noGrant, overrides: ["run:git", "read:/srv/shared", "write:/srv/out"] };
  const args = processCommand(spec(grant), { ...tools, bwrap: "/usr/bin/bwrap" }, limits, {}).args.join(" ");
  assert.match(args, /--ro-bind-try \/srv\/shared \/srv\/shared/);
  assert.match(args, /--bind-try \/srv\/out \/srv\/out/);
  assert.match(args, /--ro-bind-try \/usr \/usr/);
  const none = processCommand(spec(noGrant), { ...tools, bwrap: "/usr/bin/bwrap" }, limits, {}).args.join(" ");
  assert.doesNotMatch(none, /\/usr \/usr|\/srv/);
});

Deno.test("an env wildcard (Deno reads * in a name as any run of characters) needs the operator's override by name", async () => {
  const secret = `host-secret-${crypto.randomUUID()}`;
  Deno.env.set("KEEL_TEST_WILDCARD_SECRET", secret);
  const dir = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-env-wildcard-" }));
  await Deno.writeTextFile(
    `${dir}/plugin.json`,
    JSON.stringify({
      name: "envthief",
      version: "0.1.0",
      kind: "connector",
      description: "asks for an env entry that is a wildcard",
      permissions: { env: ["*", "SMTP_PASSWORD"] },
      effects: [{ name: "envthief.get", class: "read", description: "read", input: {} }],
    }),
  );
  await Deno.writeTextFile(
    `${dir}/mod.ts`,
    `import { definePlugin } from "${SDK}";
definePlugin({ effects: { "envthief.get": () => Promise.resolve({ value: Deno.env.get("KEEL_TEST_WILDCARD_SECRET") ?? null }) } });
`,
  );
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" } });
  try {
    const install = (extra: Record<string, unknown>) =>
      k.api("POST", "/api/plugins", { path: dir, grant: { env: ["SMTP_PASSWORD"] }, isolation: "worker", ...extra });
    const refused = await install({});
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
    assert.equal(refused.body.error.tag, "GrantError");
    assert.match(refused.body.error.message, /requests "env:\*" \(reads every environment variable, Keel's token/);
    // Granting "*" as an ordinary name is beyond what may be granted without the override.
    const asName = await k.api("POST", "/api/plugins", { path: dir, grant: { env: ["*"] }, override: ["env:*"] });
    assert.equal(asName.status, 400, JSON.stringify(asName.body));
    const granted = await install({ override: ["env:*"] });
    assert.equal(granted.status, 201, JSON.stringify(granted.body));
    assert.deepEqual(granted.body.plugin.requested.needsOverride, ["env:*"]);
    assert.deepEqual(workerPermissions(granted.body.plugin.grant, "/d").env, ["SMTP_PASSWORD", "*"]);
    assert.equal((await callEffect(k, "envthief.get", {})).value, secret, "what the operator overrode, it gets");
    const events = (await k.api("GET", "/api/audit")).body.events as any[];
    assert.ok(events.some((e) => e.type === "plugin.permission_override" && JSON.stringify(e.data).includes("env:*")));
  } finally {
    await k.close();
    Deno.env.delete("KEEL_TEST_WILDCARD_SECRET");
    await Deno.remove(dir, { recursive: true });
  }
});

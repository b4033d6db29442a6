/**
 * @module
 * `keel plugin new`, run as the real CLI in a child process. For each kind,
 * the folder it writes type-checks, is formatted, passes its own test
 * (`deno test` in another child process, installing the plugin into a real
 * Keel), and installs into a running Keel over the API, where its sample
 * effect or workflow works. It refuses to overwrite anything and refuses
 * names that are not plugin names, creating nothing.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";
import { runCli } from "../_support/process.ts";
import { callEffect, installPlugin, runWorkflow } from "../_support/plugins.ts";

/** No Keel needs to run for `plugin new`; the CLI only needs a URL to exist. */
const NO_KEEL = { url: "http://127.0.0.1:9" };

const deno = async (args: string[]) => {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
};

const listing = async (dir: string): Promise<string[]> => {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
};

for (const kind of ["connector", "agent"] as const) {
  Deno.test(`keel plugin new --kind ${kind} writes a plugin that type-checks, passes its own test and installs`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "keel-scaffold-" });
    try {
      const name = `my-${kind}`;
      const made = await runCli(["plugin", "new", name, "--kind", kind, "--dir", dir], NO_KEEL);
      assert.equal(made.code, 0, made.stderr);
      const path = `${dir}/${name}`;
      assert.match(made.stdout, new RegExp(`Created ${kind} "${name}" in ${path}`));
      assert.deepEqual(await listing(path), ["README.md", "mod.ts", "mod_test.ts", "plugin.json"]);
      const manifest = JSON.parse(await Deno.readTextFile(`${path}/plugin.json`));
      assert.equal(manifest.name, name);
      assert.equal(manifest.kind, kind);
      assert.deepEqual(manifest.permissions, {}, "a safe minimal grant: it asks for nothing");
      const mod = await Deno.readTextFile(`${path}/mod.ts`);
      assert.match(mod, kind === "connector" ? /defineConnector<Effects, Config>/ : /defineAgent<Workflows, Uses>/);

      // `deno test` type-checks mod_test.ts below; mod.ts is not imported by it, so check it on its own.
      const checked = await deno(["check", "--config", `${ROOT}/deno.json`, `${path}/mod.ts`]);
      assert.equal(checked.code, 0, checked.text);
      const formatted = await deno(["fmt", "--check", "--config", `${ROOT}/deno.json`, path]);
      assert.equal(formatted.code, 0, formatted.text);

      const tested = await deno(["test", "-A", "--config", `${ROOT}/deno.json`, `${path}/mod_test.ts`]);
      assert.equal(tested.code, 0, tested.text);
      assert.match(tested.text, /ok \| 1 passed \| 0 failed/, tested.text);

      const k = await startTestKeel();
      try {
        const plugin = await installPlugin(k, path);
        assert.equal(plugin.name, name);
        assert.deepEqual(plugin.grant, { net: [], env: [], read: [], write: [] });
        if (kind === "connector") {
          const effect = manifest.effects[0].name;
          assert.equal(effect, "my_connector.echo");
          assert.deepEqual(await callEffect(k, effect, { message: "hi" }), { message: "hi", length: 2 });
        } else {
          const workflow = manifest.workflows[0].name;
          assert.equal(workflow, "my_agent_hello");
          const run = await runWorkflow(k, workflow, { name: "Grace" });
          assert.equal(run.status, "succeeded", JSON.stringify(run));
          assert.deepEqual(run.output, { greeting: "Hello, Grace" });
        }
      } finally {
        await k.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("keel plugin new refuses an existing folder and leaves it as it was", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-scaffold-" });
  try {
    await Deno.mkdir(`${dir}/taken`);
    await Deno.writeTextFile(`${dir}/taken/mod.ts`, "// mine\n");
    const again = await runCli(["plugin", "new", "taken", "--kind", "connector", "--dir", dir], NO_KEEL);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^error: Cannot create plugin "taken": ".*\/taken" already exists/m);
    assert.doesNotMatch(again.stderr, /\n\s+at /, "no stack trace");
    assert.deepEqual(await listing(`${dir}/taken`), ["mod.ts"]);
    assert.equal(await Deno.readTextFile(`${dir}/taken/mod.ts`), "// mine\n");

    // Nor a file, nor a symlink, of that name.
    await Deno.writeTextFile(`${dir}/file`, "x");
    await Deno.symlink(`${dir}/nowhere`, `${dir}/link`);
    for (const name of ["file", "link"]) {
      const res = await runCli(["plugin", "new", name, "--kind", "agent", "--dir", dir], NO_KEEL);
      assert.equal(res.code, 1, res.stdout);
      assert.match(res.stderr, /already exists/);
    }
    assert.equal(await Deno.readTextFile(`${dir}/file`), "x");
    await assert.rejects(Deno.stat(`${dir}/nowhere`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("keel plugin new refuses bad names and kinds and creates nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-scaffold-" });
  try {
    const cases: ReadonlyArray<[string[], RegExp]> = [
      [["Weather", "--kind", "connector"], /"Weather": it must start with a lowercase letter/],
      [["1weather", "--kind", "connector"], /it must start with a lowercase letter/],
      [["we ather", "--kind", "connector"], /may contain only lowercase letters, digits, '-' and '_'/],
      [["../escape", "--kind", "connector"], /it must start with a lowercase letter/],
      [["a/b", "--kind", "agent"], /may contain only/],
      [["x".repeat(59), "--kind", "agent"], /longer than 58 characters/],
      [["weather"], /needs --kind connector or --kind agent/],
      [["weather", "--kind", "widget"], /--kind must be "connector" or "agent"/],
      [["--kind", "agent"], /needs a NAME/],
      [["a", "b", "--kind", "agent"], /takes one NAME: got also "b"/],
      [["weather", "--kind", "agent", "--force"], /Unknown option '--force'/],
    ];
    for (const [args, says] of cases) {
      const res = await runCli(["plugin", "new", ...args, "--dir", dir], NO_KEEL);
      assert.equal(res.code, 1, `${args.join(" ")}: ${res.stdout}`);
      assert.match(res.stderr, /^error: /);
      assert.match(res.stderr, says, `${args.join(" ")}: ${res.stderr}`);
    }
    assert.deepEqual(await listing(dir), [], "nothing was created");
    const help = await runCli(["plugin", "new", "--help"], NO_KEEL);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /plugin new NAME --kind connector\|agent \[--dir DIR\]/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * @module
 * The files `keel plugin new` writes, for a connector and for an agent.
 * Each is the smallest plugin that shows the real shape: a manifest that
 * asks for nothing, typed handlers, a test that installs the plugin into a
 * real Keel and calls it, and a README that says what to change next.
 */

/** What the templates are filled with. */
export interface TemplateInput {
  readonly name: string;
  readonly kind: "connector" | "agent";
  /** Relative path from the plugin folder to Keel's source root. */
  readonly toRoot: string;
}

const json = (value: unknown) => JSON.stringify(value, null, 2) + "\n";

/** File name → content, and the sample effect or workflow name. */
export const scaffoldFiles = (input: TemplateInput): { files: Record<string, string>; sample: string } => {
  const ns = input.name.replaceAll("-", "_");
  return input.kind === "connector" ? connector(input, `${ns}.echo`) : agent(input, `${ns}_hello`);
};

const connector = ({ name, toRoot }: TemplateInput, effect: string) => ({
  sample: effect,
  files: {
    "plugin.json": json({
      name,
      version: "0.1.0",
      kind: "connector",
      description: `The ${name} connector (scaffolded: say here what it does)`,
      config: { type: "object", additionalProperties: false, properties: {} },
      permissions: {},
      health: { intervalSeconds: 60, timeoutMs: 2000 },
      effects: [{
        name: effect,
        class: "read",
        idempotency: "none",
        retry: "backoff",
        description: "Echo a message back (a sample: replace it with a real effect)",
        input: {
          type: "object",
          required: ["message"],
          additionalProperties: false,
          properties: { message: { type: "string", maxLength: 1000 } },
        },
        output: {
          type: "object",
          required: ["message", "length"],
          additionalProperties: false,
          properties: { message: { type: "string" }, length: { type: "integer" } },
        },
      }],
    }),
    "mod.ts": `/**
 * @module
 * The ${name} connector. Every effect declared in plugin.json has one
 * handler here. Keel calls a handler only after its Gateway has checked the
 * call against the manifest, the input schema and the operator's policies,
 * and the Worker it runs in has exactly the permissions the operator granted.
 */
import { defineConnector, PluginError } from "${toRoot}/core/sdk/mod.ts";

/** The effects declared in plugin.json, as TypeScript types. */
export type Effects = {
  "${effect}": { input: { message: string }; output: { message: string; length: number } };
};

/** The config schema of plugin.json, as a TypeScript type (\`ctx.config\`). */
export type Config = Record<string, never>;

defineConnector<Effects, Config>({
  effects: {
    "${effect}": ({ message }) => {
      if (message.trim() === "") throw PluginError.invalidInput("The message is blank");
      return { message, length: message.length };
    },
  },
  // Asked every health.intervalSeconds; answer false (or throw) when the plugin cannot work.
  health: () => true,
});
`,
    "mod_test.ts": `/**
 * @module
 * Installs ${name} into a real, throw-away Keel (real Deno KV, a real Worker
 * holding exactly the grant below) and calls its effect. Run it from the
 * Keel folder: deno test -A <path to this folder>/mod_test.ts
 */
import assert from "node:assert/strict";
import { callEffect, installPlugin, startTestKeel } from "${toRoot}/tests/_support/plugins.ts";

Deno.test("${name} installs with no permissions and ${effect} echoes its message", async () => {
  const keel = await startTestKeel();
  try {
    const plugin = await installPlugin(keel, import.meta.dirname!, { grant: {}, config: {} });
    assert.equal(plugin.name, "${name}");
    assert.deepEqual(await callEffect(keel, "${effect}", { message: "hello" }), { message: "hello", length: 5 });
    // The plugin's own error, with its tag, as the journal and the audit log would record it.
    await assert.rejects(callEffect(keel, "${effect}", { message: " " }), /InvalidInput/);
    // Args that do not match the input schema never reach the plugin.
    await assert.rejects(callEffect(keel, "${effect}", { text: "hello" }), /InvalidInputError/);
  } finally {
    await keel.close();
  }
});
`,
    "README.md": readme(name, "connector", effect, toRoot),
  },
});

const agent = ({ name, toRoot }: TemplateInput, workflow: string) => ({
  sample: workflow,
  files: {
    "plugin.json": json({
      name,
      version: "0.1.0",
      kind: "agent",
      description: `The ${name} agent (scaffolded: say here what it does)`,
      permissions: {},
      uses: [],
      workflows: [{
        name: workflow,
        description: "Greet someone (a sample: replace it with a real workflow)",
        input: {
          type: "object",
          required: ["name"],
          additionalProperties: false,
          properties: { name: { type: "string", minLength: 1, maxLength: 200 } },
        },
      }],
    }),
    "mod.ts": `/**
 * @module
 * The ${name} agent. Its workflows are deterministic code: everything that
 * touches the world, the clock or chance goes through \`ctx\`, so Keel can
 * journal it and replay the workflow after a crash.
 */
import { defineAgent } from "${toRoot}/core/sdk/mod.ts";

/** The workflows declared in plugin.json, as TypeScript types. */
export type Workflows = {
  ${workflow}: { input: { name: string }; output: { greeting: string } };
};

/**
 * The effects listed in plugin.json's "uses", with their types: \`ctx.effect\`
 * accepts only these. Add one as, e.g.,
 * \`"email.send": { input: { to: string; subject: string; text: string }; output: { messageId: string } }\`.
 */
export type Uses = Record<never, never>;

defineAgent<Workflows, Uses>({
  workflows: {
    async ${workflow}(ctx, { name }) {
      // A checkpointed step: run once, recorded, and replayed from the journal after a crash.
      const greeting = await ctx.step("greet", () => \`Hello, \${name}\`);
      return { greeting };
    },
  },
});
`,
    "mod_test.ts": `/**
 * @module
 * Installs ${name} into a real, throw-away Keel (real Deno KV, a real Worker
 * holding exactly the grant below) and runs its workflow through Keel's
 * orchestrator. Run it from the Keel folder:
 * deno test -A <path to this folder>/mod_test.ts
 */
import assert from "node:assert/strict";
import { installPlugin, runWorkflow, startTestKeel } from "${toRoot}/tests/_support/plugins.ts";

Deno.test("${name} installs with no permissions and ${workflow} runs to completion", async () => {
  const keel = await startTestKeel();
  try {
    const plugin = await installPlugin(keel, import.meta.dirname!, { grant: {} });
    assert.equal(plugin.name, "${name}");
    const run = await runWorkflow(keel, "${workflow}", { name: "Ada" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    assert.deepEqual(run.output, { greeting: "Hello, Ada" });
    // Each step is journaled once, by name.
    assert.deepEqual(run.steps.map((s: { name: string }) => s.name), ["greet"]);
    // Input that does not match the workflow's schema is refused before the plugin sees it.
    await assert.rejects(runWorkflow(keel, "${workflow}", { nom: "Ada" }), /InvalidInputError/);
  } finally {
    await keel.close();
  }
});
`,
    "README.md": readme(name, "agent", workflow, toRoot),
  },
});

const readme = (name: string, kind: "connector" | "agent", sample: string, toRoot: string) =>
  `# ${name}

A Keel ${kind}, created by \`keel plugin new\`. The guide to every field and
call used here is [docs/plugins.md](${toRoot}/docs/plugins.md).

- \`plugin.json\`: the manifest, what the ${kind} is, what it asks for and what it ${
    kind === "connector" ? "performs" : "offers"
  }
- \`mod.ts\`: the handlers, written with \`${
    kind === "connector" ? "defineConnector" : "defineAgent"
  }\` from Keel's SDK, the only Keel module it may import
- \`mod_test.ts\`: installs it into a throw-away Keel and ${kind === "connector" ? "calls" : "runs"} \`${sample}\`

## Test, install

From the Keel folder:

\`\`\`bash
deno test -A <this folder>/mod_test.ts
deno task keel plugin install <this folder>
\`\`\`

Install shows what the ${kind} asks for and asks you to grant it. It asks for no
permissions as created.

## Next

${
    kind === "connector"
      ? `- Replace \`${sample}\` with a real effect: declare it in \`plugin.json\` (name, class \`read\`,
  \`write\`, \`irreversible\` or \`financial\`, input and output JSON Schemas), add its types to
  \`Effects\` in \`mod.ts\`, and its handler. The type checker tells you when one is missing.
- Ask only for what the effect needs: \`"permissions": {"net": ["{host}:{port}"]}\` with \`host\`
  and \`port\` in \`config\` reaches exactly the server the operator configures.
- Throw \`PluginError.unavailable(…)\` when the external system is down and
  \`PluginError.rejected(…)\` when it says no.`
      : `- Replace \`${sample}\` with a real workflow: declare it in \`plugin.json\` (name, input JSON
  Schema), add its types to \`Workflows\` in \`mod.ts\`, and its handler.
- To perform effects, list them in \`plugin.json\`'s \`uses\` and in the \`Uses\` type; call them
  with \`ctx.effect\`. Every call passes Keel's Gateway: declared, schema-checked, policy-gated,
  journaled, audited.
- Keep the workflow deterministic: the clock, randomness and I/O only inside \`ctx.step\`.`
  }
`;

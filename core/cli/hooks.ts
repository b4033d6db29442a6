/**
 * @module
 * `keel hooks create|list|delete`: inbound webhooks. A hook's secret is
 * printed once, at creation; Keel never shows it again.
 */
import { api, atMost, type Command, flagsOf, keelUrl, print, UsageError } from "./client.ts";
import { HOOK_TOLERANCE_SECONDS } from "../config/mod.ts";

const HELP = `Usage: deno task keel hooks create WORKFLOW [--name LABEL] [--body-only]
       deno task keel hooks list [--json]
       deno task keel hooks delete HOOK_ID

create prints the hook's URL and secret; the secret is shown only this once.
A sender posts the workflow's input as JSON to the URL with the headers
  X-Keel-Timestamp: <Unix time in seconds, when it signs>
  X-Keel-Delivery:  <the delivery's id: a retry with the same id starts nothing new>
  X-Keel-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<delivery id>.<raw body>", keyed with the secret>
(without a delivery id, the signature covers "<timestamp>..<raw body>"). Keel
refuses a timestamp more than ${HOOK_TOLERANCE_SECONDS} s from its clock; within that time the same
signed request sent again finds the run it started, and one whose delivery id
was changed does not verify: a captured delivery cannot be replayed.
For example (ID: the delivery's id, say an event id):
  ts=$(date +%s)
  sig=$(printf '%s.%s.%s' "$ts" "$ID" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/.* //')
  curl -H "X-Keel-Timestamp: $ts" -H "X-Keel-Delivery: $ID" -H "X-Keel-Signature: sha256=$sig" -d "$BODY" "$URL"

--body-only makes a hook whose senders may sign the body alone, without a
timestamp (as hooks made before timestamps did): a captured request can then
be replayed unless its body or delivery id is unique.`;

/** `keel hooks …`. */
export const hooksCommand: Command = {
  summary: ["hooks create|list|delete      Inbound webhooks that start a workflow (signed with a secret)"],
  help: HELP,
  async run(args) {
    const { values, positionals } = flagsOf(args, {
      name: { type: "string" },
      json: { type: "boolean" },
      "body-only": { type: "boolean" },
    });
    const [verb, target] = positionals;
    const takes: Record<string, number> = { create: 1, list: 0, delete: 1 };
    if (verb !== undefined && takes[verb] !== undefined) atMost(positionals.slice(1), takes[verb], `hooks ${verb}`);
    if (verb === "create") {
      if (!target) throw new UsageError("hooks create needs a WORKFLOW name");
      const { hook, secret } = await api("POST", "/api/hooks", {
        workflow: target,
        name: values.name,
        signing: values["body-only"] ? "body" : "timestamped",
      });
      const base = keelUrl();
      console.log(`Created ${hook.id} for workflow ${hook.workflow}`);
      console.log(`URL:    ${base}${hook.path}`);
      console.log(`Secret: ${secret}`);
      console.log(
        `Signing: ${hook.signing === "body" ? "body (no timestamp needed; replays possible)" : "timestamped"}`,
      );
      console.log("Keep the secret now: Keel will not show it again.");
      return;
    }
    if (verb === "list") {
      const { hooks } = await api("GET", "/api/hooks");
      if (values.json) return print(hooks);
      if (!hooks.length) return console.log("No webhooks");
      for (const h of hooks) {
        console.log(
          `${h.id}  ${h.workflow}${h.name ? `  "${h.name}"` : ""}  ${h.path}  ${h.signing}  created ${h.createdAt}`,
        );
      }
      return;
    }
    if (verb === "delete") {
      if (!target) throw new UsageError("hooks delete needs a HOOK_ID");
      const { hook } = await api("DELETE", `/api/hooks/${encodeURIComponent(target)}`);
      return console.log(`Deleted ${hook.id}`);
    }
    throw new UsageError(`Usage: hooks create WORKFLOW | hooks list | hooks delete HOOK_ID`);
  },
};

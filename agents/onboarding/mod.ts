/**
 * @module
 * The onboarding coordinator. Its workflow `onboard_client` remembers the
 * client, drafts a welcome email and sends it through the `email.send`
 * effect; Keel's policy gate decides whether that needs the operator first.
 * Coordinator code is deterministic: all I/O goes through `ctx`.
 */
import { definePlugin, type WorkflowContext } from "../../core/sdk/mod.ts";
import { type Draft, welcomeEmail } from "./template.ts";

interface Client {
  readonly name: string;
  readonly email: string;
}

definePlugin({
  workflows: {
    async onboard_client(ctx: WorkflowContext, client: Client) {
      const memory = await ctx.memory.remember({
        kind: "fact",
        text: `Client ${client.name} <${client.email}> was onboarded`,
        tags: ["client", "onboarding"],
      });
      const draft = await ctx.step<Draft>("draft_welcome", () => welcomeEmail(client));
      const sent = await ctx.effect<{ messageId: string }>("email.send", draft);
      return { client: client.email, memoryId: memory.id, messageId: sent.messageId };
    },
  },
});

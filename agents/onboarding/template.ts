/**
 * @module
 * The welcome email, from a fixed template. Deterministic on purpose: the
 * same client always gets the same draft, so a replay after a crash produces
 * the same effect arguments and the approval still matches. A model-written
 * draft would go through `ctx.model.generate`, which journals it.
 */

/** A drafted email. */
export interface Draft {
  readonly to: string;
  readonly subject: string;
  readonly text: string;
}

/** Draft the welcome email for a client. */
export const welcomeEmail = (client: { name: string; email: string }): Draft => ({
  to: client.email,
  subject: `Welcome aboard, ${client.name}`,
  text: [
    `Hi ${client.name},`,
    "",
    "Thank you for choosing to work with us. Over the next few days you will",
    "receive a short questionnaire and an invitation to a kick-off call.",
    "",
    "If anything is unclear, just reply to this email.",
    "",
    "Best regards",
  ].join("\n"),
});

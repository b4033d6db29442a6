/**
 * @module
 * The smtp connector: performs the `email.send` effect by handing one
 * plain-text message to the SMTP server the operator configured. It runs in a
 * Worker allowed to reach only that server, so it uses the dependency-free
 * client in `smtp_client.ts`. SMTP failures become tagged plugin errors:
 * `SmtpUnavailable` when the server could not be reached or stopped answering
 * (worth retrying later), `SmtpRejected` when it answered with a refusal.
 */
import { definePlugin, PluginError } from "../../core/sdk/mod.ts";
import { sendMail, SmtpError } from "./smtp_client.ts";

/** Stages at which the server was unreachable or went silent, rather than saying no. */
const UNAVAILABLE_STAGES = new Set(["connect", "timeout", "connection"]);

/** Turn an SmtpError into the tagged error the host records; anything else passes through. */
const toPluginError = (error: unknown): unknown => {
  if (!(error instanceof SmtpError)) return error; // NotCapable included: the SDK reports PermissionDenied
  const unavailable = UNAVAILABLE_STAGES.has(error.stage) || error.code === 421;
  return new PluginError(
    unavailable ? "SmtpUnavailable" : "SmtpRejected",
    error.message,
    {
      code: error.code,
      stage: error.stage,
      permanent: error.permanent,
      ...(error.outcomeUnknown ? { outcomeUnknown: true } : {}),
    },
    // The server took the whole message and then said nothing: it may be delivered, so Keel must not say it failed.
    error.outcomeUnknown ? { outcomeUnknown: true } : {},
  );
};

/**
 * Make the idempotency key safe as the left half of a Message-ID (RFC 5322
 * dot-atom-text): characters outside atext become `=XX`, so distinct keys
 * stay distinct.
 */
const messageIdLocalPart = (key: string): string =>
  Array.from(new TextEncoder().encode(key), (byte) => {
    const char = String.fromCharCode(byte);
    return /^[A-Za-z0-9!#$%&'*+\-/?^_`{|}~]$/.test(char)
      ? char
      : `=${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }).join("");

const optionalString = (value: unknown): string | undefined => typeof value === "string" ? value : undefined;

definePlugin({
  effects: {
    "email.send": async (
      args: { to: string; subject: string; text: string },
      ctx,
    ) => {
      try {
        return await sendMail(
          {
            host: String(ctx.config.host),
            port: Number(ctx.config.port),
            username: optionalString(ctx.config.username),
            password: optionalString(ctx.config.password),
          },
          {
            from: String(ctx.config.from),
            to: args.to,
            subject: args.subject,
            text: args.text,
            messageId: `<${messageIdLocalPart(ctx.idempotencyKey)}@keel.local>`,
          },
        );
      } catch (error) {
        throw toPluginError(error);
      }
    },
  },
  health: () => true,
});

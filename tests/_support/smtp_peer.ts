/**
 * @module
 * A real SMTP peer for tests: the `smtp-server` package on 127.0.0.1 with an
 * OS-chosen port. It records every accepted message; `holdData` makes it sit
 * on the DATA phase until released, so a test can crash Keel mid-send.
 */
import { SMTPServer } from "smtp-server";

/** One message the peer accepted. */
export interface Received {
  readonly from: string;
  readonly to: string[];
  readonly raw: string;
  readonly messageId?: string;
}

/** A running SMTP peer. */
export interface SmtpPeer {
  readonly host: string;
  readonly port: number;
  readonly received: Received[];
  /** Resolves when `count` messages have been accepted (or rejects after `timeoutMs`). */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** Start an SMTP peer on 127.0.0.1 (port 0 unless given). */
export const startSmtpPeer = async (options: { port?: number } = {}): Promise<SmtpPeer> => {
  const received: Received[] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    disableReverseLookup: true,
    logger: false,
    onData(stream, session, callback) {
      const chunks: Uint8Array[] = [];
      stream.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      stream.on("end", () => {
        const raw = new TextDecoder().decode(
          chunks.reduce((all, c) => {
            const next = new Uint8Array(all.length + c.length);
            next.set(all);
            next.set(c, all.length);
            return next;
          }, new Uint8Array()),
        );
        received.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          raw,
          messageId: /^Message-ID:\s*(\S+)/im.exec(raw)?.[1],
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const address = server.server.address() as { port: number };
  return {
    host: "127.0.0.1",
    port: address.port,
    received,
    async waitFor(count, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (received.length < count) {
        if (Date.now() > deadline) throw new Error(`SMTP peer got ${received.length} of ${count} messages`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
};

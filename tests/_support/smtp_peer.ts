/**
 * @module
 * A real SMTP peer for tests: the `smtp-server` package on 127.0.0.1 with an
 * OS-chosen port. It records every accepted message; `holdData` makes it sit
 * on the DATA phase until released, so a test can crash Keel mid-send.
 *
 * A message counts as received only once the peer has answered its DATA
 * phase (called smtp-server's callback, i.e. sent "250"). A held message
 * whose client hung up before `release()` is dropped, not recorded: the
 * sender never heard "accepted", so it was not delivered. `dataDelayMs` makes
 * a slow server: each DATA phase is answered after a delay, with the same
 * rule (a sender gone by then is dropped). `answerDelayMs` opens the other
 * window (RFC 1047's): the message is recorded first and "250" is sent only
 * after the delay, so a sender killed meanwhile never learns it was
 * delivered. (smtp-server does not tell an `onData` handler that its client
 * left after the message was read in full, so the peer tracks open sessions
 * itself through `onClose`.)
 */
import { SMTPServer } from "smtp-server";

/** One message the peer accepted. */
export interface Received {
  readonly from: string;
  readonly to: string[];
  readonly raw: string;
  readonly messageId?: string;
}

/** Options for `startSmtpPeer`. */
export interface SmtpPeerOptions {
  /** Port to listen on (default: OS-chosen). */
  readonly port?: number;
  /** Do not answer the DATA phase until `release()` (default false). */
  readonly holdData?: boolean;
  /** Answer each DATA phase only after this many ms (a number, or a function drawn per message); default 0. */
  readonly dataDelayMs?: number | (() => number);
  /** Record each message, then wait this many ms (number or function) before answering "250"; default 0. */
  readonly answerDelayMs?: number | (() => number);
}

/** What `release()` did with the held messages. */
export interface Released {
  /** Answered "250" and recorded: their client was still connected. */
  readonly delivered: number;
  /** Not recorded: their client hung up before the peer answered. */
  readonly dropped: number;
}

/** A running SMTP peer. */
export interface SmtpPeer {
  readonly host: string;
  readonly port: number;
  readonly received: Received[];
  /** Connection errors seen, e.g. ECONNRESET from a sender killed mid-transaction. */
  readonly errors: Error[];
  /** Messages read in full and waiting for `release()` (only with `holdData`). */
  readonly held: number;
  /** Held (or delayed) messages dropped so far because their client hung up first. */
  readonly dropped: number;
  /** SMTP connections currently open. */
  readonly openConnections: number;
  /** Messages received for one recipient. */
  receivedFor(address: string): Received[];
  /**
   * Resolves when `count` messages have been accepted (or rejects after
   * `timeoutMs`). It resolves in the same turn of the peer's event loop that
   * recorded the message, before the peer reads anything more from the sender
   * (such as its QUIT), so a test can crash the sender right there.
   */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  /** Resolves when `count` messages are held (or rejects after `timeoutMs`). */
  waitForHeld(count: number, timeoutMs?: number): Promise<void>;
  /** Resolves when no SMTP connection is open (or rejects after `timeoutMs`). */
  waitForNoConnections(timeoutMs?: number): Promise<void>;
  /** Answer every held message whose client is still there, drop the rest, and stop holding. */
  release(): Released;
  /** Start holding DATA phases again. */
  hold(): void;
  close(): Promise<void>;
}

const concat = (chunks: Uint8Array[]): Uint8Array => {
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
};

/**
 * Resolve as soon as `done()` holds: checked whenever the peer's state changes
 * (so a waiter runs right after the change, before the peer's next I/O) and
 * every 20 ms; reject with `what()` after `timeoutMs`.
 */
const until = (
  changes: Set<() => void>,
  done: () => boolean,
  timeoutMs: number,
  what: () => string,
): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const check = () => {
      if (done()) {
        finish();
        resolve();
      } else if (Date.now() > deadline) {
        finish();
        reject(new Error(what()));
      } else {
        clearTimeout(timer);
        timer = setTimeout(check, 20);
      }
    };
    const finish = () => {
      clearTimeout(timer);
      changes.delete(check);
    };
    changes.add(check);
    check();
  });

interface Held {
  readonly sessionId: string;
  readonly message: Received;
  readonly callback: (err?: Error | null) => void;
}

/** Start an SMTP peer on 127.0.0.1 (port 0 unless given). */
export const startSmtpPeer = async (options: SmtpPeerOptions = {}): Promise<SmtpPeer> => {
  const received: Received[] = [];
  const open = new Set<string>();
  let holding = options.holdData ?? false;
  let held: Held[] = [];
  let dropped = 0;
  const delays = new Set<ReturnType<typeof setTimeout>>();
  const draw = (option: number | (() => number) | undefined) => () =>
    option === undefined ? 0 : typeof option === "number" ? option : option();
  const dataDelay = draw(options.dataDelayMs);
  const answerDelay = draw(options.answerDelayMs);
  /** Run `f` after `ms` (at once for 0); pending timers are cleared on close. */
  const later = (ms: number, f: () => void) => {
    if (ms <= 0) return f();
    const timer = setTimeout(() => {
      delays.delete(timer);
      f();
    }, ms);
    delays.add(timer);
  };
  const changes = new Set<() => void>();
  const changed = () => {
    for (const check of [...changes]) check();
  };
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    disableReverseLookup: true,
    logger: false,
    onConnect(session, callback) {
      open.add(session.id);
      callback();
    },
    onClose(session) {
      open.delete(session.id);
      changed();
    },
    onData(stream, session, callback) {
      const chunks: Uint8Array[] = [];
      stream.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      stream.on("error", () => {}); // the client left mid-message: nothing is recorded
      stream.on("end", () => {
        const raw = new TextDecoder().decode(concat(chunks));
        const message: Received = {
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          raw,
          messageId: /^Message-ID:\s*(\S+)/im.exec(raw)?.[1],
        };
        if (holding) {
          held.push({ sessionId: session.id, message, callback });
          changed();
          return;
        }
        const before = dataDelay();
        const after = answerDelay();
        if (before > 0 || after > 0) {
          later(before, () => {
            if (!open.has(session.id)) {
              dropped++;
              changed();
              return;
            }
            received.push(message);
            changed();
            // A sender that left meanwhile gets no answer: it never learns its message arrived.
            later(after, () => open.has(session.id) && callback());
          });
          return;
        }
        received.push(message);
        changed();
        callback();
      });
    },
  });
  // A sender killed mid-transaction resets its connection; smtp-server reports
  // that as an "error" event, which must not crash the test process.
  const errors: Error[] = [];
  server.on("error", (error: Error) => errors.push(error));
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const address = server.server.address() as { port: number };
  return {
    host: "127.0.0.1",
    port: address.port,
    received,
    errors,
    get held() {
      return held.length;
    },
    get dropped() {
      return dropped;
    },
    get openConnections() {
      return open.size;
    },
    receivedFor: (addr) => received.filter((m) => m.to.includes(addr)),
    waitFor: (count, timeoutMs = 10_000) =>
      until(
        changes,
        () => received.length >= count,
        timeoutMs,
        () => `SMTP peer got ${received.length} of ${count} messages`,
      ),
    waitForHeld: (count, timeoutMs = 10_000) =>
      until(
        changes,
        () => held.length >= count,
        timeoutMs,
        () => `SMTP peer holds ${held.length} of ${count} messages`,
      ),
    waitForNoConnections: (timeoutMs = 10_000) =>
      until(changes, () => open.size === 0, timeoutMs, () => `SMTP peer still has ${open.size} open connection(s)`),
    release() {
      holding = false;
      const now = held;
      held = [];
      let delivered = 0;
      for (const h of now) {
        if (!open.has(h.sessionId)) {
          dropped++;
          continue;
        }
        received.push(h.message);
        delivered++;
        changed();
        h.callback();
      }
      return { delivered, dropped: now.length - delivered };
    },
    hold() {
      holding = true;
    },
    close: () =>
      new Promise<void>((resolve) => {
        holding = false;
        for (const timer of delays) clearTimeout(timer);
        delays.clear();
        for (const h of held) h.callback(new Error("SMTP peer is closing"));
        held = [];
        server.close(() => resolve());
      }),
  };
};

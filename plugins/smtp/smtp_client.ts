/**
 * @module
 * A small SMTP client over plain TCP (`Deno.connect`), written for the smtp
 * connector plugin. The plugin runs in a Worker whose only permission is
 * network access to the operator's SMTP server, so an npm mail library
 * (which reads files, env and the hostname) cannot run there. This client
 * needs nothing but that one socket: it speaks EHLO (falling back to HELO),
 * AUTH PLAIN when credentials are given and the server offers AUTH, MAIL,
 * RCPT, DATA (CRLF line endings, dot-stuffed) and QUIT, parses multi-line
 * replies, puts a timeout on every read, and turns every unexpected reply
 * into an {@linkcode SmtpError} that says which step failed and why.
 * No TLS: use it with a local relay or a trusted network.
 */

/** Where to deliver: the SMTP server and, optionally, how to log in and how long to wait. */
export interface SmtpServer {
  /** Host name or IP address of the SMTP server. */
  readonly host: string;
  /** TCP port of the SMTP server (often 25 or 587). */
  readonly port: number;
  /** User for AUTH PLAIN; used only together with `password`. */
  readonly username?: string;
  /** Password for AUTH PLAIN; never appears in error messages. */
  readonly password?: string;
  /** How long to wait for connecting and for each read or write, in ms (default 10 000). */
  readonly timeoutMs?: number;
  /** Name given in EHLO/HELO; defaults to the address literal of the local socket. */
  readonly clientName?: string;
}

/** One plain-text message to send. */
export interface MailMessage {
  /** Sender: `a@b.c` or `Name <a@b.c>`; the address is also the envelope sender. */
  readonly from: string;
  /** One recipient address or several. */
  readonly to: string | ReadonlyArray<string>;
  /** Subject line; non-ASCII text is RFC 2047 encoded, line breaks become spaces. */
  readonly subject: string;
  /** The plain-text body (any line endings; sent as CRLF). */
  readonly text: string;
  /** Message-ID header value, with or without the surrounding `<` `>`. */
  readonly messageId: string;
  /** Date header value; defaults to now. */
  readonly date?: Date;
}

/** What the server accepted. */
export interface SendResult {
  /** The Message-ID header that was sent, with angle brackets. */
  readonly messageId: string;
  /** The recipients the server accepted (all of them, or the send fails). */
  readonly accepted: string[];
  /** The server's final reply to the message, e.g. `250 OK: message queued`. */
  readonly response: string;
}

/** An SMTP failure: an unexpected reply, a dropped connection or a timeout. */
export class SmtpError extends Error {
  /**
   * True when the whole message had been sent and no reply came (a timeout,
   * a dropped connection, a garbled answer): the server may have accepted it.
   */
  outcomeUnknown = false;

  /** Build an error; `code` is the SMTP reply code, or 0 when there was no reply. */
  constructor(
    message: string,
    readonly code: number,
    readonly stage: string,
    readonly permanent: boolean = code >= 500 && code < 600,
  ) {
    super(message);
    this.name = "SmtpError";
  }
}

/** One parsed SMTP reply: its code and its text lines (without the code). */
export interface SmtpReply {
  /** Three-digit reply code. */
  readonly code: number;
  /** The text of each line of the reply, without the code and separator. */
  readonly lines: string[];
}

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_LINE_BYTES = 64 * 1024;
const MAX_REPLY_LINES = 1000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const replyText = (reply: SmtpReply): string => `${reply.code} ${reply.lines.join(" ").trim()}`.trim();

const isCapabilityError = (error: unknown): boolean =>
  error instanceof Deno.errors.NotCapable ||
  error instanceof Deno.errors.PermissionDenied;

/**
 * A line-oriented view of one TCP connection, with a deadline on every
 * read and write. A timeout closes the connection.
 */
class Session {
  #buffer = new Uint8Array(0);
  #closed = false;

  constructor(
    private readonly conn: Deno.Conn,
    private readonly timeoutMs: number,
  ) {}

  /** Run one socket operation under the deadline; `waitingFor` names it in the timeout message. */
  async #withDeadline<T>(
    operation: Promise<T>,
    waitingFor: string,
  ): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(
          new SmtpError(
            `SMTP server did not answer within ${this.timeoutMs} ms (${waitingFor})`,
            0,
            "timeout",
            false,
          ),
        );
      }, this.timeoutMs);
    });
    try {
      return await Promise.race([operation, deadline]);
    } catch (error) {
      if (error instanceof SmtpError && error.stage === "timeout") {
        operation.catch(() => {}); // the socket read/write fails once closed
        this.close();
        throw error;
      }
      if (error instanceof SmtpError || isCapabilityError(error)) throw error;
      throw new SmtpError(
        `Connection to the SMTP server failed (${waitingFor}): ${error instanceof Error ? error.message : error}`,
        0,
        "connection",
        false,
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /** Read one line (without its CRLF). */
  async readLine(waitingFor: string): Promise<string> {
    while (true) {
      const lf = this.#buffer.indexOf(0x0a);
      if (lf >= 0) {
        const end = lf > 0 && this.#buffer[lf - 1] === 0x0d ? lf - 1 : lf;
        const line = decoder.decode(this.#buffer.subarray(0, end));
        this.#buffer = this.#buffer.slice(lf + 1);
        return line;
      }
      if (this.#buffer.length > MAX_LINE_BYTES) {
        throw new SmtpError(
          `SMTP server sent a reply line longer than ${MAX_LINE_BYTES} bytes`,
          0,
          "protocol",
          false,
        );
      }
      const chunk = new Uint8Array(16 * 1024);
      const n = await this.#withDeadline(this.conn.read(chunk), waitingFor);
      if (n === null) {
        throw new SmtpError(
          `SMTP server closed the connection (${waitingFor})`,
          0,
          "connection",
          false,
        );
      }
      const merged = new Uint8Array(this.#buffer.length + n);
      merged.set(this.#buffer);
      merged.set(chunk.subarray(0, n), this.#buffer.length);
      this.#buffer = merged;
    }
  }

  /** Read one reply, joining the lines of a multi-line (`250-…` / `250 …`) reply. */
  async readReply(waitingFor: string): Promise<SmtpReply> {
    const lines: string[] = [];
    let code: number | undefined;
    while (true) {
      const line = await this.readLine(waitingFor);
      const match = /^(\d{3})(?:([ -])(.*))?$/.exec(line);
      if (!match) {
        throw new SmtpError(
          `SMTP server sent a malformed reply line (${waitingFor}): ${JSON.stringify(line.slice(0, 200))}`,
          0,
          "protocol",
          false,
        );
      }
      const lineCode = Number(match[1]);
      if (code !== undefined && lineCode !== code) {
        throw new SmtpError(
          `SMTP server mixed reply codes ${code} and ${lineCode} in one reply (${waitingFor})`,
          0,
          "protocol",
          false,
        );
      }
      code = lineCode;
      lines.push(match[3] ?? "");
      if (match[2] !== "-") return { code, lines };
      if (lines.length >= MAX_REPLY_LINES) {
        throw new SmtpError(
          `SMTP server sent a reply of more than ${MAX_REPLY_LINES} lines`,
          0,
          "protocol",
          false,
        );
      }
    }
  }

  /** Write all of `data`. */
  async write(data: string | Uint8Array, waitingFor: string): Promise<void> {
    let bytes = typeof data === "string" ? encoder.encode(data) : data;
    while (bytes.length > 0) {
      const n = await this.#withDeadline(this.conn.write(bytes), waitingFor);
      bytes = bytes.subarray(n);
    }
  }

  /** Send one command line and read its reply. */
  async command(line: string, waitingFor: string): Promise<SmtpReply> {
    await this.write(`${line}\r\n`, waitingFor);
    return await this.readReply(waitingFor);
  }

  /** Close the socket (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed by the peer or by a timeout
    }
  }
}

/** Fail with a clear SmtpError unless the reply has one of the expected codes. */
const expect = (
  reply: SmtpReply,
  expected: ReadonlyArray<number>,
  stage: string,
  what: string,
): SmtpReply => {
  if (expected.includes(reply.code)) return reply;
  throw new SmtpError(
    `SMTP server rejected ${what}: ${replyText(reply)}`,
    reply.code,
    stage,
  );
};

/** True if `value` holds a C0 control character or DEL. */
const hasControlCharacter = (value: string): boolean =>
  Array.from(value).some((char) => char.charCodeAt(0) < 0x20 || char.charCodeAt(0) === 0x7f);

/** Extract the bare address from `a@b.c` or `Name <a@b.c>`, refusing anything that could inject commands. */
export function envelopeAddress(value: string): string {
  const angle = /<([^<>]*)>\s*$/.exec(value);
  const address = (angle ? angle[1] : value).trim();
  if (
    !/^[^@\s<>]+@[^@\s<>]+$/.test(address) || hasControlCharacter(address)
  ) {
    throw new TypeError(`Not a usable email address: ${JSON.stringify(value)}`);
  }
  return address;
}

const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = [
  "Jan",
  "Feb",
  "Mar",
  "Apr",
  "May",
  "Jun",
  "Jul",
  "Aug",
  "Sep",
  "Oct",
  "Nov",
  "Dec",
];
const pad2 = (n: number) => String(n).padStart(2, "0");

/** Format a date as an RFC 5322 date-time in UTC, e.g. `Thu, 13 Feb 1997 23:32:00 +0000`. */
export function formatDate(date: Date): string {
  return `${WEEKDAYS[date.getUTCDay()]}, ${date.getUTCDate()} ${MONTHS[date.getUTCMonth()]} ${date.getUTCFullYear()} ` +
    `${pad2(date.getUTCHours())}:${pad2(date.getUTCMinutes())}:${pad2(date.getUTCSeconds())} +0000`;
}

const base64 = (bytes: Uint8Array): string => {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
};

/** RFC 2047-encode a header value as short `=?UTF-8?B?…?=` words (never splitting a character) unless it is plain ASCII. */
export function encodeHeaderValue(value: string): string {
  // Plain ASCII stays as it is, unless a word is too long for a line (998 octets, RFC 5322) once folded at spaces.
  if (/^[\x20-\x7e]*$/.test(value) && !value.includes("=?") && !/[^ ]{900}/.test(value)) return value;
  const words: string[] = [];
  let chunk: number[] = [];
  for (const char of value) {
    const bytes = encoder.encode(char);
    // 39 bytes → 52 base64 characters + 12 of framing = 64, so even
    // "Subject: " plus the first word stays within 78 characters.
    if (chunk.length + bytes.length > 39) {
      words.push(`=?UTF-8?B?${base64(new Uint8Array(chunk))}?=`);
      chunk = [];
    }
    chunk.push(...bytes);
  }
  if (chunk.length > 0 || words.length === 0) {
    words.push(`=?UTF-8?B?${base64(new Uint8Array(chunk))}?=`);
  }
  return words.join("\r\n ");
}

/** Format `a@b.c` or `Name <a@b.c>` for a header: the name is quoted or RFC 2047 encoded as needed. */
const formatMailbox = (value: string): string => {
  const match = /^\s*(.*?)\s*<([^<>]+)>\s*$/.exec(value);
  if (!match) return envelopeAddress(value);
  const quoted = /^"(.*)"$/.exec(match[1]);
  const name = quoted ? quoted[1].replace(/\\(.)/g, "$1") : match[1];
  const address = envelopeAddress(`<${match[2]}>`);
  if (name.length === 0) return `<${address}>`;
  if (!/^[\x20-\x7e]*$/.test(name) || name.includes("=?")) {
    return `${encodeHeaderValue(name)} <${address}>`;
  }
  if (/^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]+$/.test(name)) {
    return `${name} <${address}>`;
  }
  return `"${name.replace(/(["\\])/g, "\\$1")}" <${address}>`;
};

/** Fold an unstructured ASCII header line at spaces so no line exceeds 78 characters when avoidable. */
const foldHeader = (name: string, value: string): string => {
  const line = `${name}: ${value}`;
  if (value.includes("\r\n") || line.length <= 78) return line;
  const out: string[] = [];
  let current = "";
  for (const word of line.split(/(?= )/)) {
    if (current.length > 0 && current.length + word.length > 78) {
      out.push(current);
      current = word;
    } else {
      current += word;
    }
  }
  out.push(current);
  return out.join("\r\n");
};

/** Encode text as quoted-printable (RFC 2045), lines of at most 76 characters, CRLF line breaks. */
export function quotedPrintable(text: string): string {
  const hex = (b: number) => `=${b.toString(16).toUpperCase().padStart(2, "0")}`;
  return text.split("\r\n").map((line) => {
    const bytes = encoder.encode(line);
    const out: string[] = [];
    let current = "";
    bytes.forEach((b, i) => {
      const last = i === bytes.length - 1;
      const literal = (b >= 33 && b <= 126 && b !== 61) ||
        ((b === 32 || b === 9) && !last);
      const token = literal ? String.fromCharCode(b) : hex(b);
      if (current.length + token.length > 75) {
        out.push(`${current}=`);
        current = "";
      }
      current += token;
    });
    out.push(current);
    return out.join("\r\n");
  }).join("\r\n");
}

/** Normalise all line endings to CRLF. */
const crlf = (text: string): string => text.replace(/\r\n|\r|\n/g, "\r\n");

/** Double a leading dot on every line so no line of the message can end DATA early (RFC 5321 §4.5.2). */
export function dotStuff(data: string): string {
  return data.replace(/(^|\r\n)\./g, "$1..");
}

/** How the body travels: 8bit needs the server's 8BITMIME and lines of at most 998 bytes. */
export type BodyEncoding = "8bit" | "quoted-printable";

/** Build the message (headers, blank line, body) with CRLF line endings, before dot-stuffing. */
export function buildMessage(
  mail: MailMessage,
  encoding: BodyEncoding = "8bit",
): string {
  const recipients = typeof mail.to === "string" ? [mail.to] : [...mail.to];
  for (const value of [mail.from, ...recipients]) {
    if (/[\r\n]/.test(value)) {
      throw new TypeError(
        `Address contains a line break: ${JSON.stringify(value)}`,
      );
    }
  }
  const messageId = normaliseMessageId(mail.messageId);
  const subject = mail.subject.replace(/\s*(?:\r\n|\r|\n)\s*/g, " ");
  const body = crlf(mail.text);
  const headers = [
    foldHeader("From", formatMailbox(mail.from)),
    foldHeader("To", recipients.map(formatMailbox).join(", ")),
    foldHeader("Subject", encodeHeaderValue(subject)),
    `Date: ${formatDate(mail.date ?? new Date())}`,
    `Message-ID: ${messageId}`,
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    `Content-Transfer-Encoding: ${encoding}`,
  ];
  const encodedBody = encoding === "8bit" ? body : quotedPrintable(body);
  return `${headers.join("\r\n")}\r\n\r\n${encodedBody}`;
}

/** Wrap a Message-ID in angle brackets and refuse whitespace or control characters. */
const normaliseMessageId = (value: string): string => {
  const bare = value.trim().replace(/^<(.*)>$/, "$1");
  if (bare.length === 0 || /[\s<>]/.test(bare) || hasControlCharacter(bare)) {
    throw new TypeError(`Not a usable Message-ID: ${JSON.stringify(value)}`);
  }
  return `<${bare}>`;
};

const hasLongLine = (text: string): boolean =>
  crlf(text).split("\r\n").some((line) => encoder.encode(line).length > 998);

/** Address literal for the local end of the socket, used as the EHLO name. */
const localName = (conn: Deno.Conn): string => {
  const addr = conn.localAddr as Deno.NetAddr;
  if (!addr?.hostname) return "[127.0.0.1]";
  return addr.hostname.includes(":") ? `[IPv6:${addr.hostname}]` : `[${addr.hostname}]`;
};

/** Open a TCP connection, with a deadline; NotCapable (no net permission) propagates untouched. */
const connect = async (
  server: SmtpServer,
  timeoutMs: number,
): Promise<Deno.Conn> => {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    return await Deno.connect({
      hostname: server.host,
      port: server.port,
      transport: "tcp",
      signal: controller.signal,
    });
  } catch (error) {
    if (isCapabilityError(error)) throw error;
    if (controller.signal.aborted) {
      throw new SmtpError(
        `Could not connect to SMTP server ${server.host}:${server.port} within ${timeoutMs} ms`,
        0,
        "timeout",
        false,
      );
    }
    throw new SmtpError(
      `Could not connect to SMTP server ${server.host}:${server.port}: ${
        error instanceof Error ? error.message : error
      }`,
      0,
      "connect",
      false,
    );
  } finally {
    clearTimeout(timer);
  }
};

/** Say hello: EHLO, or HELO if the server does not know EHLO. Returns the advertised extensions. */
const greet = async (
  session: Session,
  name: string,
): Promise<Map<string, string[]>> => {
  const ehlo = await session.command(`EHLO ${name}`, "reply to EHLO");
  if (ehlo.code === 250) {
    const extensions = new Map<string, string[]>();
    for (const line of ehlo.lines.slice(1)) {
      const [keyword, ...params] = line.trim().split(/\s+/);
      if (keyword) {
        extensions.set(
          keyword.toUpperCase(),
          params.map((p) => p.toUpperCase()),
        );
      }
    }
    return extensions;
  }
  if (ehlo.code < 500) {
    expect(ehlo, [250], "EHLO", `EHLO ${JSON.stringify(name)}`);
  }
  const helo = await session.command(`HELO ${name}`, "reply to HELO");
  expect(helo, [250], "HELO", `HELO ${JSON.stringify(name)}`);
  return new Map();
};

/** Send one message and return what the server accepted; any unexpected reply throws {@linkcode SmtpError}. */
export async function sendMail(
  server: SmtpServer,
  mail: MailMessage,
): Promise<SendResult> {
  const timeoutMs = server.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const recipients = (typeof mail.to === "string" ? [mail.to] : [...mail.to])
    .map(envelopeAddress);
  if (recipients.length === 0) {
    throw new TypeError("sendMail() needs at least one recipient");
  }
  const sender = envelopeAddress(mail.from);
  if (server.clientName !== undefined && !/^[!-~]+$/.test(server.clientName)) {
    throw new TypeError(
      `Not a usable EHLO name: ${JSON.stringify(server.clientName)}`,
    );
  }
  const messageId = normaliseMessageId(mail.messageId);
  // Build once up front so malformed input fails before any connection is made.
  buildMessage(mail);

  const conn = await connect(server, timeoutMs);
  const session = new Session(conn, timeoutMs);
  try {
    const greeting = await session.readReply("greeting");
    if (greeting.code !== 220) {
      throw new SmtpError(
        `SMTP server ${server.host}:${server.port} refused the session: ${replyText(greeting)}`,
        greeting.code,
        "greeting",
      );
    }
    const extensions = await greet(
      session,
      server.clientName ?? localName(conn),
    );

    if (
      server.username !== undefined && server.password !== undefined &&
      extensions.has("AUTH")
    ) {
      const mechanisms = extensions.get("AUTH") ?? [];
      if (!mechanisms.includes("PLAIN")) {
        throw new SmtpError(
          `SMTP server does not offer AUTH PLAIN (it offers: ${mechanisms.join(" ") || "nothing"})`,
          0,
          "AUTH",
          true,
        );
      }
      const token = base64(
        encoder.encode(`\0${server.username}\0${server.password}`),
      );
      const auth = await session.command(
        `AUTH PLAIN ${token}`,
        "reply to AUTH PLAIN",
      );
      expect(
        auth,
        [235],
        "AUTH",
        `AUTH PLAIN for user ${JSON.stringify(server.username)}`,
      );
    }

    const eightBit = extensions.has("8BITMIME") && !hasLongLine(mail.text);
    const message = buildMessage(mail, eightBit ? "8bit" : "quoted-printable");

    const mailFrom = `MAIL FROM:<${sender}>${eightBit ? " BODY=8BITMIME" : ""}`;
    expect(
      await session.command(mailFrom, "reply to MAIL FROM"),
      [250],
      "MAIL",
      `MAIL FROM ${JSON.stringify(sender)}`,
    );
    for (const recipient of recipients) {
      const reply = await session.command(
        `RCPT TO:<${recipient}>`,
        "reply to RCPT TO",
      );
      expect(reply, [250, 251], "RCPT", `RCPT TO ${JSON.stringify(recipient)}`);
    }
    expect(
      await session.command("DATA", "reply to DATA"),
      [354],
      "DATA",
      "DATA",
    );
    // A message ending in CRLF needs only ".\r\n"; otherwise end its last line first.
    const terminator = message.endsWith("\r\n") ? ".\r\n" : "\r\n.\r\n";
    await session.write(
      `${dotStuff(message)}${terminator}`,
      "sending the message",
    );
    // The server has the whole message now: without its answer, nobody can tell whether it was accepted.
    const reply = await session.readReply("reply to the message").catch((error) => {
      if (error instanceof SmtpError && error.code === 0) error.outcomeUnknown = true;
      throw error;
    });
    const final = expect(reply, [250], "DATA", "the message after DATA");

    // The message is accepted now; a failed goodbye changes nothing.
    await session.command("QUIT", "reply to QUIT").catch(() => {});
    return { messageId, accepted: recipients, response: replyText(final) };
  } catch (error) {
    // After a rejection the session is still in step: end it politely.
    if (error instanceof SmtpError && error.code > 0) {
      await session.command("QUIT", "reply to QUIT").catch(() => {});
    }
    throw error;
  } finally {
    session.close();
  }
}

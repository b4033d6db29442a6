/**
 * @module
 * Tests for the smtp plugin's client against a real SMTP server (the
 * `smtp-server` package on 127.0.0.1), a scripted server for the corners a
 * real one will not show (HELO only, silence), and inside Workers holding
 * only `net` permission for that one server, as the plugin host runs it.
 */
import assert from "node:assert/strict";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { buildMessage, dotStuff, formatDate, sendMail, SmtpError } from "../../plugins/smtp/smtp_client.ts";

interface Received {
  readonly from: string;
  readonly to: string[];
  readonly raw: string;
}

interface TestServer {
  readonly port: number;
  readonly received: Received[];
  close(): Promise<void>;
}

/** Start a real smtp-server on 127.0.0.1 with an OS-chosen port; it records every message. */
async function startServer(
  options: SMTPServerOptions = {},
): Promise<TestServer> {
  const received: Received[] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    logger: false,
    onData(stream, session, callback) {
      const chunks: Uint8Array[] = [];
      stream.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      stream.on("end", () => {
        const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
        let offset = 0;
        for (const chunk of chunks) {
          bytes.set(chunk, offset);
          offset += chunk.length;
        }
        received.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: new TextDecoder().decode(bytes),
        });
        callback();
      });
    },
    ...options,
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.server.address();
  assert.ok(address && typeof address === "object");
  return {
    port: address.port,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Split a received message into unfolded headers (lower-cased names) and body. */
function parse(raw: string): { headers: Map<string, string>; body: string } {
  const split = raw.indexOf("\r\n\r\n");
  assert.ok(split > 0, "message has a header/body separator");
  const headers = new Map<string, string>();
  for (
    const line of raw.slice(0, split).replace(/\r\n(?=[ \t])/g, "").split(
      "\r\n",
    )
  ) {
    const colon = line.indexOf(":");
    headers.set(
      line.slice(0, colon).toLowerCase(),
      line.slice(colon + 1).trim(),
    );
  }
  return { headers, body: raw.slice(split + 4) };
}

/** Decode a header made of RFC 2047 `=?UTF-8?B?…?=` words (whitespace between words is dropped). */
function decodeWords(value: string): string {
  const words = [...value.matchAll(/=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=/gi)];
  assert.ok(words.length > 0, `expected encoded words in ${value}`);
  assert.equal(
    value.replace(/=\?UTF-8\?B\?[A-Za-z0-9+/=]*\?=/gi, "").trim(),
    "",
    "nothing but encoded words",
  );
  return words.map((w) =>
    new TextDecoder().decode(
      Uint8Array.from(atob(w[1]), (c) => c.charCodeAt(0)),
    )
  ).join("");
}

/** A port nothing listens on: bind one, then let it go. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

const crlf = (text: string) => text.replace(/\r\n|\r|\n/g, "\r\n");

const baseMail = {
  from: "Keel <keel@example.com>",
  to: "alice@example.com",
  subject: "Hello",
  text: "Hi Alice,\nthis is Keel.\n",
  messageId: "<run-1.step-2@keel.local>",
};

Deno.test("`sendMail()` delivers one message with its headers", async () => {
  const server = await startServer();
  try {
    const date = new Date(Date.UTC(2026, 0, 2, 3, 4, 5));
    const result = await sendMail({ host: "127.0.0.1", port: server.port }, {
      ...baseMail,
      date,
    });

    assert.equal(result.messageId, "<run-1.step-2@keel.local>");
    assert.deepEqual(result.accepted, ["alice@example.com"]);
    assert.match(result.response, /^250 /);

    assert.equal(server.received.length, 1);
    const [message] = server.received;
    assert.equal(message.from, "keel@example.com");
    assert.deepEqual(message.to, ["alice@example.com"]);
    const { headers, body } = parse(message.raw);
    assert.equal(headers.get("from"), "Keel <keel@example.com>");
    assert.equal(headers.get("to"), "alice@example.com");
    assert.equal(headers.get("subject"), "Hello");
    assert.equal(headers.get("date"), "Fri, 2 Jan 2026 03:04:05 +0000");
    assert.equal(headers.get("message-id"), "<run-1.step-2@keel.local>");
    assert.equal(headers.get("mime-version"), "1.0");
    assert.equal(headers.get("content-type"), "text/plain; charset=utf-8");
    assert.equal(headers.get("content-transfer-encoding"), "8bit");
    assert.equal(body, "Hi Alice,\r\nthis is Keel.\r\n");
  } finally {
    await server.close();
  }
});

Deno.test("`sendMail()` dot-stuffs so lines starting with a dot survive intact", async () => {
  const server = await startServer();
  try {
    const text = ".starts with a dot\n.\n..two dots\nmiddle . dot\n.";
    await sendMail({ host: "127.0.0.1", port: server.port }, {
      ...baseMail,
      text,
    });
    const { body } = parse(server.received[0].raw);
    assert.equal(body.replace(/\r\n$/, ""), crlf(text));
  } finally {
    await server.close();
  }
});

Deno.test("`dotStuff()` doubles every leading dot and nothing else", () => {
  assert.equal(dotStuff(".a\r\nb.c\r\n.\r\n..d"), "..a\r\nb.c\r\n..\r\n...d");
});

Deno.test("`sendMail()` encodes a non-ASCII subject so it decodes back, and keeps a UTF-8 body", async () => {
  const server = await startServer();
  try {
    const subject = "Grüße aus Zürich — 日本語のテキストも長く続きます ✓ and some ASCII at the end";
    const text = "Prüfung bestanden: ✓\n";
    await sendMail({ host: "127.0.0.1", port: server.port }, {
      ...baseMail,
      subject,
      text,
    });
    const raw = server.received[0].raw;
    const headerBlock = raw.slice(0, raw.indexOf("\r\n\r\n"));
    assert.match(headerBlock, /^\p{ASCII}*$/u, "headers are pure ASCII");
    for (const line of headerBlock.split("\r\n")) {
      assert.ok(line.length <= 78, `line too long: ${line}`);
    }
    const { headers, body } = parse(raw);
    assert.match(headers.get("subject")!, /^=\?UTF-8\?B\?/);
    assert.equal(decodeWords(headers.get("subject")!), subject);
    assert.equal(body, crlf(text));
  } finally {
    await server.close();
  }
});

Deno.test("`sendMail()` delivers to several recipients in one transaction", async () => {
  const server = await startServer();
  try {
    const to = ["alice@example.com", "bob@example.org", "carol@example.net"];
    const result = await sendMail({ host: "127.0.0.1", port: server.port }, {
      ...baseMail,
      to,
    });
    assert.deepEqual(result.accepted, to);
    assert.equal(server.received.length, 1);
    assert.deepEqual(server.received[0].to, to);
    assert.equal(
      parse(server.received[0].raw).headers.get("to"),
      to.join(", "),
    );
  } finally {
    await server.close();
  }
});

Deno.test("`sendMail()` raises a permanent SmtpError at RCPT when the server rejects a recipient", async () => {
  const server = await startServer({
    onRcptTo(address, _session, callback) {
      if (address.address === "nobody@example.com") {
        return callback(
          Object.assign(new Error("no such user"), { responseCode: 550 }),
        );
      }
      callback();
    },
  });
  try {
    await assert.rejects(
      sendMail({ host: "127.0.0.1", port: server.port }, {
        ...baseMail,
        to: ["alice@example.com", "nobody@example.com"],
      }),
      (error: unknown) => {
        assert.ok(error instanceof SmtpError);
        assert.equal(error.code, 550);
        assert.equal(error.stage, "RCPT");
        assert.equal(error.permanent, true);
        assert.equal(
          error.message,
          'SMTP server rejected RCPT TO "nobody@example.com": 550 no such user',
        );
        return true;
      },
    );
    assert.equal(server.received.length, 0, "nothing was delivered");
  } finally {
    await server.close();
  }
});

Deno.test("`sendMail()` raises a transient SmtpError when the connection is refused", async () => {
  const port = freePort();
  await assert.rejects(
    sendMail({ host: "127.0.0.1", port }, baseMail),
    (error: unknown) => {
      assert.ok(error instanceof SmtpError);
      assert.equal(error.stage, "connect");
      assert.equal(error.code, 0);
      assert.equal(error.permanent, false);
      assert.match(
        error.message,
        new RegExp(`^Could not connect to SMTP server 127\\.0\\.0\\.1:${port}`),
      );
      return true;
    },
  );
});

Deno.test("`sendMail()` logs in with AUTH PLAIN when the server requires it", async () => {
  const logins: string[] = [];
  const server = await startServer({
    authOptional: false,
    authMethods: ["PLAIN"],
    onAuth(auth, _session, callback) {
      logins.push(`${auth.method} ${auth.username}`);
      if (auth.username === "keel" && auth.password === "s3cret pässword") {
        return callback(null, { user: "keel" });
      }
      callback(
        Object.assign(new Error("Invalid username or password"), {
          responseCode: 535,
        }),
      );
    },
  });
  try {
    const server_ = { host: "127.0.0.1", port: server.port };
    const result = await sendMail({
      ...server_,
      username: "keel",
      password: "s3cret pässword",
    }, baseMail);
    assert.deepEqual(result.accepted, ["alice@example.com"]);
    assert.equal(server.received.length, 1);
    assert.deepEqual(logins, ["PLAIN keel"]);

    await assert.rejects(
      sendMail({ ...server_, username: "keel", password: "wrong" }, baseMail),
      (error: unknown) => {
        assert.ok(error instanceof SmtpError);
        assert.equal(error.stage, "AUTH");
        assert.equal(error.code, 535);
        assert.equal(error.permanent, true);
        assert.doesNotMatch(
          error.message,
          /wrong/,
          "the password is not in the message",
        );
        return true;
      },
    );

    await assert.rejects(sendMail(server_, baseMail), (error: unknown) => {
      assert.ok(error instanceof SmtpError);
      assert.equal(error.stage, "MAIL");
      assert.equal(error.code, 530);
      return true;
    });
    assert.equal(server.received.length, 1);
  } finally {
    await server.close();
  }
});

/**
 * A scripted server on a raw Deno listener: `script` answers each command
 * line (null = say nothing); it returns what the client sent.
 */
async function scripted(
  greeting: string | null,
  script: (line: string) => string | null,
  run: (port: number) => Promise<void>,
): Promise<string[]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const lines: string[] = [];
  const serve = (async () => {
    const conn = await listener.accept();
    const encoder = new TextEncoder();
    const say = async (text: string | null) => {
      if (text !== null) await conn.write(encoder.encode(text));
    };
    try {
      await say(greeting);
      let buffer = "";
      let inData = false;
      for await (const chunk of conn.readable) {
        buffer += new TextDecoder().decode(chunk);
        while (true) {
          if (inData) {
            const end = buffer.indexOf("\r\n.\r\n");
            if (end < 0) break;
            lines.push(buffer.slice(0, end + 2));
            buffer = buffer.slice(end + 5);
            inData = false;
            await say("250 2.0.0 queued as X1\r\n");
            continue;
          }
          const eol = buffer.indexOf("\r\n");
          if (eol < 0) break;
          const line = buffer.slice(0, eol);
          buffer = buffer.slice(eol + 2);
          lines.push(line);
          const answer = script(line);
          if (answer?.startsWith("354")) inData = true;
          await say(answer);
        }
      }
    } catch {
      // the client hung up
    } finally {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
  })();
  try {
    await run((listener.addr as Deno.NetAddr).port);
  } finally {
    listener.close();
    await serve;
  }
  return lines;
}

Deno.test("`sendMail()` falls back to HELO and quoted-printable when the server does not speak EHLO", async () => {
  const text = "Grüße ✓ with a line ending in a space \nand = sign\n";
  const sent = await scripted("220 old.example.com ready\r\n", (line) => {
    if (line.startsWith("EHLO")) return "502 5.5.2 command not recognised\r\n";
    if (line.startsWith("HELO")) return "250 old.example.com\r\n";
    if (line === "DATA") return "354 go ahead\r\n";
    if (line === "QUIT") return "221 bye\r\n";
    return "250 ok\r\n";
  }, async (port) => {
    const result = await sendMail({
      host: "127.0.0.1",
      port,
      clientName: "client.test",
    }, { ...baseMail, text });
    assert.equal(result.response, "250 2.0.0 queued as X1");
  });
  assert.deepEqual(sent.slice(0, 4), [
    "EHLO client.test",
    "HELO client.test",
    "MAIL FROM:<keel@example.com>",
    "RCPT TO:<alice@example.com>",
  ]);
  const { headers, body } = parse(sent[5]);
  assert.equal(headers.get("content-transfer-encoding"), "quoted-printable");
  assert.match(body, /^\p{ASCII}*$/u);
  const decoded = new TextDecoder().decode(
    Uint8Array.from(
      body.replace(/=\r\n/g, "").replace(
        /=([0-9A-F]{2})/g,
        (_, h) => String.fromCharCode(parseInt(h, 16)),
      ),
      (c) => c.charCodeAt(0),
    ),
  );
  assert.equal(decoded, crlf(text));
  assert.equal(sent.at(-1), "QUIT");
});

Deno.test("`sendMail()` parses multi-line replies and sends BODY=8BITMIME only when offered", async () => {
  const sent = await scripted(
    "220-mx.example.com first line\r\n220 second line\r\n",
    (line) => {
      if (
        line.startsWith("EHLO")
      ) {
        return "250-mx.example.com hello\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 HELP\r\n";
      }
      if (line === "DATA") return "354 go ahead\r\n";
      if (line === "QUIT") return "221 bye\r\n";
      return "250 ok\r\n";
    },
    async (port) => {
      await sendMail({ host: "127.0.0.1", port }, baseMail);
    },
  );
  assert.equal(sent[0], "EHLO [127.0.0.1]");
  assert.equal(sent[1], "MAIL FROM:<keel@example.com> BODY=8BITMIME");
});

Deno.test("`sendMail()` raises SmtpError stage timeout when the server stays silent", async () => {
  await scripted(null, () => null, async (port) => {
    const started = Date.now();
    await assert.rejects(
      sendMail({ host: "127.0.0.1", port, timeoutMs: 200 }, baseMail),
      (error: unknown) => {
        assert.ok(error instanceof SmtpError);
        assert.equal(error.stage, "timeout");
        assert.equal(error.permanent, false);
        assert.match(
          error.message,
          /did not answer within 200 ms \(greeting\)/,
        );
        return true;
      },
    );
    assert.ok(Date.now() - started < 5000);
  });
});

Deno.test("`buildMessage()` refuses header injection and formats dates per RFC 5322", () => {
  assert.throws(
    () => buildMessage({ ...baseMail, to: "a@example.com\r\nBcc: x@evil.example" }),
    TypeError,
  );
  assert.throws(
    () => buildMessage({ ...baseMail, messageId: "<a b@c>" }),
    TypeError,
  );
  const message = buildMessage({
    ...baseMail,
    subject: "one\r\nBcc: x@evil.example",
  });
  assert.doesNotMatch(message, /^Bcc:/m);
  assert.equal(
    formatDate(new Date(Date.UTC(1997, 1, 13, 23, 32, 0))),
    "Thu, 13 Feb 1997 23:32:00 +0000",
  );
});

Deno.test("`buildMessage()` keeps every line within 998 octets, even for a subject that is one long word", () => {
  const word = "x".repeat(998);
  const message = buildMessage({ ...baseMail, subject: `Re: ${word}` });
  const lines = message.split("\r\n\r\n")[0].split("\r\n");
  for (const line of lines) assert.ok(line.length <= 998, `a header line of ${line.length} octets`);
  const at = lines.findIndex((l) => l.startsWith("Subject: "));
  const words = [lines[at].slice("Subject: ".length)];
  for (let i = at + 1; lines[i]?.startsWith(" "); i++) words.push(lines[i].trim());
  const subject = words.map((w) => {
    const m = /^=\?UTF-8\?B\?([^?]*)\?=$/.exec(w);
    return m ? new TextDecoder().decode(Uint8Array.from(atob(m[1]), (c) => c.charCodeAt(0))) : w;
  }).join("");
  assert.equal(subject, `Re: ${word}`);
  // A subject of ordinary words stays plain ASCII.
  assert.match(buildMessage({ ...baseMail, subject: "Invoice 42 for March" }), /^Subject: Invoice 42 for March\r$/m);
});

type WorkerReply = {
  id: number;
  ok: boolean;
  result?: unknown;
  name?: string;
  message?: string;
  stage?: string;
};

Deno.test("`sendMail()` works in a Worker allowed only net to the server, and is denied any other port", async () => {
  const server = await startServer();
  const worker = new Worker(
    new URL("../fixtures/smtp_worker.ts", import.meta.url).href,
    {
      type: "module",
      deno: {
        permissions: {
          net: [`127.0.0.1:${server.port}`],
          read: false,
          write: false,
          env: false,
          run: false,
          ffi: false,
          sys: false,
          import: false,
        },
      },
    },
  );
  try {
    const replies = new Map<number, PromiseWithResolvers<WorkerReply>>();
    worker.onmessage = (event: MessageEvent<WorkerReply>) => replies.get(event.data.id)?.resolve(event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      for (const r of replies.values()) {
        r.reject(new Error(`worker failed: ${event.message}`));
      }
    };
    const call = (id: number, port: number) => {
      const reply = Promise.withResolvers<WorkerReply>();
      replies.set(id, reply);
      worker.postMessage({
        id,
        server: { host: "127.0.0.1", port },
        mail: baseMail,
      });
      return reply.promise;
    };

    const allowed = await call(1, server.port);
    assert.equal(allowed.ok, true, allowed.message);
    assert.deepEqual((allowed.result as { accepted: string[] }).accepted, [
      "alice@example.com",
    ]);
    assert.equal(server.received.length, 1);

    const denied = await call(2, 1); // port 1: never the ephemeral port the server got
    assert.equal(denied.ok, false);
    assert.equal(denied.name, "NotCapable", denied.message);
    assert.equal(denied.stage, undefined, "not wrapped in SmtpError");
  } finally {
    worker.terminate();
    await server.close();
  }
});

type PluginReply = {
  t: string;
  id?: number;
  effects?: string[];
  ok?: boolean;
  value?: unknown;
  error?: { tag: string; details?: unknown };
};

Deno.test("smtp plugin `email.send` runs as a Worker and maps failures to tagged errors", async () => {
  const server = await startServer({
    onRcptTo(address, _session, callback) {
      if (address.address.startsWith("nobody@")) {
        return callback(
          Object.assign(new Error("no such user"), { responseCode: 550 }),
        );
      }
      callback();
    },
  });
  const refused = freePort();
  const worker = new Worker(
    new URL("../../plugins/smtp/mod.ts", import.meta.url).href,
    {
      type: "module",
      deno: {
        permissions: {
          net: [`127.0.0.1:${server.port}`, `127.0.0.1:${refused}`],
          read: false,
          write: false,
          env: false,
          run: false,
          ffi: false,
          sys: false,
          import: false,
        },
      },
    },
  );
  try {
    const waiting = new Map<string, PromiseWithResolvers<PluginReply>>();
    const expectReply = (key: string) => {
      const w = Promise.withResolvers<PluginReply>();
      waiting.set(key, w);
      return w.promise;
    };
    worker.onmessage = (event: MessageEvent<PluginReply>) => {
      const key = event.data.t === "ready" ? "ready" : String(event.data.id);
      waiting.get(key)?.resolve(event.data);
    };
    worker.onerror = (event) => {
      event.preventDefault();
      for (const w of waiting.values()) {
        w.reject(new Error(`worker failed: ${event.message}`));
      }
    };
    const init = (port: number) => {
      const ready = expectReply("ready");
      worker.postMessage({
        t: "init",
        config: { host: "127.0.0.1", port, from: "Keel <keel@example.com>" },
      });
      return ready;
    };
    const send = (id: number, to: string) => {
      const reply = expectReply(String(id));
      worker.postMessage({
        t: "effect",
        id,
        name: "email.send",
        args: { to, subject: "Hi", text: "Hello" },
        idempotencyKey: `run:7/step ${id}`,
      });
      return reply;
    };

    assert.deepEqual((await init(server.port)).effects, ["email.send"]);
    const ok = await send(1, "alice@example.com");
    assert.equal(ok.ok, true);
    assert.deepEqual(ok.value, {
      messageId: "<run=3A7/step=201@keel.local>",
      accepted: ["alice@example.com"],
      response: (ok.value as { response: string }).response,
    });
    assert.equal(
      parse(server.received[0].raw).headers.get("message-id"),
      "<run=3A7/step=201@keel.local>",
    );

    const rejected = await send(2, "nobody@example.com");
    assert.equal(rejected.ok, false);
    assert.equal(rejected.error?.tag, "SmtpRejected");
    assert.deepEqual(rejected.error?.details, {
      code: 550,
      stage: "RCPT",
      permanent: true,
    });

    await init(refused);
    const unavailable = await send(3, "alice@example.com");
    assert.equal(unavailable.error?.tag, "SmtpUnavailable");
    assert.deepEqual(unavailable.error?.details, {
      code: 0,
      stage: "connect",
      permanent: false,
    });

    await init(1); // not in the Worker's net allow-list
    const denied = await send(4, "alice@example.com");
    assert.equal(denied.error?.tag, "PermissionDenied");
  } finally {
    worker.terminate();
    await server.close();
  }
});

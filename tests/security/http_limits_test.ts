/**
 * @module
 * What a local process (no token needed) can hold of Keel's HTTP server, over raw TCP on 127.0.0.1. `Deno.serve`
 * alone kept every one of these connections open for as long as the peer liked: one that sends nothing, one that sends
 * its headers a byte at a time, an idle keep-alive, a body that stalls. Keel closes each once it has had no request in
 * flight for `KEEL_HTTP_TIMEOUT_MS`, answers a stalled body 408 and closes its connection, keeps at most
 * `KEEL_MAX_CONNECTIONS` open (a new one closes the longest idle), and answers 503 with `Retry-After` when every one
 * has a request in flight. Deadlines here are generous: they say "eventually", not how fast.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN } from "../_support/keel.ts";
import { BodyDeadlines, startServer } from "../../core/http/mod.ts";

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A raw connection that records what the server sends and when it closes its end. */
const rawConnect = async (url: string) => {
  const port = Number(new URL(url).port);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let received = "";
  let closed = false;
  const reading = (async () => {
    const buf = new Uint8Array(4096);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        received += new TextDecoder().decode(buf.subarray(0, n));
      }
    } catch { /* reset by the server: closed too */ }
    closed = true;
  })();
  return {
    conn,
    write: (text: string) => conn.write(enc.encode(text)).then(() => true, () => false),
    get received() {
      return received;
    },
    get closed() {
      return closed;
    },
    /** Wait until the server closed the connection, or `ms` passed; whether it closed. */
    closedWithin: (ms: number) => Promise.race([reading.then(() => true), sleep(ms).then(() => closed)]),
    close: async () => {
      try {
        conn.close();
      } catch { /* already closed */ }
      await reading;
    },
  };
};

Deno.test("Keel closes a silent connection, a slowloris and an idle keep-alive after KEEL_HTTP_TIMEOUT_MS", async () => {
  const k = await startTestKeel({ httpTimeoutMs: 500 });
  const conns: Awaited<ReturnType<typeof rawConnect>>[] = [];
  try {
    const silent = await rawConnect(k.url);
    const loris = await rawConnect(k.url);
    const keepAlive = await rawConnect(k.url);
    conns.push(silent, loris, keepAlive);
    await keepAlive.write("GET /healthz HTTP/1.1\r\nHost: keel\r\n\r\n");
    // Headers a byte at a time, forever: no request is ever in flight.
    const header = `GET /healthz HTTP/1.1\r\nHost: keel\r\nX-Pad: ${"a".repeat(10_000)}`;
    let stop = false;
    const dripping = (async () => {
      for (const ch of header) {
        if (stop || loris.closed || !(await loris.write(ch))) return;
        await sleep(50);
      }
    })();
    const [a, b, c] = await Promise.all(conns.map((conn) => conn.closedWithin(20_000)));
    stop = true;
    await dripping;
    assert.equal(a, true, "a connection that sent nothing is still open");
    assert.equal(b, true, "a connection sending its headers a byte at a time is still open");
    assert.equal(c, true, "an idle keep-alive is still open");
    assert.match(keepAlive.received, /^HTTP\/1\.1 200/, "the keep-alive's request was answered first");
    assert.equal(silent.received, "");
  } finally {
    for (const c of conns) await c.close();
    await k.close();
  }
});

Deno.test("a stalled webhook body (no token) and a stalled run start get a 408 and their connections close", async () => {
  const k = await startTestKeel({ httpTimeoutMs: 500 });
  const conns: Awaited<ReturnType<typeof rawConnect>>[] = [];
  try {
    const hook = await rawConnect(k.url);
    const start = await rawConnect(k.url);
    const chunked = await rawConnect(k.url);
    conns.push(hook, start, chunked);
    await hook.write(
      'POST /hooks/hk_none HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":',
    );
    await start.write(
      `POST /api/workflows/none/runs HTTP/1.1\r\nHost: keel\r\nAuthorization: Bearer ${TEST_TOKEN}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"input":',
    );
    await chunked.write(
      `POST /api/runs/run_x/cancel HTTP/1.1\r\nHost: keel\r\nAuthorization: Bearer ${TEST_TOKEN}\r\n` +
        "Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
    );
    // The webhook's body keeps trickling: a byte a second is not "arriving".
    let stop = false;
    const trickle = (async () => {
      while (!stop && !hook.closed && await hook.write(" ")) await sleep(200);
    })();
    const closed = await Promise.all(conns.map((c) => c.closedWithin(20_000)));
    stop = true;
    await trickle;
    for (const [i, c] of conns.entries()) {
      assert.equal(closed[i], true, `connection ${i} is still open`);
      assert.match(c.received, /^HTTP\/1\.1 408/, `connection ${i}: ${c.received.slice(0, 200)}`);
      const body = JSON.parse(c.received.slice(c.received.indexOf("\r\n\r\n") + 4));
      assert.equal(body.error.tag, "RequestTimeoutError");
      assert.match(body.error.message, /^Request body did not arrive within 500 ms \(KEEL_HTTP_TIMEOUT_MS\)$/);
    }
    // Keel still answers a whole request at once.
    assert.equal((await k.api("GET", "/api/runs?limit=1")).status, 200);
  } finally {
    for (const c of conns) await c.close();
    await k.close();
  }
});

Deno.test("past KEEL_MAX_CONNECTIONS a new connection closes the longest idle one, so the API answers while held", async () => {
  // A long timeout: what frees room here is the cap, not the idle timer.
  const k = await startTestKeel({ httpTimeoutMs: 600_000, maxConnections: 8 });
  const conns: Awaited<ReturnType<typeof rawConnect>>[] = [];
  try {
    for (let i = 0; i < 40; i++) conns.push(await rawConnect(k.url));
    // Every request still gets through while a local process holds (or keeps opening) idle connections.
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${k.url}/healthz`);
      assert.equal(res.status, 200);
      await res.body?.cancel();
      conns.push(await rawConnect(k.url));
    }
    const deadline = performance.now() + 20_000;
    while (conns.filter((c) => !c.closed).length > 8 && performance.now() < deadline) await sleep(50);
    const open = conns.filter((c) => !c.closed).length;
    assert.ok(open <= 8, `${open} idle connections are still open, more than the cap of 8`);
    // The newest survive: the longest idle went first.
    assert.equal(conns.at(-1)!.closed, false);
  } finally {
    for (const c of conns) await c.close();
    await k.close();
  }
});

Deno.test("when every connection has a request in flight, one more is answered 503 with Retry-After", async () => {
  const k = await startTestKeel({ httpTimeoutMs: 3000, maxConnections: 2 });
  const conns: Awaited<ReturnType<typeof rawConnect>>[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const c = await rawConnect(k.url);
      conns.push(c);
      await c.write("POST /hooks/hk_none HTTP/1.1\r\nHost: keel\r\nContent-Length: 100\r\n\r\n{");
    }
    await sleep(300); // both requests are in flight, reading their bodies
    const extra = await rawConnect(k.url);
    conns.push(extra);
    assert.equal(await extra.closedWithin(20_000), true, "the connection over the cap is still open");
    assert.match(extra.received, /^HTTP\/1\.1 503 /);
    assert.match(extra.received, /\r\nretry-after: 1\r\n/i);
    const body = JSON.parse(extra.received.slice(extra.received.indexOf("\r\n\r\n") + 4));
    assert.equal(body.error.tag, "ServerBusyError");
    assert.match(body.error.message, /^Keel has 2 HTTP connections with a request in flight \(KEEL_MAX_CONNECTIONS\)/);
    // Once the stalled bodies time out (408) and their connections close, Keel answers again.
    assert.deepEqual(await Promise.all(conns.slice(0, 2).map((c) => c.closedWithin(20_000))), [true, true]);
    assert.equal((await k.api("GET", "/api/runs?limit=1")).status, 200);
  } finally {
    for (const c of conns) await c.close();
    await k.close();
  }
});

Deno.test("Keel.close() ends while a silent connection, a half-sent header and an idle keep-alive are held", async () => {
  const k = await startTestKeel({ httpTimeoutMs: 600_000 });
  const conns = [await rawConnect(k.url), await rawConnect(k.url), await rawConnect(k.url)];
  try {
    await conns[1].write("GET /healthz HTTP/1.1\r\nHost: ke");
    await conns[2].write("GET /healthz HTTP/1.1\r\nHost: keel\r\n\r\n");
    await sleep(200);
    const closing = k.close().then(() => true);
    assert.equal(await Promise.race([closing, sleep(20_000).then(() => false)]), true, "close() did not end");
    assert.deepEqual(await Promise.all(conns.map((c) => c.closedWithin(20_000))), [true, true, true]);
  } finally {
    for (const c of conns) await c.close();
  }
});

Deno.test("Keel.close() ends within seconds while a GET /api/runs/{id}?wait=300 long poll is in flight", async () => {
  // Unbounded, close() (and so SIGTERM) waited for the poll: up to 300 s, with the stores still open.
  const k = await startTestKeel();
  let poll: Promise<unknown> | undefined;
  try {
    const installed = await k.api("POST", "/api/plugins", {
      path: `${ROOT}/tests/fixtures/hostile/slow_pattern_agent`,
      grant: {},
    });
    assert.equal(installed.status, 201, JSON.stringify(installed.body));
    // A run delayed by an hour: the poll has nothing to report for its whole wait.
    const run = await k.api("POST", "/api/workflows/pattern_free/runs?delay=3600", { input: { n: 1 } });
    assert.equal(run.status, 202, JSON.stringify(run.body));
    poll = fetch(`${k.url}/api/runs/${run.body.runId}?wait=300`, {
      headers: { authorization: `Bearer ${TEST_TOKEN}` },
    }).then((res) => res.body?.cancel(), () => {});
    await sleep(500);
  } finally {
    const began = performance.now();
    const closed = await Promise.race([k.close().then(() => true), sleep(30_000).then(() => false)]);
    const ms = Math.round(performance.now() - began);
    await Promise.race([poll, sleep(1000)]);
    assert.equal(closed, true, "close() did not end within 30 s while a long poll was in flight");
    assert.ok(ms < 15_000, `close() took ${ms} ms`);
  }
});

Deno.test("this Deno serves one connection at a time (serveHttpOnConnection); plain Deno.serve still times bodies out", async () => {
  const limits = { timeoutMs: 300, maxConnections: 4 };
  for (const plain of [false, true]) {
    const bodies = new BodyDeadlines(limits.timeoutMs);
    const server = startServer({ hostname: "127.0.0.1", port: 0, limits, bodies, plain }, async (req) => {
      const read = await bodies.read(req, 1024);
      return new Response(typeof read === "string" ? read : `${read.length} bytes`, {
        status: read === "timed_out" ? 408 : 200,
      });
    });
    // Keel's pinned Deno has it: if an upgrade drops it, this says so before an operator finds out.
    assert.equal(server.bounded, !plain);
    const c = await rawConnect(`http://127.0.0.1:${server.addr.port}`);
    try {
      await c.write("POST / HTTP/1.1\r\nHost: keel\r\nContent-Length: 10\r\n\r\nab");
      const deadline = performance.now() + 20_000;
      while (!c.received.includes("timed_out") && performance.now() < deadline) await sleep(50);
      assert.match(c.received, /^HTTP\/1\.1 408 [^]*timed_out$/, `plain: ${plain}`);
    } finally {
      await c.close();
      await server.shutdown();
    }
  }
});

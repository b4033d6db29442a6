/**
 * @module
 * Keel's HTTP listener, which bounds what a local peer can hold. `Deno.serve` (Deno 2.9.5) never closes a connection
 * on its own and takes any number of them: measured, a connection that sends nothing, one that sends its headers a
 * byte at a time, one that stalls in its body and an idle keep-alive all stayed open for over six minutes, and it has
 * no option for a timeout or a cap. A local process could hold every file descriptor Keel has and make the API
 * unreachable. So Keel accepts connections itself (`Deno.listen`) and hands each to Deno's HTTP server on that one
 * connection, which lets it count and close them:
 *
 * - a connection with no request in flight for `timeoutMs` (from its accept, or from its last answer) is closed: a
 *   silent one, one whose headers come slowly (no request is in flight until they are complete), an idle keep-alive;
 * - at most `maxConnections` are open: one more closes the one idle the longest, or, when every one has a request in
 *   flight, is answered 503 with `Retry-After` and closed;
 * - a request body still arriving `timeoutMs` after its route started to read it is stopped (`BodyDeadlines`: the
 *   route answers 408) and its connection is closed.
 *
 * One tick does all of it (no timer per request or connection: a timer costs tens of microseconds after an idle
 * moment). Serving one connection goes through `serveHttpOnConnection`, which Deno 2.9.5 has but does not make public
 * (`Deno[Deno.internal]`; Keel pins 2.9.5). On a Deno without it Keel says so and serves with `Deno.serve`: body
 * deadlines still hold there, the connection timeout and cap do not.
 */
import { ServerBusyError } from "../errors/mod.ts";
import { errorResponse, RETRY_AFTER_SECONDS } from "./errors.ts";
import type { BodyDeadlines } from "./params.ts";

/** What the server bounds. */
export interface ServerLimits {
  /** Milliseconds a connection may stay open with no request in flight; also `bodies.timeoutMs`. */
  readonly timeoutMs: number;
  /** Connections open at once. */
  readonly maxConnections: number;
}

/** A listening HTTP server. */
export interface KeelServer {
  readonly addr: Deno.NetAddr;
  /** Whether connections are bounded (false on a Deno without `serveHttpOnConnection`). */
  readonly bounded: boolean;
  /** Stop accepting, close idle connections, wait for requests in flight to be answered (at most 5 s), cut the rest. */
  shutdown(): Promise<void>;
}

type ServeOnConnection = (
  conn: Deno.Conn,
  signal: AbortSignal,
  handler: (req: Request) => Response | Promise<Response>,
  onError: (error: unknown) => Response | Promise<Response>,
  onListen: (scheme: unknown) => void,
) => { finished: Promise<void>; shutdown(): Promise<void> };

/** Deno's server for one accepted connection, if this Deno has it (it takes exactly these five arguments in 2.9.5). */
const serveOnConnection = ((): ServeOnConnection | undefined => {
  const internal = (Deno as unknown as Record<symbol, Record<string, unknown>>)[
    (Deno as unknown as { internal: symbol }).internal
  ];
  const fn = internal?.serveHttpOnConnection;
  return typeof fn === "function" && fn.length === 5 ? fn as ServeOnConnection : undefined;
})();

/** One accepted connection. */
interface Connection {
  readonly abort: AbortController;
  /** Deno's server has let it go, or it was aborted: aborting it (again) is not needed, nor safe. */
  ended?: boolean;
  served?: { finished: Promise<void>; shutdown(): Promise<void> };
  inFlight: number;
  /** When it was accepted or last answered (`performance.now()`); -Infinity once it must close (after a 408). */
  since: number;
}

/** Set while `abortConnection` aborts: a BadResource reported then comes from a connection already let go. */
let aborting = false;
let guarded = false;

/**
 * Abort the serving of one connection. Deno's server cancels it in the signal's listener, which throws BadResource
 * when the server has already let the connection go (its peer hung up, or a graceful shutdown ended it, an instant
 * before): thrown in a listener, that is an uncaught error, and it would end Keel. The connection is closed either
 * way, so that one error is not reported; any other is.
 */
export const abortConnection = (controller: AbortController): void => {
  if (!guarded) {
    guarded = true;
    globalThis.addEventListener("error", (event) => {
      if (aborting && event.error instanceof Deno.errors.BadResource) event.preventDefault();
    });
  }
  aborting = true;
  try {
    controller.abort();
  } finally {
    aborting = false;
  }
};

/** How long `shutdown` waits for requests in flight before it cuts them (at most `timeoutMs`). */
const SHUTDOWN_GRACE_MS = 5_000;

const internalError = (error: unknown) => {
  const { status, body } = errorResponse(error);
  return Response.json(body, { status });
};

/** The raw answer to a connection over the cap when none can be let go: 503, `Retry-After`, then close. */
const busyAnswer = (max: number): Uint8Array => {
  const { body } = errorResponse(
    new ServerBusyError({
      message: `Keel has ${max} HTTP connections with a request in flight (KEEL_MAX_CONNECTIONS); try again shortly`,
      details: { maxConnections: max },
    }),
  );
  const json = JSON.stringify(body);
  return new TextEncoder().encode(
    `HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: ${RETRY_AFTER_SECONDS}\r\n` +
      `connection: close\r\ncontent-length: ${new TextEncoder().encode(json).length}\r\n\r\n${json}`,
  );
};

/**
 * Listen on `hostname:port` and serve `handler`, within `limits`; `bodies` is the app's body reader, whose deadlines
 * this server's tick enforces. Throws (synchronously) when it cannot listen.
 */
export const startServer = (
  options: {
    hostname: string;
    port: number;
    limits: ServerLimits;
    bodies: BodyDeadlines;
    /** Serve with plain `Deno.serve`, as on a Deno without `serveHttpOnConnection` (tests). */
    plain?: boolean;
  },
  handler: (req: Request) => Response | Promise<Response>,
): KeelServer => {
  const { hostname, port, limits, bodies } = options;
  const tickMs = Math.min(1000, Math.max(50, Math.floor(limits.timeoutMs / 4)));
  if (options.plain) return serveUnbounded(hostname, port, handler, bodies, tickMs);
  if (!serveOnConnection) {
    console.error(
      "This Deno has no serveHttpOnConnection: Keel serves HTTP without its connection timeout and cap (use Deno 2.9.5)",
    );
    return serveUnbounded(hostname, port, handler, bodies, tickMs);
  }
  const serveOn = serveOnConnection;
  const listener = Deno.listen({ hostname, port, transport: "tcp" });
  const open = new Set<Connection>();
  let closing = false;

  const close = (c: Connection) => {
    open.delete(c);
    if (c.ended) return;
    c.ended = true;
    abortConnection(c.abort);
  };
  /** The open connection with no request in flight that has been idle the longest. */
  const longestIdle = (): Connection | undefined => {
    let oldest: Connection | undefined;
    for (const c of open) if (c.inFlight === 0 && (!oldest || c.since < oldest.since)) oldest = c;
    return oldest;
  };
  const tick = setInterval(() => {
    bodies.expire();
    const idleSince = performance.now() - limits.timeoutMs;
    for (const c of open) if (c.inFlight === 0 && c.since < idleSince) close(c);
  }, tickMs);

  const admit = (conn: Deno.Conn) => {
    if (open.size >= limits.maxConnections) {
      const idle = longestIdle();
      if (idle) close(idle);
      else {
        // Every connection is busy: say so and let this one go. The answer is small enough for the socket's buffer.
        conn.write(busyAnswer(limits.maxConnections)).catch(() => {}).finally(() => {
          try {
            conn.close();
          } catch { /* already closed */ }
        });
        return;
      }
    }
    const c: Connection = { abort: new AbortController(), inFlight: 0, since: performance.now() };
    const done = () => {
      c.inFlight--;
      if (c.since !== -Infinity) c.since = performance.now();
    };
    c.served = serveOn(
      conn,
      c.abort.signal,
      (req) => {
        c.inFlight++;
        let answer: Response | Promise<Response>;
        try {
          answer = handler(req);
        } catch (error) {
          done();
          throw error;
        }
        return Promise.resolve(answer).then((res) => {
          // A body that timed out is still arriving: close the connection once the 408 is out, at the next tick.
          if (res.status === 408) c.since = -Infinity;
          done();
          return res;
        }, (error) => {
          done();
          throw error;
        });
      },
      internalError,
      () => {},
    );
    open.add(c);
    const ended = () => {
      c.ended = true;
      open.delete(c);
    };
    c.served.finished.then(ended, ended);
  };

  const accepting = (async () => {
    let warned = false;
    while (!closing) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (closing) return;
        // Out of file descriptors (the cap is above what the process may open, or other work holds them): let the
        // longest idle sixteenth go, so the connections waiting to be accepted get through, and try again.
        if (!warned) console.error(`Keel's HTTP server cannot accept a connection (${String(error)}); retrying`);
        warned = true;
        for (let n = Math.max(1, Math.ceil(open.size / 16)); n > 0; n--) {
          const idle = longestIdle();
          if (!idle) break;
          close(idle);
        }
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      warned = false;
      try {
        admit(conn);
      } catch (error) {
        // One connection Deno's server would not take (its peer already gone): drop it, keep accepting.
        console.error(`Keel's HTTP server dropped a connection (${String(error)})`);
        try {
          conn.close();
        } catch { /* already closed */ }
      }
    }
  })();

  return {
    addr: listener.addr as Deno.NetAddr,
    bounded: true,
    shutdown: async () => {
      closing = true;
      listener.close();
      await accepting;
      // A request may wait minutes (`?wait=300`): close() (and SIGTERM) waited for it. Now connections close as their
      // requests are answered, and past a grace what is still in flight is cut. None is shut down gracefully
      // meanwhile: that hands its resource back to Deno, and aborting it later throws "Bad resource ID" from the
      // signal's listener (an uncaught error).
      const until = performance.now() + Math.min(limits.timeoutMs, SHUTDOWN_GRACE_MS);
      for (;;) {
        for (const c of [...open]) if (c.inFlight === 0) close(c);
        if (open.size === 0 || performance.now() >= until) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      clearInterval(tick);
      for (const c of [...open]) close(c);
    },
  };
};

/**
 * `Deno.serve`, for a Deno without `serveHttpOnConnection`: bodies still time out. Its accept loop ends on an error
 * such as running out of file descriptors; unhandled, that ended the whole process, so it listens again, once a
 * second until it can.
 */
const serveUnbounded = (
  hostname: string,
  port: number,
  handler: (req: Request) => Response | Promise<Response>,
  bodies: BodyDeadlines,
  tickMs: number,
): KeelServer => {
  let closing = false;
  let addr: Deno.NetAddr | undefined;
  const serve = () =>
    Deno.serve({
      hostname,
      port: addr?.port ?? port,
      onListen: (a) => {
        addr = a;
      },
      onError: internalError,
    }, handler);
  let server = serve();
  const watch = (s: Deno.HttpServer) => {
    s.finished.catch(async (error) => {
      if (closing) return;
      console.error(`Keel's HTTP server stopped (${String(error?.message ?? error)}); listening again`);
      while (!closing) {
        await new Promise((r) => setTimeout(r, 1000));
        if (closing) return;
        try {
          server = serve();
          watch(server);
          return;
        } catch (again) {
          console.error(`Keel cannot listen yet (${String((again as Error)?.message ?? again)}); trying again`);
        }
      }
    });
  };
  watch(server);
  const tick = setInterval(() => bodies.expire(), tickMs);
  return {
    addr: server.addr as Deno.NetAddr,
    bounded: false,
    shutdown: async () => {
      closing = true;
      await server.shutdown();
      clearInterval(tick);
    },
  };
};

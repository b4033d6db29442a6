/**
 * @module
 * Aborting the serving of a connection that Deno's server has already let go: Deno cancels it in the abort signal's
 * listener, which then throws BadResource, and an error thrown in a listener is uncaught: it ends the process. Keel's
 * server aborts idle connections at any moment (its idle timeout, its cap, its close), so a peer hanging up an
 * instant before, or a graceful shutdown just ended, must not end Keel. Here the connection is let go by a graceful
 * shutdown, then aborted, as Keel's close did when a connection's peer hung up just then.
 */
import assert from "node:assert/strict";
import { abortConnection } from "../../core/http/mod.ts";

type Served = { finished: Promise<void>; shutdown(): Promise<void> };
const internal = (Deno as unknown as Record<symbol, Record<string, unknown>>)[
  (Deno as unknown as { internal: symbol }).internal
];
const serveOn = internal.serveHttpOnConnection as (
  conn: Deno.Conn,
  signal: AbortSignal,
  handler: (req: Request) => Response,
  onError: (error: unknown) => Response,
  onListen: () => void,
) => Served;

Deno.test("aborting a connection Deno's server has already let go does not end the process", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const uncaught: unknown[] = [];
  // Seen after abortConnection's own listener (registered at its first call) had its say.
  const watch = (event: ErrorEvent) => {
    if (!event.defaultPrevented) {
      uncaught.push(event.error);
      event.preventDefault();
    }
  };
  try {
    const served = (async () => {
      const conn = await listener.accept();
      const controller = new AbortController();
      const server = serveOn(conn, controller.signal, () => new Response("hi"), () => new Response("error"), () => {});
      return { controller, server };
    })();
    const answer = await fetch(`http://127.0.0.1:${port}/`);
    assert.equal(await answer.text(), "hi");
    const { controller, server } = await served;
    await server.shutdown();
    abortConnection(new AbortController()); // registers Keel's guard before the watch below
    globalThis.addEventListener("error", watch);
    abortConnection(controller);
    await server.finished.catch(() => {});
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(uncaught.map(String), [], "an error escaped the abort");
  } finally {
    globalThis.removeEventListener("error", watch);
    listener.close();
  }
});

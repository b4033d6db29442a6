/**
 * @module
 * A local SMTP sink for trying Keel by hand (`deno task smtp-sink`): listens
 * on 127.0.0.1:2525 (or `--port N`) and prints every message it accepts.
 * Nothing is relayed anywhere.
 */
import { startSmtpPeer } from "./smtp_peer.ts";

if (import.meta.main) {
  if (Deno.args.includes("--help")) {
    console.log("Usage: deno task smtp-sink [--port N]\nPrint every message sent to 127.0.0.1:N (default 2525).");
    Deno.exit(0);
  }
  const i = Deno.args.indexOf("--port");
  const port = i >= 0 ? Number(Deno.args[i + 1]) : 2525;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error(`error: --port must be an integer from 1 to 65535: got "${Deno.args[i + 1] ?? ""}"`);
    Deno.exit(1);
  }
  const peer = await startSmtpPeer({ port }).catch((error: Error) => {
    console.error(`error: cannot listen on 127.0.0.1:${port}: ${error.message}`);
    Deno.exit(1);
  });
  console.log(`SMTP sink listening on ${peer.host}:${peer.port} (Ctrl-C to stop)`);
  let shown = 0;
  setInterval(() => {
    for (; shown < peer.received.length; shown++) {
      const m = peer.received[shown];
      console.log(`\n--- message ${shown + 1} from ${m.from} to ${m.to.join(", ")}\n${m.raw.trim()}\n---`);
    }
  }, 100);
}

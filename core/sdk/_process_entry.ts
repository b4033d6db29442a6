/**
 * @module
 * The main module of every plugin process (`process` isolation): `deno run
 * … _process_entry.ts file:///…/mod.ts`. It makes the process's global scope
 * look like a Worker's to `definePlugin` and to any plugin code, then imports
 * the plugin: `self.postMessage` writes one line of JSON to stdout, each line
 * of JSON read from stdin is dispatched as a `message` event (to
 * `self.onmessage` and every `addEventListener("message", …)` listener, in
 * the order they were set). `console.log` and friends go to stderr, so stdout
 * carries only the protocol. When stdin closes (the host is gone) the process
 * exits. An unmodified plugin therefore runs in either isolation mode.
 *
 * Why import the plugin instead of running it as the main module: a module
 * loaded by a computed `import()` has every module of its graph checked
 * against the read permission (the plugin's folder, Keel's `core/sdk`, and
 * the granted paths), so a literal dynamic import of a `file:` URL elsewhere
 * that slipped past the install-time graph check is still refused at run time; a main module's
 * graph would load unchecked (see `../shared/FACTS.md`). This file imports
 * nothing itself.
 */

/** What a Worker-like global scope looks like to plugin code. */
interface WorkerLikeScope {
  postMessage(message: unknown): void;
  onmessage: ((event: MessageEvent) => void) | null;
  addEventListener(type: string, listener: (event: Event) => void): void;
  dispatchEvent(event: Event): boolean;
  close(): void;
}

const scope = globalThis as unknown as WorkerLikeScope;
const stdout = Deno.stdout;
const stdin = Deno.stdin;
const encoder = new TextEncoder();

// stdout is the protocol channel: anything a plugin prints goes to stderr instead.
const toStderr = console.error.bind(console);
for (const method of ["log", "info", "debug", "dir", "dirxml"] as const) {
  (console as unknown as Record<string, unknown>)[method] = toStderr;
}

// One writer, so lines are written whole and in order even when messages are large.
const writer = stdout.writable.getWriter();
scope.postMessage = (message: unknown) => {
  const line = JSON.stringify(message);
  if (line === undefined) throw new TypeError("postMessage needs a JSON value");
  writer.write(encoder.encode(line + "\n")).catch(() => Deno.exit(0));
};

let handler: ((event: MessageEvent) => void) | null = null;
let handlerListening = false;
Object.defineProperty(scope, "onmessage", {
  configurable: true,
  enumerable: true,
  get: () => handler,
  set(value: ((event: MessageEvent) => void) | null) {
    handler = typeof value === "function" ? value : null;
    // Like a Worker: the handler takes its place among the listeners when it is first set.
    if (!handlerListening) {
      handlerListening = true;
      scope.addEventListener("message", (event) => handler?.(event as MessageEvent));
    }
  },
});
scope.close = () => Deno.exit(0);

const readLines = async () => {
  const decoder = new TextDecoder();
  // Only the newest chunk is searched for a newline, so a large message costs linear time.
  let pieces: string[] = [];
  for await (const chunk of stdin.readable) {
    let text = decoder.decode(chunk, { stream: true });
    let newline = text.indexOf("\n");
    while (newline >= 0) {
      const line = pieces.join("") + text.slice(0, newline);
      pieces = [];
      text = text.slice(newline + 1);
      if (line !== "") scope.dispatchEvent(new MessageEvent("message", { data: JSON.parse(line) }));
      newline = text.indexOf("\n");
    }
    if (text !== "") pieces.push(text);
  }
  // The host closed the pipe: it stopped this plugin or is gone itself.
  Deno.exit(0);
};
const plugin = Deno.args[0];
if (typeof plugin !== "string" || !plugin.startsWith("file://")) {
  console.error("usage: _process_entry.ts file:///path/to/mod.ts");
  Deno.exit(2);
}
// A failure here is uncaught: the host sees the process exit and reports the plugin crashing at start.
await import(plugin);
// Like a Worker, receive messages only once the plugin's module has run (top-level await included).
void readLines();

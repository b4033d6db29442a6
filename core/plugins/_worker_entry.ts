/**
 * @module
 * The module every plugin Worker starts from (`worker` isolation). Its first
 * message names the plugin's stored `mod.ts`, which it imports; messages that
 * arrive meanwhile are held and then dispatched, in order, to the handlers the
 * plugin set while loading.
 *
 * Why not start the Worker at the plugin's `mod.ts` directly: a module loaded
 * by a computed `import()` has every module of its graph checked against the
 * Worker's read permission, which holds only the plugin's own stored folder
 * and Keel's `core/sdk` (plus the grant's paths). So a literal
 * `import("file:///etc/…")` that slipped past the install-time graph check is
 * still refused at run time, where a Worker's main module graph would load it
 * unchecked (see `../shared/FACTS.md`). It also keeps `deno test` from
 * type-checking every stored copy at start: only this fixed module is a
 * Worker's main module. It imports nothing.
 */

// A Worker that ends itself (`Deno.exit`, `self.close()`) fires no event in its host, so calls in flight
// would wait for their timeout. Say so first; the host retires the plugin at once (see `_connection.ts`).
// Set before the plugin loads, so it can only reach these wrappers.
const say = (code: number) => (self as unknown as { postMessage(m: unknown): void }).postMessage({ t: "exit", code });
const exit = Deno.exit.bind(Deno);
Object.defineProperty(Deno, "exit", {
  value: (code?: number) => {
    say(code ?? 0);
    return exit(code);
  },
});
const close = self.close.bind(self);
Object.defineProperty(self, "close", {
  value: () => {
    say(0);
    close();
  },
});

const held: unknown[] = [];
let loaded = false;
let started = false;

const hold = (event: Event) => {
  if (loaded) return;
  // Registered first, so the plugin's own handlers see nothing until it is loaded.
  event.stopImmediatePropagation();
  const data = (event as MessageEvent).data;
  if (started) {
    held.push(data);
    return;
  }
  started = true;
  const url = (data as { url?: unknown } | null)?.url;
  if (typeof url !== "string" || !url.startsWith("file://")) throw new Error("The host did not name a plugin module");
  void load(url);
};

const load = async (url: string) => {
  // A failure here is uncaught in the Worker: the host sees it as the plugin crashing at start.
  await import(url);
  loaded = true;
  self.removeEventListener("message", hold);
  for (const data of held.splice(0)) self.dispatchEvent(new MessageEvent("message", { data }));
};

self.addEventListener("message", hold);

/**
 * @module
 * A fresh Keel data dir whose PGlite database is already initialised and
 * migrated. `initdb` costs seconds per directory (tens of seconds on a busy
 * machine), so each test process makes one template with the real
 * `Memory.layer` and copies it for every test: still a real PGlite on its
 * own temp dir, started from the same state a new data dir reaches.
 */
import { Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { Memory } from "../../core/memory/mod.ts";
import { ROOT } from "../_support/keel.ts";

let template: Promise<string> | undefined;

const makeTemplate = async (): Promise<string> => {
  const dir = await Deno.makeTempDir({ prefix: "keel-pg-template-" });
  const rt = ManagedRuntime.make(
    Memory.layer.pipe(
      Layer.provide(
        KeelConfig.layer({
          dataDir: dir,
          hostname: "127.0.0.1",
          port: 0,
          token: "t",
          policiesDir: `${ROOT}/policies`,
          root: ROOT,
          rpcTimeoutMs: 1000,
          eagerMemory: true,
        }),
      ),
    ),
  );
  await rt.runPromise(Memory.use((m) => m.get("warm-up")));
  await rt.dispose();
  globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  return `${dir}/pg`;
};

/** A new temp data dir holding a migrated, empty PGlite database in `pg/`. Remove it when done. */
export const freshDataDir = async (): Promise<string> => {
  const source = await (template ??= makeTemplate());
  const dir = await Deno.makeTempDir({ prefix: "keel-memory-" });
  const cp = await new Deno.Command("cp", { args: ["-a", source, `${dir}/pg`] }).output();
  if (!cp.success) throw new Error(`cp of the PGlite template failed: ${new TextDecoder().decode(cp.stderr)}`);
  return dir;
};

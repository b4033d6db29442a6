/**
 * @module
 * The layering check run by `deno task check`: imports only go down the
 * layer list of DESIGN.md. Inside `core/`, a folder imports another folder
 * only through its `mod.ts` and only if the table below allows it; `core/`
 * never imports `plugins/` or `agents/`; plugins and agents import only
 * `core/sdk/mod.ts` (and files in their own folder). Prints every violation
 * with file and line, exits 1 if there is any.
 */

/** Which core folders each core folder may import. */
export const ALLOWED: Readonly<Record<string, ReadonlyArray<string>>> = {
  sdk: [],
  errors: [],
  config: [],
  store: ["errors", "config"],
  manifest: ["errors"],
  policy: ["errors", "config", "manifest", "store", "telemetry"],
  telemetry: ["errors", "store", "manifest"],
  journal: ["errors", "store", "policy"],
  memory: ["errors", "config", "manifest"],
  plugins: ["errors", "config", "manifest", "store", "telemetry", "sdk"],
  gateway: ["errors", "manifest", "policy", "journal", "plugins", "telemetry"],
  models: ["errors", "config", "store", "manifest", "policy", "sdk"],
  orchestrator: ["errors", "config", "journal", "gateway", "plugins", "memory", "models", "telemetry", "sdk"],
  triggers: ["errors", "config", "store", "manifest", "journal", "orchestrator", "telemetry", "plugins"],
  http: [
    "config",
    "errors",
    "plugins",
    "orchestrator",
    "journal",
    "telemetry",
    "manifest",
    "policy",
    "memory",
    "triggers",
  ],
  cli: ["config", "errors", "manifest", "policy", "plugins"],
};

const root = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const IMPORT =
  /(?:^|\s)(?:import|export)\s[^;]*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']|(?:^|\s)import\s+["']([^"']+)["']/g;

const walk = (dir: string): string[] =>
  [...Deno.readDirSync(dir)].flatMap((e) => {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) return e.name === "node_modules" ? [] : walk(path);
    return /\.(ts|tsx|js)$/.test(e.name) ? [path] : [];
  });

/** Every layering violation in the tree, as `file:line: why`. */
export const violations = (): string[] => {
  const out: string[] = [];
  const files = ["core", "plugins", "agents"].flatMap((d) => walk(`${root}/${d}`));
  for (const file of files) {
    const rel = file.slice(root.length + 1);
    // A plugin's own test (`keel plugin new` writes `mod_test.ts`) is not in its module graph: it may import Keel's test kit.
    if (!rel.startsWith("core/") && rel.endsWith("_test.ts")) continue;
    const text = Deno.readTextFileSync(file);
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3];
      const line = text.slice(0, m.index).split("\n").length;
      const where = `${rel}:${line}`;
      if (!spec.startsWith(".")) {
        if (!rel.startsWith("core/") || rel.startsWith("core/sdk/")) {
          out.push(`${where}: "${spec}": only core/ (not core/sdk) may import packages`);
        }
        continue;
      }
      const target = new URL(spec, `file://${file}`).pathname.slice(root.length + 1);
      const [fromTop, fromDir] = rel.split("/");
      const [toTop, toDir] = target.split("/");
      if (fromTop === "plugins" || fromTop === "agents") {
        const ownFolder = `${fromTop}/${fromDir}/`;
        if (target !== "core/sdk/mod.ts" && !target.startsWith(ownFolder)) {
          out.push(`${where}: "${spec}": plugins and agents import only core/sdk/mod.ts and their own files`);
        }
        continue;
      }
      if (toTop !== "core") {
        out.push(`${where}: "${spec}": core/ never imports ${toTop}/`);
        continue;
      }
      if (rel === "core/mod.ts" || fromDir === toDir) continue;
      if (!target.endsWith("/mod.ts")) out.push(`${where}: "${spec}": import core/${toDir} through its mod.ts`);
      if (!(ALLOWED[fromDir] ?? []).includes(toDir)) {
        out.push(
          `${where}: "${spec}": core/${fromDir} may not import core/${toDir} (allowed: ${
            (ALLOWED[fromDir] ?? []).join(", ") || "nothing"
          })`,
        );
      }
    }
  }
  for (const dir of Object.keys(ALLOWED)) {
    try {
      Deno.statSync(`${root}/core/${dir}/mod.ts`);
    } catch {
      out.push(`core/${dir}: has no mod.ts`);
    }
  }
  return out;
};

if (import.meta.main) {
  const found = violations();
  for (const v of found) console.error(v);
  if (found.length) Deno.exit(1);
  console.log("layers: imports go down the layer list");
}

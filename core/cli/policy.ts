/**
 * @module
 * `keel policy check|explain|simulate`: the operator's tools for changing
 * policy safely. `check` lints files on disk (and, when Keel is running,
 * checks effect names against the installed plugins); `explain` asks the
 * running Keel which rule decides one request; `simulate` sends candidate
 * files to the running Keel, which replays its decision log against them.
 */
import { Effect } from "effect";
import { keelRoot } from "../config/mod.ts";
import { EFFECT_CLASSES } from "../manifest/mod.ts";
import { checkPolicyFiles, type InstalledEffect, policyFileNames, TRANSITIONS } from "../policy/mod.ts";
import { api, type Command, env, flagsOf, parseJson, print, UsageError } from "./client.ts";

const POLICY_FILE = /\.ya?ml$/;

/** The files at PATH: the policy files in a folder, or one file. */
const readPolicyFiles = (path: string, what: string): Array<{ file: string; name: string; text: string }> => {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound ? "no such file or folder" : (error as Error).message;
    throw new UsageError(`Cannot read ${what} "${path}": ${why}`);
  }
  const read = (file: string) => {
    try {
      return Deno.readTextFileSync(file);
    } catch (error) {
      throw new UsageError(`Cannot read policy file "${file}": ${(error as Error).message}`);
    }
  };
  if (info.isFile) return [{ file: path, name: path.split("/").pop()!, text: read(path) }];
  let names: string[];
  try {
    names = policyFileNames(path);
  } catch (error) {
    throw new UsageError(`Cannot read ${what} "${path}": ${(error as Error).message}`);
  }
  if (!names.length) throw new UsageError(`No policy files (*.yaml, *.yml) in "${path}"`);
  const dir = path.replace(/\/+$/, "");
  return names.map((name) => ({ file: `${dir}/${name}`, name, text: read(`${dir}/${name}`) }));
};

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

const check = async (path: string | undefined, json: boolean) => {
  const target = path ?? env("KEEL_POLICIES") ?? `${keelRoot()}/policies`;
  const files = readPolicyFiles(target, "policy folder");
  let effects: InstalledEffect[] | undefined;
  let plugins = 0;
  let skipped: string | undefined;
  try {
    const list = (await api("GET", "/api/plugins")).plugins as Array<
      { name: string; manifest: { effects?: Array<{ name: string; class: InstalledEffect["class"] }> } }
    >;
    plugins = list.length;
    effects = list.flatMap((p) =>
      (p.manifest.effects ?? []).map((e) => ({ name: e.name, class: e.class, plugin: p.name }))
    );
  } catch (error) {
    skipped = (error as Error).message;
  }
  const result = await Effect.runPromise(checkPolicyFiles(files, effects));
  const errors = result.findings.filter((f) => f.severity === "error").length;
  const warnings = result.findings.length - errors;
  if (json) {
    print({ ...result, ...(skipped ? { installedCheckSkipped: skipped } : {}) });
  } else {
    for (const f of result.findings) console.log(`${f.file}:${f.line}: ${f.severity} [${f.kind}] ${f.message}`);
    console.log(
      `Checked ${plural(result.files.length, "file")} with ${plural(result.rules, "rule")}` +
        (effects ? ` against ${plural(effects.length, "effect")} from ${plural(plugins, "installed plugin")}` : ""),
    );
    if (skipped) {
      console.log(`Skipped the checks against installed plugins (unknown effect names): ${skipped}`);
    }
    if (!result.findings.length) console.log("No findings");
  }
  if (result.findings.length) {
    throw new UsageError(`policy check found ${plural(errors, "error")} and ${plural(warnings, "warning")}`);
  }
};

const explain = async (
  effect: string | undefined,
  flags: {
    args?: string;
    plugin?: string;
    agent?: string;
    workflow?: string;
    class?: string;
    context?: string;
    at?: string;
  },
  json: boolean,
) => {
  if (!effect) throw new UsageError("policy explain needs an EFFECT name, e.g. email.send");
  const args = parseJson("args", flags.args) ?? {};
  const context = parseJson("context", flags.context);
  if (flags.class !== undefined && !(EFFECT_CLASSES as ReadonlyArray<string>).includes(flags.class)) {
    throw new UsageError(`--class must be one of ${EFFECT_CLASSES.join(", ")}: got "${flags.class}"`);
  }
  if (flags.at !== undefined && !Number.isFinite(Date.parse(flags.at))) {
    throw new UsageError(`--at must be a date and time, e.g. 2025-06-01T23:30:00Z: got "${flags.at}"`);
  }
  const r = await api("POST", "/api/policy/explain", {
    effect,
    args,
    plugin: flags.plugin,
    agent: flags.agent,
    workflow: flags.workflow,
    class: flags.class,
    context,
    at: flags.at,
  });
  if (json) return print(r);
  const q = r.request;
  console.log(
    `Effect ${q.effect} (${q.effectClass}, plugin ${q.plugin || "?"}), agent ${q.agent ?? "-"}, workflow ${
      q.workflow ?? "-"
    }`,
  );
  console.log(`Args: ${JSON.stringify(args)}`);
  const ctx = q.context ?? {};
  console.log(
    `At: ${new Date(ctx.now).toISOString()} (${ctx.date} ${ctx.hour}:${
      String(ctx.minute).padStart(2, "0")
    } ${ctx.timezone})`,
  );
  console.log(`Policy set ${String(r.policyHash).slice(0, 12)} (${r.files.join(", ") || "no files"})`);
  console.log("");
  if (!r.matches.length) console.log("Matching rules: none");
  else {
    console.log(`Matching rules (${r.matches.length}):`);
    const width = Math.max(...r.matches.map((m: { id: string }) => m.id.length));
    for (const m of r.matches) {
      console.log(
        `  ${m.decision.padEnd(7)}  ${m.id.padEnd(width)}  ${m.file}:${m.line}${m.decides ? "  <- decides" : ""}`,
      );
    }
  }
  const d = r.decision;
  console.log(
    `Decision: ${d.decision} by ${d.ruleSource ? `rule "${d.rule}" (${d.ruleSource})` : d.rule}: ${d.reason}`,
  );
  if (r.matches.length) {
    console.log(`If no rule matched: ${r.fallback.decision} (${r.fallback.rule}): ${r.fallback.reason}`);
  }
  for (const l of r.limits) {
    console.log(
      `Limit: ${l.name} (rule ${l.rule}, counted per ${l.key})${
        l.used === undefined ? "" : `: ${l.used} used in this window`
      }`,
    );
  }
  for (const note of r.notes) console.log(`Note: ${note}`);
};

const ARROW: Record<string, string> = Object.fromEntries(
  TRANSITIONS.map((t) => [t, t.replace("_to_", " → ")]),
);
const MAX_LISTED = 500;

const simulate = async (path: string | undefined, flags: { all?: boolean }, json: boolean) => {
  if (!path) throw new UsageError("policy simulate needs a candidate policy FILE or DIR");
  const files = readPolicyFiles(path, "candidate policy");
  for (const f of files) {
    if (!POLICY_FILE.test(f.name)) throw new UsageError(`Policy file "${f.file}" must end in .yaml or .yml`);
  }
  const r = await api("POST", "/api/policy/simulate", {
    files: Object.fromEntries(files.map((f) => [f.name, f.text])),
    changedOnly: !flags.all,
  });
  if (json) return print(r);
  const s = r.summary;
  if (!s.total) return console.log("The decision log is empty: there are no past effect requests to replay");
  console.log(
    `Replayed ${plural(s.total, "past effect request")} (decided under ${
      plural(r.pastPolicies.length, "policy set")
    }) against candidate ${String(r.policyHash).slice(0, 12)} (${plural(r.files.length, "file")}, ${
      plural(r.rules, "rule")
    })`,
  );
  console.log("");
  console.log(`  ${"unchanged".padEnd(18)} ${String(s.unchanged).padStart(6)}`);
  for (const t of TRANSITIONS) console.log(`  ${ARROW[t].padEnd(18)} ${String(s.transitions[t]).padStart(6)}`);
  const listed = r.requests.filter((q: { transition: string }) => flags.all || q.transition !== "unchanged");
  if (s.limitedBefore) {
    const were = s.limitedBefore === 1 ? "was" : "were";
    console.log(`\n${plural(s.limitedBefore, "request")} ${were} refused by a rate or budget limit at the time`);
    console.log("(rate and budget counters are not replayed)");
  }
  if (s.failedClosedBefore) {
    const were = s.failedClosedBefore === 1 ? "was" : "were";
    console.log(
      `\n${plural(s.failedClosedBefore, "request")} ${were} refused as fail-closed at the time (not replayed)`,
    );
  }
  if (!listed.length) return console.log("\nNo decision would change");
  console.log(`\n${flags.all ? "Requests" : "Changed requests"} (${listed.length}):`);
  const rows = listed.slice(0, MAX_LISTED).map((q: any) => [
    q.transition === "unchanged" ? "unchanged" : ARROW[q.transition],
    q.effect,
    `${q.runId}#${q.seq}`,
    `args ${q.argsDigest.slice(0, 12)}`,
    `${q.before.rule} -> ${q.after.rule}${q.after.ruleSource ? ` (${q.after.ruleSource})` : ""}`,
  ]);
  const widths = rows[0].map((_: string, i: number) => Math.max(...rows.map((row: string[]) => row[i].length)));
  for (const row of rows) {
    console.log(
      `  ${row.map((cell: string, i: number) => i < row.length - 1 ? cell.padEnd(widths[i]) : cell).join("  ")}`,
    );
  }
  if (listed.length > MAX_LISTED) console.log(`  … and ${listed.length - MAX_LISTED} more (use --json)`);
};

/** `keel policy check|explain|simulate`. */
export const policyCommand: Command = {
  summary: [
    "policy check [DIR]            Lint policy files: errors, shadowed or unreachable rules, unknown effects",
    "policy explain EFFECT         Which rule decides an effect request, and why",
    "policy simulate FILE|DIR      Replay past effect requests against candidate policies",
  ],
  help: `Usage:
  deno task keel policy check [DIR|FILE] [--json]
  deno task keel policy explain EFFECT [--args JSON] [--plugin P] [--agent A] [--workflow W]
                                       [--class read|write|irreversible|financial] [--context JSON]
                                       [--at DATETIME] [--json]
  deno task keel policy simulate FILE|DIR [--all] [--json]

check     Parse and type-check every policy file (default folder: $KEEL_POLICIES, or
          Keel's policies/) and report every error with file:line, then lint the set:
          shadowed rules (another rule always wins over them), unreachable rules (no
          request can match them) and, when Keel is running, effect names that no
          installed plugin declares (otherwise that check is skipped, and says so).
          Exits 0 when there is nothing to report, 1 otherwise.
explain   Ask the running Keel which rule decides EFFECT with these args under the
          policy in force: every matching rule with its decision and file:line, the
          winner, what applies when no rule matches, and the rate and budget limits it
          would be counted against. The effect's class and plugin come from the
          installed manifests unless --class/--plugin say otherwise. Conditions see the
          args, and a context like the Gateway's: the time now (or --at, for quiet
          hours), plus any --context facts.
simulate  Send the candidate policy file (or every *.yaml/*.yml in DIR) to the running
          Keel, which replays every past effect request in its decision log against it.
          Prints how many decisions would move (allowed → gated, gated → denied, …) and
          the changed requests; --all lists every request. The candidate is the whole
          set: rules not in these files are not in force in the simulation. Each request
          is judged with its args and the context it had (its time, run and step), so
          conditions and quiet hours replay; rate and budget counters do not.

--json prints the machine-readable answer instead.`,
  async run(args) {
    const { values, positionals } = flagsOf(args, {
      args: { type: "string" },
      plugin: { type: "string" },
      agent: { type: "string" },
      workflow: { type: "string" },
      class: { type: "string" },
      context: { type: "string" },
      at: { type: "string" },
      all: { type: "boolean" },
      json: { type: "boolean" },
    });
    const [sub, target, extra] = positionals;
    const json = values.json === true;
    if (extra !== undefined) throw new UsageError(`policy ${sub} takes one argument: got also "${extra}"`);
    const allowed: Record<string, ReadonlyArray<string>> = {
      check: ["json"],
      explain: ["args", "plugin", "agent", "workflow", "class", "context", "at", "json"],
      simulate: ["all", "json"],
    };
    const stray = Object.keys(values).find((k) => allowed[sub ?? ""] && !allowed[sub].includes(k));
    if (stray) throw new UsageError(`policy ${sub} does not take --${stray}`);
    if (sub === "check") return await check(target, json);
    if (sub === "explain") return await explain(target, values, json);
    if (sub === "simulate") return await simulate(target, values, json);
    throw new UsageError(`Unknown policy command "${sub ?? ""}": use check, explain or simulate`);
  },
};

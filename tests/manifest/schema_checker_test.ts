/**
 * @module
 * `makeSchemaChecker()`: which schemas go to the schema-check process, that
 * a check stuck in a pattern is stopped by killing that process (so nothing
 * keeps a core busy after the refusal), that checks queued behind it still
 * get right answers from a new process, and that closing the scope leaves
 * no process behind; and that a checker left stuck by a Keel killed with
 * kill -9 dies of its CPU-time limit instead of keeping a core busy. Real
 * child processes, found through `/proc`.
 */
import assert from "node:assert/strict";
import { Effect, Exit, Scope } from "effect";
import { hasPatterns, makeSchemaChecker, SCHEMA_CHECK_DEADLINE_MS } from "../../core/manifest/mod.ts";
import { eventually } from "../_support/process.ts";

/** Pids of the schema-check children of `parent` (default: this process). */
const checkers = (parent = Deno.pid): number[] => {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      if (ppid === parent && cmd.includes("_schema_check_entry.ts")) pids.push(Number(e.name));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
};

/** Whether process `pid` still runs (a zombie does not). */
const alive = (pid: number): boolean => {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
};

const SLOW = { type: "object", properties: { code: { type: "string", pattern: "^\\d*\\d*x$" } } };
const STOPPED =
  `the check against the schema's patterns took longer than ${SCHEMA_CHECK_DEADLINE_MS} ms and was stopped`;

Deno.test("hasPatterns() finds pattern and patternProperties anywhere in a schema, and nothing else", () => {
  assert.equal(hasPatterns(SLOW), true);
  assert.equal(hasPatterns({ type: "object", patternProperties: { "^a": { type: "string" } } }), true);
  assert.equal(hasPatterns({ anyOf: [{ type: "number" }, { items: { pattern: "a" } }] }), true);
  assert.equal(hasPatterns({ $defs: { s: { type: "string", pattern: "a" } } }), true);
  assert.equal(hasPatterns({ type: "object", properties: { pattern: { type: "string" } } }), false);
  assert.equal(hasPatterns({ type: "object", patternProperties: {} }), false);
  // A format is checked with the validator's own regular expressions (`url`'s backtracks exponentially).
  assert.equal(hasPatterns({ type: "string", format: "email", minLength: 1 }), true);
  assert.equal(hasPatterns({ type: "object", properties: { format: { type: "string" } } }), false);
  assert.equal(hasPatterns({ type: "string", minLength: 1 }), false);
  assert.equal(hasPatterns(true), false);
});

Deno.test("makeSchemaChecker() stops a check stuck in a pattern by killing its process, then answers from a new one", async () => {
  const scope = Effect.runSync(Scope.make());
  let second = 0;
  try {
    const checker = await Effect.runPromise(Scope.provide(makeSchemaChecker(), scope));
    const plain = checker.prepare({ type: "object", required: ["code"] });
    assert.equal(plain.isolated, false);
    assert.deepEqual(Effect.runSync(plain.check({})), ['field "code" is required']);
    assert.equal(checker.processId(), undefined, "a schema without patterns starts no process");

    const slow = checker.prepare(SLOW);
    assert.equal(slow.isolated, true);
    assert.deepEqual(await Effect.runPromise(slow.check({ code: "12x" })), []);
    const first = checker.processId()!;
    assert.ok(first && alive(first), "the first check with a pattern starts the schema-check process");
    assert.ok(checkers().includes(first), "a child of Keel's process");

    // The slow check and three queued behind it: the slow one is stopped, the others answered by a new process.
    const answers = await Promise.all([
      { code: "1".repeat(58_000) },
      { code: "7x" },
      { code: "7" },
      { code: 7 },
    ].map((value) => Effect.runPromise(slow.check(value))));
    assert.deepEqual(answers, [
      [STOPPED],
      [],
      ['field "code" String does not match pattern'],
      ['field "code" type "number" is invalid. Expected "string"'],
    ]);
    assert.ok(!alive(first), `the stopped process ${first} is still running`);
    second = checker.processId()!;
    assert.ok(second && second !== first && alive(second), "a new schema-check process answered");
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void));
  }
  await eventually(() => Promise.resolve(alive(second) ? undefined : true), () => `process ${second} outlived`);
});

Deno.test("a format whose regular expression backtracks (url) is checked in the schema-check process, under its deadline", async () => {
  // `format: "url"` is checked with `(?:[a-z…0-9]+-?)*[a-z…0-9]+`: on Keel's main thread 34 characters took two
  // seconds, 36 eight; no pattern of the plugin's own was needed.
  const scope = Effect.runSync(Scope.make());
  try {
    const checker = await Effect.runPromise(Scope.provide(makeSchemaChecker(), scope));
    const url = checker.prepare({ type: "string", format: "url" });
    assert.equal(url.isolated, true, "a format is checked on the main thread");
    assert.deepEqual(await Effect.runPromise(url.check("https://example.com/a")), []);
    const began = performance.now();
    const answer = await Effect.runPromise(url.check(`http://${"a".repeat(30)}_`));
    assert.deepEqual(answer, [STOPPED]);
    assert.ok(performance.now() - began < 30_000);
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void));
  }
});

Deno.test("a value that is not JSON (a BigInt, a cycle) is refused with a line, and leaves the schema-check process be", async () => {
  // A Worker plugin's effect args come by structured clone, which carries both. The check used to die (a defect, not
  // a refusal), and the deadline's timer it had already set killed the process a second later, whatever it was doing.
  const scope = Effect.runSync(Scope.make());
  try {
    const checker = await Effect.runPromise(Scope.provide(makeSchemaChecker(), scope));
    const slow = checker.prepare(SLOW);
    assert.deepEqual(await Effect.runPromise(slow.check({ code: "1x" })), []);
    const first = checker.processId();
    const cycle: Record<string, unknown> = { code: "1x" };
    cycle.self = cycle;
    for (const value of [{ code: 1n }, cycle]) {
      const exit = await Effect.runPromiseExit(slow.check(value));
      assert.equal(exit._tag, "Success", `the check died: ${exit._tag === "Failure" ? String(exit.cause) : ""}`);
      assert.equal(exit.value.length, 1);
      assert.match(exit.value[0], /^the value is not JSON \(/);
    }
    await new Promise((r) => setTimeout(r, SCHEMA_CHECK_DEADLINE_MS + 500));
    assert.deepEqual(await Effect.runPromise(slow.check({ code: "2x" })), []);
    assert.equal(checker.processId(), first, "the schema-check process was killed though no check overran");
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void));
  }
});

Deno.test("a checker stuck in a pattern when its Keel is killed (kill -9) dies of its CPU-time limit, not days later", async () => {
  const parent = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./fixtures/orphan_checker.ts", import.meta.url).pathname, "2"],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = parent.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("stuck")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  const [orphan] = checkers(parent.pid);
  assert.ok(orphan, `no schema-check process under ${parent.pid}: ${out}`);
  try {
    const limits = Deno.readTextFileSync(`/proc/${orphan}/limits`);
    assert.match(limits, /Max cpu time\s+2\s+2\s+seconds/, limits);
    parent.kill("SIGKILL");
    await parent.status;
    reader.cancel().catch(() => {});
    // Nobody is left to kill it: the kernel does, once it has spent its 2 s of CPU (generous: the machine is shared).
    const gone = () => {
      try {
        const stat = Deno.readTextFileSync(`/proc/${orphan}/stat`);
        return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z") ? true : undefined;
      } catch {
        return true;
      }
    };
    await eventually(() => Promise.resolve(gone()), () => `the orphaned checker ${orphan} still runs`, 60_000);
  } finally {
    try {
      Deno.kill(orphan, "SIGKILL");
    } catch { /* gone, as it should be */ }
  }
});

Deno.test("checks wait per schema, taken in turn: a flood of slow values to one schema delays another's by one deadline, not all", async () => {
  const scope = Effect.runSync(Scope.make());
  try {
    const checker = await Effect.runPromise(Scope.provide(makeSchemaChecker(300), scope));
    const slow = checker.prepare(SLOW);
    const other = checker.prepare({ type: "string", pattern: "^[a-z]+$" });
    assert.deepEqual(await Effect.runPromise(other.check("warm")), []);
    const order: string[] = [];
    const flood = [1, 2, 3, 4].map((i) =>
      Effect.runPromise(slow.check({ code: "1".repeat(58_000) })).then((a) => (order.push(`slow ${i}`), a))
    );
    const quick = Effect.runPromise(other.check("abc")).then((a) => (order.push("other"), a));
    assert.deepEqual(await quick, []);
    await Promise.all(flood);
    // The first slow check was running when the other schema's arrived; the other went next, not after all four.
    assert.deepEqual(order, ["slow 1", "other", "slow 2", "slow 3", "slow 4"]);
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void));
  }
});

/**
 * @module
 * The running API against its own contract, over a real Keel (real Deno KV,
 * PGlite, plugin Workers, a real SMTP peer) reached over real HTTP:
 *
 * - the OpenAPI document served at `GET /openapi.json` lists exactly the
 *   routes the Hono app serves, and the README's API table lists the same;
 * - every documented operation is exercised with valid requests and with
 *   invalid ones (wrong types and missing required fields derived from the
 *   documented request schema, bad query values, bad path ids sent raw over
 *   TCP so `..`, `%2F` and unicode reach the server untouched);
 * - every status returned is one the document lists for that operation, and
 *   every body validates against the documented schema for that status
 *   (`@cfworker/json-schema`, draft 2020-12); errors have the documented
 *   `{error: {tag, message, details?}}` shape, never a 500 or a stack trace;
 * - every `/api` operation refuses a missing or wrong bearer token with 401.
 *
 * Problems are collected and reported together at the end, so one run lists
 * every mismatch.
 */
import assert from "node:assert/strict";
import { Validator } from "@cfworker/json-schema";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { startSmtpPeer } from "../_support/smtp_peer.ts";
import { signHookDelivery } from "../../core/triggers/mod.ts";

const METHODS = ["get", "put", "post", "delete", "patch"];
const ADA = { name: "Ada Lovelace", email: "ada@example.test" };

type Schema = Record<string, any>;
type Op = { method: string; path: string; op: Record<string, any> };

interface Reply {
  readonly status: number;
  readonly contentType: string;
  readonly text: string;
  readonly json: any;
}

/** An HTTP/1.1 request written byte for byte over TCP: the path is sent exactly as given (no URL normalisation). */
const rawRequest = async (
  url: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<Reply> => {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    const bytes = body === undefined ? undefined : new TextEncoder().encode(body);
    const lines = [`${method} ${path} HTTP/1.1`, `host: ${hostname}:${port}`, "connection: close"];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    if (bytes) lines.push(`content-length: ${bytes.length}`);
    const head = new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n");
    await conn.write(head);
    if (bytes) await conn.write(bytes);
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    const all = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
    const split = all.indexOf("\r\n\r\n");
    const headText = all.slice(0, split);
    let bodyText = all.slice(split + 4);
    const status = Number(headText.split(" ")[1]);
    const contentType = /\r\ncontent-type: ([^\r\n]*)/i.exec(headText)?.[1] ?? "";
    if (/\r\ntransfer-encoding: chunked/i.test(headText)) {
      let out = "";
      let rest = bodyText;
      for (;;) {
        const nl = rest.indexOf("\r\n");
        const size = parseInt(rest.slice(0, nl), 16);
        if (!size) break;
        out += rest.slice(nl + 2, nl + 2 + size);
        rest = rest.slice(nl + 2 + size + 2);
      }
      bodyText = out;
    }
    let json: any;
    try {
      json = JSON.parse(bodyText);
    } catch {
      json = undefined;
    }
    return { status, contentType, text: bodyText, json };
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
};

Deno.test("the running API keeps the contract of its OpenAPI document and README", async (t) => {
  const problems: string[] = [];
  const problem = (msg: string) => {
    if (!problems.includes(msg)) problems.push(msg);
  };
  const peer = await startSmtpPeer();
  const k: TestKeel = await startTestKeel();
  const scratch = await Deno.makeTempDir({ prefix: "keel-contract-" });
  try {
    // ---- the document, as served ------------------------------------------------------------------------------
    const served = await fetch(`${k.url}/openapi.json`);
    assert.equal(served.status, 200);
    const doc = await served.json();
    const documented: Op[] = Object.entries(doc.paths as Record<string, Record<string, any>>).flatMap((
      [path, item],
    ) =>
      Object.entries(item).filter(([m]) => METHODS.includes(m)).map(([m, op]) => ({
        method: m.toUpperCase(),
        path,
        op,
      }))
    );
    const opFor = (method: string, path: string) => documented.find((d) => d.method === method && d.path === path);

    /** A validator for one schema of the document, its `$ref`s resolved against the document's components. */
    const defs = JSON.parse(JSON.stringify(doc.components.schemas).replaceAll("#/components/schemas/", "#/$defs/"));
    const validators = new Map<string, Validator>();
    const validate = (schema: Schema, value: unknown): string[] => {
      const key = JSON.stringify(schema);
      let v = validators.get(key);
      if (!v) {
        const s = JSON.parse(key.replaceAll("#/components/schemas/", "#/$defs/"));
        v = new Validator({ ...s, $defs: defs }, "2020-12", false);
        validators.set(key, v);
      }
      const r = v.validate(value);
      return r.valid ? [] : r.errors.filter((e) =>
        e.keyword !== "properties" && e.keyword !== "$ref" &&
        e.keyword !== "allOf" && e.keyword !== "items"
      ).map((e) => `${e.instanceLocation}: ${e.error}`);
    };

    /**
     * Check one reply against operation `op` of template `template`. `expect`: "ok" (a 2xx), "bad" (a 4xx), or
     * "any" (only that it is documented and sane).
     */
    const check = (label: string, template: string, method: string, reply: Reply, expect: "ok" | "bad" | "any") => {
      const d = opFor(method, template);
      if (!d) return problem(`${label}: ${method} ${template} is not documented`);
      if (reply.status === 404 && /^No route for /.test(reply.json?.error?.message ?? "")) {
        problem(`${label}: ${method} ${template} is documented but not routed`);
      }
      if (reply.status >= 500) problem(`${label}: answered ${reply.status}: ${reply.text.slice(0, 300)}`);
      if (/\n\s+at .*(:\d+:\d+|\.ts)/.test(reply.text) || /\bat file:\/\//.test(reply.text)) {
        problem(`${label}: the body carries a stack trace: ${reply.text.slice(0, 300)}`);
      }
      if (expect === "ok" && (reply.status < 200 || reply.status > 299)) {
        problem(`${label}: a valid request got ${reply.status}: ${reply.text.slice(0, 300)}`);
      }
      if (expect === "bad" && (reply.status < 400 || reply.status > 499)) {
        problem(`${label}: an invalid request got ${reply.status}: ${reply.text.slice(0, 200)}`);
      }
      const response = d.op.responses?.[String(reply.status)];
      if (!response) {
        return problem(
          `${label}: ${method} ${template} answered ${reply.status}, not among documented ${
            Object.keys(d.op.responses).join("/")
          } (${reply.text.slice(0, 200)})`,
        );
      }
      if (!/^application\/json/.test(reply.contentType)) {
        problem(`${label}: content-type is "${reply.contentType}", not JSON`);
      }
      const schema = response.content?.["application/json"]?.schema;
      if (schema) {
        if (reply.json === undefined) return problem(`${label}: body is not JSON: ${reply.text.slice(0, 200)}`);
        const errors = validate(schema, reply.json);
        if (errors.length) {
          problem(
            `${label}: ${method} ${template} ${reply.status} body does not match the documented schema: ${
              errors.slice(0, 6).join("; ")
            }`,
          );
        }
      }
      if (reply.status >= 400 && reply.json?.error) {
        const extra = Object.keys(reply.json).filter((key) => key !== "error");
        if (extra.length) problem(`${label}: error body has extra top-level keys ${extra}`);
      }
    };

    const auth = { authorization: `Bearer ${TEST_TOKEN}` };
    /** A request over raw HTTP with the token (unless `headers` says otherwise) and a JSON body. */
    const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = auth) =>
      rawRequest(k.url, method, path, {
        ...headers,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      }, body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body));
    /** Call and check; returns the reply. */
    const exercise = async (
      label: string,
      method: string,
      template: string,
      path: string,
      expect: "ok" | "bad" | "any",
      body?: unknown,
      headers?: Record<string, string>,
    ) => {
      const reply = await call(method, path, body, headers);
      check(label, template, method, reply, expect);
      return reply;
    };
    /** A request body the document says is valid for this operation (checks the document against known-good use). */
    const docAccepts = (method: string, template: string, body: unknown) => {
      const schema = opFor(method, template)?.op.requestBody?.content?.["application/json"]?.schema;
      if (!schema) return;
      const errors = validate(schema, body);
      if (errors.length) {
        problem(`${method} ${template}: a body the server accepts fails the documented request schema: ${errors}`);
      }
    };

    await t.step("every route the app serves is documented and every documented route is served", () => {
      const routes = k.keel.app.routes.filter((r) => r.method !== "ALL")
        .map((r) => `${r.method} ${r.path.replace(/:(\w+)/g, "{$1}")}`);
      const docKeys = documented.map((d) => `${d.method} ${d.path}`);
      for (const r of routes) if (!docKeys.includes(r)) problem(`routes: ${r} is served but not documented`);
      for (const d of docKeys) if (!routes.includes(d)) problem(`routes: ${d} is documented but not served`);
    });

    await t.step("the README's API table lists exactly the documented operations", async () => {
      const readme = await Deno.readTextFile(`${ROOT}/README.md`);
      const section = readme.slice(
        readme.indexOf("## HTTP API"),
        readme.indexOf("\n## ", readme.indexOf("## HTTP API") + 5),
      );
      const listed = new Set<string>();
      for (const line of section.split("\n").filter((l) => l.startsWith("| `"))) {
        const first = line.split("|")[1];
        for (const m of first.matchAll(/`(GET|POST|PUT|DELETE|PATCH) ([^`?\s]+)[^`]*`/g)) listed.add(`${m[1]} ${m[2]}`);
      }
      const norm = (key: string) => key.replace(/\{[^}]+\}/g, "{}");
      const docKeys = new Set(documented.map((d) => norm(`${d.method} ${d.path}`)));
      const readmeKeys = new Set([...listed].map(norm));
      for (const r of readmeKeys) if (!docKeys.has(r)) problem(`README: ${r} is in the README but not documented`);
      for (const d of docKeys) if (!readmeKeys.has(d)) problem(`README: ${d} is documented but not in the README`);
    });

    await t.step("every /api operation needs the bearer token; open ones do not", async () => {
      for (const { method, path, op } of documented) {
        const concrete = path.replace(/\{(\w+)\}/g, "nothing_here");
        const open = Array.isArray(op.security) && op.security.length === 0;
        if (!open) {
          for (
            const [what, headers] of [
              ["no token", {}],
              ["wrong token", { authorization: "Bearer wrong-token" }],
              ["token prefix", { authorization: `Bearer ${TEST_TOKEN.slice(0, -1)}` }],
              ["token plus", { authorization: `Bearer ${TEST_TOKEN}x` }],
              ["basic scheme", { authorization: `Basic ${btoa(`x:${TEST_TOKEN}`)}` }],
              ["bare token", { authorization: TEST_TOKEN }],
              ["token in query", {}],
            ] as const
          ) {
            const p = what === "token in query" ? `${concrete}?token=${TEST_TOKEN}` : concrete;
            const reply = await call(method, p, method === "GET" || method === "DELETE" ? undefined : {}, headers);
            if (reply.status !== 401) problem(`auth: ${method} ${path} with ${what} answered ${reply.status}`);
            check(`auth ${what}`, path, method, reply, "bad");
            if (reply.json?.error?.tag !== "UnauthorizedError") {
              problem(`auth: ${method} ${path} with ${what}: tag ${reply.json?.error?.tag}`);
            }
          }
          if (!path.startsWith("/api/")) problem(`auth: ${method} ${path} needs a token but is outside /api`);
        } else if (path.startsWith("/api/")) problem(`auth: ${method} ${path} is documented as open`);
      }
      // The scheme is case-insensitive (RFC 9110 §11.1; the document declares `scheme: bearer`).
      for (const scheme of ["bearer", "BEARER"]) {
        const reply = await call("GET", "/api/plugins", undefined, { authorization: `${scheme} ${TEST_TOKEN}` });
        if (reply.status !== 200) problem(`auth: "${scheme} <token>" answered ${reply.status}`);
      }
      // Undocumented paths under /api still need the token (nothing leaks which routes exist).
      const probe = await call("GET", "/api/does-not-exist", undefined, {});
      if (probe.status !== 401) problem(`auth: GET /api/does-not-exist without a token answered ${probe.status}`);
    });

    // ---- valid use, building the state the invalid requests are judged against -------------------------------
    const ids: Record<string, string> = {};
    await t.step(
      "valid requests: each documented operation answers a documented 2xx with a matching body",
      async () => {
        await exercise("healthz", "GET", "/healthz", "/healthz", "ok", undefined, {});
        await exercise("openapi", "GET", "/openapi.json", "/openapi.json", "ok", undefined, {});

        const smtpBody = {
          path: `${ROOT}/plugins/smtp`,
          grant: { net: [`${peer.host}:${peer.port}`] },
          config: { host: peer.host, port: peer.port, from: "Keel <keel@example.test>" },
        };
        docAccepts("POST", "/api/plugins/preview", { path: smtpBody.path, config: smtpBody.config });
        await exercise("preview", "POST", "/api/plugins/preview", "/api/plugins/preview", "ok", {
          path: smtpBody.path,
          config: smtpBody.config,
        });
        docAccepts("POST", "/api/plugins", smtpBody);
        await exercise("install smtp", "POST", "/api/plugins", "/api/plugins", "ok", smtpBody);
        await exercise("install onboarding", "POST", "/api/plugins", "/api/plugins", "ok", {
          path: `${ROOT}/agents/onboarding`,
          grant: {},
        });
        await exercise("list plugins", "GET", "/api/plugins", "/api/plugins", "ok");

        // A 0.2.0 of the onboarding agent, asking for nothing more.
        const next = `${scratch}/onboarding`;
        await Deno.mkdir(next);
        for await (const e of Deno.readDir(`${ROOT}/agents/onboarding`)) {
          let text = await Deno.readTextFile(`${ROOT}/agents/onboarding/${e.name}`);
          text = text.replace("../../core/sdk/mod.ts", `file://${Deno.realPathSync(ROOT)}/core/sdk/mod.ts`);
          if (e.name === "plugin.json") text = text.replace('"version": "0.1.1"', '"version": "0.2.0"');
          await Deno.writeTextFile(`${next}/${e.name}`, text);
        }
        ids.next = next;
        docAccepts("POST", "/api/plugins/{name}/upgrade", { path: next, dryRun: true });
        await exercise(
          "upgrade dry run",
          "POST",
          "/api/plugins/{name}/upgrade",
          "/api/plugins/onboarding/upgrade",
          "ok",
          {
            path: next,
            dryRun: true,
          },
        );
        docAccepts("POST", "/api/plugins/{name}/versions/{version}/grant", { grant: {} });
        await exercise(
          "grant",
          "POST",
          "/api/plugins/{name}/versions/{version}/grant",
          "/api/plugins/onboarding/versions/0.1.1/grant",
          "ok",
          { grant: {} },
        );

        const wf = "/api/workflows/{name}/runs";
        docAccepts("POST", wf, { input: ADA, priority: 7 });
        const queued = await exercise("start", "POST", wf, "/api/workflows/onboard_client/runs?priority=3", "ok", {
          input: ADA,
        });
        ids.first = queued.json?.runId;
        const waiting = await exercise(
          "start and wait",
          "POST",
          wf,
          "/api/workflows/onboard_client/runs?wait=60",
          "ok",
          {
            input: ADA,
            priority: 7,
          },
        );
        ids.waiting = waiting.json?.runId;
        ids.approval = waiting.json?.waitingFor?.approvalId;
        assert.ok(ids.approval, `a run waits for approval: ${waiting.text}`);
        const toDeny = await exercise("start 3", "POST", wf, "/api/workflows/onboard_client/runs?wait=60", "ok", {
          input: ADA,
        });
        ids.denyApproval = toDeny.json?.waitingFor?.approvalId;
        ids.denyRun = toDeny.json?.runId;
        docAccepts("POST", wf, { input: ADA, startAt: "2099-01-01T00:00:00Z" });
        const later = await exercise("start later", "POST", wf, "/api/workflows/onboard_client/runs", "ok", {
          input: ADA,
          startAt: "2099-01-01T00:00:00Z",
        });
        ids.later = later.json?.runId;
        const delayed = await exercise(
          "start delayed",
          "POST",
          wf,
          "/api/workflows/onboard_client/runs?delay=3600",
          "ok",
          {
            input: ADA,
          },
        );
        ids.delayed = delayed.json?.runId;

        await exercise("get run", "GET", "/api/runs/{id}", `/api/runs/${ids.waiting}`, "ok");
        await exercise("get run wait", "GET", "/api/runs/{id}", `/api/runs/${ids.first}?wait=0.5`, "ok");
        docAccepts("POST", "/api/runs/{id}/cancel", { reason: "not needed" });
        await exercise("cancel", "POST", "/api/runs/{id}/cancel", `/api/runs/${ids.delayed}/cancel`, "ok", {
          reason: "not needed",
        });
        await exercise("undo", "POST", "/api/runs/{id}/undo", `/api/runs/${ids.delayed}/undo`, "ok");
        await exercise("approvals", "GET", "/api/approvals", "/api/approvals?status=pending&limit=10", "ok");
        await exercise("approvals all", "GET", "/api/approvals", "/api/approvals", "ok");
        await exercise("audit", "GET", "/api/audit", `/api/audit?runId=${ids.waiting}&limit=5`, "ok");
        await exercise("audit all", "GET", "/api/audit", "/api/audit", "ok");
        const verified = await exercise("verify", "GET", "/api/audit/verify", "/api/audit/verify", "ok");
        const head = `${verified.json?.head?.seq}:${verified.json?.head?.hash}`;
        await exercise("verify anchored", "GET", "/api/audit/verify", `/api/audit/verify?anchor=${head}`, "ok");
        await exercise("verify bad anchor", "GET", "/api/audit/verify", "/api/audit/verify?anchor=1:zz", "bad");
        docAccepts("POST", "/api/policy/explain", { effect: "email.send", args: { to: "a@b.c" }, agent: "onboarding" });
        await exercise("explain", "POST", "/api/policy/explain", "/api/policy/explain", "ok", {
          effect: "email.send",
          args: { to: "a@b.c" },
          agent: "onboarding",
        });
        await exercise("explain at", "POST", "/api/policy/explain", "/api/policy/explain", "ok", {
          effect: "thing.do",
          class: "read",
          at: "2030-01-01T09:00:00Z",
        });
        const files = { "default.yaml": await Deno.readTextFile(`${ROOT}/policies/default.yaml`) };
        docAccepts("POST", "/api/policy/simulate", { files });
        await exercise("simulate", "POST", "/api/policy/simulate", "/api/policy/simulate", "ok", { files });
        await exercise("simulate changed", "POST", "/api/policy/simulate", "/api/policy/simulate", "ok", {
          files: { "p.yaml": "default: allow\nrules: []\n" },
          changedOnly: true,
        });
        await exercise("memory", "GET", "/api/memory", "/api/memory?q=Ada&limit=5&kind=fact&tag=x", "ok");
        await exercise("collections", "GET", "/api/collections", "/api/collections", "ok");
        const schema = { type: "object", properties: { name: { type: "string" } }, required: ["name"] };
        docAccepts("PUT", "/api/collections/{name}", { schema });
        await exercise("define", "PUT", "/api/collections/{name}", "/api/collections/clients", "ok", { schema });
        docAccepts("PUT", "/api/collections/{name}/records/{id}", { data: { name: "Ada" } });
        await exercise(
          "put record",
          "PUT",
          "/api/collections/{name}/records/{id}",
          "/api/collections/clients/records/c1",
          "ok",
          {
            data: { name: "Ada" },
          },
        );
        await exercise("records", "GET", "/api/collections/{name}/records", "/api/collections/clients/records", "ok");
        await exercise(
          "records where",
          "GET",
          "/api/collections/{name}/records",
          `/api/collections/clients/records?where=${encodeURIComponent('{"name":"Ada"}')}&limit=10&after=a`,
          "ok",
        );
        await exercise(
          "record",
          "GET",
          "/api/collections/{name}/records/{id}",
          "/api/collections/clients/records/c1",
          "ok",
        );
        await exercise("schedules", "GET", "/api/schedules", "/api/schedules", "ok");
        docAccepts("POST", "/api/hooks", { workflow: "onboard_client", name: "crm" });
        const hook = await exercise("hook", "POST", "/api/hooks", "/api/hooks", "ok", {
          workflow: "onboard_client",
          name: "crm",
        });
        ids.hook = hook.json?.hook?.id;
        ids.secret = hook.json?.secret;
        await exercise("hooks", "GET", "/api/hooks", "/api/hooks", "ok");
        const delivery = JSON.stringify(ADA);
        await exercise("deliver", "POST", "/hooks/{id}", `/hooks/${ids.hook}`, "ok", delivery, {
          ...(await signHookDelivery(ids.secret, delivery, undefined, "d-1")),
        });
        await exercise("deliver again", "POST", "/hooks/{id}", `/hooks/${ids.hook}`, "ok", delivery, {
          ...(await signHookDelivery(ids.secret, delivery, undefined, "d-1")),
        });
      },
    );

    // ---- invalid requests ------------------------------------------------------------------------------------
    /** A concrete path for a template: known ids where they exist, so a bad body is judged, not the id. */
    const known: Record<string, string> = {
      "/api/plugins/{name}": "/api/plugins/nothing_here",
      "/api/plugins/{name}/versions/{version}": "/api/plugins/nothing_here/versions/9.9.9",
      "/api/plugins/{name}/upgrade": "/api/plugins/onboarding/upgrade",
      "/api/plugins/{name}/versions/{version}/grant": "/api/plugins/onboarding/versions/0.1.1/grant",
      "/api/workflows/{name}/runs": "/api/workflows/onboard_client/runs",
      "/api/runs/{id}": `/api/runs/${ids.first}`,
      "/api/runs/{id}/cancel": `/api/runs/${ids.later}/cancel`,
      "/api/runs/{id}/undo": `/api/runs/${ids.later}/undo`,
      "/api/runs/{id}/replay": `/api/runs/${ids.delayed}/replay`,
      "/api/approvals/{id}/approve": `/api/approvals/${ids.approval}/approve`,
      "/api/approvals/{id}/deny": `/api/approvals/${ids.approval}/deny`,
      "/api/hooks/{id}": "/api/hooks/nothing_here",
      "/hooks/{id}": `/hooks/${ids.hook}`,
      "/api/collections/{name}": "/api/collections/clients",
      "/api/collections/{name}/records": "/api/collections/clients/records",
      "/api/collections/{name}/records/{id}": "/api/collections/clients/records/c1",
    };
    const concrete = (template: string) => known[template] ?? template;

    /** Values of the wrong type for a documented property schema. */
    const wrongValues = (s: Schema): unknown[] => {
      if (s.$ref) s = doc.components.schemas[s.$ref.split("/").pop()];
      if (s.enum) return ["bogus-value", 12345];
      const type = Array.isArray(s.type) ? s.type[0] : s.type;
      switch (type) {
        case "string":
          return [12345, true, { a: 1 }, ...(s.maxLength ? ["x".repeat(s.maxLength + 1)] : [])];
        case "integer":
          return ["5", 1.5, -1, 1e308, 99999999999999999999];
        case "number":
          return ["5", 1e400];
        case "boolean":
          return ["yes", 1];
        case "object":
          return ["text", [1, 2], 7];
        case "array":
          return ["text", { a: 1 }];
        default:
          return [];
      }
    };
    const bases: Record<string, Record<string, unknown>> = {
      "POST /api/plugins": { path: `${ROOT}/agents/onboarding`, grant: {} },
      "POST /api/plugins/preview": { path: `${ROOT}/plugins/smtp` },
      "POST /api/plugins/{name}/upgrade": { path: ids.next, dryRun: true },
      "POST /api/plugins/{name}/versions/{version}/grant": { grant: {} },
      "POST /api/workflows/{name}/runs": { input: ADA, startAt: "2099-01-01T00:00:00Z" },
      "POST /api/runs/{id}/cancel": {},
      "POST /api/approvals/{id}/approve": {},
      "POST /api/approvals/{id}/deny": {},
      "POST /api/policy/explain": { effect: "email.send" },
      "POST /api/policy/simulate": { files: { "p.yaml": "default: allow\nrules: []\n" } },
      "PUT /api/collections/{name}": { schema: { type: "object" } },
      "PUT /api/collections/{name}/records/{id}": { data: { name: "Ada" } },
      "POST /api/hooks": { workflow: "onboard_client" },
      "POST /api/runs/{id}/replay": {},
    };

    await t.step("bodies the documented request schema refuses are refused with a documented 4xx", async () => {
      for (const { method, path, op } of documented) {
        const schema = op.requestBody?.content?.["application/json"]?.schema;
        if (!schema || path === "/hooks/{id}") continue;
        const base = bases[`${method} ${path}`];
        if (!base) {
          problem(`fuzz: no base body for ${method} ${path}`);
          continue;
        }
        const cases: Array<[string, unknown]> = [
          ["array body", [1, 2]],
          ["string body", '"text"'],
          ["null body", "null"],
          ["malformed JSON", "{not json"],
          ["invalid UTF-8", '{"a": "\xff"}'],
          ["deep nesting", "[".repeat(200) + "]".repeat(200)],
        ];
        for (const req of schema.required ?? []) {
          const { [req]: _, ...rest } = base;
          cases.push([`missing ${req}`, rest]);
        }
        for (const [prop, ps] of Object.entries(schema.properties ?? {}) as Array<[string, Schema]>) {
          for (const bad of wrongValues(ps)) {
            cases.push([`${prop}=${JSON.stringify(bad)?.slice(0, 30)}`, { ...base, [prop]: bad }]);
          }
        }
        for (const [what, body] of cases) {
          const sent = typeof body === "string" ? body : JSON.stringify(body);
          // Only bodies the document itself refuses count as invalid.
          const parsed = (() => {
            try {
              return JSON.parse(sent);
            } catch {
              return Symbol("unparseable");
            }
          })();
          const docRefuses = typeof parsed === "symbol" || validate(schema, parsed).length > 0 ||
            what === "deep nesting";
          if (!docRefuses) continue;
          const reply = await call(method, concrete(path), sent);
          check(`fuzz ${method} ${path} ${what}`, path, method, reply, "bad");
        }
      }
    });

    await t.step("bad query values get a documented 4xx, never a 500", async () => {
      const values = [
        "not-valid",
        "-1",
        "0",
        "99999999999999999999999",
        "1e3",
        "0x10",
        "",
        "%00",
        "%ZZ",
        "%E2%9C%93",
        "1.5",
      ];
      for (const { method, path, op } of documented) {
        for (const param of (op.parameters ?? []).filter((p: any) => p.in === "query")) {
          for (const value of values) {
            const sep = concrete(path).includes("?") ? "&" : "?";
            const extra = path === "/api/memory" && param.name !== "q" ? "q=x&" : "";
            const p = `${concrete(path)}${sep}${extra}${param.name}=${value}`;
            const body = method === "POST" ? (bases[`${method} ${path}`] ?? {}) : undefined;
            const reply = await call(method, p, method === "POST" && path.includes("/runs") ? { input: ADA } : body);
            // Does the document's parameter schema accept the decoded value?
            let decoded: unknown = value;
            try {
              decoded = decodeURIComponent(value);
            } catch { /* stays raw */ }
            const ps = param.schema ?? {};
            const asTyped = ps.type === "integer" && /^-?\d+$/.test(decoded as string)
              ? Number(decoded)
              : ps.type === "boolean" && /^(true|false)$/.test(decoded as string)
              ? decoded === "true"
              : decoded;
            const docRefuses = validate(ps, asTyped).length > 0;
            check(`query ${method} ${p}`, path, method, reply, docRefuses ? "bad" : "any");
          }
        }
      }
      // Repeated and unknown parameters.
      for (
        const p of [
          "/api/approvals?limit=1&limit=x",
          "/api/audit?limit=5&limit=99999999",
          "/api/runs/x?wait=1&wait=999",
        ]
      ) {
        const template = p.startsWith("/api/runs/") ? "/api/runs/{id}" : p.split("?")[0];
        check(`query GET ${p}`, template, "GET", await call("GET", p), "any");
      }
    });

    await t.step("bad path ids (.., slashes, unicode, huge) get a documented 4xx, never a 500", async () => {
      const bad = [
        "..",
        "%2e%2e",
        "a%2Fb",
        "a%2F..%2F..%2Fetc",
        "%C3%BCn%C3%AFc%C3%B8d%C3%A9",
        "%F0%9F%92%A5",
        "%00",
        "%ZZ",
        "x".repeat(3000),
        "a%20b",
        "-1",
        "99999999999999999999999",
        "run_%0Aat%20file",
        "__proto__",
        "constructor",
      ];
      for (const { method, path, op } of documented) {
        const names = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[0]);
        for (const name of names) {
          const param = (op.parameters ?? []).find((p: any) => p.in === "path" && `{${p.name}}` === name);
          for (const value of bad) {
            const p = concrete(path).split("/").map((seg, i) => path.split("/")[i] === name ? value : seg).join("/");
            const body = method === "POST" || method === "PUT" ? (bases[`${method} ${path}`] ?? {}) : undefined;
            const reply = await call(method, p, body);
            check(`path ${method} ${p.slice(0, 120)}`, path, method, reply, "any");
            let decoded = value;
            try {
              decoded = decodeURIComponent(value);
            } catch { /* stays raw */ }
            // An id the document's own parameter schema refuses must not be accepted.
            const docRefuses = validate(param?.schema ?? {}, decoded).length > 0;
            if (docRefuses && reply.status >= 200 && reply.status < 300) {
              problem(
                `path ${method} ${p.slice(0, 120)}: a bad id was accepted with ${reply.status}: ${
                  reply.text.slice(0, 200)
                }`,
              );
            }
          }
        }
      }
    });

    await t.step("invalid requests each operation documents an answer for", async () => {
      const wf = "/api/workflows/{name}/runs";
      const big = { name: "x".repeat(60 * 1024), email: "a@b.c" };
      const cases: Array<[string, string, string, unknown, number, Record<string, string>?]> = [
        ["POST", wf, "/api/workflows/no_such_flow/runs", { input: ADA }, 404],
        ["POST", wf, "/api/workflows/onboard_client/runs", { input: { name: "Ada" } }, 400],
        ["POST", wf, "/api/workflows/onboard_client/runs", { input: big }, 413],
        ["POST", wf, "/api/workflows/onboard_client/runs?wait=301", { input: ADA }, 400],
        ["POST", wf, "/api/workflows/onboard_client/runs?delay=99999999999", { input: ADA }, 400],
        [
          "POST",
          wf,
          "/api/workflows/onboard_client/runs?delay=5",
          { input: ADA, startAt: "2099-01-01T00:00:00Z" },
          400,
        ],
        ["POST", wf, "/api/workflows/onboard_client/runs", { input: ADA, startAt: "2030-02-30T00:00:00Z" }, 400],
        ["POST", wf, "/api/workflows/onboard_client/runs", { input: ADA, priority: 1e308 }, 400],
        ["GET", "/api/runs/{id}", "/api/runs/run_000000000000unknown", undefined, 404],
        ["POST", "/api/runs/{id}/replay", `/api/runs/${ids.later}/replay`, {}, 409],
        ["POST", "/api/runs/{id}/replay", `/api/runs/${ids.waiting}/replay`, { version: "../../x" }, 400],
        ["POST", "/api/runs/{id}/undo", `/api/runs/${ids.later}/undo`, {}, 409],
        ["POST", "/api/runs/{id}/undo", "/api/runs/run_unknown/undo", {}, 404],
        ["POST", "/api/runs/{id}/cancel", "/api/runs/run_unknown/cancel", {}, 404],
        ["POST", "/api/approvals/{id}/approve", "/api/approvals/apr_unknown/approve", {}, 404],
        ["POST", "/api/approvals/{id}/approve", `/api/approvals/${ids.approval}/approve`, { by: "x/../y" }, 400],
        ["POST", "/api/approvals/{id}/deny", "/api/approvals/apr_unknown/deny", { note: "n" }, 404],
        ["GET", "/api/approvals", "/api/approvals?status=bogus", undefined, 400],
        ["GET", "/api/audit", "/api/audit?runId=../../etc", undefined, 400],
        ["POST", "/api/policy/explain", "/api/policy/explain", { effect: "email.send", class: "nope" }, 400],
        ["POST", "/api/policy/explain", "/api/policy/explain", { effect: "email.send", at: "yesterday" }, 400],
        ["POST", "/api/policy/simulate", "/api/policy/simulate", { files: { "../x.yaml": "default: allow" } }, 400],
        ["POST", "/api/policy/simulate", "/api/policy/simulate", { files: { "p.yaml": "rules: [" } }, 400],
        ["GET", "/api/memory", "/api/memory", undefined, 400],
        ["GET", "/api/memory", "/api/memory?q=x&since=notadate", undefined, 400],
        ["GET", "/api/memory", "/api/memory?q=x&bogus=1", undefined, 400],
        ["PUT", "/api/collections/{name}", "/api/collections/Bad-Name", { schema: { type: "object" } }, 400],
        ["PUT", "/api/collections/{name}", "/api/collections/c2", { schema: { type: "string" } }, 400],
        ["PUT", "/api/collections/{name}", "/api/collections/c3", { schema: { type: "object", properties: 5 } }, 400],
        ["GET", "/api/collections/{name}/records", "/api/collections/nope/records", undefined, 404],
        ["GET", "/api/collections/{name}/records", "/api/collections/clients/records?where=[1", undefined, 400],
        ["GET", "/api/collections/{name}/records", "/api/collections/clients/records?where=5", undefined, 400],
        ["GET", "/api/collections/{name}/records/{id}", "/api/collections/clients/records/nope", undefined, 404],
        [
          "PUT",
          "/api/collections/{name}/records/{id}",
          "/api/collections/clients/records/c9",
          { data: { name: 5 } },
          400,
        ],
        ["PUT", "/api/collections/{name}/records/{id}", "/api/collections/nope/records/c9", { data: {} }, 404],
        ["POST", "/api/hooks", "/api/hooks", { workflow: "no_such_flow" }, 404],
        ["DELETE", "/api/hooks/{id}", "/api/hooks/hk_unknown", undefined, 404],
        ["POST", "/api/plugins", "/api/plugins", { path: "/nonexistent/dir", grant: {} }, 400],
        ["POST", "/api/plugins", "/api/plugins", { path: ids.next, grant: {} }, 409],
        ["POST", "/api/plugins/preview", "/api/plugins/preview", { path: "/etc/passwd" }, 400],
        ["POST", "/api/plugins/{name}/upgrade", "/api/plugins/nope/upgrade", { path: ids.next }, 404],
        ["POST", "/api/plugins/{name}/versions/{version}/grant", "/api/plugins/onboarding/versions/9.9.9/grant", {
          grant: {},
        }, 404],
        ["POST", "/api/plugins/{name}/versions/{version}/grant", "/api/plugins/onboarding/versions/0.1.1/grant", {
          grant: { net: ["*"] },
        }, 400],
        ["DELETE", "/api/plugins/{name}", "/api/plugins/nope", undefined, 404],
        ["DELETE", "/api/plugins/{name}", "/api/plugins/onboarding?force=maybe", undefined, 400],
        ["DELETE", "/api/plugins/{name}", "/api/plugins/onboarding", undefined, 409],
        ["DELETE", "/api/plugins/{name}/versions/{version}", "/api/plugins/onboarding/versions/9.9.9", undefined, 404],
      ];
      const body = JSON.stringify(ADA);
      const sig = (text: string) => signHookDelivery(ids.secret, text);
      const stamp = { "x-keel-timestamp": String(Math.floor(Date.now() / 1000)) };
      const hookCases: Array<[string, string, Record<string, string>, number]> = [
        ["no signature", body, {}, 401],
        ["wrong signature", body, { ...stamp, "x-keel-signature": `sha256=${"0".repeat(64)}` }, 401],
        ["malformed signature", body, { ...stamp, "x-keel-signature": "md5=abc" }, 401],
        ["stale timestamp", body, await signHookDelivery(ids.secret, body, 1_000_000_000), 401],
        ["not JSON", "{nope", await sig("{nope"), 400],
        ["array", "[1]", await sig("[1]"), 400],
        ["bad input", '{"name":"x"}', await sig('{"name":"x"}'), 400],
        ["bad delivery id", body, await signHookDelivery(ids.secret, body, undefined, "a/b/../c"), 400],
        ["too big", JSON.stringify(big), await sig(JSON.stringify(big)), 413],
      ];
      for (const [method, template, path, b, status] of cases) {
        const reply = await exercise(`invalid ${method} ${path.slice(0, 80)}`, method, template, path, "bad", b);
        if (reply.status !== status) {
          problem(
            `invalid ${method} ${path.slice(0, 80)}: expected ${status}, got ${reply.status}: ${
              reply.text.slice(0, 200)
            }`,
          );
        }
      }
      for (const [what, text, headers, status] of hookCases) {
        const reply = await exercise(`hook ${what}`, "POST", "/hooks/{id}", `/hooks/${ids.hook}`, "bad", text, headers);
        if (reply.status !== status) {
          problem(`hook ${what}: expected ${status}, got ${reply.status}: ${reply.text.slice(0, 200)}`);
        }
      }
      const unknownHook = await exercise(
        "hook unknown",
        "POST",
        "/hooks/{id}",
        "/hooks/hk_unknown",
        "bad",
        body,
        await sig(body),
      );
      if (unknownHook.status !== 404 && unknownHook.status !== 401) problem(`hook unknown: ${unknownHook.status}`);
    });

    await t.step("approving, denying, replaying, deleting: the rest of the valid requests", async () => {
      docAccepts("POST", "/api/approvals/{id}/approve", { note: "fine", by: "alice" });
      const approved = await exercise(
        "approve",
        "POST",
        "/api/approvals/{id}/approve",
        `/api/approvals/${ids.approval}/approve`,
        "ok",
        {
          note: "fine",
          by: "alice",
        },
      );
      const again = await exercise(
        "approve again",
        "POST",
        "/api/approvals/{id}/approve",
        `/api/approvals/${ids.approval}/approve`,
        "bad",
        {},
      );
      assert.equal(again.status, 409, again.text);
      assert.equal(approved.json?.approval?.status, "approved", approved.text);
      await exercise("deny", "POST", "/api/approvals/{id}/deny", `/api/approvals/${ids.denyApproval}/deny`, "ok", {
        note: "no",
      });
      const done = await exercise("wait run", "GET", "/api/runs/{id}", `/api/runs/${ids.waiting}?wait=30`, "ok");
      assert.equal(done.json?.status, "succeeded", done.text);
      docAccepts("POST", "/api/runs/{id}/replay", { version: "0.1.1" });
      await exercise("replay", "POST", "/api/runs/{id}/replay", `/api/runs/${ids.waiting}/replay`, "ok", {});
      await exercise("replay version", "POST", "/api/runs/{id}/replay", `/api/runs/${ids.waiting}/replay`, "ok", {
        version: "0.1.1",
      });
      await exercise("undo done", "POST", "/api/runs/{id}/undo", `/api/runs/${ids.waiting}/undo`, "any");
      await exercise("cancel ended", "POST", "/api/runs/{id}/cancel", `/api/runs/${ids.waiting}/cancel`, "bad", {});
      await exercise("delete hook", "DELETE", "/api/hooks/{id}", `/api/hooks/${ids.hook}`, "ok");
      await exercise("delete hook again", "DELETE", "/api/hooks/{id}", `/api/hooks/${ids.hook}`, "bad");
      const signed = JSON.stringify(ADA);
      await exercise("deliver to deleted", "POST", "/hooks/{id}", `/hooks/${ids.hook}`, "bad", signed, {
        ...(await signHookDelivery(ids.secret, signed)),
      });
      await exercise("upgrade", "POST", "/api/plugins/{name}/upgrade", "/api/plugins/onboarding/upgrade", "ok", {
        path: ids.next,
      });
      await exercise(
        "remove version",
        "DELETE",
        "/api/plugins/{name}/versions/{version}",
        "/api/plugins/onboarding/versions/0.1.1?force=true",
        "ok",
      );
      await exercise("remove plugin", "DELETE", "/api/plugins/{name}", "/api/plugins/onboarding?force=true", "ok");
      await exercise("remove smtp", "DELETE", "/api/plugins/{name}", "/api/plugins/smtp?version=0.1.1&force=1", "any");
      await exercise("plugins after", "GET", "/api/plugins", "/api/plugins", "ok");
      await exercise("still up", "GET", "/healthz", "/healthz", "ok", undefined, {});
    });

    if (problems.length) console.log(`\n${problems.length} contract problems:\n- ${problems.join("\n- ")}\n`);
    assert.deepEqual(problems, [], `${problems.length} contract problems`);
  } finally {
    await k.close();
    await peer.close();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
});

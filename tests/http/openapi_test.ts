/**
 * @module
 * The OpenAPI document and the Hono app agree: every route the app registers
 * is documented with its method, every documented operation is served, and
 * the document looks like valid OpenAPI 3.1 (every `$ref` resolves, every
 * path parameter is declared, every operation documents its errors).
 */
import assert from "node:assert/strict";
import { openApiDocument } from "../../core/http/mod.ts";
import { startTestKeel, TEST_TOKEN } from "../_support/keel.ts";

const METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];
const doc = JSON.parse(JSON.stringify(openApiDocument));
type Operation = { parameters?: Array<{ name: string; in: string; required?: boolean }>; [k: string]: any };
const paths = doc.paths as Record<string, Record<string, Operation>>;

/** Every documented `METHOD /path` with its operation. */
const documented = Object.entries(paths).flatMap(([path, item]) =>
  Object.entries(item).filter(([m]) => METHODS.includes(m)).map(([m, op]) => ({ method: m.toUpperCase(), path, op }))
);

Deno.test("the OpenAPI document looks like OpenAPI 3.1: version, info, paths, bearer security", () => {
  assert.match(doc.openapi, /^3\.1\.\d+$/);
  assert.equal(typeof doc.info.title, "string");
  assert.match(doc.info.version, /^\d+\.\d+\.\d+/);
  assert.ok(Object.keys(paths).length > 0);
  for (const path of Object.keys(paths)) assert.match(path, /^\/[^\s:]*$/, `path templates use {param}: ${path}`);
  assert.deepEqual(doc.components.securitySchemes.bearer, { type: "http", scheme: "bearer" });
  assert.deepEqual(doc.security, [{ bearer: [] }]);
});

Deno.test("every $ref in the OpenAPI document points at a schema it defines", () => {
  const refs: string[] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v !== null && typeof v === "object") {
      for (const [k, child] of Object.entries(v)) k === "$ref" ? refs.push(child as string) : walk(child);
    }
  };
  walk(doc);
  assert.ok(refs.length > 0);
  for (const ref of refs) {
    const m = /^#\/components\/schemas\/(\w+)$/.exec(ref);
    assert.ok(m, `local schema ref: ${ref}`);
    assert.ok(doc.components.schemas[m[1]], `${ref} is defined`);
  }
});

Deno.test("every documented operation declares its path parameters and documents a success and its errors", () => {
  for (const { method, path, op } of documented) {
    const inPath = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
    const declared = (op.parameters ?? []).filter((p) => p.in === "path");
    assert.deepEqual(declared.map((p) => p.name).sort(), inPath, `${method} ${path} path parameters`);
    for (const p of declared) assert.equal(p.required, true, `${method} ${path} {${p.name}} is required`);
    for (const p of op.parameters ?? []) assert.ok(["path", "query", "header"].includes(p.in));
    assert.equal(typeof op.summary, "string", `${method} ${path} has a summary`);
    const codes = Object.keys(op.responses ?? {});
    assert.ok(codes.some((c) => /^2\d\d$/.test(c)), `${method} ${path} documents a success`);
    if (path.startsWith("/api/")) {
      assert.ok(codes.includes("401"), `${method} ${path} documents 401`);
      assert.equal(op.security, undefined, `${method} ${path} keeps the bearer requirement`);
      for (const code of codes.filter((c) => /^[45]/.test(c))) {
        assert.deepEqual(
          op.responses[code].content["application/json"].schema,
          { $ref: "#/components/schemas/Error" },
          `${method} ${path} ${code} is an Error`,
        );
      }
    } else {
      assert.deepEqual(op.security, [], `${method} ${path} is open`);
    }
  }
});

Deno.test("every route the app registers is documented, and every documented operation is served", async () => {
  const k = await startTestKeel();
  try {
    const served = k.keel.app.routes
      .filter((r) => r.method !== "ALL") // middleware (the bearer check on /api/*)
      .map((r) => ({ method: r.method, path: r.path.replace(/:(\w+)/g, "{$1}") }));
    assert.ok(served.length > 0);
    const key = (r: { method: string; path: string }) => `${r.method} ${r.path}`;
    const servedKeys = new Set(served.map(key));
    const documentedKeys = new Set(documented.map(key));
    for (const r of served) assert.ok(documentedKeys.has(key(r)), `${key(r)} is served but not documented`);
    for (const r of documented) assert.ok(servedKeys.has(key(r)), `${key(r)} is documented but not served`);
    assert.equal(servedKeys.size, served.length, "no route is registered twice");

    // And each documented operation really answers (not with the catch-all "No route for …").
    for (const { method, path } of documented) {
      const concrete = path.replace(/\{(\w+)\}/g, "nothing_here");
      const res = await k.keel.app.request(concrete, {
        method,
        headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
        body: method === "POST" ? "{}" : undefined,
      });
      const body = await res.json();
      assert.ok(
        !(res.status === 404 && /^No route for /.test(body?.error?.message ?? "")),
        `${method} ${path} is routed (got ${res.status} ${JSON.stringify(body)})`,
      );
      assert.ok(res.status < 500, `${method} ${path} does not fail on an empty request: ${res.status}`);
      const op = paths[path][method.toLowerCase()];
      assert.ok(
        Object.keys(op.responses).includes(String(res.status)),
        `${method} ${path} answered ${res.status}, which the document does not list`,
      );
    }

    // A malformed body on any documented POST or PUT gets an answer the document lists.
    for (const { method, path, op } of documented.filter((d) => d.method === "POST" || d.method === "PUT")) {
      const res = await k.keel.app.request(path.replace(/\{(\w+)\}/g, "nothing_here"), {
        method,
        headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
        body: "{not json",
      });
      await res.body?.cancel();
      assert.ok(
        Object.keys(op.responses).includes(String(res.status)),
        `${method} ${path} answered a malformed body with ${res.status}, which the document does not list`,
      );
      const big = await k.keel.app.request(path.replace(/\{(\w+)\}/g, "nothing_here"), {
        method,
        headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
        body: `{"input":"${"x".repeat(4 * 1024 * 1024)}"}`,
      });
      await big.body?.cancel();
      assert.equal(big.status, 413, `${method} ${path}`);
      assert.ok(
        "413" in op.responses,
        `${method} ${path} answers 413 for a body over 4 MiB; the document does not list it`,
      );
      assert.ok(
        "408" in op.responses,
        `${method} ${path} answers 408 for a body too slow; the document does not list it`,
      );
    }

    // A bad value for any documented query parameter gets an answer the document lists.
    for (const { method, path, op } of documented) {
      for (const param of (op.parameters ?? []).filter((p) => p.in === "query")) {
        const concrete = `${path.replace(/\{(\w+)\}/g, "nothing_here")}?${param.name}=not-valid`;
        const res = await k.keel.app.request(concrete, {
          method,
          headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
          body: method === "POST" ? "{}" : undefined,
        });
        await res.body?.cancel();
        assert.ok(
          Object.keys(op.responses).includes(String(res.status)),
          `${method} ${concrete} answered ${res.status}, which the document does not list`,
        );
      }
    }
  } finally {
    await k.close();
  }
});

Deno.test("`GET /openapi.json` serves exactly the document", async () => {
  const k = await startTestKeel();
  try {
    const res = await fetch(`${k.url}/openapi.json`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), doc);
    const health = await (await fetch(`${k.url}/healthz`)).json();
    assert.equal(health.version, doc.info.version, "/healthz and the document report the same version");
  } finally {
    await k.close();
  }
});

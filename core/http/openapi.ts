/**
 * @module
 * The OpenAPI 3.1 document served at `GET /openapi.json`. Kept by hand next
 * to the routes in `app.ts`; `tests/http/openapi_test.ts` checks that every
 * route the app serves is documented and the other way round.
 */

const json = (schema: Record<string, unknown>) => ({ content: { "application/json": { schema } } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((code) => [String(code), { description: "Error", ...json(ref("Error")) }]));
const idParam = (name: string) => ({ name, in: "path", required: true, schema: { type: "string" } });
const waitParam = {
  name: "wait",
  in: "query",
  required: false,
  schema: { type: "number", minimum: 0, maximum: 300 },
  description: "Seconds to wait for the run to end or pause before answering",
};

/** The API description. */
export const openApiDocument = {
  openapi: "3.1.0",
  info: {
    title: "Keel",
    version: "0.1.0",
    description:
      "Keel's HTTP API. Every /api route needs `Authorization: Bearer <token>`. Errors are `{error: {tag, message, details}}`.",
  },
  servers: [{ url: "http://127.0.0.1:8787" }],
  components: {
    securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
    schemas: {
      Error: {
        type: "object",
        required: ["error"],
        properties: {
          error: {
            type: "object",
            required: ["tag", "message"],
            properties: { tag: { type: "string" }, message: { type: "string" }, details: {} },
          },
        },
      },
      Grant: {
        type: "object",
        additionalProperties: false,
        properties: {
          net: { type: "array", items: { type: "string" }, description: "Literal host:port entries" },
          env: { type: "array", items: { type: "string" } },
          read: { type: "array", items: { type: "string" }, description: "Paths relative to the plugin's data dir" },
          write: { type: "array", items: { type: "string" } },
        },
      },
      Plugin: {
        type: "object",
        properties: {
          name: { type: "string" },
          version: { type: "string" },
          path: { type: "string" },
          manifest: { type: "object" },
          manifestHash: { type: "string" },
          requested: ref("Grant"),
          grant: ref("Grant"),
          state: { enum: ["running", "stopped", "crashed"] },
          restarts: { type: "integer" },
          lastError: { type: "string" },
        },
      },
      Step: {
        type: "object",
        properties: {
          seq: { type: "integer" },
          kind: { enum: ["step", "effect", "memory"] },
          name: { type: "string" },
          status: { enum: ["done", "failed", "waiting_approval", "intent", "unknown_outcome"] },
          value: {},
          error: {},
          approvalId: { type: "string" },
          idempotencyKey: { type: "string" },
          startedAt: { type: "string" },
          endedAt: { type: "string" },
          latencyMs: { type: "number" },
        },
      },
      Run: {
        type: "object",
        properties: {
          id: { type: "string" },
          workflow: { type: "string" },
          plugin: { type: "string" },
          pluginVersion: { type: "string" },
          input: {},
          status: { enum: ["running", "waiting_approval", "succeeded", "failed", "cancelled"] },
          output: {},
          error: {},
          waitingFor: {
            type: "object",
            properties: { approvalId: { type: "string" }, reason: { type: "string" } },
          },
          steps: { type: "array", items: ref("Step") },
          createdAt: { type: "string" },
          updatedAt: { type: "string" },
        },
      },
      Approval: {
        type: "object",
        properties: {
          id: { type: "string" },
          kind: { enum: ["effect", "unknown_outcome"] },
          runId: { type: "string" },
          seq: { type: "integer" },
          effect: { type: "string" },
          plugin: { type: "string" },
          args: {},
          digest: { type: "string" },
          policyHash: { type: "string" },
          rule: { type: "string" },
          approver: { type: "string" },
          message: { type: "string" },
          status: { enum: ["pending", "approved", "denied", "used", "expired"] },
          createdAt: { type: "string" },
          expiresAt: { type: "string" },
          decidedBy: { type: "string" },
          decidedAt: { type: "string" },
          note: { type: "string" },
          resolution: { enum: ["retry", "delivered"] },
        },
      },
      AuditEvent: {
        type: "object",
        properties: {
          seq: { type: "integer" },
          at: { type: "string" },
          type: { type: "string" },
          actor: { type: "string" },
          runId: { type: "string" },
          data: { type: "object" },
          prevHash: { type: "string" },
          hash: { type: "string" },
        },
      },
    },
  },
  security: [{ bearer: [] }],
  paths: {
    "/healthz": {
      get: {
        summary: "Liveness",
        security: [],
        responses: { "200": { description: "Up", ...json({ type: "object" }) } },
      },
    },
    "/openapi.json": {
      get: { summary: "This document", security: [], responses: { "200": { description: "OpenAPI 3.1" } } },
    },
    "/api/plugins": {
      get: {
        summary: "Installed plugins with their grants and state",
        responses: {
          "200": {
            description: "Plugins",
            ...json({ type: "object", properties: { plugins: { type: "array", items: ref("Plugin") } } }),
          },
          ...errors(401),
        },
      },
      post: {
        summary: "Install a plugin from a folder with an explicit grant",
        requestBody: json({
          type: "object",
          required: ["path", "grant"],
          properties: { path: { type: "string" }, grant: ref("Grant"), config: { type: "object" } },
        }),
        responses: {
          "201": { description: "Installed", ...json({ type: "object", properties: { plugin: ref("Plugin") } }) },
          ...errors(400, 401, 409, 502, 504),
        },
      },
    },
    "/api/workflows/{name}/runs": {
      post: {
        summary: "Start a run of a workflow",
        parameters: [idParam("name"), waitParam],
        requestBody: json({ type: "object", properties: { input: {} } }),
        responses: {
          "202": {
            description: "Started; with ?wait the run as it stands when it ended, paused or the wait ran out",
            ...json({ allOf: [ref("Run"), { type: "object", properties: { runId: { type: "string" } } }] }),
          },
          ...errors(400, 401, 404),
        },
      },
    },
    "/api/runs/{id}": {
      get: {
        summary: "A run: status, steps, output, error",
        parameters: [idParam("id"), waitParam],
        responses: { "200": { description: "The run", ...json(ref("Run")) }, ...errors(400, 401, 404) },
      },
    },
    "/api/approvals": {
      get: {
        summary: "Approvals, optionally by status",
        parameters: [{
          name: "status",
          in: "query",
          schema: { enum: ["pending", "approved", "denied", "used", "expired"] },
        }],
        responses: {
          "200": {
            description: "Approvals",
            ...json({ type: "object", properties: { approvals: { type: "array", items: ref("Approval") } } }),
          },
          ...errors(400, 401),
        },
      },
    },
    "/api/approvals/{id}/approve": {
      post: {
        summary: "Approve a pending action; the run resumes",
        parameters: [idParam("id")],
        requestBody: json({
          type: "object",
          properties: {
            note: { type: "string" },
            by: { type: "string" },
            resolution: { enum: ["retry", "delivered"], description: "Required for unknown_outcome approvals" },
          },
        }),
        responses: {
          "200": { description: "Decided", ...json({ type: "object", properties: { approval: ref("Approval") } }) },
          ...errors(400, 401, 404, 409),
        },
      },
    },
    "/api/approvals/{id}/deny": {
      post: {
        summary: "Deny a pending action; the effect fails with PolicyDeniedError",
        parameters: [idParam("id")],
        requestBody: json({ type: "object", properties: { note: { type: "string" }, by: { type: "string" } } }),
        responses: {
          "200": { description: "Decided", ...json({ type: "object", properties: { approval: ref("Approval") } }) },
          ...errors(400, 401, 404, 409),
        },
      },
    },
    "/api/audit": {
      get: {
        summary: "Audit events, oldest first",
        parameters: [
          { name: "runId", in: "query", schema: { type: "string" } },
          { name: "limit", in: "query", schema: { type: "integer", minimum: 1, maximum: 10000 } },
        ],
        responses: {
          "200": {
            description: "Events",
            ...json({ type: "object", properties: { events: { type: "array", items: ref("AuditEvent") } } }),
          },
          ...errors(400, 401),
        },
      },
    },
    "/api/audit/verify": {
      get: {
        summary: "Recompute the audit hash chain",
        responses: {
          "200": {
            description: "Result",
            ...json({
              type: "object",
              properties: { ok: { type: "boolean" }, checked: { type: "integer" }, brokenAt: { type: "integer" } },
            }),
          },
          ...errors(401),
        },
      },
    },
  },
} as const;

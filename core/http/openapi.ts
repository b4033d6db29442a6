/**
 * @module
 * The OpenAPI 3.1 document served at `GET /openapi.json`. Kept by hand next
 * to the routes in `app.ts`; `tests/http/openapi_test.ts` checks that every
 * route the app serves is documented and the other way round.
 */

import { APPROVAL_STATUSES, RUN_STATUSES } from "../journal/mod.ts";

/** What started a run (`Run` and `RunSummary`). */
const runTrigger = {
  type: "object",
  properties: { kind: { enum: ["http", "cli", "cron", "webhook", "child", "api"] }, id: { type: "string" } },
};
/** Who cancelled a run, when and why (`Run` and `RunSummary`). */
const runCancelled = {
  type: "object",
  properties: { by: { type: "string" }, reason: { type: "string" }, at: { type: "string" } },
};

const json = (schema: Record<string, unknown>) => ({ content: { "application/json": { schema } } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((code) => [String(code), { description: "Error", ...json(ref("Error")) }]));
/** A 429 (`QueueFullError`): the run queue holds `KEEL_MAX_QUEUED` runs; `Retry-After` says when to try again. */
const queueFull = {
  "429": {
    description: "The run queue is full (KEEL_MAX_QUEUED); nothing was started. Try again after Retry-After seconds",
    headers: { "Retry-After": { schema: { type: "integer", minimum: 1 } } },
    ...json(ref("Error")),
  },
};
const idParam = (name: string) => ({ name, in: "path", required: true, schema: { type: "string" } });
/** A collection's name, as `Records` takes it (another name is a 400). */
const collectionParam = {
  name: "name",
  in: "path",
  required: true,
  schema: { type: "string", pattern: "^[a-z][a-z0-9_]{0,62}$" },
};
/** A record's id, as `Records` takes it (another id is a 400). */
const recordIdParam = {
  name: "id",
  in: "path",
  required: true,
  schema: { type: "string", pattern: "^[\\w.@:+-]{1,200}$" },
};
const waitParam = {
  name: "wait",
  in: "query",
  required: false,
  schema: { type: "string", pattern: "^\\d{1,12}(\\.\\d{1,6})?$" },
  description: "Seconds (plain digits, at most 300) to wait for the run to end or pause before answering",
};

/**
 * Every POST and PUT reads its body through one reader (`app.ts`): over 4 MiB is a 413, nested over 128 levels a 400,
 * not arrived within `KEEL_HTTP_TIMEOUT_MS` a 408.
 */
const withBodyLimits = <D>(doc: D): D => {
  const paths = (doc as { paths: Record<string, Record<string, { responses: object }>> }).paths;
  for (const ops of Object.values(paths)) {
    for (const [method, op] of Object.entries(ops)) {
      if (method === "post" || method === "put") op.responses = { ...errors(400, 408, 413), ...op.responses };
    }
  }
  return doc;
};

/** The API description. */
export const openApiDocument = withBodyLimits(
  {
    openapi: "3.1.0",
    info: {
      title: "Keel",
      version: "0.1.0",
      description:
        "Keel's HTTP API. Every /api route needs `Authorization: Bearer <token>`. Errors are `{error: {tag, message, details}}`. " +
        "A request body is a JSON object of at most 4 MiB (else 413), nesting at most 128 levels (else 400), that " +
        "arrives within KEEL_HTTP_TIMEOUT_MS (default 30 s; else 408, and the connection closes). A connection with no " +
        "request in flight for that long is closed. When KEEL_MAX_CONNECTIONS connections (default 256) all have a " +
        "request in flight, a new one is answered 503 (ServerBusyError, with Retry-After) and closed.",
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
            overrides: {
              type: "array",
              items: { type: "string" },
              description: "Read only: requests Keel refuses by default that the operator overrode (see override)",
            },
          },
        },
        Plugin: {
          type: "object",
          properties: {
            name: { type: "string" },
            version: { type: "string" },
            path: { type: "string", description: "Keel's stored copy, <data dir>/plugins/<name>/<version>: what runs" },
            source: { type: "string", description: "The folder or .tar.gz archive it was installed from" },
            packageHash: { type: "string", description: "SHA-256 of the package's paths and contents" },
            manifest: {
              type: "object",
              description:
                "plugin.json as Keel read it. For an agent, records: {read, write} lists the record collections its workflows may read (get, query) and write (put); absent, none",
            },
            manifestHash: { type: "string" },
            requested: ref("Grant"),
            grant: ref("Grant"),
            activation: {
              enum: ["active", "inactive", "needs_grant"],
              description:
                "active serves; inactive serves only runs pinned to it; needs_grant never runs until granted",
            },
            pendingChanges: {
              type: "array",
              items: { type: "string" },
              description: "For needs_grant: what the upgrade changes, in plain words",
            },
            grantedAt: { type: "string" },
            grantedBy: { type: "string" },
            installedAt: { type: "string" },
            installedBy: { type: "string" },
            state: { enum: ["running", "stopped", "crashed", "unhealthy"] },
            restarts: { type: "integer" },
            lastError: { type: "string" },
            isolation: { enum: ["worker", "process"], description: "A Worker in the host, or its own process" },
            sandbox: { enum: ["deno-permissions", "bwrap", "none"], description: "What confines the running instance" },
            health: {
              type: "object",
              description: "The last periodic health check; absent until the first",
              required: ["ok", "at", "consecutiveFailures"],
              properties: {
                ok: { type: "boolean" },
                at: { type: "string", format: "date-time" },
                error: { type: "string" },
                consecutiveFailures: { type: "integer", minimum: 0 },
              },
            },
          },
        },
        Schedule: {
          type: "object",
          properties: {
            workflow: { type: "string" },
            plugin: { type: "string" },
            version: { type: "string" },
            cron: { type: "string" },
            tz: { type: "string" },
            input: { type: "object" },
            nextFireAt: { type: "string", format: "date-time" },
            lastFireAt: { type: "string", format: "date-time" },
            lastRunId: { type: "string" },
          },
        },
        Hook: {
          type: "object",
          properties: {
            id: { type: "string" },
            workflow: { type: "string" },
            name: { type: "string" },
            path: { type: "string", description: "Where senders post: /hooks/{id}" },
            signing: {
              type: "string",
              enum: ["timestamped", "body"],
              description:
                "timestamped: deliveries need X-Keel-Timestamp, signed with the delivery id and body (replays refused); " +
                "body: a signature over the body alone is taken too (hooks made before timestamps)",
            },
            createdAt: { type: "string", format: "date-time" },
            createdBy: { type: "string" },
          },
        },
        ReplayReport: {
          type: "object",
          properties: {
            runId: { type: "string" },
            workflow: { type: "string" },
            agent: { type: "string" },
            agentVersion: { type: "string", description: "The version that replayed the run" },
            recordedVersion: { type: "string", description: "The version the run was recorded with" },
            steps: { type: "integer" },
            divergences: {
              type: "array",
              items: {
                type: "object",
                properties: { seq: { type: "integer" }, expected: {}, actual: {}, message: { type: "string" } },
              },
            },
            output: {
              type: "object",
              properties: { recorded: {}, replayed: {}, equal: { type: "boolean" } },
            },
          },
        },
        ManifestDiff: {
          type: "object",
          description: "What an upgrade changes compared with the serving version",
          properties: {
            escalates: { type: "boolean", description: "True when it needs a new grant" },
            kindChanged: { type: "boolean" },
            permissions: {
              type: "object",
              properties: { added: ref("Grant"), removed: ref("Grant") },
            },
            effects: { type: "object" },
            uses: { type: "object" },
            records: {
              type: "object",
              description:
                "{added: {read, write}, removed: {read, write}}: record collections; any added one needs a new grant",
            },
            npm: { type: "object" },
            weakerIsolation: { type: "object" },
            lines: { type: "array", items: { type: "string" }, description: "Every change in plain words" },
          },
        },
        Removal: {
          type: "object",
          properties: {
            name: { type: "string" },
            removed: { type: "array", items: { type: "string" } },
            whole: { type: "boolean", description: "True when every version went, with the plugin's data" },
            cancelledRuns: {
              type: "array",
              items: { type: "string" },
              description: "Runs pinned to what went (a forced removal's), cancelled with the removal as the reason",
            },
          },
        },
        Step: {
          type: "object",
          properties: {
            seq: { type: "integer" },
            kind: { enum: ["step", "effect", "memory", "model", "timer", "approval", "child"] },
            name: { type: "string" },
            status: { enum: ["done", "failed", "waiting_approval", "intent", "unknown_outcome", "waiting"] },
            value: {},
            error: {},
            approvalId: { type: "string" },
            idempotencyKey: { type: "string" },
            startedAt: { type: "string" },
            endedAt: { type: "string" },
            latencyMs: { type: "number" },
            attempts: { type: "integer", description: "Calls of this effect so far, retries included" },
            lastError: { description: "The last failed attempt's error" },
            nextAttemptAt: { type: "string", description: "When the next retry starts, while the host waits" },
          },
        },
        UndoEntry: {
          type: "object",
          properties: {
            seq: { type: "integer" },
            effect: { type: "string" },
            compensation: { type: "string" },
            undoSeq: { type: "integer" },
            result: {},
            previously: { type: "boolean", description: "An earlier undo already did it; nothing was sent" },
            approvalId: { type: "string" },
            reason: { type: "string" },
            error: {},
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
            status: { enum: RUN_STATUSES },
            output: {},
            error: {},
            waitingFor: {
              type: "object",
              description: "Why a parked run waits: an approval (its id), a timer or a child run",
              properties: { approvalId: { type: "string" }, reason: { type: "string" } },
            },
            priority: { type: "integer", minimum: 0, maximum: 9 },
            notBefore: { type: "integer", description: "Delayed start: not before this time (epoch ms)" },
            wakeAt: { type: "integer", description: "When a sleeping run wakes (epoch ms)" },
            queuedAt: { type: "integer", description: "When a queued or sleeping run becomes ready (epoch ms)" },
            lease: {
              type: "object",
              description: "The host executing the run and until when its claim holds",
              properties: { owner: { type: "string" }, until: { type: "integer" } },
            },
            trigger: runTrigger,
            parentRunId: { type: "string" },
            parentSeq: { type: "integer" },
            pins: { type: "object", additionalProperties: { type: "string" }, description: "Connector versions" },
            cancelled: runCancelled,
            steps: { type: "array", items: ref("Step") },
            recalls: {
              type: "array",
              items: ref("RecallLogEntry"),
              description: "What the run recalled from memory and why; present when it recalled anything",
            },
            createdAt: { type: "string" },
            updatedAt: { type: "string" },
          },
        },
        RunSummary: {
          type: "object",
          description: "A run in the run list: `Run` without input, output, steps, pins, lease and queue place",
          required: ["id", "workflow", "plugin", "pluginVersion", "status", "createdAt", "updatedAt"],
          properties: {
            id: { type: "string" },
            workflow: { type: "string" },
            plugin: { type: "string" },
            pluginVersion: { type: "string" },
            status: { enum: RUN_STATUSES },
            error: {},
            waitingFor: {
              type: "object",
              properties: { approvalId: { type: "string" }, reason: { type: "string" } },
            },
            priority: { type: "integer", minimum: 0, maximum: 9 },
            notBefore: { type: "integer" },
            wakeAt: { type: "integer" },
            trigger: runTrigger,
            parentRunId: { type: "string" },
            parentSeq: { type: "integer" },
            cancelled: runCancelled,
            createdAt: { type: "string" },
            updatedAt: { type: "string" },
          },
        },
        Approval: {
          type: "object",
          properties: {
            id: { type: "string" },
            kind: { enum: ["effect", "unknown_outcome", "gate"] },
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
            status: { enum: APPROVAL_STATUSES },
            createdAt: { type: "string" },
            expiresAt: { type: "string" },
            decidedBy: { type: "string" },
            decidedAt: { type: "string" },
            note: { type: "string" },
            resolution: { enum: ["retry", "delivered"] },
            reason: { type: "string", description: "Why Keel voided it, and what the run does next" },
            invalidatedAt: { type: "string" },
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
        MemoryItem: {
          type: "object",
          properties: {
            id: { type: "string" },
            scope: { type: "string", description: "agent:<name>" },
            kind: { enum: ["fact", "preference", "note", "summary", "record-ref"] },
            text: { type: "string" },
            tags: { type: "array", items: { type: "string" } },
            provenance: {
              type: "object",
              properties: {
                runId: { type: "string" },
                seq: { type: "integer" },
                plugin: { type: "string" },
                source: { type: "string" },
                contentHash: { type: "string" },
                embedder: { type: "string" },
              },
            },
            cites: { type: "object", description: "For summaries: the entries summarized and quoted" },
            createdAt: { type: "string" },
            score: { type: "number", description: "Reciprocal-rank-fusion score" },
            similarity: { type: "number" },
            vectorRank: { type: "integer" },
            textRank: { type: "integer" },
          },
        },
        RecallLogEntry: {
          type: "object",
          properties: {
            id: { type: "string" },
            runId: { type: "string" },
            seq: { type: "integer" },
            plugin: { type: "string" },
            actor: { type: "string" },
            query: { type: "string" },
            filters: { type: "object" },
            embedder: { type: "string" },
            at: { type: "string" },
            results: {
              type: "array",
              items: {
                type: "object",
                properties: {
                  id: { type: "string" },
                  score: { type: "number" },
                  similarity: { type: "number" },
                  vectorRank: { type: "integer" },
                  textRank: { type: "integer" },
                  kind: { type: "string" },
                  text: { type: "string" },
                  removed: { type: "boolean" },
                },
              },
            },
          },
        },
        Collection: {
          type: "object",
          properties: {
            name: { type: "string" },
            schema: { type: "object" },
            schemaHash: { type: "string" },
            definedBy: { type: "string" },
            records: { type: "integer" },
            createdAt: { type: "string" },
            updatedAt: { type: "string" },
          },
        },
        Record: {
          type: "object",
          properties: {
            collection: { type: "string" },
            id: { type: "string" },
            data: {},
            version: { type: "integer" },
            provenance: {
              type: "object",
              properties: {
                runId: { type: "string" },
                seq: { type: "integer" },
                plugin: { type: "string" },
                source: { type: "string" },
                contentHash: { type: "string" },
                schemaHash: { type: "string" },
              },
            },
            createdAt: { type: "string" },
            updatedAt: { type: "string" },
          },
        },
        PolicyDecision: {
          type: "object",
          properties: {
            decision: { enum: ["allow", "approve", "deny"] },
            rule: { type: "string", description: "Rule id, or default / default-deny-<class> / fail-closed" },
            ruleSource: { type: "string", description: "file:line of the deciding rule" },
            policyHash: { type: "string" },
            reason: { type: "string" },
          },
        },
        PolicyExplanation: {
          type: "object",
          properties: {
            request: { type: "object" },
            policyHash: { type: "string" },
            files: { type: "array", items: { type: "string" } },
            decision: ref("PolicyDecision"),
            matches: {
              type: "array",
              items: {
                type: "object",
                properties: {
                  id: { type: "string" },
                  decision: { enum: ["allow", "approve", "deny"] },
                  file: { type: "string" },
                  line: { type: "integer" },
                  description: { type: "string" },
                  decides: { type: "boolean" },
                },
              },
            },
            fallback: ref("PolicyDecision"),
            installed: {
              type: ["object", "null"],
              properties: { plugin: { type: "string" }, class: { type: "string" } },
            },
            limits: {
              type: "array",
              items: {
                type: "object",
                properties: {
                  name: { type: "string" },
                  rule: { type: "string" },
                  key: { type: "string" },
                  used: { type: "number", description: "Used in the current window (calls, USD or tokens)" },
                },
              },
            },
            notes: { type: "array", items: { type: "string" } },
          },
        },
        PolicySimulation: {
          type: "object",
          properties: {
            policyHash: { type: "string" },
            files: { type: "array", items: { type: "string" } },
            rules: { type: "integer" },
            summary: {
              type: "object",
              properties: {
                total: { type: "integer" },
                unchanged: { type: "integer" },
                changed: { type: "integer" },
                transitions: {
                  type: "object",
                  description: "allowed_to_gated, allowed_to_denied, gated_to_allowed, gated_to_denied, " +
                    "denied_to_allowed, denied_to_gated: counts",
                  additionalProperties: { type: "integer" },
                },
                limitedBefore: {
                  type: "integer",
                  description: "Requests a rate or budget counter refused at the time (counters are not replayed)",
                },
                failedClosedBefore: {
                  type: "integer",
                  description:
                    "Requests the gate refused as fail-closed at the time: not replayed, counted as unchanged",
                },
              },
            },
            pastPolicies: { type: "array", items: { type: "string" } },
            requests: {
              type: "array",
              items: {
                type: "object",
                properties: {
                  at: { type: "string" },
                  runId: { type: "string" },
                  seq: { type: "integer" },
                  effect: { type: "string" },
                  effectClass: { type: "string" },
                  plugin: { type: "string" },
                  agent: { type: "string" },
                  workflow: { type: "string" },
                  argsDigest: { type: "string" },
                  before: { type: "object" },
                  after: { type: "object" },
                  transition: { type: "string" },
                },
              },
            },
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
          summary: "Install a plugin not installed yet, from a folder or .tar.gz archive, with an explicit grant",
          requestBody: json({
            type: "object",
            required: ["path", "grant"],
            properties: {
              path: { type: "string", description: "A plugin folder, or a .tar.gz/.tgz archive, on Keel's machine" },
              grant: ref("Grant"),
              config: { type: "object" },
              isolation: {
                enum: ["worker", "process"],
                description: "Override: default is the manifest's, else process for plugins from outside Keel's folder",
              },
              override: {
                type: "array",
                items: { type: "string" },
                description:
                  "Operator override of requests Keel refuses by default, each named exactly as the refusal names it (run, run:PROGRAM, ffi[:PATH], sys[:KIND], all, net:*, net:HOST, read:PATH, write:PATH); audited as plugin.permission_override, never carried to another version",
              },
            },
          }),
          responses: {
            "201": { description: "Installed", ...json({ type: "object", properties: { plugin: ref("Plugin") } }) },
            ...errors(400, 401, 409, 502, 504),
          },
        },
      },
      "/api/plugins/preview": {
        post: {
          summary: "What a plugin folder or archive asks for, without installing it",
          requestBody: json({
            type: "object",
            required: ["path"],
            properties: {
              path: { type: "string" },
              config: {
                type: "object",
                description:
                  "Checked against the plugin's config schema when given; without it, a permission naming a config field keeps its {field} template",
              },
            },
          }),
          responses: {
            "200": {
              description:
                "The manifest and the permissions it requests with this config ({field} templates unfilled without one)",
              ...json({ type: "object", properties: { manifest: { type: "object" }, requested: ref("Grant") } }),
            },
            ...errors(400, 401),
          },
        },
      },
      "/api/plugins/{name}/upgrade": {
        post: {
          summary: "Install a new version; one asking for more than the serving version was granted waits for a grant",
          parameters: [idParam("name")],
          requestBody: json({
            type: "object",
            required: ["path"],
            properties: {
              path: { type: "string", description: "The new version's folder or .tar.gz archive" },
              config: { type: "object", description: "Default: the serving version's config" },
              isolation: { enum: ["worker", "process"] },
              override: {
                type: "array",
                items: { type: "string" },
                description:
                  "Operator override of requests Keel refuses by default, each named exactly as the refusal names it (run, run:PROGRAM, ffi[:PATH], sys[:KIND], all, net:*, net:HOST, read:PATH, write:PATH); audited as plugin.permission_override, never carried to another version",
              },
              dryRun: { type: "boolean", description: "Only compare: store nothing" },
            },
          }),
          responses: {
            "201": {
              description: "Installed: active with the old grant, or needs_grant (the serving version keeps serving)",
              ...json({
                type: "object",
                properties: {
                  plugin: ref("Plugin"),
                  from: { type: "string", description: "The version it was compared with" },
                  diff: ref("ManifestDiff"),
                  carriedGrant: ref("Grant"),
                  dryRun: { type: "boolean" },
                },
              }),
            },
            ...errors(400, 401, 404, 409, 502, 504),
          },
        },
      },
      "/api/plugins/{name}/versions/{version}/grant": {
        post: {
          summary: "Grant one version (recorded with its manifest hash) and make it the active version",
          parameters: [idParam("name"), idParam("version")],
          requestBody: json({
            type: "object",
            required: ["grant"],
            properties: {
              grant: ref("Grant"),
              override: {
                type: "array",
                items: { type: "string" },
                description:
                  "Operator override of requests Keel refuses by default, each named exactly as the refusal names it (run, run:PROGRAM, ffi[:PATH], sys[:KIND], all, net:*, net:HOST, read:PATH, write:PATH); audited as plugin.permission_override, never carried to another version",
              },
            },
          }),
          responses: {
            "200": {
              description: "Granted and active",
              ...json({ type: "object", properties: { plugin: ref("Plugin") } }),
            },
            ...errors(400, 401, 404, 409, 502, 504),
          },
        },
      },
      "/api/plugins/{name}": {
        delete: {
          summary: "Remove a plugin (every version, its stored files and data); refused while runs pinned to it wait",
          parameters: [
            idParam("name"),
            { name: "version", in: "query", schema: { type: "string" }, description: "Remove only this version" },
            { name: "force", in: "query", schema: { type: "boolean" }, description: "Remove even if runs are pinned" },
          ],
          responses: {
            "200": { description: "Removed", ...json(ref("Removal")) },
            ...errors(400, 401, 404, 409),
          },
        },
      },
      "/api/plugins/{name}/versions/{version}": {
        delete: {
          summary: "Remove one version; refused for the active version of several, or while runs pinned to it wait",
          parameters: [
            idParam("name"),
            idParam("version"),
            { name: "force", in: "query", schema: { type: "boolean" }, description: "Remove even if runs are pinned" },
          ],
          responses: {
            "200": { description: "Removed", ...json(ref("Removal")) },
            ...errors(400, 401, 404, 409),
          },
        },
      },
      "/api/workflows/{name}/runs": {
        post: {
          summary: "Start a run of a workflow, now or later (delay, startAt), with a priority",
          parameters: [
            idParam("name"),
            waitParam,
            {
              name: "delay",
              in: "query",
              required: false,
              schema: { type: "string", pattern: "^\\d{1,12}(\\.\\d{1,6})?$" },
              description: "Start no earlier than this many seconds from now (plain digits, at most 31536000)",
            },
            {
              name: "priority",
              in: "query",
              required: false,
              schema: { type: "integer", minimum: 0, maximum: 9 },
              description: "0–9, higher first when runs queue (default 5); also a body field",
            },
          ],
          requestBody: json({
            type: "object",
            additionalProperties: false,
            properties: {
              input: { description: "The workflow's input: at most 48 KiB of JSON (413 over)" },
              startAt: {
                type: "string",
                format: "date-time",
                description: "Start no earlier than this time: ISO 8601 with a zone, a date that exists",
              },
              priority: { type: "integer", minimum: 0, maximum: 9 },
            },
          }),
          responses: {
            "202": {
              description: "Started; with ?wait the run as it stands when it ended, paused or the wait ran out",
              ...json({ allOf: [ref("Run"), { type: "object", properties: { runId: { type: "string" } } }] }),
            },
            ...errors(400, 401, 404, 413),
            ...queueFull,
          },
        },
      },
      "/api/runs": {
        get: {
          summary:
            "Runs, newest first by creation time (then id), optionally by status and workflow, without their input, output and steps. A status a run can still leave is read from the index of runs not ended; otherwise one call reads at most 5,000 runs and `next` says where to go on",
          parameters: [
            { name: "status", in: "query", schema: { enum: RUN_STATUSES } },
            { name: "workflow", in: "query", schema: { type: "string", pattern: "^[\\w.:-]{1,200}$" } },
            {
              name: "limit",
              in: "query",
              schema: { type: "integer", minimum: 1, maximum: 1000, default: 50 },
              description: "How many runs at most (plain digits)",
            },
            {
              name: "before",
              in: "query",
              schema: { type: "string", pattern: "^[\\w.:-]{1,200}$" },
              description:
                "The id of a run: only runs listed after it (created before it). The `next` of the previous page; 400 if there is no such run",
            },
          ],
          responses: {
            "200": {
              description: "A page of runs; `next` is present when there may be more",
              ...json({
                type: "object",
                required: ["runs"],
                properties: { runs: { type: "array", items: ref("RunSummary") }, next: { type: "string" } },
              }),
            },
            ...errors(400, 401),
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
      "/api/runs/{id}/undo": {
        post: {
          summary:
            "Undo a finished or cancelled run: its effects' declared compensations, last first, through the Gateway; then its memory writes. Idempotent",
          parameters: [idParam("id")],
          responses: {
            "200": {
              description: "What was compensated, skipped (reads, not undoable), failed, or waits for an approval",
              ...json({
                type: "object",
                properties: {
                  runId: { type: "string" },
                  compensated: { type: "array", items: ref("UndoEntry") },
                  skipped: { type: "array", items: ref("UndoEntry") },
                  failed: { type: "array", items: ref("UndoEntry") },
                  waiting: { type: "array", items: ref("UndoEntry") },
                  memory: {
                    type: "object",
                    properties: {
                      removed: { type: "array", items: { type: "string" } },
                      kept: { type: "array", items: { type: "string" } },
                      records: { type: "object" },
                    },
                  },
                },
              }),
            },
            ...errors(400, 401, 404, 409),
          },
        },
      },
      "/api/runs/{id}/cancel": {
        post: {
          summary:
            "Cancel a run that has not ended: a queued, sleeping or waiting run at once, a running one at its next call to Keel; its pending approvals are denied and its child runs cancelled. 409 if the run has ended, or ends before the cancel takes effect (a running workflow that returns without another call to Keel)",
          parameters: [idParam("id")],
          requestBody: json({ type: "object", properties: { reason: { type: "string", maxLength: 1000 } } }),
          responses: {
            "200": { description: "The run, cancelled", ...json(ref("Run")) },
            ...errors(400, 401, 404, 409),
          },
        },
      },
      "/api/approvals": {
        get: {
          summary: "Approvals, oldest first, optionally by status: at most `limit` of them",
          parameters: [
            {
              name: "status",
              in: "query",
              schema: { enum: APPROVAL_STATUSES },
            },
            {
              name: "limit",
              in: "query",
              schema: { type: "integer", minimum: 1, maximum: 10000, default: 1000 },
              description: "How many of the oldest",
            },
          ],
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
          description: "409 when the approval is no longer pending or has expired, and when it was asked for under a " +
            "policy set that has changed since: it is then `invalidated` (its `reason` says so) and the run checks " +
            "the action again under the policy in force, asking for a new approval if that still gates it.",
          parameters: [idParam("id")],
          requestBody: json({
            type: "object",
            properties: {
              note: { type: "string", maxLength: 2000 },
              by: { type: "string" },
              resolution: {
                enum: ["retry", "delivered"],
                description: "Required when approving an unknown_outcome approval; a 400 on any other",
              },
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
          description: "409 when the approval is no longer pending or has expired. A deny is taken even when the " +
            "policy set changed since the approval was asked for: it stands for that exact action under any policy set.",
          parameters: [idParam("id")],
          requestBody: json({
            type: "object",
            properties: { note: { type: "string", maxLength: 2000 }, by: { type: "string" } },
          }),
          responses: {
            "200": { description: "Decided", ...json({ type: "object", properties: { approval: ref("Approval") } }) },
            ...errors(400, 401, 404, 409),
          },
        },
      },
      "/api/audit": {
        get: {
          summary: "The newest `limit` audit events (of the log, or of one run), oldest first",
          parameters: [
            { name: "runId", in: "query", schema: { type: "string" } },
            {
              name: "limit",
              in: "query",
              schema: { type: "integer", minimum: 1, maximum: 10000, default: 1000 },
              description: "How many of the newest events",
            },
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
          summary: "Recompute the audit hash chain, and check it still holds a head saved earlier",
          parameters: [{
            name: "anchor",
            in: "query",
            description: "A head this call reported earlier, `SEQ:HASH`, kept outside the data dir. The chain alone " +
              "cannot show its newest events removed; the anchor's event must still be there with that hash.",
            schema: { type: "string", pattern: "^[1-9][0-9]{0,15}:[0-9a-fA-F]{64}$" },
          }],
          responses: {
            "200": {
              description: "Result: `ok` is false if the chain is broken or the anchor does not hold",
              ...json({
                type: "object",
                required: ["ok", "checked"],
                additionalProperties: false,
                properties: {
                  ok: { type: "boolean" },
                  checked: { type: "integer" },
                  brokenAt: { type: "integer", description: "The first event whose link or hash does not hold" },
                  head: {
                    type: "object",
                    description: "The newest event of the unbroken chain (absent when there is none)",
                    required: ["seq", "hash"],
                    additionalProperties: false,
                    properties: { seq: { type: "integer" }, hash: { type: "string" } },
                  },
                  anchor: {
                    type: "object",
                    required: ["seq", "hash", "held"],
                    additionalProperties: false,
                    properties: {
                      seq: { type: "integer" },
                      hash: { type: "string" },
                      held: { type: "boolean" },
                      problem: { type: "string", description: "Why it does not hold" },
                    },
                  },
                },
              }),
            },
            ...errors(400, 401),
          },
        },
      },
      "/api/policy/explain": {
        post: {
          summary: "Which rule decides one effect request under the policy in force, and why",
          requestBody: json({
            type: "object",
            required: ["effect"],
            properties: {
              effect: { type: "string" },
              args: { description: "The effect's args (conditions on args are evaluated); default {}" },
              plugin: { type: "string", description: "Default: the installed connector providing the effect" },
              agent: { type: "string" },
              workflow: { type: "string" },
              class: {
                enum: ["read", "write", "irreversible", "financial"],
                description:
                  "Default: the class in the effect's manifest (required if no installed plugin declares it)",
              },
              context: { type: "object", description: "Facts added to the Gateway's context (time, zone)" },
              at: { type: "string", description: "Judge the request at this date and time (default: now)" },
            },
          }),
          responses: {
            "200": { description: "The explanation", ...json(ref("PolicyExplanation")) },
            ...errors(400, 401, 404),
          },
        },
      },
      "/api/policy/simulate": {
        post: {
          summary: "Replay the decision log against a candidate policy set and report what would change",
          requestBody: json({
            type: "object",
            required: ["files"],
            properties: {
              files: {
                type: "object",
                description: "Candidate policy files: name (*.yaml or *.yml) to YAML text",
                additionalProperties: { type: "string" },
              },
              changedOnly: { type: "boolean", description: "List only the requests whose decision changes" },
            },
          }),
          responses: {
            "200": { description: "Summary and per-request before/after", ...json(ref("PolicySimulation")) },
            ...errors(400, 401),
          },
        },
      },
      "/api/memory": {
        get: {
          summary: "Recall memory (vector and full-text search fused by reciprocal rank); logged in the retrieval log",
          parameters: [
            { name: "q", in: "query", required: true, schema: { type: "string" } },
            { name: "kind", in: "query", schema: { type: "string" }, description: "Repeat for several kinds" },
            { name: "tag", in: "query", schema: { type: "string" }, description: "Repeat: items carry all tags" },
            { name: "scope", in: "query", schema: { type: "string" } },
            { name: "runId", in: "query", schema: { type: "string" } },
            { name: "plugin", in: "query", schema: { type: "string" } },
            { name: "source", in: "query", schema: { type: "string" } },
            { name: "since", in: "query", schema: { type: "string" }, description: "ISO 8601" },
            { name: "until", in: "query", schema: { type: "string" }, description: "ISO 8601" },
            { name: "limit", in: "query", schema: { type: "integer", minimum: 1, maximum: 50 } },
          ],
          responses: {
            "200": {
              description: "Items, best first",
              ...json({
                type: "object",
                properties: { recallId: { type: "string" }, items: { type: "array", items: ref("MemoryItem") } },
              }),
            },
            ...errors(400, 401, 502),
          },
        },
      },
      "/api/collections": {
        get: {
          summary: "Record collections and their schemas",
          responses: {
            "200": {
              description: "Collections",
              ...json({ type: "object", properties: { collections: { type: "array", items: ref("Collection") } } }),
            },
            ...errors(401),
          },
        },
      },
      "/api/collections/{name}": {
        put: {
          summary: "Create or replace a collection's JSON Schema",
          parameters: [collectionParam],
          requestBody: json({ type: "object", required: ["schema"], properties: { schema: { type: "object" } } }),
          responses: {
            "200": {
              description: "Defined",
              ...json({
                type: "object",
                properties: {
                  collection: ref("Collection"),
                  created: { type: "boolean" },
                  changed: { type: "boolean" },
                },
              }),
            },
            ...errors(400, 401),
          },
        },
      },
      "/api/collections/{name}/records": {
        get: {
          summary: "Records of a collection, by id",
          parameters: [
            collectionParam,
            {
              name: "where",
              in: "query",
              schema: { type: "string" },
              description: 'JSON containment, {"status":"open"}',
            },
            { name: "after", in: "query", schema: { type: "string" }, description: "Ids after this one" },
            { name: "limit", in: "query", schema: { type: "integer", minimum: 1, maximum: 200 } },
          ],
          responses: {
            "200": {
              description: "Records",
              ...json({ type: "object", properties: { records: { type: "array", items: ref("Record") } } }),
            },
            ...errors(400, 401, 404),
          },
        },
      },
      "/api/collections/{name}/records/{id}": {
        get: {
          summary: "One record, current version",
          parameters: [collectionParam, recordIdParam],
          responses: {
            "200": { description: "The record", ...json({ type: "object", properties: { record: ref("Record") } }) },
            ...errors(400, 401, 404),
          },
        },
        put: {
          summary: "Write a record as the operator; validated against the collection's schema",
          parameters: [collectionParam, recordIdParam],
          requestBody: json({ type: "object", required: ["data"], properties: { data: {} } }),
          responses: {
            "200": {
              description: "Written (or unchanged)",
              ...json({
                type: "object",
                properties: { record: ref("Record"), created: { type: "boolean" }, changed: { type: "boolean" } },
              }),
            },
            ...errors(400, 401, 404),
          },
        },
        delete: {
          summary:
            "Delete a record as the operator: its current version goes and a tombstone version (source operator) stays in its history",
          parameters: [collectionParam, recordIdParam],
          responses: {
            "200": {
              description: "Deleted",
              ...json({
                type: "object",
                properties: {
                  deleted: { const: true },
                  version: { type: "integer", description: "The deletion's own version" },
                },
              }),
            },
            ...errors(400, 401, 404),
          },
        },
      },
      "/api/runs/{id}/replay": {
        post: {
          summary: "Replay a finished run against its journal with the current (or a given) agent version",
          parameters: [idParam("id")],
          requestBody: json({ type: "object", properties: { version: { type: "string" } } }),
          responses: {
            "200": { description: "The replay report: divergences and the two outputs", ...json(ref("ReplayReport")) },
            ...errors(400, 401, 404, 409),
          },
        },
      },
      "/api/schedules": {
        get: {
          summary: "Cron schedules of active workflows, with their next fire time",
          responses: {
            "200": {
              description: "Schedules",
              ...json({ type: "object", properties: { schedules: { type: "array", items: ref("Schedule") } } }),
            },
            ...errors(401),
          },
        },
      },
      "/api/hooks": {
        get: {
          summary: "Inbound webhooks (never with their secrets)",
          responses: {
            "200": {
              description: "Hooks",
              ...json({ type: "object", properties: { hooks: { type: "array", items: ref("Hook") } } }),
            },
            ...errors(401),
          },
        },
        post: {
          summary: "Create an inbound webhook for a workflow; its secret is returned once",
          requestBody: json({
            type: "object",
            required: ["workflow"],
            properties: {
              workflow: { type: "string" },
              name: { type: "string" },
              signing: {
                type: "string",
                enum: ["timestamped", "body"],
                description: "Default timestamped; body lets senders sign the body alone (a captured request can " +
                  "then be replayed unless its body or delivery id is unique)",
              },
            },
          }),
          responses: {
            "201": {
              description: "Created: the hook and its secret (shown only now)",
              ...json({ type: "object", properties: { hook: ref("Hook"), secret: { type: "string" } } }),
            },
            ...errors(400, 401, 404),
          },
        },
      },
      "/api/hooks/{id}": {
        delete: {
          summary: "Delete a webhook; deliveries to it are refused from now on",
          parameters: [idParam("id")],
          responses: {
            "200": { description: "Deleted", ...json({ type: "object", properties: { hook: ref("Hook") } }) },
            ...errors(401, 404),
          },
        },
      },
      "/hooks/{id}": {
        post: {
          summary: "Deliver to a webhook (no bearer token): signed body becomes the workflow's input",
          security: [],
          parameters: [
            idParam("id"),
            {
              name: "X-Keel-Signature",
              in: "header",
              required: true,
              schema: { type: "string", pattern: "^sha256=[0-9a-f]{64}$" },
              description: "sha256=<hex HMAC-SHA256 under the hook's secret of " +
                "`<X-Keel-Timestamp>.<X-Keel-Delivery, or nothing>.<raw body>`, or of the raw body alone when no " +
                "timestamp is sent (only a `body` hook takes that)>",
            },
            {
              name: "X-Keel-Timestamp",
              in: "header",
              required: false,
              schema: { type: "string", pattern: "^[0-9]{1,12}$" },
              description: "Unix time in seconds when the delivery was signed; needed by a `timestamped` hook. More " +
                "than 300 s from Keel's clock is a 401. Without X-Keel-Delivery, the same signed request sent again " +
                "maps to the same run",
            },
            {
              name: "X-Keel-Delivery",
              in: "header",
              required: false,
              schema: { type: "string", pattern: "^[A-Za-z0-9_.:-]{1,100}$" },
              description: "Idempotency: the same delivery id always maps to the same run; signed with a timestamp",
            },
          ],
          requestBody: json({ type: "object", description: "The workflow's input (at most 48 KiB)" }),
          responses: {
            "202": {
              description: "Accepted: the run it started, or the run an earlier delivery with this id started",
              ...json({
                type: "object",
                properties: { runId: { type: "string" }, status: { type: "string" }, duplicate: { type: "boolean" } },
              }),
            },
            ...errors(400, 401, 404, 413),
            ...queueFull,
          },
        },
      },
    },
  } as const,
);

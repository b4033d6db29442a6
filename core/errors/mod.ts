/**
 * @module
 * Keel's tagged errors. Each names what went wrong, carries a sentence-case
 * message and optional details, and is Schema-encodable so it crosses the
 * plugin boundary and the HTTP API intact. The HTTP layer maps each tag to
 * one status code (see `core/http/errors.ts`).
 */
import { Schema } from "effect";

const fields = { message: Schema.String, details: Schema.optional(Schema.Unknown) };

/** Input that does not match what the API, CLI or a schema expects. */
export class InvalidInputError extends Schema.TaggedError<InvalidInputError>()("InvalidInputError", fields) {}
/** Something the caller named does not exist (workflow, run, approval, plugin). */
export class NotFoundError extends Schema.TaggedError<NotFoundError>()("NotFoundError", fields) {}
/** The request conflicts with current state (already decided, already installed). */
export class ConflictError extends Schema.TaggedError<ConflictError>()("ConflictError", fields) {}
/** A `plugin.json` that cannot be read or does not validate. */
export class ManifestError extends Schema.TaggedError<ManifestError>()("ManifestError", fields) {}
/** A grant that asks for more than the manifest requests, or for forbidden powers. */
export class GrantError extends Schema.TaggedError<GrantError>()("GrantError", fields) {}
/** A plugin whose module graph reaches outside its folder and the SDK. */
export class ModuleGraphError extends Schema.TaggedError<ModuleGraphError>()("ModuleGraphError", fields) {}
/** A plugin folder or `.tar.gz` archive Keel refuses to store: `../` or absolute entries, links, devices, too big. */
export class PluginPackageError extends Schema.TaggedError<PluginPackageError>()("PluginPackageError", fields) {}
/** A policy file that does not parse or type-check; names file and line. */
export class PolicyFileError extends Schema.TaggedError<PolicyFileError>()("PolicyFileError", fields) {}
/** The policy gate said no. */
export class PolicyDeniedError extends Schema.TaggedError<PolicyDeniedError>()("PolicyDeniedError", fields) {}
/** An effect the calling plugin's manifest does not declare, or no installed connector provides. */
export class EffectNotDeclaredError extends Schema.TaggedError<EffectNotDeclaredError>()(
  "EffectNotDeclaredError",
  fields,
) {}
/** A plugin touched something its grant does not allow. */
export class PermissionDeniedError extends Schema.TaggedError<PermissionDeniedError>()(
  "PermissionDeniedError",
  fields,
) {}
/** A plugin crashed, failed to start, or answered outside the protocol. */
export class PluginCrashedError extends Schema.TaggedError<PluginCrashedError>()("PluginCrashedError", fields) {}
/** A plugin did not answer in time. */
export class PluginTimeoutError extends Schema.TaggedError<PluginTimeoutError>()("PluginTimeoutError", fields) {}
/** A plugin already has as many calls in flight as it may; try again later. */
export class PluginBusyError extends Schema.TaggedError<PluginBusyError>()("PluginBusyError", fields) {}
/** A plugin handler failed with its own error tag (kept in `details.tag`). */
export class PluginFailedError extends Schema.TaggedError<PluginFailedError>()("PluginFailedError", fields) {}
/** A state store (Deno KV, PGlite, the data dir) failed. */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", fields) {}
/** The data dir is owned by another live Keel process. */
export class DataDirLockedError extends Schema.TaggedError<DataDirLockedError>()("DataDirLockedError", fields) {}
/** A missing or wrong bearer token. */
export class UnauthorizedError extends Schema.TaggedError<UnauthorizedError>()("UnauthorizedError", fields) {}
/** A `models.json` that does not parse or validate; names the file and the field. */
export class ModelConfigError extends Schema.TaggedError<ModelConfigError>()("ModelConfigError", fields) {}
/** No model provider on the route could answer (down, timing out, rate limited); `details.attempts` says why. */
export class ModelUnavailableError extends Schema.TaggedError<ModelUnavailableError>()(
  "ModelUnavailableError",
  fields,
) {}
/** A model's answer did not match the requested schema, even after one retry with the validation error. */
export class ModelOutputError extends Schema.TaggedError<ModelOutputError>()("ModelOutputError", fields) {}
/** The embedding provider (Ollama) failed or returned vectors memory cannot store. */
export class EmbeddingError extends Schema.TaggedError<EmbeddingError>()("EmbeddingError", fields) {}
/** A request body, a run's input or an inbound webhook larger than Keel accepts (413). */
export class PayloadTooLargeError extends Schema.TaggedError<PayloadTooLargeError>()("PayloadTooLargeError", fields) {}
/** A request body that did not arrive within the HTTP timeout (`KEEL_HTTP_TIMEOUT_MS`): 408, and the connection closes. */
export class RequestTimeoutError extends Schema.TaggedError<RequestTimeoutError>()("RequestTimeoutError", fields) {}
/** Every HTTP connection Keel takes (`KEEL_MAX_CONNECTIONS`) has a request in flight: 503, with `Retry-After`. */
export class ServerBusyError extends Schema.TaggedError<ServerBusyError>()("ServerBusyError", fields) {}
/** The run queue is full: a start from outside is refused until it drains (429, with `Retry-After`). */
export class QueueFullError extends Schema.TaggedError<QueueFullError>()("QueueFullError", fields) {}
/** The run must stop here and wait (an approval); not a failure of the run. */
export class RunSuspendedError extends Schema.TaggedError<RunSuspendedError>()("RunSuspendedError", fields) {}

/** Every error the core can raise to a caller. */
export type KeelError =
  | InvalidInputError
  | NotFoundError
  | ConflictError
  | ManifestError
  | GrantError
  | ModuleGraphError
  | PluginPackageError
  | PolicyFileError
  | PolicyDeniedError
  | EffectNotDeclaredError
  | PermissionDeniedError
  | PluginCrashedError
  | PluginTimeoutError
  | PluginBusyError
  | PluginFailedError
  | StoreError
  | DataDirLockedError
  | UnauthorizedError
  | RunSuspendedError
  | ModelConfigError
  | ModelUnavailableError
  | ModelOutputError
  | EmbeddingError
  | PayloadTooLargeError
  | RequestTimeoutError
  | ServerBusyError
  | QueueFullError;

/** The JSON shape of an error in the API, the journal and the audit log. */
export interface ErrorBody {
  readonly tag: string;
  readonly message: string;
  readonly details?: unknown;
}

/** Turn any failure into the one JSON error shape, never leaking a stack. */
export const toErrorBody = (error: unknown): ErrorBody => {
  if (error !== null && typeof error === "object" && "_tag" in error && "message" in error) {
    const e = error as { _tag: string; message: string; details?: unknown };
    return e.details === undefined ? { tag: e._tag, message: e.message } : {
      tag: e._tag,
      message: e.message,
      details: e.details,
    };
  }
  if (error instanceof Error) return { tag: "InternalError", message: error.message };
  return { tag: "InternalError", message: String(error) };
};

const BY_TAG = {
  InvalidInputError,
  NotFoundError,
  ConflictError,
  ManifestError,
  GrantError,
  ModuleGraphError,
  PluginPackageError,
  PolicyFileError,
  PolicyDeniedError,
  EffectNotDeclaredError,
  PermissionDeniedError,
  PluginCrashedError,
  PluginTimeoutError,
  PluginBusyError,
  PluginFailedError,
  StoreError,
  DataDirLockedError,
  UnauthorizedError,
  RunSuspendedError,
  ModelConfigError,
  ModelUnavailableError,
  ModelOutputError,
  EmbeddingError,
  PayloadTooLargeError,
  RequestTimeoutError,
  ServerBusyError,
  QueueFullError,
} as const;

/** Rebuild a Keel error that crossed the plugin boundary as `{tag, message}`; undefined for a plugin's own tag. */
export const fromErrorBody = (body: ErrorBody): KeelError | undefined => {
  const make = BY_TAG[body.tag as keyof typeof BY_TAG];
  return make ? new make({ message: body.message, details: body.details }) : undefined;
};

/** A failure the journal recorded, made again for a replay: under its own tag, or as the plugin's failure. */
export const recordedError = (body: ErrorBody): KeelError =>
  fromErrorBody(body) ?? new PluginFailedError({ message: body.message, details: body });

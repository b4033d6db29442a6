/**
 * @module
 * The one place a tagged error becomes an HTTP response:
 * `{ error: { tag, message, details } }` with the status its tag maps to.
 */
import { type ErrorBody, toErrorBody } from "../errors/mod.ts";

/** HTTP status for each error tag; anything else is a 500. */
export const STATUS: Readonly<Record<string, number>> = {
  InvalidInputError: 400,
  ManifestError: 400,
  GrantError: 400,
  ModuleGraphError: 400,
  PluginPackageError: 400,
  PolicyFileError: 400,
  UnauthorizedError: 401,
  PolicyDeniedError: 403,
  EffectNotDeclaredError: 403,
  PermissionDeniedError: 403,
  NotFoundError: 404,
  ConflictError: 409,
  RunSuspendedError: 409,
  PluginFailedError: 502,
  PluginCrashedError: 502,
  PluginTimeoutError: 504,
  PluginBusyError: 503,
  DataDirLockedError: 503,
  StoreError: 500,
  ModelConfigError: 400,
  ModelUnavailableError: 503,
  ModelOutputError: 502,
  EmbeddingError: 502,
  PayloadTooLargeError: 413,
  RequestTimeoutError: 408,
  ServerBusyError: 503,
  QueueFullError: 429,
};

/** Seconds a 429 asks the caller to wait (`Retry-After`). */
export const RETRY_AFTER_SECONDS = 1;

/** The JSON body and status for any failure; never a stack trace. */
export const errorResponse = (error: unknown): { status: number; body: { error: ErrorBody } } => {
  const body = toErrorBody(error);
  const status = STATUS[body.tag] ?? 500;
  return { status, body: { error: body } };
};

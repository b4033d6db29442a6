/**
 * @module
 * `PluginError`: how a plugin tells the host what went wrong. The tag is
 * what the journal, the audit log and the API show (`details.tag` of the
 * host's `PluginFailedError`); `retryable` says whether trying again may
 * help, as data on the failure rather than guessed from its tag. Inside a
 * workflow, the errors `ctx.effect` and the other host calls reject with are
 * `PluginError`s too, carrying the host's tag (`PolicyDeniedError`, …).
 */

/** Options of a `PluginError`. */
export interface PluginErrorOptions {
  /** Whether trying the same call again may succeed (a server that was down); absent: unknown. */
  readonly retryable?: boolean;
  /**
   * The call may have taken effect though the plugin cannot tell (a server took the request, then went silent).
   * For an irreversible or financial effect Keel then asks the operator, as after a crash or a timeout.
   */
  readonly outcomeUnknown?: boolean;
}

/** An error a plugin can throw to give the host a tag and details. */
export class PluginError extends Error {
  /** Whether a retry may help, when the plugin knows. */
  readonly retryable?: boolean;
  /** Whether the call may have taken effect though it failed (see `PluginErrorOptions.outcomeUnknown`). */
  readonly outcomeUnknown?: boolean;

  /** Build an error with a tag the audit log and the API will show. */
  constructor(readonly tag: string, message: string, readonly details?: unknown, options: PluginErrorOptions = {}) {
    super(message);
    this.name = tag;
    if (options.retryable !== undefined) this.retryable = options.retryable;
    if (options.outcomeUnknown) this.outcomeUnknown = true;
  }

  /** The input was wrong for this effect in a way its schema could not say (tag `InvalidInput`). */
  static invalidInput(message: string, details?: unknown): PluginError {
    return new PluginError("InvalidInput", message, details, { retryable: false });
  }

  /** The thing the call named does not exist on the external system (tag `NotFound`). */
  static notFound(message: string, details?: unknown): PluginError {
    return new PluginError("NotFound", message, details, { retryable: false });
  }

  /** The external system could not be reached or is overloaded; later may work (tag `Unavailable`). */
  static unavailable(message: string, details?: unknown): PluginError {
    return new PluginError("Unavailable", message, details, { retryable: true });
  }

  /** The external system answered and said no; the same call will be refused again (tag `Rejected`). */
  static rejected(message: string, details?: unknown): PluginError {
    return new PluginError("Rejected", message, details, { retryable: false });
  }

  /**
   * True if `error` is a `PluginError` with `tag` (any tag when omitted). Use
   * it in a workflow to handle one failure of `ctx.effect` and rethrow the
   * rest: `PluginError.is(e, "PolicyDeniedError")` for a Keel error, or the
   * connector's own tag, `PluginError.is(e, "Unavailable")`, which the host
   * delivers wrapped as `PluginFailedError` with the connector's tag in
   * `details.tag`.
   */
  static is(error: unknown, tag?: string): error is PluginError {
    if (!(error instanceof PluginError)) return false;
    if (tag === undefined || error.tag === tag) return true;
    const details = error.details as { tag?: unknown } | null | undefined;
    return error.tag === "PluginFailedError" && typeof details === "object" && details?.tag === tag;
  }
}

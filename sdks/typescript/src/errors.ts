/**
 * Typed errors. Every error the SDK throws is a `SandboxSDKError`; the
 * subclasses say what kind of failure it was, and `code` carries the
 * server's code (`NOT_FOUND`, `INVALID_ARGUMENT`, `CONFLICT`, ...).
 */

/** The base of every error this SDK throws. */
export class SandboxSDKError extends Error {
  /** The server's error code, or the SDK's own (`TIMEOUT`, `CONNECTION`, ...). */
  readonly code: string
  /** The HTTP status behind a server refusal, where there was one. */
  readonly status?: number
  /** Extra details (the operation, the sandbox). */
  readonly details?: Record<string, unknown>

  constructor(message: string, code = 'SDK_ERROR', opts: { status?: number; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = new.target.name
    this.code = code
    this.status = opts.status
    this.details = opts.details
  }
}

/** The server could not be reached, or the connection broke. */
export class ConnectionError extends SandboxSDKError {
  constructor(message: string, opts: { details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, 'CONNECTION', opts)
  }
}

/** An operation took longer than its timeout. */
export class TimeoutError extends SandboxSDKError {
  /** The timeout that ran out, in milliseconds. */
  readonly timeoutMs: number

  constructor(message: string, timeoutMs: number, opts: { details?: Record<string, unknown> } = {}) {
    super(message, 'TIMEOUT', opts)
    this.timeoutMs = timeoutMs
  }
}

/** The server refused or failed an operation on a sandbox, template, file or context. */
export class SandboxError extends SandboxSDKError {}

/** The server's rate limit: wait `retryAfter` milliseconds before trying again. */
export class RateLimitError extends SandboxSDKError {
  /** Milliseconds to wait, from the server's `Retry-After`. */
  readonly retryAfter: number

  constructor(message: string, retryAfter: number, opts: { status?: number; details?: Record<string, unknown> } = {}) {
    super(message, 'RATE_LIMITED', opts)
    this.retryAfter = retryAfter
  }
}

/** What the server sends in a failed acknowledgement. */
export interface WireError {
  code: string
  message: string
  status?: number
  retryAfter?: number
}

/** The typed error for a server's refusal. */
export function fromWire(e: WireError, details: Record<string, unknown>): SandboxSDKError {
  const message = e.message || e.code
  switch (e.code) {
    case 'RATE_LIMITED':
      return new RateLimitError(message, e.retryAfter ?? 1000, { status: e.status, details })
    case 'TIMEOUT':
      return new TimeoutError(message, Number(details.timeoutMs ?? 0), { details })
    case 'UNAVAILABLE':
      return new ConnectionError(message, { details })
    default:
      return new SandboxError(message, e.code, { status: e.status, details })
  }
}

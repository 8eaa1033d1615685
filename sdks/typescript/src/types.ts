import type { ManagerOptions, SocketOptions } from 'socket.io-client'

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

/** Where log lines go (default: `console`). */
export interface Logger {
  debug(...args: unknown[]): void
  info(...args: unknown[]): void
  warn(...args: unknown[]): void
  error(...args: unknown[]): void
}

export interface SandboxSDKConfig {
  /** An Airlock API key (`airlock keys create`, or the one `airlock serve` printed). */
  apiKey: string
  /** The server, e.g. `http://127.0.0.1:3000` (the default). */
  serverUrl?: string
  /** Milliseconds an operation may take before a `TimeoutError` (default 30,000; executions add their own timeout). */
  timeout?: number
  /** Retries of idempotent operations after a connection error, a timeout or a rate limit (default 3). */
  maxRetries?: number
  /** The first retry's delay in milliseconds, doubled each time (default 1,000). */
  retryDelay?: number
  enableLogging?: boolean
  logLevel?: LogLevel
  logger?: Logger
  /** Count requests and their outcomes for `getMetrics()` (default true). */
  enableMetrics?: boolean
  /** When set, emit a `metrics` event with `getMetrics()` every so many milliseconds. */
  metricsInterval?: number
  /** Passed to socket.io-client's `io()` (transports, reconnection, extra headers, ...). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>
}

export interface Sandbox {
  id: string
  name?: string | null
  templateId: string
  status: string
  createdAt: string
  expiresAt: string
  metadata: Record<string, string>
  cpuCount: number
  memoryMB: number
}

export interface CreateSandboxOptions {
  /** A template name or alias (default `base`). */
  templateId?: string
  name?: string
  /** When the sandbox ends: milliseconds from now, or a date (default 5 minutes). */
  expiryTime?: number | Date | string
  initialEnvVars?: Record<string, string>
  metadata?: Record<string, string>
  cpuCount?: number
  memoryMB?: number
  /** Volumes to mount (Airlock's): each `{ name, path }`, by volume name or id. */
  volumeMounts?: { name: string; path: string }[]
}

export interface Template {
  id: string
  name: string
  aliases: string[]
  createdAt: string
  sizeBytes: number
  defaultUser: string
  workdir?: string | null
  defaultEnvVars: Record<string, string>
}

export interface TemplatePage {
  templates: Template[]
  page: number
  pageSize: number
  total: number
  totalPages: number
}

/** A template as SandboxSDK describes one; it becomes an Airlock template build. */
export interface TemplateSpec {
  name: string
  /** python, javascript, typescript or bash. */
  language: string
  /** Checked against the base's runtime (e.g. `3.11`); the build fails if it differs. */
  version?: string
  /** A base the builder can start from instead of the language's own. */
  dockerImage?: string
  dependencies?: string[]
  installCommand?: string
  defaultEnvVars?: Record<string, string>
}

export interface CreateTemplateOptions {
  /** Each build event (steps, log lines) as it happens. */
  onBuildEvent?: (event: Record<string, unknown>) => void
  /** Milliseconds the build may take (default 10 minutes). */
  timeoutMs?: number
}

export interface ExecutionError {
  name: string
  value: string
  traceback: string
}

/** A result of an execution: the last expression's value or display data (`text`, `png`, `chart`, ...). */
export type ExecutionResult = Record<string, unknown>

export interface RunCodeOptions {
  /** python (default), javascript, typescript, bash, r, java. */
  language?: string
  /** Run in this code context (not with `language`). */
  contextId?: string
  /** Milliseconds the execution may take (default 300,000). */
  timeoutMs?: number
  envs?: Record<string, string>
  onStdout?: (text: string) => void
  onStderr?: (text: string) => void
  onResult?: (result: ExecutionResult) => void
  onError?: (error: ExecutionError) => void
}

export interface RunCodeResponse {
  execution: {
    logs: { stdout: string[]; stderr: string[] }
    results: ExecutionResult[]
    error: ExecutionError | null
  }
  metadata: { executionId: string; sandboxId: string; durationMs: number; executionCount: number | null }
}

export interface RunTerminalOptions {
  cwd?: string
  envs?: Record<string, string>
  /** Milliseconds the command may run (default 300,000). */
  timeoutMs?: number
  onStdout?: (data: string) => void
  onStderr?: (data: string) => void
}

export interface RunTerminalResponse {
  exitCode: number
  stdout: string
  stderr: string
  durationMs: number
  executionId: string
  sandboxId: string
}

export interface FileTarget {
  sandboxId: string
  path: string
}

export interface WriteFileOptions extends FileTarget {
  /** Make missing parent directories (default true). */
  createParents?: boolean
}

export interface FileContent {
  path: string
  content: string
  /** `utf8`, or `base64` for contents that are not UTF-8 (or when asked). */
  encoding: 'utf8' | 'base64'
  size: number
}

export interface FileEntry {
  name: string
  path: string
  type: 'file' | 'directory' | 'symlink'
  size: number
  modifiedAt?: string | null
  permissions?: string
}

export interface CodeContext {
  id: string
  language: string
  cwd: string
}

export interface BatchJob {
  /** Unique within the batch. */
  id: string
  code: string
  language?: string
  /** Milliseconds this job may run (default 60,000). */
  timeout?: number
  /** Higher runs first (default 0). */
  priority?: number
  envs?: Record<string, string>
}

export interface BatchJobResult {
  jobId: string
  success: boolean
  output: string
  stderr: string
  results?: ExecutionResult[]
  error?: string
  timedOut?: boolean
  /** Milliseconds. */
  duration: number
}

export interface ExecuteBatchOptions {
  /** Each job's result as its job ends (before the promise resolves). */
  onResult?: (result: BatchJobResult) => void
  /** Milliseconds the whole batch may take (default: the jobs' timeouts added up, plus a minute). */
  timeoutMs?: number
}

export interface BatchResponse {
  batchId: string
  results: BatchJobResult[]
  summary: { succeeded: number; failed: number; total: number; durationMs: number }
}

export interface SDKMetrics {
  totalRequests: number
  successfulRequests: number
  failedRequests: number
  /** Milliseconds, over every finished request. */
  averageResponseTime: number
  /** Milliseconds spent in code executions, terminal commands and batches. */
  totalExecutionTime: number
  /** Sandboxes this SDK created and has not deleted. */
  activeSandboxes: number
}

/** A snapshot of a sandbox's filesystem; create sandboxes from it with `createSandbox({ templateId: snapshot.id })`. */
export interface Snapshot {
  id: string
  names: string[]
  sandboxId?: string | null
  sizeBytes: number
  createdAt: string
}

/** One fork: the new sandbox, or why that fork failed. */
export interface ForkOutcome {
  sandbox?: Sandbox
  sandboxId?: string
  error?: { code: string; message: string; status?: number }
}

/** A lifecycle event (Airlock's): `created`, `paused`, `resumed`, `timeout`, `killed`, ... */
export interface SandboxEvent {
  /** Increasing sequence number: a resubscription asks for those after the last seen. */
  id: number
  type: string
  sandboxId: string
  templateId: string
  timestamp: string
  metadata: Record<string, string>
  data: unknown
}

/** One reading of a sandbox's usage (Airlock's). */
export interface SandboxMetrics {
  timestamp: string
  timestampUnix: number
  cpuCount: number
  cpuUsedPct: number
  memUsed: number
  memTotal: number
  memCache: number
  diskUsed: number
  diskTotal: number
  netRxBytes: number
  netTxBytes: number
}

/** A live subscription; `close()` ends it. It survives reconnections. */
export interface Subscription {
  /** The server's id of the current subscription (it changes when one is re-established). */
  readonly id: string
  readonly closed: boolean
  close(): Promise<void>
}

export interface SubscribeEventsOptions {
  /** One sandbox's events (default: every sandbox of this key). */
  sandboxId?: string
  /** Only these types (`created`, `killed`, ...). */
  types?: string[]
  /** Only events of sandboxes with this metadata. */
  metadata?: Record<string, string>
  /** Start after this event id (default: the oldest event kept, then live). */
  after?: number
  onEvent: (event: SandboxEvent) => void
  /** The subscription ended for good: an error, or the server closed it. */
  onEnd?: (reason: { code?: string; message: string }) => void
}

export interface SubscribeMetricsOptions {
  /** Milliseconds between readings, 500 to 60,000 (default 1,000). */
  intervalMs?: number
  onMetrics: (metrics: SandboxMetrics) => void
  /** The stream ended: the sandbox stopped running, or an error. */
  onEnd?: (reason: { code?: string; message: string }) => void
}

/** A volume (Airlock's): storage that outlives sandboxes and mounts in several. */
export interface Volume {
  id: string
  name: string
  sizeMB: number
  limitEnforced: boolean
  totalSizeBytes: number
  totalFileCount: number
  createdAt: string
  updatedAt: string
}

import { io, type Socket } from 'socket.io-client'

import { ConnectionError, fromWire, SandboxError, SandboxSDKError, TimeoutError, RateLimitError, type WireError } from './errors.js'
import type {
  BatchJob,
  BatchJobResult,
  BatchResponse,
  CodeContext,
  CreateSandboxOptions,
  CreateTemplateOptions,
  ExecuteBatchOptions,
  ExecutionError,
  ExecutionResult,
  FileContent,
  FileEntry,
  FileTarget,
  LogLevel,
  Logger,
  ForkOutcome,
  RunCodeOptions,
  RunCodeResponse,
  RunTerminalOptions,
  RunTerminalResponse,
  Sandbox,
  SandboxEvent,
  SandboxMetrics,
  SandboxSDKConfig,
  Subscription,
  SubscribeEventsOptions,
  SubscribeMetricsOptions,
  Volume,
  SDKMetrics,
  Snapshot,
  Template,
  TemplatePage,
  TemplateSpec,
  WriteFileOptions,
} from './types.js'

const DEFAULT_URL = 'http://127.0.0.1:3000'
const DEFAULT_TIMEOUT_MS = 30_000
const DEFAULT_EXECUTION_MS = 300_000
const DEFAULT_BUILD_MS = 600_000
/** Time the server gets beyond an execution's own timeout to answer it. */
const EXECUTION_MARGIN_MS = 15_000
const LEVELS: LogLevel[] = ['debug', 'info', 'warn', 'error']

type Ack = { ok: true; data: unknown } | { ok: false; error: WireError }
type Listener = (...args: any[]) => void
type SdkEvent = 'connect' | 'disconnect' | 'reconnect' | 'error' | 'metrics'

interface CallOptions {
  timeoutMs?: number
  /** Safe to send again: retried after connection errors, timeouts and rate limits. */
  idempotent?: boolean
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

function randomId(prefix: string): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto
  if (c?.randomUUID) return `${prefix}-${c.randomUUID()}`
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`
}

function toBase64(b: Uint8Array): string {
  const B = (globalThis as { Buffer?: { from(b: Uint8Array): { toString(enc: string): string } } }).Buffer
  if (B) return B.from(b).toString('base64')
  let s = ''
  for (const x of b) s += String.fromCharCode(x)
  return btoa(s)
}

/**
 * A client of an Airlock server's Socket.IO endpoint, with the SandboxSDK
 * API. It connects when constructed and reconnects by itself; every
 * method waits for the connection (up to its timeout) before it sends.
 */
export class SandboxSDK {
  private readonly socket: Socket
  private readonly cfg: Required<Pick<SandboxSDKConfig, 'timeout' | 'maxRetries' | 'retryDelay' | 'enableLogging' | 'logLevel' | 'enableMetrics'>>
  private readonly logger: Logger
  private readonly listeners = new Map<SdkEvent, Set<Listener>>()
  private readonly created = new Set<string>()
  private readonly counters = { total: 0, ok: 0, failed: 0, responseMs: 0, executionMs: 0 }
  private metricsTimer?: ReturnType<typeof setInterval>
  /** Why the last connection attempt failed (an auth refusal stops retrying). */
  private refusal?: SandboxSDKError
  private everConnected = false
  private closed = false

  constructor(config: SandboxSDKConfig) {
    if (!config || typeof config.apiKey !== 'string' || config.apiKey.trim() === '') {
      throw new SandboxSDKError('apiKey is required', 'INVALID_CONFIG')
    }
    this.cfg = {
      timeout: config.timeout ?? DEFAULT_TIMEOUT_MS,
      maxRetries: config.maxRetries ?? 3,
      retryDelay: config.retryDelay ?? 1000,
      enableLogging: config.enableLogging ?? false,
      logLevel: config.logLevel ?? 'info',
      enableMetrics: config.enableMetrics ?? true,
    }
    this.logger = config.logger ?? console
    const url = (config.serverUrl ?? DEFAULT_URL).replace(/\/+$/, '')
    this.socket = io(url, {
      path: '/socket.io',
      auth: { apiKey: config.apiKey },
      reconnection: true,
      reconnectionDelay: 250,
      reconnectionDelayMax: 2000,
      ...config.socketOptions,
    })
    this.socket.on('connect', () => {
      this.refusal = undefined
      this.log('info', `connected to ${url}`)
      this.fire(this.everConnected ? 'reconnect' : 'connect')
      this.everConnected = true
    })
    this.socket.on('disconnect', (reason: string) => {
      this.log('warn', `disconnected: ${reason}`)
      this.fire('disconnect', reason)
    })
    this.socket.on('connect_error', (err: Error) => {
      // A refusal by the server's middleware (a wrong key) is final;
      // socket.io does not retry it, and neither does this SDK.
      const refused = !(this.socket as unknown as { active: boolean }).active
      this.refusal = refused ? new SandboxSDKError(`the server refused the connection: ${err.message}`, /api key/i.test(err.message) ? 'UNAUTHORIZED' : 'CONNECT_REFUSED') : undefined
      this.log(refused ? 'error' : 'debug', `connection failed: ${err.message}`)
      this.fire('error', this.refusal ?? new ConnectionError(err.message, { cause: err }))
    })
    if (config.metricsInterval && config.metricsInterval > 0 && this.cfg.enableMetrics) {
      this.metricsTimer = setInterval(() => this.fire('metrics', this.getMetrics()), config.metricsInterval)
      ;(this.metricsTimer as { unref?: () => void }).unref?.()
    }
  }

  // ------------------------------------------------------------ plumbing

  /** Listens to the SDK's own events: connect, disconnect, reconnect, error, metrics. */
  on(event: SdkEvent, listener: Listener): this {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set())
    this.listeners.get(event)!.add(listener)
    return this
  }

  off(event: SdkEvent, listener: Listener): this {
    this.listeners.get(event)?.delete(listener)
    return this
  }

  private fire(event: SdkEvent, ...args: unknown[]) {
    for (const l of this.listeners.get(event) ?? []) {
      try {
        l(...args)
      } catch (e) {
        this.log('error', `a ${event} listener threw`, e)
      }
    }
  }

  private log(level: LogLevel, ...args: unknown[]) {
    if (!this.cfg.enableLogging || LEVELS.indexOf(level) < LEVELS.indexOf(this.cfg.logLevel)) return
    this.logger[level]('[airlock-sdk]', ...args)
  }

  /** Resolves once connected; rejects on a refusal (a wrong key) or after `timeoutMs`. */
  waitForConnection(timeoutMs = 10_000): Promise<void> {
    if (this.closed) return Promise.reject(new ConnectionError('this SDK was disconnected; make a new one'))
    if (this.socket.connected) return Promise.resolve()
    if (this.refusal) return Promise.reject(this.refusal)
    return new Promise((resolve, reject) => {
      const done = (err?: SandboxSDKError) => {
        clearTimeout(timer)
        this.socket.off('connect', onConnect)
        this.socket.off('connect_error', onError)
        if (err) reject(err)
        else resolve()
      }
      const onConnect = () => done()
      // connect_error's own handler (above) runs first and sets the refusal.
      const onError = () => {
        if (this.refusal) done(this.refusal)
      }
      const timer = setTimeout(() => done(new TimeoutError(`not connected to the server within ${timeoutMs} ms`, timeoutMs)), timeoutMs)
      this.socket.on('connect', onConnect)
      this.socket.on('connect_error', onError)
      if (!this.socket.active && !this.closed) this.socket.connect()
    })
  }

  /** Connected now. */
  isReady(): boolean {
    return this.socket.connected
  }

  /** Closes the connection for good; pending calls fail with `ConnectionError`. */
  disconnect(): void {
    this.closed = true
    if (this.metricsTimer) clearInterval(this.metricsTimer)
    this.socket.disconnect()
  }

  /** What this SDK has done so far. */
  getMetrics(): SDKMetrics {
    const c = this.counters
    const finished = c.ok + c.failed
    return {
      totalRequests: c.total,
      successfulRequests: c.ok,
      failedRequests: c.failed,
      averageResponseTime: finished ? c.responseMs / finished : 0,
      totalExecutionTime: c.executionMs,
      activeSandboxes: this.created.size,
    }
  }

  /** Waits for a connection, failing as a `ConnectionError` after `timeoutMs`. */
  private async connected(timeoutMs: number, what: string) {
    try {
      await this.waitForConnection(timeoutMs)
    } catch (e) {
      if (e instanceof TimeoutError) throw new ConnectionError(`${what}: not connected to the server within ${timeoutMs} ms`, { cause: e })
      throw e
    }
  }

  /** One emit with its acknowledgement; a disconnect before the answer is a `ConnectionError`. */
  private async emitOnce(event: string, payload: unknown, timeoutMs: number, connectMs = timeoutMs): Promise<unknown> {
    const deadline = Date.now() + timeoutMs
    await this.connected(Math.min(connectMs, timeoutMs), event)
    const left = Math.max(1, deadline - Date.now())
    let onDisconnect: ((reason: string) => void) | undefined
    const dropped = new Promise<never>((_, reject) => {
      onDisconnect = (reason: string) => reject(new ConnectionError(`${event}: the connection closed before the server answered (${reason})`, { details: { event } }))
      this.socket.once('disconnect', onDisconnect)
    })
    try {
      const ack = (await Promise.race([this.socket.timeout(left).emitWithAck(event, payload), dropped]).catch((e: unknown) => {
        if (e instanceof SandboxSDKError) throw e
        throw new TimeoutError(`${event}: no answer within ${timeoutMs} ms`, timeoutMs, { details: { event } })
      })) as Ack
      if (!ack || typeof ack !== 'object' || !('ok' in ack)) throw new SandboxSDKError(`${event}: the server's answer is not an acknowledgement`, 'PROTOCOL')
      if (ack.ok) return ack.data
      throw fromWire(ack.error, { event, timeoutMs })
    } finally {
      if (onDisconnect) this.socket.off('disconnect', onDisconnect)
    }
  }

  /** An operation, counted in the metrics, retried when idempotent. */
  private async call<T>(event: string, payload: unknown, opts: CallOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? this.cfg.timeout
    const started = Date.now()
    if (this.cfg.enableMetrics) this.counters.total++
    let attempt = 0
    for (;;) {
      try {
        const data = (await this.emitOnce(event, payload, timeoutMs)) as T
        this.count(true, started)
        return data
      } catch (e) {
        const transient = e instanceof ConnectionError || e instanceof TimeoutError || e instanceof RateLimitError
        if (!opts.idempotent || !transient || attempt >= this.cfg.maxRetries || this.closed || this.refusal) {
          this.count(false, started)
          this.log('debug', `${event} failed`, e)
          throw e
        }
        const backoff = this.cfg.retryDelay * 2 ** attempt
        const wait = e instanceof RateLimitError ? Math.max(e.retryAfter, backoff) : backoff
        attempt++
        this.log('info', `${event}: ${(e as Error).message}; retry ${attempt}/${this.cfg.maxRetries} in ${wait} ms`)
        await sleep(wait)
      }
    }
  }

  private count(ok: boolean, started: number) {
    if (!this.cfg.enableMetrics) return
    if (ok) this.counters.ok++
    else this.counters.failed++
    this.counters.responseMs += Date.now() - started
  }

  /**
   * An execution whose output streams as events tagged with its id. A
   * connection that drops mid-way is re-established and the execution
   * re-subscribed (the server keeps it running and replays what was
   * missed; events already seen are skipped by their sequence number).
   */
  private async streamed<T>(event: string, payload: Record<string, unknown>, id: string, idField: string, events: Record<string, (p: any) => void>, timeoutMs: number): Promise<T> {
    const started = Date.now()
    const deadline = started + timeoutMs
    let seen = 0
    const handlers: [string, Listener][] = Object.entries(events).map(([name, fn]) => [
      name,
      (p: any) => {
        if (!p || p[idField] !== id) return
        if (typeof p.seq === 'number') {
          if (p.seq <= seen) return
          seen = p.seq
        }
        try {
          fn(p)
        } catch (e) {
          this.log('error', `a ${name} callback threw`, e)
        }
      },
    ])
    for (const [n, h] of handlers) this.socket.on(n, h)
    if (this.cfg.enableMetrics) this.counters.total++
    try {
      let sent = false
      for (;;) {
        const left = deadline - Date.now()
        if (left <= 0) throw new TimeoutError(`${event}: no outcome within ${timeoutMs} ms`, timeoutMs, { details: { event, [idField]: id } })
        try {
          // A reconnection gets the SDK's own timeout, not what is left
          // of the execution's: a server that is gone fails in seconds.
          const data = sent ? await this.emitOnce('execution:subscribe', { executionId: id }, left, this.cfg.timeout) : await this.emitOnce(event, payload, left, this.cfg.timeout)
          this.count(true, started)
          return data as T
        } catch (e) {
          sent = true
          if (e instanceof ConnectionError && !this.closed && !this.refusal && idField === 'executionId') {
            this.log('warn', `${event}: connection lost; resubscribing to ${id}`)
            const wait = Math.max(1, Math.min(deadline - Date.now(), this.cfg.timeout))
            try {
              await this.waitForConnection(wait)
            } catch (again) {
              throw new ConnectionError(`${event}: the connection was lost mid-execution and not back within ${wait} ms (execution ${id} may still be running on the server)`, {
                details: { [idField]: id },
                cause: again,
              })
            }
            continue
          }
          if (e instanceof SandboxError && e.code === 'NOT_FOUND' && sent && String(e.message).includes('no execution')) {
            throw new ConnectionError(`${event}: the connection dropped and the server no longer knows execution ${id} (it restarted, or never got the request)`, { details: { [idField]: id }, cause: e })
          }
          throw e
        }
      }
    } catch (e) {
      this.count(false, started)
      throw e
    } finally {
      for (const [n, h] of handlers) this.socket.off(n, h)
      if (this.cfg.enableMetrics) this.counters.executionMs += Date.now() - started
    }
  }

  // ----------------------------------------------------------- sandboxes

  async createSandbox(opts: CreateSandboxOptions = {}): Promise<{ sandbox: Sandbox }> {
    const expiryTime = opts.expiryTime instanceof Date ? opts.expiryTime.toISOString() : opts.expiryTime
    const r = await this.call<{ sandbox: Sandbox }>('sandbox:create', { ...opts, expiryTime }, { timeoutMs: Math.max(this.cfg.timeout, 120_000) })
    this.created.add(r.sandbox.id)
    return r
  }

  async deleteSandbox(sandboxId: string): Promise<{ sandboxId: string; deleted: boolean }> {
    const r = await this.call<{ sandboxId: string; deleted: boolean }>('sandbox:delete', { sandboxId })
    this.created.delete(sandboxId)
    return r
  }

  async getSandboxStatus(sandboxId: string): Promise<{ sandbox: Sandbox }> {
    return this.call('sandbox:status', { sandboxId }, { idempotent: true })
  }

  async listSandboxes(filter: { templateId?: string; metadata?: Record<string, string> } = {}): Promise<{ sandboxes: Sandbox[] }> {
    return this.call('sandbox:list', filter, { idempotent: true })
  }

  // ------------------------------------------ Airlock: state and forks

  /** Snapshots a sandbox's filesystem (frozen while copied, then it goes on); `name` names it, taking the name from an older one. */
  async createSnapshot(sandboxId: string, opts: { name?: string } = {}): Promise<{ snapshot: Snapshot }> {
    return this.call('snapshot:create', { sandboxId, name: opts.name }, { timeoutMs: Math.max(this.cfg.timeout, 120_000) })
  }

  /** Snapshots, newest first (of one sandbox when `sandboxId` is given). */
  async listSnapshots(opts: { sandboxId?: string } = {}): Promise<{ snapshots: Snapshot[] }> {
    return this.call('snapshot:list', opts, { idempotent: true })
  }

  /** Deletes a snapshot; refused (`CONFLICT`) while sandboxes use it. */
  async deleteSnapshot(snapshotId: string): Promise<{ snapshotId: string; deleted: boolean }> {
    return this.call('snapshot:delete', { snapshotId })
  }

  /** `count` (1-20) new running sandboxes with this one's files, environment and metadata; the source goes on. */
  async forkSandbox(sandboxId: string, opts: { count?: number; expiryTime?: number | Date | string } = {}): Promise<{ forks: ForkOutcome[] }> {
    const expiryTime = opts.expiryTime instanceof Date ? opts.expiryTime.toISOString() : opts.expiryTime
    const r = await this.call<{ forks: ForkOutcome[] }>('sandbox:fork', { sandboxId, count: opts.count, expiryTime }, { timeoutMs: Math.max(this.cfg.timeout, 120_000) })
    for (const f of r.forks) if (f.sandbox) this.created.add(f.sandbox.id)
    return r
  }

  /** Pauses a sandbox (its files kept; it costs no CPU while paused). */
  async pauseSandbox(sandboxId: string): Promise<{ sandboxId: string; paused: boolean; wasRunning: boolean }> {
    return this.call('sandbox:pause', { sandboxId }, { timeoutMs: Math.max(this.cfg.timeout, 60_000) })
  }

  /** Resumes a paused sandbox (a no-op for a running one), living at least `expiryTime` from now. */
  async resumeSandbox(sandboxId: string, opts: { expiryTime?: number | Date | string } = {}): Promise<{ sandbox: Sandbox }> {
    const expiryTime = opts.expiryTime instanceof Date ? opts.expiryTime.toISOString() : opts.expiryTime
    return this.call('sandbox:resume', { sandboxId, expiryTime }, { timeoutMs: Math.max(this.cfg.timeout, 60_000) })
  }

  // ----------------------------------------------------------- templates

  async getTemplates(page = 1, pageSize = 20): Promise<TemplatePage> {
    return this.call('template:list', { page, pageSize }, { idempotent: true })
  }

  async getTemplate(templateId: string): Promise<{ template: Template }> {
    return this.call('template:get', { templateId }, { idempotent: true })
  }

  /** Builds a template from a spec; resolves when it is ready. */
  async createTemplate(spec: TemplateSpec, opts: CreateTemplateOptions = {}): Promise<{ template: Template }> {
    const onEvent = (p: { name: string; event: Record<string, unknown> }) => {
      if (p?.name === spec?.name) opts.onBuildEvent?.(p.event)
    }
    this.socket.on('template:build', onEvent)
    try {
      return await this.call('template:create', spec, { timeoutMs: opts.timeoutMs ?? DEFAULT_BUILD_MS })
    } finally {
      this.socket.off('template:build', onEvent)
    }
  }

  // ---------------------------------------------------------- executions

  /** Runs code in a sandbox's code interpreter; callbacks get output as it happens, before the promise resolves. */
  async runCode(sandboxId: string, code: string, opts: RunCodeOptions = {}): Promise<RunCodeResponse> {
    const executionId = randomId('exec')
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXECUTION_MS
    const payload = { sandboxId, code, language: opts.language, contextId: opts.contextId, timeoutMs, envs: opts.envs, executionId }
    return this.streamed<RunCodeResponse>(
      'code:run',
      payload,
      executionId,
      'executionId',
      {
        'code:stdout': (p: { text: string }) => opts.onStdout?.(p.text),
        'code:stderr': (p: { text: string }) => opts.onStderr?.(p.text),
        'code:result': (p: { result: ExecutionResult }) => opts.onResult?.(p.result),
        'code:error': (p: { error: ExecutionError }) => opts.onError?.(p.error),
      },
      timeoutMs + EXECUTION_MARGIN_MS,
    )
  }

  /** Runs a shell command (`bash -l -c`); a non-zero exit is in `exitCode`, not an error. */
  async runTerminal(sandboxId: string, command: string, opts: RunTerminalOptions = {}): Promise<RunTerminalResponse> {
    const executionId = randomId('term')
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXECUTION_MS
    const payload = { sandboxId, command, cwd: opts.cwd, envs: opts.envs, timeoutMs, executionId }
    return this.streamed<RunTerminalResponse>(
      'terminal:run',
      payload,
      executionId,
      'executionId',
      {
        'terminal:stdout': (p: { data: string }) => opts.onStdout?.(p.data),
        'terminal:stderr': (p: { data: string }) => opts.onStderr?.(p.data),
      },
      timeoutMs + EXECUTION_MARGIN_MS,
    )
  }

  /** Runs jobs one after another in one sandbox, highest priority first; a failing or timed-out job does not stop the rest. */
  async executeBatch(sandboxId: string, jobs: BatchJob[], opts: ExecuteBatchOptions = {}): Promise<BatchResponse> {
    if (!Array.isArray(jobs)) throw new SandboxSDKError('jobs must be an array', 'INVALID_ARGUMENT')
    const batchId = randomId('batch')
    const timeoutMs = opts.timeoutMs ?? jobs.reduce((t, j) => t + (j?.timeout ?? 60_000), 60_000)
    return this.streamed<BatchResponse>(
      'batch:execute',
      { sandboxId, jobs, batchId },
      batchId,
      'batchId',
      { 'batch:result': (p: { result: BatchJobResult }) => opts.onResult?.(p.result) },
      timeoutMs,
    )
  }

  // ------------------------------------------------ events and metrics

  /**
   * Follows lifecycle events as they happen. Each arrives once, in order:
   * after a dropped connection the SDK subscribes again from the last
   * event it delivered, so none is missed or repeated.
   */
  async subscribeEvents(opts: SubscribeEventsOptions): Promise<Subscription> {
    const { onEvent, onEnd, after, ...filter } = opts
    let last = after
    return this.subscribe(
      'events:event',
      () => ({ ...filter, after: last }),
      'events:subscribe',
      (p: { event: SandboxEvent }) => {
        if (last !== undefined && p.event.id <= last) return
        last = p.event.id
        onEvent(p.event)
      },
      onEnd,
    )
  }

  /** Follows a running sandbox's usage, one reading per interval, until it stops running or `close()`. */
  async subscribeMetrics(sandboxId: string, opts: SubscribeMetricsOptions): Promise<Subscription> {
    const { onMetrics, onEnd, intervalMs } = opts
    return this.subscribe('metrics:sample', () => ({ sandboxId, intervalMs }), 'metrics:subscribe', (p: { metrics: SandboxMetrics }) => onMetrics(p.metrics), onEnd)
  }

  /** A sandbox's usage history (one reading every few seconds, a day of it), optionally between two times. */
  async getSandboxMetrics(sandboxId: string, opts: { start?: number | Date | string; end?: number | Date | string } = {}): Promise<{ sandboxId: string; metrics: SandboxMetrics[] }> {
    const t = (v?: number | Date | string) => (v instanceof Date ? v.getTime() : v)
    return this.call('sandbox:metrics', { sandboxId, start: t(opts.start), end: t(opts.end) }, { idempotent: true })
  }

  /**
   * A server-side subscription kept across reconnections: on every
   * reconnect it is made again with `args()` (which may say where to
   * resume), and items are delivered to `deliver` tagged by the current id.
   */
  private async subscribe(itemEvent: string, args: () => Record<string, unknown>, event: string, deliver: (p: any) => void, onEnd?: (r: { code?: string; message: string }) => void): Promise<Subscription> {
    let id = ''
    let closed = false
    const finish = (reason: { code?: string; message: string }) => {
      if (closed) return
      closed = true
      cleanup()
      try {
        onEnd?.(reason)
      } catch (e) {
        this.log('error', `an onEnd callback threw`, e)
      }
    }
    const onItem = (p: any) => {
      if (closed || !p || p.subscriptionId !== id) return
      try {
        deliver(p)
      } catch (e) {
        this.log('error', `a ${itemEvent} callback threw`, e)
      }
    }
    const onSubEnd = (p: any) => {
      if (!p || p.subscriptionId !== id) return
      finish(p.error ? { code: p.error.code, message: p.error.message } : { message: p.reason ?? 'ended' })
    }
    // The SDK names each subscription, so that items streamed before the
    // acknowledgement (stored events come at once) are matched too.
    const prefix = event.split(':')[0]
    const onReconnect = () => {
      if (closed) return
      id = randomId(prefix)
      const mine = id
      this.call<{ subscriptionId: string }>(event, { ...args(), subscriptionId: mine }, { idempotent: true })
        .then(() => {
          if (closed) void this.call('subscription:cancel', { subscriptionId: mine }).catch(() => {})
        })
        .catch((e: SandboxSDKError) => {
          if (id === mine) finish({ code: e.code, message: `${event} could not be re-established: ${e.message}` })
        })
    }
    const cleanup = () => {
      this.socket.off(itemEvent, onItem)
      this.socket.off('subscription:end', onSubEnd)
      this.off('reconnect', onReconnect)
    }
    this.socket.on(itemEvent, onItem)
    this.socket.on('subscription:end', onSubEnd)
    try {
      id = randomId(prefix)
      await this.call<{ subscriptionId: string }>(event, { ...args(), subscriptionId: id }, { idempotent: true })
    } catch (e) {
      closed = true
      cleanup()
      throw e
    }
    this.on('reconnect', onReconnect)
    const sdk = this
    return {
      get id() {
        return id
      },
      get closed() {
        return closed
      },
      async close() {
        if (closed) return
        closed = true
        cleanup()
        if (sdk.socket.connected) await sdk.call('subscription:cancel', { subscriptionId: id }).catch(() => {})
      },
    }
  }

  // ------------------------------------------------------------- volumes

  async createVolume(opts: { name: string; sizeMB?: number }): Promise<{ volume: Volume }> {
    return this.call('volume:create', opts)
  }

  async listVolumes(): Promise<{ volumes: Volume[] }> {
    return this.call('volume:list', {}, { idempotent: true })
  }

  /** By id (`vol_...`) or name. */
  async getVolume(volumeId: string): Promise<{ volume: Volume }> {
    return this.call('volume:get', { volumeId }, { idempotent: true })
  }

  /** Refused (409) while a running sandbox mounts it. */
  async deleteVolume(volumeId: string): Promise<{ volumeId: string; deleted: boolean }> {
    return this.call('volume:delete', { volumeId })
  }

  // --------------------------------------------------------------- files

  async readFile(target: FileTarget & { encoding?: 'utf8' | 'base64' }): Promise<FileContent> {
    return this.call('file:read', target, { idempotent: true })
  }

  /** Writes a file: text as UTF-8, bytes as they are. */
  async writeFile(target: WriteFileOptions, content: string | Uint8Array): Promise<{ path: string; size: number }> {
    const binary = content instanceof Uint8Array
    return this.call('file:write', { ...target, content: binary ? toBase64(content) : content, encoding: binary ? 'base64' : 'utf8' })
  }

  async deleteFile(target: FileTarget): Promise<{ path: string; deleted: boolean }> {
    return this.call('file:delete', target)
  }

  async listFiles(target: FileTarget): Promise<{ path: string; files: FileEntry[] }> {
    return this.call('file:list', target, { idempotent: true })
  }

  // ------------------------------------------------------- code contexts

  async createCodeContext(opts: { sandboxId: string; language?: string; cwd?: string }): Promise<{ context: CodeContext }> {
    return this.call('context:create', opts)
  }

  async listCodeContexts(sandboxId: string): Promise<{ contexts: CodeContext[] }> {
    return this.call('context:list', { sandboxId }, { idempotent: true })
  }

  async deleteCodeContext(sandboxId: string, contextId: string): Promise<{ contextId: string; deleted: boolean }> {
    return this.call('context:delete', { sandboxId, contextId })
  }
}

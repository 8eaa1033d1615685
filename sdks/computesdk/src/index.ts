/**
 * Airlock as a ComputeSDK provider:
 *
 * ```ts
 * import { compute } from 'computesdk'
 * import { airlock } from '@airlock-sandbox/computesdk'
 * compute.setConfig({ provider: airlock({ apiKey, url: 'http://127.0.0.1:3000' }) })
 * const sandbox = await compute.sandbox.create()
 * ```
 *
 * It speaks to the server's Socket.IO endpoint through
 * `@airlock-sandbox/sdk`: commands stream natively (no daemon in the
 * sandbox), files go through Airlock's file API, and snapshots are
 * Airlock's filesystem snapshots.
 */
import { defineProvider } from '@computesdk/provider'
import type { CommandResult, FileEntry, RunCommandOptions, SandboxInfo } from 'computesdk'
import { SandboxError, SandboxSDK, type Sandbox as AirlockSandbox, type SandboxSDKConfig, type Snapshot as AirlockSnapshot } from '@airlock-sandbox/sdk'

export interface AirlockConfig {
  /** An Airlock API key (default: `$AIRLOCK_API_KEY`, then `$E2B_API_KEY`). */
  apiKey?: string
  /** The server (default: `$AIRLOCK_URL`, then `http://127.0.0.1:3000`). */
  url?: string
  /**
   * The server's `--domain`, for `getUrl`: a sandbox's port is
   * `{protocol}://{port}-{id}.{domain}[:domainPort]`. Without it `getUrl`
   * fails, since a plain URL cannot carry the headers that route to a port.
   */
  domain?: string
  /** The port of `domain` URLs when it is not the protocol's own (443). */
  domainPort?: number
  /** Milliseconds a sandbox lives when `create` gives no timeout (default 300,000). */
  timeout?: number
  /** Idle milliseconds before the connection closes, so a script can exit (default 1,000). */
  idleDisconnectMs?: number
  /** More options for the underlying `SandboxSDK`. */
  sdk?: Partial<SandboxSDKConfig>
}

/** What the provider hands ComputeSDK as a sandbox. */
export interface AirlockHandle {
  id: string
  info: AirlockSandbox
  conn: Connection
}

/** One SDK per config, connected while calls are in flight and closed when idle. */
class Connection {
  private sdk?: SandboxSDK
  private busy = 0
  private idle?: ReturnType<typeof setTimeout>

  constructor(readonly cfg: AirlockConfig) {}

  async use<T>(fn: (sdk: SandboxSDK) => Promise<T>): Promise<T> {
    this.busy++
    if (this.idle) clearTimeout(this.idle)
    this.idle = undefined
    try {
      if (!this.sdk) {
        const apiKey = this.cfg.apiKey ?? process.env.AIRLOCK_API_KEY ?? process.env.E2B_API_KEY
        if (!apiKey) throw new SandboxError('airlock: no API key (give apiKey, or set AIRLOCK_API_KEY)', 'INVALID_CONFIG')
        this.sdk = new SandboxSDK({ ...this.cfg.sdk, apiKey, serverUrl: this.cfg.url ?? process.env.AIRLOCK_URL ?? 'http://127.0.0.1:3000' })
      }
      return await fn(this.sdk)
    } finally {
      if (--this.busy === 0) {
        this.idle = setTimeout(() => {
          this.sdk?.disconnect()
          this.sdk = undefined
        }, this.cfg.idleDisconnectMs ?? 1000)
        ;(this.idle as { unref?: () => void }).unref?.()
      }
    }
  }
}

const connections = new WeakMap<AirlockConfig, Connection>()
function conn(cfg: AirlockConfig): Connection {
  let c = connections.get(cfg)
  if (!c) connections.set(cfg, (c = new Connection(cfg)))
  return c
}

/** One shell word: single-quoted, so nothing in it is expanded. */
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`

const notFound = (e: unknown) => e instanceof SandboxError && e.code === 'NOT_FOUND'

function handle(c: Connection, info: AirlockSandbox): { sandbox: AirlockHandle; sandboxId: string } {
  return { sandbox: { id: info.id, info, conn: c }, sandboxId: info.id }
}

function snapshotView(s: AirlockSnapshot) {
  return { id: s.id, provider: 'airlock', createdAt: new Date(s.createdAt), metadata: { names: s.names, sandboxId: s.sandboxId, sizeBytes: s.sizeBytes } }
}

async function run(sbx: AirlockHandle, command: string, options: RunCommandOptions = {}): Promise<CommandResult> {
  const started = Date.now()
  if (options.background) {
    // Detached from the call: its output goes nowhere, as with other providers.
    const bg = `nohup sh -c ${quote(command)} >/dev/null 2>&1 &`
    const r = await sbx.conn.use((sdk) => sdk.runTerminal(sbx.id, bg, { cwd: options.cwd, envs: options.env, timeoutMs: 30_000 }))
    return { stdout: '', stderr: '', exitCode: r.exitCode, durationMs: Date.now() - started }
  }
  const r = await sbx.conn.use((sdk) =>
    sdk.runTerminal(sbx.id, command, { cwd: options.cwd, envs: options.env, timeoutMs: options.timeout, onStdout: options.onStdout, onStderr: options.onStderr }),
  )
  return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, durationMs: r.durationMs }
}

function status(s: string): SandboxInfo['status'] {
  return s === 'running' ? 'running' : s === 'paused' ? 'stopped' : 'error'
}

/** `airlock({ apiKey, url })`: the provider for `compute.setConfig({ provider })`. */
export const airlock = defineProvider<AirlockHandle, AirlockConfig, never, ReturnType<typeof snapshotView>>({
  name: 'airlock',
  methods: {
    sandbox: {
      create: async (config, options = {}) => {
        const c = conn(config)
        const o = options as Record<string, unknown>
        const cpu = [o.cpu, o.cpus, o.vcpus].find((x) => typeof x === 'number') as number | undefined
        const memory = typeof o.memory === 'number' ? o.memory : undefined
        const { sandbox } = await c.use((sdk) =>
          sdk.createSandbox({
            templateId: options.snapshotId ?? options.templateId,
            name: options.name,
            expiryTime: options.timeout ?? config.timeout ?? 300_000,
            initialEnvVars: options.envs,
            metadata: options.metadata ? Object.fromEntries(Object.entries(options.metadata).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)])) : undefined,
            cpuCount: cpu,
            memoryMB: memory,
          }),
        )
        return handle(c, sandbox)
      },
      getById: async (config, sandboxId) => {
        const c = conn(config)
        try {
          const { sandbox } = await c.use((sdk) => sdk.getSandboxStatus(sandboxId))
          return handle(c, sandbox)
        } catch (e) {
          if (notFound(e)) return null
          throw e
        }
      },
      list: async (config) => {
        const c = conn(config)
        const { sandboxes } = await c.use((sdk) => sdk.listSandboxes())
        return sandboxes.map((s) => handle(c, s))
      },
      destroy: async (config, sandboxId) => {
        try {
          await conn(config).use((sdk) => sdk.deleteSandbox(sandboxId))
        } catch (e) {
          // Destroying what is already gone is done.
          if (!notFound(e)) throw e
        }
      },
      runCommand: run,
      streamCommand: run,
      getInfo: async (sbx) => {
        const { sandbox } = await sbx.conn.use((sdk) => sdk.getSandboxStatus(sbx.id))
        sbx.info = sandbox
        return {
          id: sandbox.id,
          provider: 'airlock',
          status: status(sandbox.status),
          createdAt: new Date(sandbox.createdAt),
          timeout: Math.max(0, Date.parse(sandbox.expiresAt) - Date.parse(sandbox.createdAt)),
          metadata: { ...sandbox.metadata, templateId: sandbox.templateId, expiresAt: sandbox.expiresAt, cpuCount: sandbox.cpuCount, memoryMB: sandbox.memoryMB },
        }
      },
      getUrl: async (sbx, { port, protocol }) => {
        const cfg = sbx.conn.cfg
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new SandboxError(`airlock: port must be 1 to 65535, got ${port}`, 'INVALID_ARGUMENT')
        if (!cfg.domain) {
          throw new SandboxError('airlock: getUrl needs the domain the server routes sandbox ports under (`airlock serve --domain D`, then airlock({ domain: D }))', 'INVALID_CONFIG')
        }
        const scheme = (protocol ?? 'https').replace(/:?\/*$/, '')
        return `${scheme}://${port}-${sbx.id}.${cfg.domain}${cfg.domainPort ? `:${cfg.domainPort}` : ''}`
      },
      getInstance: (sbx) => sbx,
      filesystem: {
        readFile: async (sbx, path) => (await sbx.conn.use((sdk) => sdk.readFile({ sandboxId: sbx.id, path }))).content,
        writeFile: async (sbx, path, content) => {
          await sbx.conn.use((sdk) => sdk.writeFile({ sandboxId: sbx.id, path, createParents: true }, content))
        },
        mkdir: async (sbx, path) => {
          const r = await run(sbx, `mkdir -p -- ${quote(path)}`)
          if (r.exitCode !== 0) throw new SandboxError(`airlock: mkdir ${path}: ${r.stderr.trim()}`, 'SANDBOX_ERROR')
        },
        readdir: async (sbx, path) => {
          const { files } = await sbx.conn.use((sdk) => sdk.listFiles({ sandboxId: sbx.id, path }))
          return files.map(
            (f): FileEntry => ({ name: f.name, type: f.type === 'directory' ? 'directory' : 'file', size: f.size, modified: f.modifiedAt ? new Date(f.modifiedAt) : undefined }),
          )
        },
        exists: async (sbx, path) => (await run(sbx, `test -e ${quote(path)} || test -L ${quote(path)}`)).exitCode === 0,
        remove: async (sbx, path) => {
          await sbx.conn.use((sdk) => sdk.deleteFile({ sandboxId: sbx.id, path }))
        },
      },
    },
    snapshot: {
      create: async (config, sandboxId, options = {}) => {
        const { snapshot } = await conn(config).use((sdk) => sdk.createSnapshot(sandboxId, { name: options.name }))
        return snapshotView(snapshot)
      },
      list: async (config) => (await conn(config).use((sdk) => sdk.listSnapshots())).snapshots.map(snapshotView),
      delete: async (config, snapshotId) => {
        await conn(config).use((sdk) => sdk.deleteSnapshot(snapshotId))
      },
    },
  },
})

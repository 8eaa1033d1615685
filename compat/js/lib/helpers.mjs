// Shared harness for the JS compatibility suite: starts `airlock serve` (as root,
// on a free loopback port, with a throw-away data dir and a random API key) and
// points the official, unmodified `e2b` SDK at it through the environment:
//
//   E2B_API_URL=http://127.0.0.1:<port>
//   E2B_SANDBOX_URL=http://127.0.0.1:<port>
//   E2B_API_KEY=e2b_<40 hex>
//
// The binary comes from $AIRLOCK_BIN (default <repo>/target/debug/airlock); the
// suite never builds it. Each test file runs in its own process and starts its
// own server (run files with --test-concurrency=1).

import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { Sandbox } from 'e2b'

const here = path.dirname(fileURLToPath(import.meta.url)) // compat/js/lib
export const REPO = path.resolve(here, '..', '..', '..')
export const RUN_ID = crypto.randomBytes(6).toString('hex')
export const RUN_META_KEY = 'airlock_compat_run'
export const UNKNOWN_ID = 'doesnotexist0000000000'
const READY_TIMEOUT_MS = 30_000
export const TEST_TIMEOUT_MS = Number(process.env.AIRLOCK_COMPAT_TEST_TIMEOUT ?? 90) * 1000

export function runMetadata(extra = {}) {
  return { [RUN_META_KEY]: RUN_ID, ...extra }
}

export function unique(prefix = 't') {
  return prefix + crypto.randomBytes(5).toString('hex')
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
// a sleep that does not keep the process alive on its own
const unrefSleep = (ms) => new Promise((r) => setTimeout(r, ms).unref())

export async function waitUntil(fn, { timeoutMs = 10_000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let last = await fn()
  while (!last) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last=${JSON.stringify(last)})`)
    }
    await sleep(intervalMs)
    last = await fn()
  }
  return last
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function tail(file, lines = 60) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n')
  } catch (e) {
    return `<cannot read ${file}: ${e.message}>`
  }
}

function mountsUnder(dir) {
  try {
    const prefix = dir.replace(/\/$/, '') + '/'
    return fs
      .readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[1])
      .filter((p) => p && (p === dir || p.startsWith(prefix)))
  } catch {
    return ['<unknown>']
  }
}

export class AirlockServer {
  constructor() {
    this.bin = process.env.AIRLOCK_BIN || path.join(REPO, 'target', 'debug', 'airlock')
    this.apiKey = 'e2b_' + crypto.randomBytes(20).toString('hex')
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-compat-js-'))
    this.logPath = path.join(os.tmpdir(), `airlock-compat-js-${process.pid}-${RUN_ID}.log`)
    this.proc = undefined
    this.exitCode = undefined
  }

  logTail(lines = 60) {
    return tail(this.logPath, lines)
  }

  get died() {
    return this.exitCode !== undefined
  }

  async start() {
    if (!fs.existsSync(this.bin)) {
      throw new Error(`airlock binary not found at ${this.bin} (set AIRLOCK_BIN or build it first)`)
    }
    if (process.getuid && process.getuid() !== 0) {
      throw new Error('airlock serve must run as root; run the suite as root')
    }
    this.port = await freePort()
    this.url = `http://127.0.0.1:${this.port}`
    const log = fs.openSync(this.logPath, 'a')
    this.proc = spawn(
      this.bin,
      ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, '--api-key', this.apiKey],
      {
        stdio: ['ignore', log, log],
        // same process group: a signal to the whole group (Ctrl-C, `timeout`)
        // stops the server too even if this process dies before its cleanup
        detached: false,
        // hermetic: no AIRLOCK_* settings (config file, extra keys...) leak in
        env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AIRLOCK_'))),
      },
    )
    fs.closeSync(log)
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exitCode = code ?? signal
        resolve()
      })
      this.proc.on('error', (err) => {
        this.exitCode = `spawn error: ${err.message}`
        resolve()
      })
    })
    const deadline = Date.now() + READY_TIMEOUT_MS
    let lastErr
    while (Date.now() < deadline) {
      if (this.died) {
        throw new Error(`airlock serve exited (${this.exitCode}) before becoming ready; log tail:\n${this.logTail()}`)
      }
      try {
        const res = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(2000) })
        if (res.status === 200) return
        lastErr = `status ${res.status}`
      } catch (e) {
        lastErr = e.message
      }
      await sleep(100)
    }
    await this.stop()
    throw new Error(`airlock serve not ready after ${READY_TIMEOUT_MS} ms (last: ${lastErr}); log tail:\n${this.logTail()}`)
  }

  /**
   * Kills every sandbox left in this server. The data dir is private to this
   * file's run, so everything in it is ours; sandboxes outlive `airlock serve`
   * (it stops without killing them), so this runs before the server stops.
   */
  async killLeftoverSandboxes() {
    const opts = { apiKey: this.apiKey, apiUrl: this.url }
    try {
      const paginator = Sandbox.list(opts)
      const ids = []
      for (let i = 0; i < 100 && paginator.hasNext; i++) {
        ids.push(...(await paginator.nextItems()).map((s) => s.sandboxId))
      }
      await Promise.all(ids.map((id) => Sandbox.kill(id, opts).catch(() => {})))
    } catch {
      // best effort
    }
  }

  async stop() {
    if (!this.proc || this.died) return
    try {
      process.kill(this.proc.pid, 'SIGTERM')
    } catch {
      return
    }
    const timedOut = await Promise.race([this.exited.then(() => false), unrefSleep(10_000).then(() => true)])
    if (timedOut && !this.died) {
      try {
        process.kill(this.proc.pid, 'SIGKILL')
      } catch {
        // already gone
      }
      await Promise.race([this.exited, unrefSleep(10_000)])
    }
  }

  cleanup() {
    if (mountsUnder(this.dataDir).length === 0) {
      fs.rmSync(this.dataDir, { recursive: true, force: true })
    }
    if (process.env.AIRLOCK_COMPAT_KEEP_LOG !== '1') {
      fs.rmSync(this.logPath, { force: true })
    }
  }
}

/**
 * Registers before/after hooks that start one server for the calling test file,
 * and returns it. Env vars are set before any test runs.
 */
export function useAirlockServer() {
  const server = new AirlockServer()
  let markReady
  // Node 20 runs root-level `before` hooks concurrently: other hooks of the file
  // must `await server.ready` before using the SDK.
  server.ready = new Promise((resolve, reject) => {
    markReady = { resolve, reject }
  })
  server.ready.catch(() => {})
  before(async () => {
    for (const k of ['E2B_DEBUG', 'E2B_DOMAIN']) delete process.env[k]
    try {
      await server.start()
    } catch (e) {
      markReady.reject(e)
      throw e
    }
    process.env.E2B_API_URL = server.url
    process.env.E2B_SANDBOX_URL = server.url
    process.env.E2B_API_KEY = server.apiKey
    markReady.resolve(server)
  })
  // If this process is told to stop, still try to kill the sandboxes and the
  // server (sandboxes outlive the server; the server outlives this process).
  const onSignal = async (sig) => {
    try {
      if (server.proc && !server.died) await server.killLeftoverSandboxes()
      await server.stop()
    } finally {
      process.exit(sig === 'SIGINT' ? 130 : 143)
    }
  }
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)
  process.once('exit', () => {
    if (server.proc && !server.died) {
      try {
        process.kill(server.proc.pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
  })
  after(async () => {
    if (server.died || process.env.AIRLOCK_COMPAT_SHOW_LOG === '1') {
      console.error(
        `--- airlock serve ${server.died ? `DIED (${server.exitCode})` : 'log'}; tail of ${server.logPath}:\n${server.logTail()}`,
      )
    }
    if (!server.died) {
      await Promise.all(pendingKills)
    } else if (server.proc) {
      // sandboxes outlive the server: bring it back on the same data dir to kill them
      server.exitCode = undefined
      await server.start().catch(() => {})
    }
    if (server.proc && !server.died) await server.killLeftoverSandboxes()
    await server.stop()
    server.cleanup()
  })
  return server
}

// Killing a sandbox is cleanup most tests needn't wait for: do it in the
// background; the file's `after` hook waits for these before stopping the server.
const pendingKills = []
export function killLater(sbxOrId) {
  const id = typeof sbxOrId === 'string' ? sbxOrId : sbxOrId.sandboxId
  pendingKills.push(Sandbox.kill(id).catch(() => {}))
}

/** `test()` with the suite's default timeout and a fresh sandbox, killed (in the background) afterwards. */
export function sbxTest(name, fn, { createOpts = {}, timeout = TEST_TIMEOUT_MS } = {}) {
  return test(name, { timeout }, async (t) => {
    const sbx = await Sandbox.create({ timeoutMs: 300_000, ...createOpts, metadata: runMetadata(createOpts.metadata) })
    try {
      await fn(sbx, t)
    } finally {
      killLater(sbx)
    }
  })
}

export function plainTest(name, fn, { timeout = TEST_TIMEOUT_MS } = {}) {
  return test(name, { timeout }, fn)
}

/** Collects process/pty output; `text()` decodes everything received so far. */
export class Collector {
  constructor() {
    this.chunks = []
    this.push = (c) => {
      this.chunks.push(typeof c === 'string' ? Buffer.from(c) : Buffer.from(c))
    }
  }
  text() {
    return Buffer.concat(this.chunks).toString('utf8')
  }
}

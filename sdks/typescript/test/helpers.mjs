// The tests' server: a real `airlock serve` (as root, on a free loopback
// port, a throw-away data dir and a random API key), stopped when the test
// file ends. $AIRLOCK_BIN names the binary (default: the workspace's debug
// build); the tests never build it. Each file runs in its own process with
// its own server (`node --test --test-concurrency=1`).

import { spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { after, before } from 'node:test'
import { fileURLToPath } from 'node:url'

import { SandboxSDK } from '../dist/esm/index.js'

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const BIN = process.env.AIRLOCK_BIN || path.join(REPO, 'target', 'debug', 'airlock')

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

export class Server {
  /** `extra`: more `airlock serve` flags, e.g. `['--rate-limit', '2']`. */
  constructor(extra = []) {
    this.extra = extra
    this.key = 'e2b_' + crypto.randomBytes(20).toString('hex')
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-ts-sdk-'))
    this.log = path.join(this.dataDir + '.log')
  }

  get url() {
    return `http://127.0.0.1:${this.port}`
  }

  /** Starts the server (again on the same port and data dir after `stop`). */
  async start() {
    if (!fs.existsSync(BIN)) throw new Error(`no airlock binary at ${BIN}: build it first or set AIRLOCK_BIN`)
    this.port ??= await freePort()
    const out = fs.openSync(this.log, 'a')
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AIRLOCK_')))
    this.proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, '--api-key', this.key, ...this.extra], { stdio: ['ignore', out, out], env })
    fs.closeSync(out)
    this.exited = new Promise((r) => this.proc.once('exit', r))
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`airlock serve exited (${this.proc.exitCode}):\n${this.tail()}`)
      try {
        const r = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(2000) })
        if (r.ok) return this
      } catch {
        // not listening yet
      }
      await sleep(100)
    }
    throw new Error(`airlock serve was not ready in 30 s:\n${this.tail()}`)
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return
    this.proc.kill('SIGTERM')
    const killer = setTimeout(() => this.proc.kill('SIGKILL'), 20_000)
    await this.exited
    clearTimeout(killer)
  }

  /** Kills what a failed test left running, stops the server and removes its data. */
  async close() {
    if (this.proc && this.proc.exitCode === null) {
      const list = await this.api('GET', '/v2/sandboxes?state=running,paused&limit=100').catch(() => ({ body: [] }))
      for (const s of Array.isArray(list.body) ? list.body : []) await this.api('DELETE', `/sandboxes/${s.sandboxID}`).catch(() => {})
    }
    await this.stop()
    // Sandboxes the server kept over its stop are still mounted there.
    const mounts = fs
      .readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[1])
      .filter((m) => m && m.startsWith(this.dataDir + '/'))
      .sort((a, b) => b.length - a.length)
    for (const m of mounts) spawnSync('umount', ['-l', m])
    fs.rmSync(this.dataDir, { recursive: true, force: true })
    fs.rmSync(this.log, { force: true })
  }

  tail(lines = 40) {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-lines).join('\n')
    } catch {
      return '<no log>'
    }
  }

  /** A connected SDK (options as `new SandboxSDK` takes them). */
  async sdk(opts = {}) {
    const sdk = new SandboxSDK({ apiKey: this.key, serverUrl: this.url, retryDelay: 100, ...opts })
    try {
      await sdk.waitForConnection(10_000)
    } catch (e) {
      // Or it would go on reconnecting and keep the test process alive.
      sdk.disconnect()
      throw e
    }
    return sdk
  }

  /** The control API directly, to check what the SDK did. */
  async api(method, p, body) {
    const r = await fetch(this.url + p, { method, headers: { 'x-api-key': this.key, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await r.text()
    return { status: r.status, body: text ? JSON.parse(text) : null }
  }
}

/** What a rejected promise threw (fails when it resolved). */
export async function rejection(p) {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error('expected a rejection, but it resolved')
}

/**
 * One server and one connected SDK for the whole test file, started before
 * its first test and stopped after its last: `shared.srv`, `shared.sdk`.
 */
export function sharedServer() {
  const shared = { srv: new Server(), sdk: undefined }
  before(async () => {
    await shared.srv.start()
    shared.sdk = await shared.srv.sdk()
  })
  after(async () => {
    shared.sdk?.disconnect()
    await shared.srv.close()
  })
  return shared
}

// Airlock through the real `computesdk` package: compute.setConfig({
// provider: airlock(...) }), then ComputeSDK's own API against a real
// server (started with --domain, for getUrl).

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import http from 'node:http'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { compute } from 'computesdk'

import { airlock } from '../dist/esm/index.js'
import { Server, sleep } from '../../typescript/test/helpers.mjs'

const DOMAIN = 'airlock.test'
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const srv = new Server(['--domain', DOMAIN])

before(async () => {
  await srv.start()
  compute.setConfig({ provider: airlock({ apiKey: srv.key, url: srv.url, domain: DOMAIN, domainPort: srv.port }) })
})

after(() => srv.close())

/** GET through the name getUrl gave, resolved to the test's own server. */
function get(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { lookup: (_host, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4 }]) }, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error('timed out')))
  })
}

test('sandboxes are created, found, listed, described and destroyed through compute', async () => {
  const sbx = await compute.sandbox.create({ timeout: 120_000, envs: { WHO: 'computesdk' }, metadata: { suite: 'provider' }, name: 'csdk' })
  assert.equal(sbx.provider, 'airlock')
  assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
  const rest = await srv.api('GET', `/sandboxes/${sbx.sandboxId}`)
  assert.equal(rest.status, 200)
  assert.equal(rest.body.metadata.suite, 'provider')

  const info = await sbx.getInfo()
  assert.equal(info.id, sbx.sandboxId)
  assert.equal(info.provider, 'airlock')
  assert.equal(info.status, 'running')
  assert.ok(info.createdAt instanceof Date)
  assert.ok(info.timeout > 100_000 && info.timeout <= 121_000, `timeout ${info.timeout}`)

  const again = await compute.sandbox.getById(sbx.sandboxId)
  assert.equal(again.sandboxId, sbx.sandboxId)
  assert.equal((await again.runCommand('echo "$WHO"')).stdout, 'computesdk\n')
  assert.equal(await compute.sandbox.getById('nosuchsandbox00000000'), null)
  const listed = await compute.sandbox.list()
  assert.ok(listed.some((s) => s.sandboxId === sbx.sandboxId))

  await sbx.destroy()
  assert.equal(await compute.sandbox.getById(sbx.sandboxId), null)
  // Destroying what is gone is not an error.
  await compute.sandbox.destroy(sbx.sandboxId)
  const unknown = await compute.sandbox.create({ templateId: 'no-such-template' }).catch((e) => e)
  assert.ok(unknown instanceof Error)
  assert.match(unknown.message, /no-such-template/)
})

test('commands run with cwd, env and exit codes, and stream while they run', async () => {
  const sbx = await compute.sandbox.create()
  try {
    const r = await sbx.runCommand('pwd; echo "$A"; echo err >&2; exit 4', { cwd: '/tmp', env: { A: 'from env' } })
    assert.deepEqual({ ...r, durationMs: 0 }, { stdout: '/tmp\nfrom env\n', stderr: 'err\n', exitCode: 4, durationMs: 0 })
    const chunks = []
    const t0 = Date.now()
    const streamed = await sbx.runCommand('for i in 1 2 3; do echo "tick $i"; sleep 0.3; done', {
      onStdout: (d) => chunks.push([d, Date.now() - t0]),
    })
    assert.equal(streamed.stdout, 'tick 1\ntick 2\ntick 3\n')
    assert.equal(chunks.map(([d]) => d).join(''), streamed.stdout)
    // The first chunk came while the command still ran, not at its end.
    assert.ok(chunks[0][1] < Date.now() - t0 - 400, `first chunk at ${chunks[0][1]} ms`)
    const bg = await sbx.runCommand('sleep 1; echo late > /tmp/bg.txt', { background: true })
    assert.equal(bg.exitCode, 0)
    assert.ok(bg.durationMs < 1000, `a background command waited ${bg.durationMs} ms`)
    await sleep(1500)
    assert.equal(await sbx.filesystem.readFile('/tmp/bg.txt'), 'late\n')
  } finally {
    await sbx.destroy()
  }
})

test('the filesystem reads, writes, lists, checks and removes', async () => {
  const sbx = await compute.sandbox.create()
  try {
    const fs = sbx.filesystem
    await fs.mkdir("/tmp/it's here")
    await fs.writeFile("/tmp/it's here/a.txt", 'alpha\n')
    await fs.writeFile('/tmp/new/deep/b.txt', 'béta')
    assert.equal(await fs.readFile("/tmp/it's here/a.txt"), 'alpha\n')
    assert.equal(await fs.readFile('/tmp/new/deep/b.txt'), 'béta')
    assert.equal(await fs.exists("/tmp/it's here/a.txt"), true)
    assert.equal(await fs.exists('/tmp/nothing'), false)
    const entries = await fs.readdir('/tmp/new')
    assert.deepEqual(
      entries.map((e) => [e.name, e.type]),
      [['deep', 'directory']],
    )
    const files = await fs.readdir('/tmp/new/deep')
    assert.equal(files[0].size, Buffer.byteLength('béta'))
    assert.ok(files[0].modified instanceof Date)
    await fs.remove('/tmp/new/deep/b.txt')
    assert.equal(await fs.exists('/tmp/new/deep/b.txt'), false)
    await assert.rejects(fs.readFile('/tmp/new/deep/b.txt'), /not found|no such|does not exist/i)
  } finally {
    await sbx.destroy()
  }
})

test("getUrl reaches a server inside the sandbox through the server's domain", async () => {
  const sbx = await compute.sandbox.create()
  try {
    await sbx.filesystem.writeFile('/tmp/www/index.html', 'served from the sandbox\n')
    await sbx.runCommand('python3 -m http.server 8000 --bind 127.0.0.1 --directory /tmp/www', { background: true })
    const url = await sbx.getUrl({ port: 8000, protocol: 'http' })
    assert.equal(url, `http://8000-${sbx.sandboxId}.${DOMAIN}:${srv.port}`)
    let r
    for (let i = 0; i < 50; i++) {
      r = await get(url + '/index.html').catch((e) => ({ status: 0, body: e.message }))
      if (r.status === 200) break
      await sleep(200)
    }
    assert.equal(r.status, 200, r.body)
    assert.equal(r.body, 'served from the sandbox\n')
    assert.equal(await sbx.getUrl({ port: 3000 }), `https://3000-${sbx.sandboxId}.${DOMAIN}:${srv.port}`)
    await assert.rejects(sbx.getUrl({ port: 70000 }), /port/)
  } finally {
    await sbx.destroy()
  }
  // Without the domain there is no URL to give, and the error says why.
  const plain = airlock({ apiKey: srv.key, url: srv.url })
  const other = await plain.sandbox.create()
  try {
    await assert.rejects(other.getUrl({ port: 8000 }), /--domain/)
  } finally {
    await other.destroy()
  }
})

test('snapshots are taken, listed, restored from and deleted through compute.snapshot', async () => {
  const sbx = await compute.sandbox.create()
  let restored
  try {
    await sbx.filesystem.writeFile('/home/user/work.txt', 'saved state')
    const snap = await compute.snapshot.create(sbx.sandboxId, { name: `csdk-${sbx.sandboxId}` })
    assert.equal(snap.provider, 'airlock')
    assert.ok(snap.createdAt instanceof Date)
    assert.equal(snap.metadata.sandboxId, sbx.sandboxId)
    const all = await compute.snapshot.list()
    assert.ok(all.some((s) => s.id === snap.id))
    restored = await compute.sandbox.create({ snapshotId: snap.id })
    assert.equal(await restored.filesystem.readFile('/home/user/work.txt'), 'saved state')
    await restored.destroy()
    restored = undefined
    await compute.snapshot.delete(snap.id)
    assert.ok(!(await compute.snapshot.list()).some((s) => s.id === snap.id))
  } finally {
    await restored?.destroy()
    await sbx.destroy()
  }
})

test('a script using the provider exits when it is done (the connection closes when idle)', async () => {
  const script = [
    "import { compute } from 'computesdk'",
    "import { airlock } from './dist/esm/index.js'",
    'compute.setConfig({ provider: airlock({ apiKey: process.env.K, url: process.env.U }) })',
    'const s = await compute.sandbox.create()',
    "console.log((await s.runCommand('echo ok')).stdout.trim())",
    'await s.destroy()',
  ].join('\n')
  const t0 = Date.now()
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: root, env: { ...process.env, K: srv.key, U: srv.url }, timeout: 30_000 })
  assert.equal(stdout, 'ok\n')
  assert.ok(Date.now() - t0 < 30_000)

  const noKey = airlock({ url: srv.url })
  const saved = [process.env.AIRLOCK_API_KEY, process.env.E2B_API_KEY]
  delete process.env.AIRLOCK_API_KEY
  delete process.env.E2B_API_KEY
  try {
    await assert.rejects(noKey.sandbox.create(), /API key/)
  } finally {
    if (saved[0] !== undefined) process.env.AIRLOCK_API_KEY = saved[0]
    if (saved[1] !== undefined) process.env.E2B_API_KEY = saved[1]
  }
})

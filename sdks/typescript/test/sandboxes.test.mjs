// Sandboxes, templates, files, code contexts and the SDK's metrics, through
// the Socket.IO endpoint of a real server.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { SandboxError, SandboxSDK, SandboxSDKError } from '../dist/esm/index.js'
import { rejection, Server } from './helpers.mjs'

const srv = new Server()
let sdk

before(async () => {
  await srv.start()
  sdk = await srv.sdk()
})

after(async () => {
  sdk?.disconnect()
  await srv.close()
})

test('a sandbox is created, reported, listed and deleted, and the server agrees each time', async () => {
  const { sandbox } = await sdk.createSandbox({ name: 'first', expiryTime: 120_000, initialEnvVars: { GREETING: 'hello' }, metadata: { suite: 'ts' } })
  assert.match(sandbox.id, /^[a-z0-9]+$/)
  assert.equal(sandbox.status, 'running')
  assert.equal(sandbox.name, 'first')
  assert.equal(sandbox.templateId, 'base')
  assert.equal(sandbox.metadata.suite, 'ts')
  const ends = Date.parse(sandbox.expiresAt) - Date.parse(sandbox.createdAt)
  assert.ok(ends > 100_000 && ends <= 121_000, `expiry ${ends} ms after creation`)

  const rest = await srv.api('GET', `/sandboxes/${sandbox.id}`)
  assert.equal(rest.status, 200)
  assert.equal(rest.body.metadata.suite, 'ts')

  const env = await sdk.runTerminal(sandbox.id, 'echo "$GREETING"')
  assert.equal(env.stdout.trim(), 'hello')

  const status = await sdk.getSandboxStatus(sandbox.id)
  assert.equal(status.sandbox.id, sandbox.id)
  assert.equal(status.sandbox.status, 'running')

  const { sandboxes } = await sdk.listSandboxes({ metadata: { suite: 'ts' } })
  assert.deepEqual(
    sandboxes.map((s) => s.id),
    [sandbox.id],
  )

  const del = await sdk.deleteSandbox(sandbox.id)
  assert.deepEqual(del, { sandboxId: sandbox.id, deleted: true })
  assert.equal((await srv.api('GET', `/sandboxes/${sandbox.id}`)).status, 404)
  const gone = await rejection(sdk.getSandboxStatus(sandbox.id))
  assert.ok(gone instanceof SandboxError, `${gone}`)
  assert.equal(gone.code, 'NOT_FOUND')
})

test('unknown ids and bad arguments are typed errors that name the problem', async () => {
  const unknown = await rejection(sdk.getSandboxStatus('nosuchsandbox00000000'))
  assert.ok(unknown instanceof SandboxError)
  assert.equal(unknown.code, 'NOT_FOUND')
  assert.equal(unknown.status, 404)

  const del = await rejection(sdk.deleteSandbox('nosuchsandbox00000000'))
  assert.equal(del.code, 'NOT_FOUND')

  const tpl = await rejection(sdk.createSandbox({ templateId: 'no-such-template' }))
  assert.ok(tpl instanceof SandboxError)
  assert.equal(tpl.code, 'NOT_FOUND')
  assert.match(tpl.message, /no-such-template/)

  const getTpl = await rejection(sdk.getTemplate('no-such-template'))
  assert.equal(getTpl.code, 'NOT_FOUND')

  const badId = await rejection(sdk.getSandboxStatus('../etc'))
  assert.equal(badId.code, 'INVALID_ARGUMENT')

  const badExpiry = await rejection(sdk.createSandbox({ expiryTime: -5 }))
  assert.equal(badExpiry.code, 'INVALID_ARGUMENT')

  const badPage = await rejection(sdk.getTemplates(0, 10))
  assert.equal(badPage.code, 'INVALID_ARGUMENT')

  assert.throws(() => new SandboxSDK({ apiKey: '' }), (e) => e instanceof SandboxSDKError && e.code === 'INVALID_CONFIG')
})

test('a wrong API key is refused at connection, not retried for ever', async () => {
  const bad = new SandboxSDK({ apiKey: 'e2b_' + '0'.repeat(40), serverUrl: srv.url })
  try {
    const e = await rejection(bad.waitForConnection(10_000))
    assert.ok(e instanceof SandboxSDKError, `${e}`)
    assert.equal(e.code, 'UNAUTHORIZED')
    assert.equal(bad.isReady(), false)
    const call = await rejection(bad.listSandboxes())
    assert.equal(call.code, 'UNAUTHORIZED')
  } finally {
    bad.disconnect()
  }
})

test('templates page through what the server has', async () => {
  const all = await srv.api('GET', '/templates')
  const names = all.body.map((t) => t.name ?? t.alias ?? t.templateID).sort()
  const first = await sdk.getTemplates(1, 1)
  assert.equal(first.page, 1)
  assert.equal(first.pageSize, 1)
  assert.equal(first.total, names.length)
  assert.equal(first.totalPages, names.length)
  assert.equal(first.templates.length, 1)
  const seen = []
  for (let p = 1; p <= first.totalPages; p++) seen.push(...(await sdk.getTemplates(p, 1)).templates.map((t) => t.name))
  assert.deepEqual(seen, [...seen].sort())
  assert.equal(new Set(seen).size, names.length)
  const past = await sdk.getTemplates(first.totalPages + 1, 1)
  assert.deepEqual(past.templates, [])
  const { template } = await sdk.getTemplate('base')
  assert.equal(template.name, 'base')
  assert.ok(template.sizeBytes >= 0)
})

test('files are written, read, listed and deleted, text and bytes alike', async () => {
  const { sandbox } = await sdk.createSandbox()
  const id = sandbox.id
  try {
    const w = await sdk.writeFile({ sandboxId: id, path: '/tmp/deep/er/note.txt', createParents: true }, 'héllo\nworld\n')
    assert.equal(w.path, '/tmp/deep/er/note.txt')
    assert.equal(w.size, Buffer.byteLength('héllo\nworld\n'))
    const r = await sdk.readFile({ sandboxId: id, path: '/tmp/deep/er/note.txt' })
    assert.equal(r.content, 'héllo\nworld\n')
    assert.equal(r.encoding, 'utf8')

    const bytes = new Uint8Array(256).map((_, i) => i)
    await sdk.writeFile({ sandboxId: id, path: '/tmp/deep/bytes.bin' }, bytes)
    const b = await sdk.readFile({ sandboxId: id, path: '/tmp/deep/bytes.bin', encoding: 'base64' })
    assert.deepEqual(new Uint8Array(Buffer.from(b.content, 'base64')), bytes)
    const sum = await sdk.runTerminal(id, 'od -An -tu1 /tmp/deep/bytes.bin | wc -w')
    assert.equal(sum.stdout.trim(), '256')

    const { files } = await sdk.listFiles({ sandboxId: id, path: '/tmp/deep' })
    const byName = Object.fromEntries(files.map((f) => [f.name, f]))
    assert.equal(byName['bytes.bin'].type, 'file')
    assert.equal(byName['bytes.bin'].size, 256)
    assert.equal(byName.er.type, 'directory')

    const d = await sdk.deleteFile({ sandboxId: id, path: '/tmp/deep/bytes.bin' })
    assert.equal(d.deleted, true)
    const missing = await rejection(sdk.readFile({ sandboxId: id, path: '/tmp/deep/bytes.bin' }))
    assert.ok(missing instanceof SandboxError)
    assert.equal(missing.code, 'NOT_FOUND')

    const noParent = await rejection(sdk.writeFile({ sandboxId: id, path: '/tmp/nowhere/x/y.txt', createParents: false }, 'x'))
    assert.ok(noParent instanceof SandboxError, `${noParent}`)
    const badEnc = await rejection(sdk.readFile({ sandboxId: id, path: '/tmp/deep/er/note.txt', encoding: 'rot13' }))
    assert.equal(badEnc.code, 'INVALID_ARGUMENT')
  } finally {
    await sdk.deleteSandbox(id)
  }
})

test('code contexts keep their own state and go away when deleted', async () => {
  const { sandbox } = await sdk.createSandbox()
  const id = sandbox.id
  try {
    const { context: a } = await sdk.createCodeContext({ sandboxId: id, language: 'python', cwd: '/tmp' })
    const { context: b } = await sdk.createCodeContext({ sandboxId: id, language: 'python' })
    assert.equal(a.language, 'python')
    assert.equal(a.cwd, '/tmp')
    await sdk.runCode(id, 'x = "in a"', { contextId: a.id })
    await sdk.runCode(id, 'x = "in b"', { contextId: b.id })
    const ra = await sdk.runCode(id, 'import os; print(x, os.getcwd())', { contextId: a.id })
    assert.deepEqual(ra.execution.logs.stdout, ['in a /tmp\n'])
    const rb = await sdk.runCode(id, 'print(x)', { contextId: b.id })
    assert.deepEqual(rb.execution.logs.stdout, ['in b\n'])

    const listed = (await sdk.listCodeContexts(id)).contexts.map((c) => c.id)
    assert.ok(listed.includes(a.id) && listed.includes(b.id), `${listed}`)
    assert.deepEqual(await sdk.deleteCodeContext(id, a.id), { contextId: a.id, deleted: true })
    assert.ok(!(await sdk.listCodeContexts(id)).contexts.some((c) => c.id === a.id))
    const stale = await rejection(sdk.runCode(id, 'print(x)', { contextId: a.id }))
    assert.ok(stale instanceof SandboxError, `${stale}`)
    const badLang = await rejection(sdk.createCodeContext({ sandboxId: id, language: 'cobol' }))
    assert.ok(badLang instanceof SandboxError)
  } finally {
    await sdk.deleteSandbox(id)
  }
})

test('the metrics count what this SDK did', async () => {
  const m = await srv.sdk()
  try {
    const zero = m.getMetrics()
    assert.deepEqual(zero, { totalRequests: 0, successfulRequests: 0, failedRequests: 0, averageResponseTime: 0, totalExecutionTime: 0, activeSandboxes: 0 })
    const { sandbox } = await m.createSandbox()
    await m.runCode(sandbox.id, 'import time; time.sleep(0.3)')
    await rejection(m.getSandboxStatus('nosuchsandbox00000000'))
    let got = m.getMetrics()
    assert.equal(got.totalRequests, 3)
    assert.equal(got.successfulRequests, 2)
    assert.equal(got.failedRequests, 1)
    assert.equal(got.activeSandboxes, 1)
    assert.ok(got.averageResponseTime > 0)
    assert.ok(got.totalExecutionTime >= 300, `execution time ${got.totalExecutionTime}`)
    await m.deleteSandbox(sandbox.id)
    got = m.getMetrics()
    assert.equal(got.totalRequests, 4)
    assert.equal(got.activeSandboxes, 0)

    const ticks = []
    const timed = await srv.sdk({ metricsInterval: 50 })
    timed.on('metrics', (x) => ticks.push(x))
    await new Promise((r) => setTimeout(r, 300))
    timed.disconnect()
    assert.ok(ticks.length >= 2, `${ticks.length} metrics events`)
    assert.equal(ticks[0].totalRequests, 0)
  } finally {
    m.disconnect()
  }
})

test("Airlock's additions: snapshots, forks, pause and resume keep the files", async () => {
  const { sandbox } = await sdk.createSandbox({ metadata: { role: 'source' } })
  const id = sandbox.id
  const made = []
  try {
    await sdk.writeFile({ sandboxId: id, path: '/home/user/state.txt' }, 'kept')
    const { snapshot } = await sdk.createSnapshot(id, { name: `snap-${id}` })
    assert.equal(snapshot.sandboxId, id)
    assert.ok(snapshot.names.some((n) => n.startsWith(`snap-${id}`)), `${snapshot.names}`)
    const { snapshots } = await sdk.listSnapshots({ sandboxId: id })
    assert.deepEqual(
      snapshots.map((s) => s.id),
      [snapshot.id],
    )
    // The source changes after the snapshot; the snapshot does not.
    await sdk.writeFile({ sandboxId: id, path: '/home/user/state.txt' }, 'changed')
    const restored = (await sdk.createSandbox({ templateId: snapshot.id })).sandbox
    made.push(restored.id)
    assert.equal((await sdk.readFile({ sandboxId: restored.id, path: '/home/user/state.txt' })).content, 'kept')

    const { forks } = await sdk.forkSandbox(id, { count: 2, expiryTime: 60_000 })
    assert.equal(forks.length, 2)
    for (const f of forks) {
      assert.ok(f.sandbox, JSON.stringify(f))
      made.push(f.sandbox.id)
      assert.equal(f.sandbox.metadata.role, 'source')
      assert.equal((await sdk.readFile({ sandboxId: f.sandbox.id, path: '/home/user/state.txt' })).content, 'changed')
    }
    const tooMany = await rejection(sdk.forkSandbox(id, { count: 50 }))
    assert.equal(tooMany.code, 'INVALID_ARGUMENT')

    const p = await sdk.pauseSandbox(id)
    assert.deepEqual(p, { sandboxId: id, paused: true, wasRunning: true })
    assert.equal((await sdk.getSandboxStatus(id)).sandbox.status, 'paused')
    const again = await sdk.pauseSandbox(id)
    assert.equal(again.wasRunning, false)
    const { sandbox: back } = await sdk.resumeSandbox(id, { expiryTime: 120_000 })
    assert.equal(back.status, 'running')
    assert.equal((await sdk.readFile({ sandboxId: id, path: '/home/user/state.txt' })).content, 'changed')

    for (const m of made.splice(0)) await sdk.deleteSandbox(m)
    assert.deepEqual(await sdk.deleteSnapshot(snapshot.id), { snapshotId: snapshot.id, deleted: true })
    const gone = await rejection(sdk.deleteSnapshot(snapshot.id))
    assert.equal(gone.code, 'NOT_FOUND')
  } finally {
    for (const m of made) await sdk.deleteSandbox(m).catch(() => {})
    await sdk.deleteSandbox(id)
  }
})

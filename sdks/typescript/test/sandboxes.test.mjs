// Sandboxes, templates, files, code contexts and the SDK's metrics, through
// the Socket.IO endpoint of a real server.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { SandboxError, SandboxSDK, SandboxSDKError } from '../dist/esm/index.js'
import { rejection, Server, sharedServer } from './helpers.mjs'

const shared = sharedServer()
const srv = shared.srv

test('a sandbox is created, reported, listed and deleted, and the server agrees each time', async () => {
  const { sandbox } = await shared.sdk.createSandbox({ name: 'first', expiryTime: 120_000, initialEnvVars: { GREETING: 'hello' }, metadata: { suite: 'ts' } })
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

  const env = await shared.sdk.runTerminal(sandbox.id, 'echo "$GREETING"')
  assert.equal(env.stdout.trim(), 'hello')

  const status = await shared.sdk.getSandboxStatus(sandbox.id)
  assert.equal(status.sandbox.id, sandbox.id)
  assert.equal(status.sandbox.status, 'running')

  const { sandboxes } = await shared.sdk.listSandboxes({ metadata: { suite: 'ts' } })
  assert.deepEqual(
    sandboxes.map((s) => s.id),
    [sandbox.id],
  )

  const del = await shared.sdk.deleteSandbox(sandbox.id)
  assert.deepEqual(del, { sandboxId: sandbox.id, deleted: true })
  assert.equal((await srv.api('GET', `/sandboxes/${sandbox.id}`)).status, 404)
  const gone = await rejection(shared.sdk.getSandboxStatus(sandbox.id))
  assert.ok(gone instanceof SandboxError, `${gone}`)
  assert.equal(gone.code, 'NOT_FOUND')
})

test('unknown ids and bad arguments are typed errors that name the problem', async () => {
  const unknown = await rejection(shared.sdk.getSandboxStatus('nosuchsandbox00000000'))
  assert.ok(unknown instanceof SandboxError)
  assert.equal(unknown.code, 'NOT_FOUND')
  assert.equal(unknown.status, 404)

  const del = await rejection(shared.sdk.deleteSandbox('nosuchsandbox00000000'))
  assert.equal(del.code, 'NOT_FOUND')

  const tpl = await rejection(shared.sdk.createSandbox({ templateId: 'no-such-template' }))
  assert.ok(tpl instanceof SandboxError)
  assert.equal(tpl.code, 'NOT_FOUND')
  assert.match(tpl.message, /no-such-template/)

  const getTpl = await rejection(shared.sdk.getTemplate('no-such-template'))
  assert.equal(getTpl.code, 'NOT_FOUND')

  const badId = await rejection(shared.sdk.getSandboxStatus('../etc'))
  assert.equal(badId.code, 'INVALID_ARGUMENT')

  const badExpiry = await rejection(shared.sdk.createSandbox({ expiryTime: -5 }))
  assert.equal(badExpiry.code, 'INVALID_ARGUMENT')

  const badPage = await rejection(shared.sdk.getTemplates(0, 10))
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
  const first = await shared.sdk.getTemplates(1, 1)
  assert.equal(first.page, 1)
  assert.equal(first.pageSize, 1)
  assert.equal(first.total, names.length)
  assert.equal(first.totalPages, names.length)
  assert.equal(first.templates.length, 1)
  const seen = []
  for (let p = 1; p <= first.totalPages; p++) seen.push(...(await shared.sdk.getTemplates(p, 1)).templates.map((t) => t.name))
  assert.deepEqual(seen, [...seen].sort())
  assert.equal(new Set(seen).size, names.length)
  const past = await shared.sdk.getTemplates(first.totalPages + 1, 1)
  assert.deepEqual(past.templates, [])
  const { template } = await shared.sdk.getTemplate('base')
  assert.equal(template.name, 'base')
  assert.ok(template.sizeBytes >= 0)
})

test('files are written, read, listed and deleted, text and bytes alike', async () => {
  const { sandbox } = await shared.sdk.createSandbox()
  const id = sandbox.id
  try {
    const w = await shared.sdk.writeFile({ sandboxId: id, path: '/tmp/deep/er/note.txt', createParents: true }, 'héllo\nworld\n')
    assert.equal(w.path, '/tmp/deep/er/note.txt')
    assert.equal(w.size, Buffer.byteLength('héllo\nworld\n'))
    const r = await shared.sdk.readFile({ sandboxId: id, path: '/tmp/deep/er/note.txt' })
    assert.equal(r.content, 'héllo\nworld\n')
    assert.equal(r.encoding, 'utf8')

    const bytes = new Uint8Array(256).map((_, i) => i)
    await shared.sdk.writeFile({ sandboxId: id, path: '/tmp/deep/bytes.bin' }, bytes)
    const b = await shared.sdk.readFile({ sandboxId: id, path: '/tmp/deep/bytes.bin', encoding: 'base64' })
    assert.deepEqual(new Uint8Array(Buffer.from(b.content, 'base64')), bytes)
    const sum = await shared.sdk.runTerminal(id, 'od -An -tu1 /tmp/deep/bytes.bin | wc -w')
    assert.equal(sum.stdout.trim(), '256')

    const { files } = await shared.sdk.listFiles({ sandboxId: id, path: '/tmp/deep' })
    const byName = Object.fromEntries(files.map((f) => [f.name, f]))
    assert.equal(byName['bytes.bin'].type, 'file')
    assert.equal(byName['bytes.bin'].size, 256)
    assert.equal(byName.er.type, 'directory')

    const d = await shared.sdk.deleteFile({ sandboxId: id, path: '/tmp/deep/bytes.bin' })
    assert.equal(d.deleted, true)
    const missing = await rejection(shared.sdk.readFile({ sandboxId: id, path: '/tmp/deep/bytes.bin' }))
    assert.ok(missing instanceof SandboxError)
    assert.equal(missing.code, 'NOT_FOUND')

    const noParent = await rejection(shared.sdk.writeFile({ sandboxId: id, path: '/tmp/nowhere/x/y.txt', createParents: false }, 'x'))
    assert.ok(noParent instanceof SandboxError, `${noParent}`)
    const badEnc = await rejection(shared.sdk.readFile({ sandboxId: id, path: '/tmp/deep/er/note.txt', encoding: 'rot13' }))
    assert.equal(badEnc.code, 'INVALID_ARGUMENT')
  } finally {
    await shared.sdk.deleteSandbox(id)
  }
})

test('code contexts keep their own state and go away when deleted', async () => {
  const { sandbox } = await shared.sdk.createSandbox()
  const id = sandbox.id
  try {
    const { context: a } = await shared.sdk.createCodeContext({ sandboxId: id, language: 'python', cwd: '/tmp' })
    const { context: b } = await shared.sdk.createCodeContext({ sandboxId: id, language: 'python' })
    assert.equal(a.language, 'python')
    assert.equal(a.cwd, '/tmp')
    await shared.sdk.runCode(id, 'x = "in a"', { contextId: a.id })
    await shared.sdk.runCode(id, 'x = "in b"', { contextId: b.id })
    const ra = await shared.sdk.runCode(id, 'import os; print(x, os.getcwd())', { contextId: a.id })
    assert.deepEqual(ra.execution.logs.stdout, ['in a /tmp\n'])
    const rb = await shared.sdk.runCode(id, 'print(x)', { contextId: b.id })
    assert.deepEqual(rb.execution.logs.stdout, ['in b\n'])

    const listed = (await shared.sdk.listCodeContexts(id)).contexts.map((c) => c.id)
    assert.ok(listed.includes(a.id) && listed.includes(b.id), `${listed}`)
    assert.deepEqual(await shared.sdk.deleteCodeContext(id, a.id), { contextId: a.id, deleted: true })
    assert.ok(!(await shared.sdk.listCodeContexts(id)).contexts.some((c) => c.id === a.id))
    const stale = await rejection(shared.sdk.runCode(id, 'print(x)', { contextId: a.id }))
    assert.ok(stale instanceof SandboxError, `${stale}`)
    const badLang = await rejection(shared.sdk.createCodeContext({ sandboxId: id, language: 'cobol' }))
    assert.ok(badLang instanceof SandboxError)
  } finally {
    await shared.sdk.deleteSandbox(id)
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
  const { sandbox } = await shared.sdk.createSandbox({ metadata: { role: 'source' } })
  const id = sandbox.id
  const made = []
  try {
    await shared.sdk.writeFile({ sandboxId: id, path: '/home/user/state.txt' }, 'kept')
    const { snapshot } = await shared.sdk.createSnapshot(id, { name: `snap-${id}` })
    assert.equal(snapshot.sandboxId, id)
    assert.ok(snapshot.names.some((n) => n.startsWith(`snap-${id}`)), `${snapshot.names}`)
    const { snapshots } = await shared.sdk.listSnapshots({ sandboxId: id })
    assert.deepEqual(
      snapshots.map((s) => s.id),
      [snapshot.id],
    )
    // The source changes after the snapshot; the snapshot does not.
    await shared.sdk.writeFile({ sandboxId: id, path: '/home/user/state.txt' }, 'changed')
    const restored = (await shared.sdk.createSandbox({ templateId: snapshot.id })).sandbox
    made.push(restored.id)
    assert.equal((await shared.sdk.readFile({ sandboxId: restored.id, path: '/home/user/state.txt' })).content, 'kept')

    const { forks } = await shared.sdk.forkSandbox(id, { count: 2, expiryTime: 60_000 })
    assert.equal(forks.length, 2)
    for (const f of forks) {
      assert.ok(f.sandbox, JSON.stringify(f))
      made.push(f.sandbox.id)
      assert.equal(f.sandbox.metadata.role, 'source')
      assert.equal((await shared.sdk.readFile({ sandboxId: f.sandbox.id, path: '/home/user/state.txt' })).content, 'changed')
    }
    const tooMany = await rejection(shared.sdk.forkSandbox(id, { count: 50 }))
    assert.equal(tooMany.code, 'INVALID_ARGUMENT')

    const p = await shared.sdk.pauseSandbox(id)
    assert.deepEqual(p, { sandboxId: id, paused: true, wasRunning: true })
    assert.equal((await shared.sdk.getSandboxStatus(id)).sandbox.status, 'paused')
    const again = await shared.sdk.pauseSandbox(id)
    assert.equal(again.wasRunning, false)
    const { sandbox: back } = await shared.sdk.resumeSandbox(id, { expiryTime: 120_000 })
    assert.equal(back.status, 'running')
    assert.equal((await shared.sdk.readFile({ sandboxId: id, path: '/home/user/state.txt' })).content, 'changed')

    for (const m of made.splice(0)) await shared.sdk.deleteSandbox(m)
    assert.deepEqual(await shared.sdk.deleteSnapshot(snapshot.id), { snapshotId: snapshot.id, deleted: true })
    const gone = await rejection(shared.sdk.deleteSnapshot(snapshot.id))
    assert.equal(gone.code, 'NOT_FOUND')
  } finally {
    for (const m of made) await shared.sdk.deleteSandbox(m).catch(() => {})
    await shared.sdk.deleteSandbox(id)
  }
})

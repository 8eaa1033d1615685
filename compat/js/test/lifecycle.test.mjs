import assert from 'node:assert/strict'

import { AuthenticationError, Sandbox, SandboxError, SandboxNotFoundError } from 'e2b'

import { killLater, plainTest, runMetadata, sbxTest, unique, UNKNOWN_ID, useAirlockServer, waitUntil } from '../lib/helpers.mjs'

const server = useAirlockServer()

const secondsFromNow = (d) => (d.getTime() - Date.now()) / 1000

sbxTest('create (default template base) and isRunning', async (sbx) => {
  assert.equal(typeof sbx.sandboxId, 'string')
  assert.match(sbx.sandboxId, /^[A-Za-z0-9_]+$/)
  assert.equal(await sbx.isRunning(), true)
  const r = await sbx.commands.run('echo ready')
  assert.equal(r.stdout, 'ready\n')
  assert.equal(r.exitCode, 0)
})

plainTest('create with explicit template and options', async () => {
  const sbx = await Sandbox.create('base', { timeoutMs: 60_000, metadata: runMetadata() })
  try {
    assert.equal((await sbx.commands.run('true')).exitCode, 0)
  } finally {
    assert.equal(await sbx.kill(), true)
  }
  assert.equal(await sbx.isRunning(), false)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
})

plainTest('create with an unknown template fails', async () => {
  await assert.rejects(Sandbox.create(unique('no-such-template-'), { metadata: runMetadata() }), SandboxError)
})

plainTest('kill of an unknown id returns false', async () => {
  assert.equal(await Sandbox.kill(UNKNOWN_ID), false)
})

sbxTest('getInfo fields', async (sbx) => {
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.ok(info.templateId)
  assert.ok([info.templateId, info.name].includes('base'), `${info.templateId} / ${info.name}`)
  assert.deepEqual(info.metadata, runMetadata({ owner: 'js' }))
  assert.equal(info.state, 'running')
  assert.ok(info.startedAt instanceof Date && !Number.isNaN(info.startedAt.getTime()))
  assert.ok(info.startedAt.getTime() <= Date.now() + 2000)
  const ttl = (info.endAt.getTime() - info.startedAt.getTime()) / 1000
  assert.ok(ttl >= 110 && ttl <= 130, `ttl ${ttl}`)
  assert.ok(info.cpuCount >= 1)
  assert.ok(info.memoryMB >= 128)
  assert.ok(info.envdVersion)

  const st = await Sandbox.getInfo(sbx.sandboxId)
  assert.equal(st.sandboxId, sbx.sandboxId)
}, { createOpts: { timeoutMs: 120_000, metadata: { owner: 'js' } } })

plainTest('getInfo of an unknown id throws SandboxNotFoundError', async () => {
  await assert.rejects(Sandbox.getInfo(UNKNOWN_ID), SandboxNotFoundError)
})

sbxTest('setTimeout moves endAt', async (sbx) => {
  const first = (await sbx.getInfo()).endAt
  await sbx.setTimeout(900_000)
  const longer = (await sbx.getInfo()).endAt
  assert.ok((longer - first) / 1000 > 500, `${first} -> ${longer}`)
  assert.ok(Math.abs(secondsFromNow(longer) - 900) < 15)
  await Sandbox.setTimeout(sbx.sandboxId, 60_000)
  const shorter = (await sbx.getInfo()).endAt
  assert.ok(Math.abs(secondsFromNow(shorter) - 60) < 15, `${shorter}`)
  await assert.rejects(Sandbox.setTimeout(UNKNOWN_ID, 30_000), SandboxNotFoundError)
})

plainTest('sandbox is killed when its timeout expires', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 2_000, metadata: runMetadata() })
  try {
    await waitUntil(async () => !(await sbx.isRunning()), { timeoutMs: 20_000, intervalMs: 250, what: 'expiry' })
    await waitUntil(
      () => Sandbox.getInfo(sbx.sandboxId).then(() => false, (e) => e instanceof SandboxNotFoundError),
      { timeoutMs: 10_000, intervalMs: 250, what: 'expired sandbox to leave the API' },
    )
  } finally {
    killLater(sbx)
  }
})

sbxTest('connect to a running sandbox', async (sbx) => {
  await sbx.files.write('/tmp/marker', 'js-marker')
  const other = await Sandbox.connect(sbx.sandboxId)
  assert.equal(other.sandboxId, sbx.sandboxId)
  assert.equal(await other.files.read('/tmp/marker'), 'js-marker')
  assert.equal((await other.commands.run('echo hi')).stdout, 'hi\n')
  const same = await sbx.connect()
  assert.equal(same.sandboxId, sbx.sandboxId)
})

sbxTest('connect does not shorten the timeout', async (sbx) => {
  const before = (await sbx.getInfo()).endAt
  await Sandbox.connect(sbx.sandboxId, { timeoutMs: 30_000 })
  const after = (await sbx.getInfo()).endAt
  assert.ok(after.getTime() >= before.getTime() - 2000, `${before} -> ${after}`)
}, { createOpts: { timeoutMs: 600_000 } })

plainTest('connect to an unknown id throws SandboxNotFoundError', async () => {
  await assert.rejects(Sandbox.connect(UNKNOWN_ID), SandboxNotFoundError)
})

sbxTest('killed sandbox: getInfo/connect not found, isRunning false', async (sbx) => {
  assert.equal(await sbx.kill(), true)
  assert.equal(await sbx.isRunning(), false)
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError)
  await assert.rejects(Sandbox.connect(sbx.sandboxId), SandboxNotFoundError)
  await assert.rejects(sbx.commands.run('echo x', { timeoutMs: 10_000 }), SandboxError)
})

sbxTest('sandbox-wide envs from create', async (sbx) => {
  assert.equal((await sbx.commands.run('echo $SBX_GLOBAL')).stdout, 'js-create\n')
  assert.equal((await sbx.commands.run('echo $SBX_GLOBAL', { envs: { SBX_GLOBAL: 'over' } })).stdout, 'over\n')
}, { createOpts: { envs: { SBX_GLOBAL: 'js-create' } } })

sbxTest('getMetrics returns sane samples', async (sbx) => {
  const metrics = await waitUntil(async () => {
    const m = await sbx.getMetrics()
    return m.length > 0 ? m : null
  }, { timeoutMs: 15_000, intervalMs: 500, what: 'metrics' })
  for (const m of metrics) {
    assert.ok(m.cpuCount >= 1)
    assert.ok(m.cpuUsedPct >= 0 && m.cpuUsedPct <= 100 * m.cpuCount + 1)
    assert.ok(m.memTotal > 0 && m.memUsed > 0 && m.memUsed <= m.memTotal)
    assert.ok(m.diskTotal > 0 && m.diskUsed >= 0 && m.diskUsed <= m.diskTotal)
    assert.ok(m.timestamp instanceof Date && !Number.isNaN(m.timestamp.getTime()))
  }
  assert.ok(Array.isArray(await Sandbox.getMetrics(sbx.sandboxId)))
})

plainTest('bad API key throws AuthenticationError', async () => {
  const apiKey = 'e2b_' + '0'.repeat(40)
  assert.notEqual(apiKey, server.apiKey)
  await assert.rejects(Sandbox.create({ apiKey, metadata: runMetadata() }), AuthenticationError)
  await assert.rejects(Sandbox.list({ apiKey }).nextItems(), AuthenticationError)
})

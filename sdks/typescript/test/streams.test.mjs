// Airlock's additions that stream or store: lifecycle events and live
// usage as subscriptions (kept across a dropped connection), a sandbox's
// usage history, and volumes mounted in sandboxes.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { SandboxError } from '../dist/esm/index.js'
import { rejection, sharedServer, sleep } from './helpers.mjs'

const shared = sharedServer()
const srv = shared.srv

/** Resolves when `pred()` holds, polling; fails after `ms`. */
async function until(pred, ms, what) {
  const end = Date.now() + ms
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

test("a sandbox's lifecycle events arrive in order, once each, across a dropped connection", async () => {
  const { sandbox } = await shared.sdk.createSandbox()
  const seen = []
  const sub = await shared.sdk.subscribeEvents({ sandboxId: sandbox.id, onEvent: (e) => seen.push(e) })
  try {
    assert.match(sub.id, /^events-/)
    // The stored ones come first: the create.
    await until(() => seen.some((e) => e.type === 'ready'), 10_000, `the ready event in ${JSON.stringify(seen)}`)
    assert.equal(seen[0].type, 'created')
    assert.ok(seen.every((e) => e.sandboxId === sandbox.id))

    await shared.sdk.pauseSandbox(sandbox.id)
    await until(() => seen.some((e) => e.type === 'paused'), 10_000, 'the paused event')

    // The transport dies; the SDK reconnects and subscribes again after
    // the last event it delivered.
    const first = sub.id
    const back = new Promise((r) => shared.sdk.on('reconnect', function h() {
      shared.sdk.off('reconnect', h)
      r()
    }))
    shared.sdk.socket.io.engine.close()
    await back
    await shared.sdk.resumeSandbox(sandbox.id)
    await until(() => seen.some((e) => e.type === 'resumed'), 10_000, 'the resumed event after reconnecting')
    assert.notEqual(sub.id, first, 'a new subscription on the new connection')
    await shared.sdk.deleteSandbox(sandbox.id)
    await until(() => seen.some((e) => e.type === 'killed'), 10_000, 'the killed event')

    const ids = seen.map((e) => e.id)
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'in order')
    assert.equal(new Set(ids).size, ids.length, `no event twice: ${seen.map((e) => e.type)}`)
    const types = seen.map((e) => e.type)
    for (const t of ['created', 'ready', 'paused', 'resumed', 'killed']) assert.ok(types.includes(t), `${t} in ${types}`)
    assert.ok(types.indexOf('paused') < types.indexOf('resumed') && types.indexOf('resumed') < types.indexOf('killed'), `${types}`)
  } finally {
    await sub.close()
  }
  assert.equal(sub.closed, true)
  // Nothing arrives after close.
  const n = seen.length
  const other = await shared.sdk.createSandbox()
  await shared.sdk.deleteSandbox(other.sandbox.id)
  await sleep(300)
  assert.equal(seen.length, n)
})

test('an event subscription filters by type and resumes after a given id', async () => {
  const { sandbox } = await shared.sdk.createSandbox()
  await shared.sdk.deleteSandbox(sandbox.id)
  const all = []
  const everything = await shared.sdk.subscribeEvents({ sandboxId: sandbox.id, onEvent: (e) => all.push(e) })
  await until(() => all.some((e) => e.type === 'killed'), 10_000, 'the stored killed event')
  await everything.close()

  const kills = []
  const killed = await shared.sdk.subscribeEvents({ sandboxId: sandbox.id, types: ['killed'], onEvent: (e) => kills.push(e) })
  const later = []
  const ready = all.find((e) => e.type === 'ready')
  const resumed = await shared.sdk.subscribeEvents({ sandboxId: sandbox.id, after: ready.id, onEvent: (e) => later.push(e) })
  try {
    await until(() => kills.length >= 1 && later.some((e) => e.type === 'killed'), 10_000, 'the filtered and resumed streams')
    await sleep(200)
    assert.deepEqual(kills.map((e) => e.type), ['killed'])
    assert.ok(later.every((e) => e.id > ready.id), 'only events after the one given')
  } finally {
    await killed.close()
    await resumed.close()
  }

  const bad = await rejection(shared.sdk.subscribeEvents({ types: ['no such; type'], onEvent: () => {} }))
  assert.equal(bad.code, 'INVALID_ARGUMENT')
})

test("live usage streams while a sandbox runs and ends with it; the history is there too", async () => {
  const { sandbox } = await shared.sdk.createSandbox()
  const readings = []
  let ended
  const done = new Promise((r) => (ended = r))
  const sub = await shared.sdk.subscribeMetrics(sandbox.id, { intervalMs: 500, onMetrics: (m) => readings.push(m), onEnd: (why) => ended(why) })
  await until(() => readings.length >= 2, 15_000, 'two readings')
  for (const m of readings) {
    assert.ok(m.memTotal > 0 && m.memUsed > 0 && m.memUsed <= m.memTotal, JSON.stringify(m))
    assert.ok(m.cpuCount >= 1)
    assert.equal(typeof m.timestampUnix, 'number')
  }
  assert.ok(readings[1].timestampUnix >= readings[0].timestampUnix)

  const history = await shared.sdk.getSandboxMetrics(sandbox.id)
  assert.equal(history.sandboxId, sandbox.id)
  assert.ok(Array.isArray(history.metrics))

  // Killing the sandbox ends the stream, with a reason.
  await shared.sdk.deleteSandbox(sandbox.id)
  const why = await done
  assert.match(why.message, /no longer running|not found|ended/i)
  assert.equal(sub.closed, true)

  const unknown = await rejection(shared.sdk.subscribeMetrics('nosuchsandbox', { onMetrics: () => {} }))
  assert.ok(unknown instanceof SandboxError, `${unknown}`)
  assert.equal(unknown.code, 'NOT_FOUND')
  const fast = await rejection(shared.sdk.subscribeMetrics(sandbox.id, { intervalMs: 10, onMetrics: () => {} }))
  assert.equal(fast.code, 'INVALID_ARGUMENT')
})

test('a volume keeps files across sandboxes and is refused deletion while mounted', async () => {
  const name = `vol${Date.now().toString(36)}`
  const { volume } = await shared.sdk.createVolume({ name, sizeMB: 64 })
  assert.match(volume.id, /^vol_/)
  assert.equal(volume.name, name)
  assert.equal(volume.sizeMB, 64)
  assert.ok((await shared.sdk.listVolumes()).volumes.some((v) => v.id === volume.id))
  assert.equal((await shared.sdk.getVolume(name)).volume.id, volume.id)

  const a = await shared.sdk.createSandbox({ volumeMounts: [{ name, path: '/data' }] })
  await shared.sdk.writeFile({ sandboxId: a.sandbox.id, path: '/data/kept.txt' }, 'from the first sandbox')
  const busy = await rejection(shared.sdk.deleteVolume(volume.id))
  assert.ok(busy instanceof SandboxError, `${busy}`)
  await shared.sdk.deleteSandbox(a.sandbox.id)

  const b = await shared.sdk.createSandbox({ volumeMounts: [{ name: volume.id, path: '/mnt/v' }] })
  assert.equal((await shared.sdk.readFile({ sandboxId: b.sandbox.id, path: '/mnt/v/kept.txt' })).content, 'from the first sandbox')
  await shared.sdk.deleteSandbox(b.sandbox.id)

  assert.deepEqual(await shared.sdk.deleteVolume(volume.id), { volumeId: volume.id, deleted: true })
  const gone = await rejection(shared.sdk.getVolume(volume.id))
  assert.equal(gone.code, 'NOT_FOUND')
  const bad = await rejection(shared.sdk.createSandbox({ volumeMounts: [{ name: 'nosuchvolume', path: '/data' }] }))
  assert.ok(bad instanceof SandboxError, `${bad}`)
})

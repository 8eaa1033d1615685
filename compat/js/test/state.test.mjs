import assert from 'node:assert/strict'

import { Sandbox, SandboxNotFoundError } from 'e2b'

import { UNKNOWN_ID, killLater, plainTest, runMetadata, sbxTest, useAirlockServer } from '../lib/helpers.mjs'

useAirlockServer()

const BOOT_ID = 'cat /proc/sys/kernel/random/boot_id'

sbxTest('a snapshot starts independent sandboxes and is listed and deleted', async (sbx) => {
  await sbx.files.write('/home/user/s.txt', 'from the snapshot')
  const snap = await sbx.createSnapshot()
  assert.match(snap.snapshotId, /:default$/)
  const made = []
  try {
    for (let i = 0; i < 2; i++) made.push(await Sandbox.create(snap.snapshotId, { metadata: runMetadata() }))
    assert.equal(await made[0].files.read('/home/user/s.txt'), 'from the snapshot')
    await made[0].files.write('/home/user/s.txt', 'changed')
    assert.equal(await made[1].files.read('/home/user/s.txt'), 'from the snapshot')
    const mine = await sbx.listSnapshots().nextItems()
    assert.ok(mine.some((s) => s.snapshotId === snap.snapshotId))
  } finally {
    for (const m of made) await m.kill()
  }
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
})

sbxTest('fork gives running copies that outlive their source', async (sbx) => {
  await sbx.files.write('/home/user/f.txt', 'forked')
  const forks = await sbx.fork({ count: 2 })
  try {
    assert.equal(forks.length, 2)
    for (const f of forks) assert.ok(f instanceof Sandbox, String(f))
    await sbx.kill()
    for (const f of forks) assert.equal(await f.files.read('/home/user/f.txt'), 'forked')
    await assert.rejects(Sandbox.fork(UNKNOWN_ID), SandboxNotFoundError)
  } finally {
    for (const f of forks) if (f instanceof Sandbox) killLater(f)
  }
})

sbxTest('a filesystem-only pause keeps files and boots afresh', async (sbx) => {
  await sbx.files.write('/home/user/k.txt', 'kept')
  const boot = (await sbx.commands.run(BOOT_ID)).stdout
  assert.equal(await sbx.pause({ keepMemory: false }), true)
  assert.equal((await sbx.getInfo()).state, 'paused')
  const back = await Sandbox.connect(sbx.sandboxId)
  assert.equal(await back.files.read('/home/user/k.txt'), 'kept')
  assert.notEqual((await back.commands.run(BOOT_ID)).stdout, boot)
})

plainTest('a snapshot of an unknown sandbox is not found', async () => {
  await assert.rejects(Sandbox.createSnapshot(UNKNOWN_ID), SandboxNotFoundError)
})

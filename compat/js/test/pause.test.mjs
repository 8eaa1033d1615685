import assert from 'node:assert/strict'

import { Sandbox, SandboxNotFoundError } from 'e2b'

import { plainTest, sbxTest, useAirlockServer, waitUntil } from '../lib/helpers.mjs'

useAirlockServer()

const COUNTER =
  'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.tmp; mv /tmp/counter.tmp /tmp/counter; sleep 0.1; done'

async function counter(sbx) {
  return Number((await sbx.files.read('/tmp/counter')).trim() || '0')
}

sbxTest('pause, then connect resumes with files and processes intact', async (sbx) => {
  await sbx.files.write('/home/user/persist.txt', 'survives pause')
  const handle = await sbx.commands.run(COUNTER, { background: true })
  await waitUntil(async () => (await sbx.files.exists('/tmp/counter')) && (await counter(sbx)) >= 3, {
    what: 'counter to start',
  })

  assert.equal(await sbx.pause(), true)
  assert.equal((await sbx.getInfo()).state, 'paused')
  const paused = await Sandbox.list({ query: { state: ['paused'] } }).nextItems()
  assert.ok(paused.some((s) => s.sandboxId === sbx.sandboxId))

  const resumed = await Sandbox.connect(sbx.sandboxId)
  assert.equal(resumed.sandboxId, sbx.sandboxId)
  assert.equal((await resumed.getInfo()).state, 'running')
  assert.equal(await resumed.files.read('/home/user/persist.txt'), 'survives pause')

  const pids = (await resumed.commands.list()).map((p) => p.pid)
  assert.ok(pids.includes(handle.pid), `${handle.pid} not in ${pids}`)
  const v = await counter(resumed)
  assert.ok(v >= 3)
  await waitUntil(async () => (await counter(resumed)) > v + 2, { what: 'counter to keep counting' })
  assert.equal(await resumed.commands.kill(handle.pid), true)
})

sbxTest('pause twice returns false; instance connect resumes', async (sbx) => {
  await sbx.files.write('f.txt', 'x')
  assert.equal(await Sandbox.pause(sbx.sandboxId), true)
  assert.equal(await Sandbox.pause(sbx.sandboxId), false)
  const same = await sbx.connect()
  assert.equal((await same.getInfo()).state, 'running')
  assert.equal(await same.files.read('f.txt'), 'x')
})

plainTest('pause of an unknown id throws SandboxNotFoundError', async () => {
  await assert.rejects(Sandbox.pause('doesnotexist0000000000'), SandboxNotFoundError)
})

sbxTest('kill a paused sandbox', async (sbx) => {
  await sbx.pause()
  assert.equal(await Sandbox.kill(sbx.sandboxId), true)
  await assert.rejects(Sandbox.connect(sbx.sandboxId), SandboxNotFoundError)
})

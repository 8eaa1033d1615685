import assert from 'node:assert/strict'
import { before } from 'node:test'

import { Sandbox } from 'e2b'

import { killLater, plainTest, runMetadata, unique, useAirlockServer } from '../lib/helpers.mjs'

const server = useAirlockServer()

async function collect(paginator, maxPages = 20) {
  const pages = []
  while (paginator.hasNext) {
    pages.push(await paginator.nextItems())
    assert.ok(pages.length <= maxPages, 'paginator never ended (X-Next-Token always set?)')
  }
  return pages
}
const flat = (pages) => pages.flat()
const ids = (items) => items.map((s) => s.sandboxId).sort()

const tag = unique('jstag')
let sbxs = []

before(async () => {
  sbxs = []
  await server.ready
  for (let i = 0; i < 3; i++) {
    sbxs.push(await Sandbox.create({ metadata: runMetadata({ group: tag, idx: String(i) }) }))
  }
})

// the sandboxes carry the run metadata: the server hook kills them at the end

plainTest('list includes created sandboxes with their fields', async () => {
  const all = flat(await collect(Sandbox.list()))
  for (const s of sbxs) assert.ok(all.some((x) => x.sandboxId === s.sandboxId))
  const mine = all.find((x) => x.sandboxId === sbxs[0].sandboxId)
  assert.deepEqual(mine.metadata, runMetadata({ group: tag, idx: '0' }))
  assert.equal(mine.state, 'running')
  assert.ok([mine.templateId, mine.name].includes('base'))
  assert.ok(mine.startedAt < mine.endAt)
  assert.ok(mine.cpuCount >= 1 && mine.memoryMB >= 128)
})

plainTest('metadata filter (all pairs must match)', async () => {
  const found = flat(await collect(Sandbox.list({ query: { metadata: { group: tag } } })))
  assert.deepEqual(ids(found), ids(sbxs))
  const one = flat(await collect(Sandbox.list({ query: { metadata: { group: tag, idx: '1' } } })))
  assert.deepEqual(ids(one), [sbxs[1].sandboxId])
  const none = flat(await collect(Sandbox.list({ query: { metadata: { group: tag, idx: '9' } } })))
  assert.deepEqual(none, [])
})

plainTest('paging with limit 1', async () => {
  const paginator = Sandbox.list({ query: { metadata: { group: tag } }, limit: 1 })
  const pages = await collect(paginator)
  assert.ok(pages.every((p) => p.length <= 1), JSON.stringify(pages.map((p) => p.length)))
  const all = flat(pages).map((s) => s.sandboxId)
  assert.equal(new Set(all).size, all.length, 'duplicates across pages')
  assert.deepEqual([...all].sort(), ids(sbxs))
  assert.equal(pages.filter((p) => p.length > 0).length, 3)
  assert.equal(paginator.hasNext, false)
  await assert.rejects(paginator.nextItems())
})

plainTest('state filter: paused vs running', async () => {
  const extra = await Sandbox.create({ metadata: runMetadata({ group: tag + 'p' }) })
  const extra2 = await Sandbox.create({ metadata: runMetadata({ group: tag + 'p' }) })
  try {
    assert.equal(await extra.pause(), true)
    const q = { group: tag + 'p' }
    const paused = flat(await collect(Sandbox.list({ query: { metadata: q, state: ['paused'] } })))
    assert.deepEqual(ids(paused), [extra.sandboxId])
    assert.equal(paused[0].state, 'paused')
    const running = flat(await collect(Sandbox.list({ query: { metadata: q, state: ['running'] } })))
    assert.deepEqual(ids(running), [extra2.sandboxId])
    const both = flat(await collect(Sandbox.list({ query: { metadata: q } })))
    assert.deepEqual(ids(both), ids([extra, extra2]))
  } finally {
    killLater(extra)
    killLater(extra2)
  }
})

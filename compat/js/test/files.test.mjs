import assert from 'node:assert/strict'

import { FileNotFoundError, FileType, FilesystemEventType, NotFoundError } from 'e2b'

import { sbxTest, sleep, useAirlockServer, waitUntil } from '../lib/helpers.mjs'

useAirlockServer()

sbxTest('files', async (sbx, t) => {
  await t.test('write and read text', async () => {
    const info = await sbx.files.write('/home/user/hello.txt', 'Hello from JS\n')
    assert.equal(info.path, '/home/user/hello.txt')
    assert.equal(info.name, 'hello.txt')
    assert.equal(info.type, FileType.FILE)
    assert.equal(await sbx.files.read('/home/user/hello.txt'), 'Hello from JS\n')
    assert.equal(await sbx.files.read('hello.txt'), 'Hello from JS\n')
  })

  await t.test('write and read bytes (ArrayBuffer, Blob)', async () => {
    const data = new Uint8Array(256 * 64).map((_, i) => i % 256)
    await sbx.files.write('/tmp/blob.bin', data.buffer)
    const got = await sbx.files.read('/tmp/blob.bin', { format: 'bytes' })
    assert.ok(got instanceof Uint8Array)
    assert.deepEqual(Buffer.from(got), Buffer.from(data))
    await sbx.files.write('/tmp/blob2.bin', new Blob([data]))
    const blob = await sbx.files.read('/tmp/blob2.bin', { format: 'blob' })
    assert.deepEqual(Buffer.from(await blob.arrayBuffer()), Buffer.from(data))
  })

  await t.test('write multiple files', async () => {
    const infos = await sbx.files.write([
      { path: '/tmp/multi/one.txt', data: 'one' },
      { path: '/tmp/multi/two.txt', data: 'two' },
      { path: 'multi-rel.txt', data: 'three' },
    ])
    assert.equal(infos.length, 3)
    assert.deepEqual(infos.map((i) => i.path).sort(), [
      '/home/user/multi-rel.txt',
      '/tmp/multi/one.txt',
      '/tmp/multi/two.txt',
    ])
    assert.equal(await sbx.files.read('/tmp/multi/two.txt'), 'two')
    assert.equal(await sbx.files.read('/home/user/multi-rel.txt'), 'three')
    const viaWriteFiles = await sbx.files.writeFiles([{ path: '/tmp/multi/four.txt', data: 'four' }])
    assert.equal(viaWriteFiles.length, 1)
    assert.equal(await sbx.files.read('/tmp/multi/four.txt'), 'four')
  })

  await t.test('read stream of a large file', async () => {
    const data = new Uint8Array(4 * 1024 * 1024).map((_, i) => (i * 7) % 256)
    await sbx.files.write('/tmp/large.bin', data.buffer)
    const stream = await sbx.files.read('/tmp/large.bin', { format: 'stream' })
    const chunks = []
    for await (const c of stream) chunks.push(Buffer.from(c))
    assert.ok(Buffer.concat(chunks).equals(Buffer.from(data)))
  })

  await t.test('read missing file throws FileNotFoundError', async () => {
    await assert.rejects(sbx.files.read('/tmp/nope.txt'), (e) => e instanceof FileNotFoundError && e instanceof NotFoundError)
  })

  await t.test('list with depth', async () => {
    await sbx.files.write([
      { path: '/home/user/tree/a.txt', data: 'aaa' },
      { path: '/home/user/tree/sub/b.txt', data: 'bb' },
      { path: '/home/user/tree/sub/deeper/c.txt', data: 'c' },
    ])
    const l1 = await sbx.files.list('/home/user/tree')
    assert.deepEqual(l1.map((e) => e.name).sort(), ['a.txt', 'sub'])
    const a = l1.find((e) => e.name === 'a.txt')
    assert.equal(a.type, FileType.FILE)
    assert.equal(a.path, '/home/user/tree/a.txt')
    assert.equal(a.size, 3)
    assert.equal(l1.find((e) => e.name === 'sub').type, FileType.DIR)
    const l2 = (await sbx.files.list('/home/user/tree', { depth: 2 })).map((e) => e.path).sort()
    assert.deepEqual(l2, [
      '/home/user/tree/a.txt',
      '/home/user/tree/sub',
      '/home/user/tree/sub/b.txt',
      '/home/user/tree/sub/deeper',
    ])
    await assert.rejects(sbx.files.list('/nonexistent/dir'), NotFoundError)
  })

  await t.test('exists', async () => {
    assert.equal(await sbx.files.exists('/home/user/tree/a.txt'), true)
    assert.equal(await sbx.files.exists('/home/user/tree'), true)
    assert.equal(await sbx.files.exists('/home/user/tree/nope'), false)
  })

  await t.test('getInfo', async () => {
    await sbx.files.write('/home/user/info.txt', '12345')
    const info = await sbx.files.getInfo('/home/user/info.txt')
    assert.equal(info.name, 'info.txt')
    assert.equal(info.type, FileType.FILE)
    assert.equal(info.path, '/home/user/info.txt')
    assert.equal(info.size, 5)
    assert.equal(info.mode & 0o777, 0o644)
    assert.equal(info.permissions, '-rw-r--r--')
    assert.equal(info.owner, 'user')
    assert.equal(info.group, 'user')
    assert.ok(info.modifiedTime instanceof Date)
    assert.ok(Math.abs(info.modifiedTime.getTime() - Date.now()) < 60_000)
    const dir = await sbx.files.getInfo('/home/user')
    assert.equal(dir.type, FileType.DIR)
    await assert.rejects(sbx.files.getInfo('/home/user/missing'), FileNotFoundError)
  })

  await t.test('makeDir', async () => {
    assert.equal(await sbx.files.makeDir('/home/user/newdir/a/b'), true)
    assert.equal(await sbx.files.makeDir('/home/user/newdir/a/b'), false)
    assert.equal((await sbx.files.getInfo('/home/user/newdir/a/b')).type, FileType.DIR)
  })

  await t.test('rename', async () => {
    await sbx.files.write('/home/user/old.txt', 'moving')
    const info = await sbx.files.rename('/home/user/old.txt', '/home/user/new.txt')
    assert.equal(info.path, '/home/user/new.txt')
    assert.equal(info.name, 'new.txt')
    assert.equal(await sbx.files.exists('/home/user/old.txt'), false)
    assert.equal(await sbx.files.read('/home/user/new.txt'), 'moving')
  })

  await t.test('remove file and directory', async () => {
    await sbx.files.remove('/home/user/tree/a.txt')
    assert.equal(await sbx.files.exists('/home/user/tree/a.txt'), false)
    await sbx.files.remove('/home/user/tree')
    assert.equal(await sbx.files.exists('/home/user/tree'), false)
    await sbx.files.remove('/home/user/never-existed')
  })

  await t.test('user option', async () => {
    await sbx.files.write('/root/r.txt', 'root file', { user: 'root' })
    assert.equal(await sbx.files.read('/root/r.txt', { user: 'root' }), 'root file')
    assert.equal((await sbx.files.getInfo('/root/r.txt', { user: 'root' })).owner, 'root')
    await sbx.files.write('/home/user/mine.txt', 'mine')
    assert.equal((await sbx.files.getInfo('/home/user/mine.txt')).owner, 'user')
  })

  await t.test('file metadata', async () => {
    const info = await sbx.files.write('/home/user/meta.txt', 'm', { metadata: { author: 'js' } })
    assert.deepEqual(info.metadata, { author: 'js' })
    assert.deepEqual((await sbx.files.getInfo('/home/user/meta.txt')).metadata, { author: 'js' })
  })

  await t.test('watchDir streams events for files written after the watch started', async () => {
    await sbx.files.makeDir('/home/user/watched')
    await sbx.files.write('/home/user/watched/before.txt', 'before')
    const events = []
    let exited = false
    const handle = await sbx.files.watchDir('/home/user/watched', (e) => events.push(e), {
      onExit: () => {
        exited = true
      },
    })
    try {
      await sbx.files.write('/home/user/watched/new.txt', 'hello')
      await waitUntil(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.WRITE), {
        what: 'WRITE event',
      })
      assert.ok(events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.CREATE))
      assert.ok(!events.some((e) => e.name === 'before.txt'))
      await sbx.files.remove('/home/user/watched/new.txt')
      await waitUntil(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.REMOVE), {
        what: 'REMOVE event',
      })
    } finally {
      await handle.stop()
    }
    await sleep(100)
    assert.equal(exited, true)
  })

  await t.test('watchDir recursive', async () => {
    await sbx.files.makeDir('/home/user/rwatch/nested')
    const events = []
    const handle = await sbx.files.watchDir('/home/user/rwatch', (e) => events.push(e), { recursive: true })
    try {
      await sbx.files.write('/home/user/rwatch/nested/deep.txt', 'deep')
      await waitUntil(() => events.some((e) => e.name === 'nested/deep.txt'), { what: 'recursive event' })
    } finally {
      await handle.stop()
    }
  })

  await t.test('watchDir of a missing directory throws NotFoundError', async () => {
    await assert.rejects(sbx.files.watchDir('/home/user/no-such-dir', () => {}), NotFoundError)
  })

  await t.test('downloadUrl / uploadUrl with plain fetch (no SDK headers)', async () => {
    await sbx.files.write('/home/user/dl.txt', 'download me')
    const dl = await sbx.downloadUrl('/home/user/dl.txt')
    assert.ok(dl.startsWith('http://127.0.0.1:'), dl)
    const res = await fetch(dl)
    assert.equal(res.status, 200)
    assert.equal(await res.text(), 'download me')

    const ul = await sbx.uploadUrl('/home/user/ul.txt')
    const form = new FormData()
    form.append('file', new Blob(['uploaded via url']), 'ul.txt')
    const up = await fetch(ul, { method: 'POST', body: form })
    assert.equal(up.status, 200, await up.clone().text())
    const body = await up.json()
    assert.ok(Array.isArray(body) && body.length > 0)
    assert.equal(await sbx.files.read('/home/user/ul.txt'), 'uploaded via url')

    const expired = await sbx.downloadUrl('/home/user/dl.txt', { useSignatureExpiration: -120 })
    const er = await fetch(expired)
    assert.equal(er.status, 401)
    assert.deepEqual(await er.json(), { code: 401, message: 'signature is already expired' })
  })
}, { timeout: 180_000 })

import assert from 'node:assert/strict'

import { CommandExitError } from 'e2b'

import { Collector, sbxTest, useAirlockServer, waitUntil } from '../lib/helpers.mjs'

useAirlockServer()

const enc = (s) => new TextEncoder().encode(s)

sbxTest('pty', async (sbx, t) => {
  await t.test('create, sendInput, output via onData, exit', async () => {
    const out = new Collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: out.push })
    assert.ok(h.pid > 0)
    await sbx.pty.sendInput(h.pid, enc('echo pty-$((40+2)); echo TERM=$TERM; [ -t 0 ] && echo IS-TTY\n'))
    await waitUntil(() => out.text().includes('pty-42'), { what: 'pty output' })
    await waitUntil(() => out.text().includes('IS-TTY'), { what: 'tty check' })
    assert.ok(out.text().includes('TERM=xterm-256color'))
    await sbx.pty.sendInput(h.pid, enc('exit 0\n'))
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
  })

  await t.test('resize', async () => {
    const out = new Collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: out.push })
    await sbx.pty.sendInput(h.pid, enc('stty size\n'))
    await waitUntil(() => out.text().includes('24 80'), { what: 'initial size' })
    await sbx.pty.resize(h.pid, { cols: 132, rows: 40 })
    await sbx.pty.sendInput(h.pid, enc('stty size\n'))
    await waitUntil(() => out.text().includes('40 132'), { what: 'resized size' })
    await sbx.pty.sendInput(h.pid, enc('exit\n'))
    await h.wait()
  })

  await t.test('kill', async () => {
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
    assert.equal(await sbx.pty.kill(h.pid), true)
    await assert.rejects(h.wait(), CommandExitError)
    assert.equal(await sbx.pty.kill(h.pid), false)
  })

  await t.test('user, cwd and envs', async () => {
    const out = new Collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: out.push, user: 'root', cwd: '/tmp', envs: { PV: 'pv' } })
    await sbx.pty.sendInput(h.pid, enc('echo "$(whoami):$(pwd):$PV"; exit\n'))
    await h.wait()
    assert.ok(out.text().includes('root:/tmp:pv'), out.text())
  })

  await t.test('connect to a running pty', async () => {
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
    await h.disconnect()
    const out = new Collector()
    const again = await sbx.pty.connect(h.pid, { onData: out.push })
    await sbx.pty.sendInput(h.pid, enc('echo re-$((3*3))\n'))
    await waitUntil(() => out.text().includes('re-9'), { what: 'output after reconnect' })
    await sbx.pty.kill(h.pid)
    await assert.rejects(again.wait(), CommandExitError)
  })
}, { timeout: 120_000 })

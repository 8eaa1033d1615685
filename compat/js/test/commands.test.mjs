import assert from 'node:assert/strict'

import { CommandExitError, NotFoundError, SandboxError, TimeoutError } from 'e2b'

import { sbxTest, sleep, useAirlockServer, waitUntil } from '../lib/helpers.mjs'

useAirlockServer()

sbxTest('commands', async (sbx, t) => {
  await t.test('run returns stdout, stderr, exitCode', async () => {
    const r = await sbx.commands.run('echo hello; echo oops 1>&2')
    assert.equal(r.stdout, 'hello\n')
    assert.equal(r.stderr, 'oops\n')
    assert.equal(r.exitCode, 0)
    assert.ok(!r.error)
  })

  await t.test('non-zero exit throws CommandExitError', async () => {
    await assert.rejects(sbx.commands.run('echo part; echo bad >&2; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError)
      assert.ok(err instanceof SandboxError)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stderr, 'bad\n')
      assert.equal(err.stdout, 'part\n')
      assert.ok(err.error && err.error.includes('3'), String(err.error))
      return true
    })
  })

  await t.test('utf-8 and large output', async () => {
    assert.equal((await sbx.commands.run("printf 'h\\xc3\\xa9llo \\xf0\\x9f\\x8c\\x8d'")).stdout, 'héllo 🌍')
    const lines = (await sbx.commands.run('seq 1 100000')).stdout.split('\n')
    assert.equal(lines.length, 100001)
    assert.equal(lines[99999], '100000')
  })

  await t.test('background handle + wait', async () => {
    const h = await sbx.commands.run('sleep 0.5; echo done', { background: true })
    assert.ok(h.pid > 0)
    const r = await h.wait()
    assert.equal(r.stdout, 'done\n')
    assert.equal(h.exitCode, 0)
  })

  await t.test('background non-zero exit rejects wait', async () => {
    const h = await sbx.commands.run('sleep 0.1; exit 7', { background: true })
    await assert.rejects(h.wait(), (e) => e instanceof CommandExitError && e.exitCode === 7)
  })

  await t.test('onStdout/onStderr stream output', async () => {
    const out = []
    const err = []
    const stamps = []
    const t0 = Date.now()
    const r = await sbx.commands.run('echo first; sleep 1; echo second; echo e1 >&2', {
      onStdout: (d) => {
        out.push(d)
        stamps.push(Date.now() - t0)
      },
      onStderr: (d) => err.push(d),
    })
    assert.equal(out.join(''), 'first\nsecond\n')
    assert.equal(err.join(''), 'e1\n')
    assert.equal(r.stdout, 'first\nsecond\n')
    assert.ok(stamps[0] < 900, `first chunk only after ${stamps[0]} ms`)
  })

  await t.test('stdin closed by default', async () => {
    const r = await sbx.commands.run('cat; echo eof', { timeoutMs: 20_000 })
    assert.equal(r.stdout, 'eof\n')
  })

  await t.test('stdin: true + sendStdin', async () => {
    const h = await sbx.commands.run('head -n 2', { background: true, stdin: true })
    await h.sendStdin('line one\n')
    await sbx.commands.sendStdin(h.pid, new TextEncoder().encode('line two\n'))
    const r = await h.wait()
    assert.equal(r.stdout, 'line one\nline two\n')
  })

  await t.test('closeStdin sends EOF', async () => {
    const h = await sbx.commands.run('cat; echo closed', { background: true, stdin: true })
    await h.sendStdin('abc\n')
    await sbx.commands.closeStdin(h.pid)
    assert.equal((await h.wait()).stdout, 'abc\nclosed\n')
  })

  await t.test('commands.kill and handle.kill', async () => {
    const h = await sbx.commands.run('sleep 60', { background: true })
    assert.equal(await sbx.commands.kill(h.pid), true)
    await assert.rejects(h.wait(), CommandExitError)
    const h2 = await sbx.commands.run('sleep 60', { background: true })
    assert.equal(await h2.kill(), true)
    await assert.rejects(h2.wait(), CommandExitError)
    assert.equal(await sbx.commands.kill(999999), false)
  })

  await t.test('commands.list', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true, envs: { LISTED: '1' }, cwd: '/tmp' })
    const p = (await sbx.commands.list()).find((x) => x.pid === h.pid)
    assert.ok(p, 'background command missing from list')
    assert.equal(p.cmd, '/bin/bash')
    assert.deepEqual(p.args, ['-l', '-c', 'sleep 30'])
    assert.equal(p.envs.LISTED, '1')
    assert.equal(p.cwd, '/tmp')
    await h.kill()
    await waitUntil(async () => !(await sbx.commands.list()).some((x) => x.pid === h.pid), {
      timeoutMs: 5000,
      what: 'killed process to leave the list',
    })
  })

  await t.test('commands.connect to a running command', async () => {
    const h = await sbx.commands.run('for i in 1 2 3 4 5; do echo tick$i; sleep 0.2; done', { background: true })
    await sleep(300)
    const seen = []
    const again = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d) })
    assert.equal(again.pid, h.pid)
    const r = await again.wait()
    assert.ok(r.stdout.includes('tick5'), r.stdout)
    assert.ok(seen.join('').includes('tick5'))
  })

  await t.test('disconnect then reconnect', async () => {
    const h = await sbx.commands.run('sleep 1; echo finished', { background: true })
    await h.disconnect()
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid))
    const again = await sbx.commands.connect(h.pid)
    assert.ok((await again.wait()).stdout.endsWith('finished\n'))
  })

  await t.test('connect to unknown pid throws NotFoundError', async () => {
    await assert.rejects(sbx.commands.connect(999999), NotFoundError)
  })

  await t.test('envs, cwd, default user and root', async () => {
    assert.equal((await sbx.commands.run('echo "$A|$B"', { envs: { A: 'a a', B: 'b=b' } })).stdout, 'a a|b=b\n')
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    assert.equal(
      (await sbx.commands.run('echo "$HOME|$USER|$(whoami)|$(id -u)|$(pwd)"')).stdout,
      '/home/user|user|user|1000|/home/user\n',
    )
    assert.equal(
      (await sbx.commands.run('echo "$(whoami)|$(id -u)|$HOME"', { user: 'root' })).stdout,
      'root|0|/root\n',
    )
  })

  await t.test('missing cwd fails the start', async () => {
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/does/not/exist' }), (e) => {
      assert.ok(!(e instanceof CommandExitError), 'should fail to start, not run')
      return e instanceof SandboxError
    })
  })

  await t.test('timeoutMs kills a long command', async () => {
    const t0 = Date.now()
    await assert.rejects(
      sbx.commands.run('sleep 30; echo never', { timeoutMs: 1000 }),
      (e) => e instanceof TimeoutError || e instanceof CommandExitError,
    )
    assert.ok(Date.now() - t0 < 10_000)
    await waitUntil(
      async () => !(await sbx.commands.list()).some((p) => p.args.at(-1) === 'sleep 30; echo never'),
      { timeoutMs: 10_000, what: 'timed-out command to be killed' },
    )
  })

  await t.test('parallel commands', async () => {
    const t0 = Date.now()
    const rs = await Promise.all([0, 1, 2, 3].map((i) => sbx.commands.run(`sleep 0.5; echo ${i}`)))
    assert.deepEqual(
      rs.map((r) => r.stdout),
      ['0\n', '1\n', '2\n', '3\n'],
    )
    assert.ok(Date.now() - t0 < 5000)
  })

  await t.test('python3 and node are available', async () => {
    assert.equal((await sbx.commands.run("python3 -c 'print(6*7)'")).stdout, '42\n')
    assert.equal((await sbx.commands.run("node -e 'console.log(6*7)'")).stdout, '42\n')
  })
}, { timeout: 180_000 })

// What happens around the calls: the server's rate limit, a server that
// restarts, a connection that drops in the middle of a stream, and
// templates built from SandboxSDK specs.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { ConnectionError, RateLimitError, SandboxError } from '../dist/esm/index.js'
import { rejection, Server, sleep } from './helpers.mjs'

const srv = new Server()

before(async () => {
  await srv.start()
})

after(async () => {
  await srv.close()
})

const once = (emitter, event) => new Promise((r) => emitter.on(event, function h(...a) {
  emitter.off(event, h)
  r(a)
}))

test("the server's 429 is a RateLimitError with retryAfter, and idempotent calls wait it out", async () => {
  const limited = new Server(['--rate-limit', '2'])
  await limited.start()
  const strict = await limited.sdk({ maxRetries: 0 })
  const patient = await limited.sdk({ maxRetries: 4, retryDelay: 50 })
  try {
    const outcomes = await Promise.allSettled(Array.from({ length: 12 }, () => strict.listSandboxes()))
    const refused = outcomes.filter((o) => o.status === 'rejected').map((o) => o.reason)
    assert.ok(refused.length > 0, 'twelve calls at once got past a limit of two a second')
    for (const e of refused) {
      assert.ok(e instanceof RateLimitError, `${e}`)
      assert.equal(e.code, 'RATE_LIMITED')
      assert.equal(e.status, 429)
      // The server's Retry-After is one second.
      assert.equal(e.retryAfter, 1000)
    }
    assert.equal(strict.getMetrics().failedRequests, refused.length)

    await sleep(1100)
    const t0 = Date.now()
    const all = await Promise.all(Array.from({ length: 5 }, () => patient.listSandboxes()))
    assert.equal(all.length, 5)
    // Past the first two, each call waited at least the Retry-After.
    assert.ok(Date.now() - t0 >= 900, `five calls took ${Date.now() - t0} ms under a limit of two a second`)
    assert.equal(patient.getMetrics().successfulRequests, 5)
  } finally {
    strict.disconnect()
    patient.disconnect()
    await limited.close()
  }
})

test('a connection dropped mid-stream is re-established and the execution re-subscribed, nothing lost or repeated', async () => {
  const sdk = await srv.sdk()
  const { sandbox } = await sdk.createSandbox()
  try {
    const lines = []
    let dropped = false
    const code = 'import time\nfor i in range(12):\n    print(i, flush=True)\n    time.sleep(0.15)\n6 * 7'
    const reconnected = once(sdk, 'reconnect')
    const r = await sdk.runCode(sandbox.id, code, {
      onStdout: (t) => {
        lines.push(t)
        if (lines.length === 3 && !dropped) {
          dropped = true
          // The transport dies under the SDK; socket.io reconnects by itself.
          sdk.socket.io.engine.close()
        }
      },
    })
    await reconnected
    assert.ok(dropped)
    const want = Array.from({ length: 12 }, (_, i) => `${i}\n`)
    assert.deepEqual(lines, want)
    assert.deepEqual(r.execution.logs.stdout, want)
    assert.equal(r.execution.results[0].text, '42')
  } finally {
    await sdk.deleteSandbox(sandbox.id)
    sdk.disconnect()
  }
})

test('a server that goes away mid-stream fails the call with a ConnectionError, and the SDK reconnects when it is back', async () => {
  const sdk = await srv.sdk({ timeout: 3000 })
  try {
    const { sandbox } = await sdk.createSandbox()
    const disconnected = once(sdk, 'disconnect')
    let first
    const started = new Promise((r) => (first = r))
    const run = rejection(sdk.runCode(sandbox.id, 'import time\nwhile True:\n    print("tick", flush=True)\n    time.sleep(0.2)', { onStdout: () => first() }))
    await started
    const t0 = Date.now()
    await srv.stop()
    await disconnected
    const e = await run
    assert.ok(e instanceof ConnectionError, `${e}`)
    assert.ok(Date.now() - t0 < 20_000, `the call took ${Date.now() - t0} ms to fail`)

    // A call made while the server is down waits (idempotent calls retry)
    // and succeeds once it is back; the SDK reconnects on its own.
    const patient = await srv.sdk({ maxRetries: 8, retryDelay: 500 }).catch(() => null)
    assert.equal(patient, null, 'connected to a stopped server')
    const reconnected = once(sdk, 'reconnect')
    const listing = sdk.listSandboxes()
    await sleep(500)
    await srv.start()
    await reconnected
    assert.equal(sdk.isReady(), true)
    await sdk.getTemplates(1, 5)
    const { sandboxes } = await listing.catch(async (err) => {
      // The call may have run out of retries before the restart finished;
      // a new one must work now.
      assert.ok(err instanceof ConnectionError, `${err}`)
      return sdk.listSandboxes()
    })
    assert.ok(Array.isArray(sandboxes))
    const fresh = await sdk.createSandbox()
    const echo = await sdk.runTerminal(fresh.sandbox.id, 'echo back')
    assert.equal(echo.stdout, 'back\n')
    await sdk.deleteSandbox(fresh.sandbox.id)
  } finally {
    sdk.disconnect()
  }
})

test('a template is built from a spec, and sandboxes made from it have what it installed', async () => {
  const sdk = await srv.sdk()
  try {
    const events = []
    const name = `spec-${Date.now().toString(36)}`
    const { template } = await sdk.createTemplate(
      { name, language: 'python', version: '3', dependencies: [], installCommand: 'echo built-by-spec > /opt/marker', defaultEnvVars: { MODE: 'from spec' } },
      { onBuildEvent: (e) => events.push(e) },
    )
    assert.equal(template.name, name)
    assert.equal(template.defaultEnvVars.MODE, 'from spec')
    assert.ok(events.length > 0, 'no build events streamed')
    const listed = []
    for (let p = 1; ; p++) {
      const page = await sdk.getTemplates(p, 2)
      listed.push(...page.templates.map((t) => t.name))
      if (p >= page.totalPages) break
    }
    assert.ok(listed.includes(name), `${listed}`)

    const { sandbox } = await sdk.createSandbox({ templateId: name })
    assert.equal(sandbox.templateId, name)
    const r = await sdk.runTerminal(sandbox.id, 'cat /opt/marker; echo "$MODE"; python3 --version')
    assert.match(r.stdout, /^built-by-spec\nfrom spec\nPython 3\./)
    const code = await sdk.runCode(sandbox.id, 'import os; print(os.environ["MODE"])')
    assert.deepEqual(code.execution.logs.stdout, ['from spec\n'])
    await sdk.deleteSandbox(sandbox.id)

    const wrong = await rejection(sdk.createTemplate({ name: `${name}-old`, language: 'python', version: '2.7' }))
    assert.ok(wrong instanceof SandboxError, `${wrong}`)
    assert.equal(wrong.code, 'BUILD_FAILED')
    assert.match(wrong.message, /not 2\.7/)
    const lang = await rejection(sdk.createTemplate({ name: `${name}-x`, language: 'cobol' }))
    assert.equal(lang.code, 'INVALID_ARGUMENT')
    const dep = await rejection(sdk.createTemplate({ name: `${name}-y`, language: 'python', dependencies: ['numpy; rm -rf /'] }))
    assert.equal(dep.code, 'INVALID_ARGUMENT')
    const multi = await rejection(sdk.createTemplate({ name: `${name}-z`, language: 'bash', installCommand: 'a\nb' }))
    assert.equal(multi.code, 'INVALID_ARGUMENT')
  } finally {
    sdk.disconnect()
  }
})

test('each transport alone carries the calls and the streams: WebSocket only, and long-polling only (the fallback)', async () => {
  for (const transports of [['websocket'], ['polling']]) {
    const sdk = await srv.sdk({ socketOptions: { transports, upgrade: false } })
    try {
      assert.equal(sdk.socket.io.engine.transport.name, transports[0])
      const { sandbox } = await sdk.createSandbox()
      const seen = []
      const r = await sdk.runCode(sandbox.id, 'import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.1)\n"ok"', {
        onStdout: (t) => seen.push(t),
      })
      assert.deepEqual(seen, ['0\n', '1\n', '2\n'], `over ${transports[0]}`)
      assert.deepEqual(r.execution.logs.stdout, seen)
      assert.equal(r.execution.results.length, 1)
      await sdk.writeFile({ sandboxId: sandbox.id, path: '/tmp/t.txt' }, `via ${transports[0]}`)
      assert.equal((await sdk.readFile({ sandboxId: sandbox.id, path: '/tmp/t.txt' })).content, `via ${transports[0]}`)
      // Still on the transport it was given: nothing upgraded underneath.
      assert.equal(sdk.socket.io.engine.transport.name, transports[0])
      await sdk.deleteSandbox(sandbox.id)
    } finally {
      sdk.disconnect()
    }
  }
})

// Code execution with streamed callbacks, terminal commands and batch jobs,
// through the Socket.IO endpoint of a real server.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { SandboxError, SandboxSDKError, TimeoutError } from '../dist/esm/index.js'
import { rejection, Server } from './helpers.mjs'

const srv = new Server()
let sdk
let id

before(async () => {
  await srv.start()
  sdk = await srv.sdk()
  id = (await sdk.createSandbox({ expiryTime: 600_000 })).sandbox.id
})

after(async () => {
  if (id) await sdk.deleteSandbox(id).catch(() => {})
  sdk?.disconnect()
  await srv.close()
})

test('runCode streams stdout, stderr, results and errors in order, all before it resolves', async () => {
  const seen = []
  let resolved = false
  const code = [
    'import sys, time',
    'for i in range(3):',
    '    print(f"out {i}", flush=True)',
    '    time.sleep(0.2)',
    'print("warn", file=sys.stderr, flush=True)',
    '6 * 7',
  ].join('\n')
  const p = sdk.runCode(id, code, {
    onStdout: (t) => seen.push(['stdout', t, resolved]),
    onStderr: (t) => seen.push(['stderr', t, resolved]),
    onResult: (r) => seen.push(['result', r.text, resolved]),
    onError: (e) => seen.push(['error', e.name, resolved]),
  })
  const r = await p
  resolved = true
  assert.deepEqual(
    seen.map(([k, v]) => [k, v]),
    [
      ['stdout', 'out 0\n'],
      ['stdout', 'out 1\n'],
      ['stdout', 'out 2\n'],
      ['stderr', 'warn\n'],
      ['result', '42'],
    ],
  )
  assert.ok(seen.every(([, , late]) => late === false), 'a callback came after the promise resolved')
  assert.deepEqual(r.execution.logs.stdout, ['out 0\n', 'out 1\n', 'out 2\n'])
  assert.deepEqual(r.execution.logs.stderr, ['warn\n'])
  assert.deepEqual(r.execution.results.map((x) => x.text), ['42'])
  assert.equal(r.execution.error, null)
  assert.equal(r.metadata.sandboxId, id)
  assert.ok(r.metadata.durationMs >= 600, `duration ${r.metadata.durationMs}`)

  const errors = []
  const failed = await sdk.runCode(id, 'print("before")\nraise ValueError("nope")', { onError: (e) => errors.push(e) })
  assert.equal(failed.execution.error.name, 'ValueError')
  assert.equal(failed.execution.error.value, 'nope')
  assert.match(failed.execution.error.traceback, /ValueError/)
  assert.deepEqual(errors.map((e) => e.name), ['ValueError'])
  assert.deepEqual(failed.execution.logs.stdout, ['before\n'])
})

test('runCode keeps state, takes envs and languages, and times out cleanly', async () => {
  await sdk.runCode(id, 'counter = 41')
  const r = await sdk.runCode(id, 'counter + 1')
  assert.equal(r.execution.results[0].text, '42')
  const env = await sdk.runCode(id, 'import os; print(os.environ["ONLY_HERE"])', { envs: { ONLY_HERE: 'yes' } })
  assert.deepEqual(env.execution.logs.stdout, ['yes\n'])
  const after = await sdk.runCode(id, 'import os; print(os.environ.get("ONLY_HERE"))')
  assert.deepEqual(after.execution.logs.stdout, ['None\n'])
  const js = await sdk.runCode(id, 'const a = [1, 2, 3]; console.log(a.length)', { language: 'javascript' })
  assert.deepEqual(js.execution.logs.stdout, ['3\n'])

  const t0 = Date.now()
  const slow = await rejection(sdk.runCode(id, 'import time; time.sleep(30)', { timeoutMs: 1000 }))
  assert.ok(slow instanceof TimeoutError, `${slow}`)
  assert.ok(Date.now() - t0 < 15_000, 'the timeout took too long')
  // The interpreter is usable again after a timed-out execution.
  const next = await sdk.runCode(id, 'print("still here")')
  assert.deepEqual(next.execution.logs.stdout, ['still here\n'])
})

test('bad executions are refused with clear errors and nothing hangs', async () => {
  const big = await rejection(sdk.runCode(id, 'x = 1\n'.repeat(10 * 1024 * 1024 / 6)))
  assert.ok(big instanceof SandboxSDKError, `${big}`)
  assert.equal(big.code, 'TOO_LARGE')
  assert.match(big.message, /bytes/)
  // The connection survived the 10 MB message.
  assert.equal(sdk.isReady(), true)
  const unknown = await rejection(sdk.runCode('nosuchsandbox00000000', 'print(1)'))
  assert.ok(unknown instanceof SandboxError)
  assert.equal(unknown.code, 'NOT_FOUND')
  const both = await rejection(sdk.runCode(id, '1', { language: 'python', contextId: 'x' }))
  assert.equal(both.code, 'INVALID_ARGUMENT')
  const lang = await rejection(sdk.runCode(id, '1', { language: 'cobol' }))
  assert.ok(lang instanceof SandboxError, `${lang}`)
  const badTimeout = await rejection(sdk.runCode(id, '1', { timeoutMs: 0 }))
  assert.equal(badTimeout.code, 'INVALID_ARGUMENT')
})

test('runTerminal streams a command and reports its exit code', async () => {
  const out = []
  const err = []
  let resolved = false
  const r = await sdk.runTerminal(id, 'for i in 1 2 3; do echo "line $i"; sleep 0.1; done; echo oops >&2; cd "$PWD" && pwd; exit 3', {
    cwd: '/tmp',
    onStdout: (d) => out.push([d, resolved]),
    onStderr: (d) => err.push([d, resolved]),
  })
  resolved = true
  assert.equal(r.exitCode, 3)
  assert.equal(r.stdout, 'line 1\nline 2\nline 3\n/tmp\n')
  assert.equal(r.stderr, 'oops\n')
  assert.equal(out.map(([d]) => d).join(''), r.stdout)
  assert.equal(err.map(([d]) => d).join(''), 'oops\n')
  assert.ok([...out, ...err].every(([, late]) => !late))
  const env = await sdk.runTerminal(id, 'echo "$A-$B"', { envs: { A: 'x', B: 'y' } })
  assert.equal(env.stdout, 'x-y\n')
  assert.equal(env.exitCode, 0)
  const slow = await rejection(sdk.runTerminal(id, 'sleep 30', { timeoutMs: 500 }))
  assert.ok(slow instanceof TimeoutError, `${slow}`)
  const empty = await rejection(sdk.runTerminal(id, '   '))
  assert.equal(empty.code, 'INVALID_ARGUMENT')
})

test('a batch runs highest priority first, each job with its own timeout, and failures do not stop it', async () => {
  const streamed = []
  const jobs = [
    { id: 'low', code: 'print("low")', priority: 1 },
    { id: 'slow', code: 'import time; time.sleep(30)', priority: 5, timeout: 700 },
    { id: 'high', code: 'shared = "set by high"\nprint("high")', priority: 10 },
    { id: 'boom', code: 'raise RuntimeError("boom")', priority: 5 },
    { id: 'reads', code: 'print(globals().get("shared", "fresh kernel"))', priority: 2 },
    { id: 'shell', code: 'echo "$WHO"', language: 'bash', priority: 3, envs: { WHO: 'bash job' } },
  ]
  const r = await sdk.executeBatch(id, jobs, { onResult: (x) => streamed.push(x.jobId) })
  // Equal priorities keep the order they were given in.
  const order = ['high', 'slow', 'boom', 'shell', 'reads', 'low']
  assert.deepEqual(
    r.results.map((x) => x.jobId),
    order,
  )
  assert.deepEqual(streamed, order)
  const by = Object.fromEntries(r.results.map((x) => [x.jobId, x]))
  assert.equal(by.high.success, true)
  assert.equal(by.high.output, 'high\n')
  assert.equal(by.slow.success, false)
  assert.equal(by.slow.timedOut, true)
  assert.ok(by.slow.duration >= 600 && by.slow.duration < 10_000, `slow took ${by.slow.duration} ms`)
  assert.equal(by.boom.success, false)
  assert.match(by.boom.error, /RuntimeError/)
  assert.equal(by.shell.output, 'bash job\n')
  // The timed-out job restarted the python kernel: later jobs get a fresh one.
  assert.equal(by.reads.output, 'fresh kernel\n')
  assert.equal(by.low.success, true)
  assert.deepEqual(r.summary, { succeeded: 4, failed: 2, total: 6, durationMs: r.summary.durationMs })
  for (const x of r.results) assert.equal(typeof x.duration, 'number')
})

test('a bad batch is refused before any job runs', async () => {
  const dup = await rejection(
    sdk.executeBatch(id, [
      { id: 'a', code: 'open("/tmp/ran", "w").write("yes")' },
      { id: 'a', code: 'print(2)' },
    ]),
  )
  assert.ok(dup instanceof SandboxError, `${dup}`)
  assert.equal(dup.code, 'INVALID_ARGUMENT')
  assert.match(dup.message, /duplicate|more than once|twice/i)
  const ran = await sdk.runTerminal(id, 'test -e /tmp/ran && echo ran || echo not')
  assert.equal(ran.stdout, 'not\n')
  const empty = await rejection(sdk.executeBatch(id, []))
  assert.equal(empty.code, 'INVALID_ARGUMENT')
  const lang = await rejection(sdk.executeBatch(id, [{ id: 'x', code: '1', language: 'cobol' }]))
  assert.ok(lang instanceof SandboxError)
  const unknown = await rejection(sdk.executeBatch('nosuchsandbox00000000', [{ id: 'x', code: '1' }]))
  assert.equal(unknown.code, 'NOT_FOUND')
})

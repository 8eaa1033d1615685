// The official npm `@e2b/code-interpreter` SDK, unmodified, against airlock serve.
// Its default template, code-interpreter-v1, is built by the server on first
// use (IPython, numpy, pandas, matplotlib from PyPI); the first create waits.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { Sandbox } from '@e2b/code-interpreter'

import { killLater, runMetadata, useAirlockServer } from '../lib/helpers.mjs'

const server = useAirlockServer()
let sbx

before(async () => {
  await server.ready
  sbx = await Sandbox.create({ metadata: runMetadata({ suite: 'code-interpreter-js' }), requestTimeoutMs: 900_000 })
}, { timeout: 900_000 })

after(() => {
  if (sbx) killLater(sbx)
})

test('state persists and the last expression is the result', async () => {
  await sbx.runCode('x = 40')
  const ex = await sbx.runCode('x + 2')
  assert.equal(ex.error, undefined)
  assert.equal(ex.text, '42')
  assert.ok(ex.results[0].isMainResult)
})

test('stdout and stderr stream to callbacks', async () => {
  const out = []
  const err = []
  const ex = await sbx.runCode("import sys\nprint('out')\nprint('err', file=sys.stderr)", {
    onStdout: (m) => out.push(m.line),
    onStderr: (m) => err.push(m.line),
  })
  assert.equal(ex.error, undefined)
  assert.equal(out.join(''), 'out\n')
  assert.equal(err.join(''), 'err\n')
})

test('errors carry name, value and traceback', async () => {
  const ex = await sbx.runCode('1/0')
  assert.equal(ex.error.name, 'ZeroDivisionError')
  assert.match(ex.error.value, /division by zero/)
  assert.match(ex.error.traceback, /ZeroDivisionError/)
})

test('a matplotlib chart is a PNG and a DataFrame is HTML', async () => {
  const chart = await sbx.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()')
  const png = chart.results.find((r) => r.png)
  assert.ok(png, JSON.stringify(chart.results.map((r) => r.formats())))
  assert.equal(Buffer.from(png.png, 'base64').subarray(0, 4).toString('latin1'), '\x89PNG')
  const df = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1]})")
  assert.match(df.results[0].html, /<table/)
})

test('javascript and bash contexts keep their own state', async () => {
  const js = await sbx.createCodeContext({ language: 'js' })
  await sbx.runCode('let n = 5', { context: js })
  const r = await sbx.runCode('await Promise.resolve(n * 2)', { context: js })
  assert.equal(r.text, '10')
  const sh = await sbx.createCodeContext({ language: 'bash' })
  await sbx.runCode('cd /tmp && V=kept', { context: sh })
  const b = await sbx.runCode('echo "$V $(pwd)"', { context: sh })
  assert.equal(b.logs.stdout.join(''), 'kept /tmp\n')
  const contexts = await sbx.listCodeContexts()
  assert.ok(contexts.some((c) => c.id === js.id) && contexts.some((c) => c.id === sh.id))
  await sbx.removeCodeContext(js)
  assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === js.id))
})

test('per-execution env vars are reverted afterwards', async () => {
  const a = await sbx.runCode("import os\nos.environ.get('CI_JS_VAR')", { envs: { CI_JS_VAR: 'yes' } })
  assert.equal(a.text, 'yes')
  const b = await sbx.runCode("import os\nos.environ.get('CI_JS_VAR')")
  assert.equal(b.results.length, 0)
})

test('a timeout interrupts the execution and keeps the state', async () => {
  await sbx.runCode("kept = 'still here'")
  await assert.rejects(sbx.runCode('import time\ntime.sleep(30)', { timeoutMs: 2000 }))
  const r = await sbx.runCode('kept')
  assert.equal(r.text, 'still here')
})

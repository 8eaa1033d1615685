// The README's quick start, run as a user would: its own process, the
// package imported by name, the server from the environment.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { Server } from './helpers.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const example = path.join(root, 'examples', 'quickstart.mjs')
const srv = new Server()

before(() => srv.start())
after(() => srv.close())

test('the README shows the quick start as it is in examples/', () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8')
  assert.ok(readme.includes('```js\n' + fs.readFileSync(example, 'utf8') + '```'), 'README.md and examples/quickstart.mjs differ')
})

test('the quick start runs unchanged against Airlock', async () => {
  const { stdout, stderr } = await promisify(execFile)(process.execPath, [example], {
    cwd: root,
    env: { ...process.env, AIRLOCK_API_KEY: srv.key, AIRLOCK_URL: srv.url },
    timeout: 120_000,
  })
  assert.equal(stderr, '')
  assert.equal(
    stdout,
    [
      'hello 0',
      'hello 1',
      'hello 2',
      'result: 42',
      "logs: [ 'hello 0', 'hello 1', 'hello 2' ]",
      'terminal: 2 data.csv',
      'batch: first=true second=true',
      'metrics: 6 requests',
      '',
    ].join('\n'),
  )
  const left = await srv.api('GET', '/v2/sandboxes?state=running,paused')
  assert.deepEqual(left.body, [])
})

import { SandboxSDK, RateLimitError, SandboxSDKError } from '@airlock-sandbox/sdk'

const sdk = new SandboxSDK({
  apiKey: process.env.AIRLOCK_API_KEY,
  serverUrl: process.env.AIRLOCK_URL ?? 'http://127.0.0.1:3000',
  timeout: 30000,
  maxRetries: 3,
  enableLogging: false,
})

try {
  await sdk.waitForConnection(10000)
  const { sandbox } = await sdk.createSandbox({ templateId: 'python', name: 'quickstart', expiryTime: 600000 })

  const run = await sdk.runCode(sandbox.id, 'for i in range(3):\n    print("hello", i)\n40 + 2', {
    onStdout: (text) => process.stdout.write(text),
    onResult: (result) => console.log('result:', result.text),
  })
  console.log('logs:', run.execution.logs.stdout.join('').trim().split('\n'))

  await sdk.writeFile({ sandboxId: sandbox.id, path: '/home/user/data.csv', createParents: true }, 'a,b\n1,2\n')
  const ls = await sdk.runTerminal(sandbox.id, 'wc -l data.csv', { cwd: '/home/user' })
  console.log('terminal:', ls.stdout.trim())

  const batch = await sdk.executeBatch(sandbox.id, [
    { id: 'second', code: 'print("runs second")', priority: 1 },
    { id: 'first', code: 'print("runs first")', priority: 10 },
  ])
  console.log('batch:', batch.results.map((r) => `${r.jobId}=${r.success}`).join(' '))

  await sdk.deleteSandbox(sandbox.id)
  console.log('metrics:', sdk.getMetrics().totalRequests, 'requests')
} catch (e) {
  if (e instanceof RateLimitError) console.error(`rate limited; retry in ${e.retryAfter} ms`)
  else if (e instanceof SandboxSDKError) console.error(`${e.name} (${e.code}): ${e.message}`)
  else throw e
  process.exitCode = 1
} finally {
  sdk.disconnect()
}

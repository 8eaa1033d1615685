export { SandboxSDK } from './sdk.js'
export { SandboxSDKError, ConnectionError, TimeoutError, SandboxError, RateLimitError } from './errors.js'
export type * from './types.js'

// Builds the package in the current directory (each package's `npm run
// build`): ES modules and types with tsc, then CommonJS with a second tsc
// run, and marks dist/cjs as CommonJS for Node's resolver.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

const root = process.cwd()
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')
fs.rmSync(path.join(root, 'dist'), { recursive: true, force: true })
const run = (...args) => execFileSync(process.execPath, [tsc, ...args], { cwd: root, stdio: 'inherit' })
run('-p', 'tsconfig.json')
// The declarations are the same for both; the second run rewrites them unchanged.
run('-p', 'tsconfig.json', '--module', 'CommonJS', '--moduleResolution', 'Node10', '--outDir', 'dist/cjs')
fs.writeFileSync(path.join(root, 'dist', 'cjs', 'package.json'), JSON.stringify({ type: 'commonjs' }) + '\n')
fs.writeFileSync(path.join(root, 'dist', 'esm', 'package.json'), JSON.stringify({ type: 'module' }) + '\n')

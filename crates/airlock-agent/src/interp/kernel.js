// Airlock JavaScript kernel driver: a REPL evaluator (persistent top-level
// declarations, top-level await, the last expression's value), fed JSON
// lines on fd 4, answering on fd 3; console output goes to fd 1/2.
'use strict';
const fs = require('fs');
const repl = require('repl');
const readline = require('readline');
const util = require('util');
const { PassThrough } = require('stream');

function emit(obj) {
  fs.writeSync(3, JSON.stringify(obj) + '\n');
}

const server = repl.start({
  input: new PassThrough(),
  output: new PassThrough(),
  prompt: '',
  terminal: false,
  useGlobal: true,
  ignoreUndefined: true,
});
let count = 0;
const queue = [];
let busy = false;
// The REPL's evaluator runs inside a domain: a thrown error (or a rejected
// top-level await) is emitted on that domain instead of reaching the eval
// callback, so the running cell is finished from here in that case.
let finishCurrent = null;

function reportError(err) {
  const e = err instanceof Error ? err : new Error(String(err));
  const name = err instanceof repl.Recoverable ? 'SyntaxError' : (e.name || 'Error');
  emit({ type: 'error', name, value: e.message, traceback: e.stack || String(e) });
}

function next() {
  if (busy || queue.length === 0) return;
  busy = true;
  const req = queue.shift();
  const env = req.env || {};
  const saved = {};
  for (const k of Object.keys(env)) {
    saved[k] = process.env[k];
    process.env[k] = String(env[k]);
  }
  count += 1;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    finishCurrent = null;
    for (const k of Object.keys(saved)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
    // Let pending console writes reach the pipe before saying we are done.
    setImmediate(() => {
      emit({ type: 'done', execution_count: count });
      busy = false;
      next();
    });
  };
  finishCurrent = (err) => {
    reportError(err);
    finish();
  };
  try {
    server.eval(req.code || '', server.context, 'cell', (err, result) => {
      if (finished) return;
      if (err) {
        reportError(err);
      } else if (result !== undefined) {
        emit({ type: 'result', is_main_result: true, text: typeof result === 'string' ? result : util.inspect(result) });
      }
      finish();
    });
  } catch (e) {
    reportError(e);
    finish();
  }
}

if (server._domain) {
  server._domain.on('error', (err) => {
    if (finishCurrent) finishCurrent(err);
  });
}
process.on('uncaughtException', (err) => {
  if (finishCurrent) finishCurrent(err);
});

process.on('SIGINT', () => {
  // Interrupts land here; the evaluation itself cannot be stopped from JS,
  // so the agent falls back to restarting the kernel if it does not finish.
});

const rl = readline.createInterface({ input: fs.createReadStream(null, { fd: 4 }) });
rl.on('line', (line) => {
  try {
    queue.push(JSON.parse(line));
  } catch (_) {
    return;
  }
  next();
});
rl.on('close', () => process.exit(0));
emit({ type: 'ready' });

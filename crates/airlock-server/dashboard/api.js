// The dashboard's only way out: the control API with the key from this
// tab's sessionStorage (X-API-KEY; no cookie exists), and sandbox calls
// through the same origin with E2B's routing headers and the sandbox's
// access token, as the SDKs make them. Nothing here builds HTML.

const KEY = 'airlock.apiKey';

export const key = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(r) {
  let msg = `${r.status} ${r.statusText}`;
  try {
    const t = await r.text();
    try {
      const j = JSON.parse(t);
      msg = j.message || j.error || msg;
    } catch {
      if (t) msg = t.slice(0, 300);
    }
  } catch { /* the body is gone; the status says enough */ }
  return new ApiError(r.status, msg);
}

// One control-API call. `body` is sent as JSON; the answer is parsed as
// JSON when there is one. Rejects with ApiError on any non-2xx.
export async function api(method, path, body, opts = {}) {
  const headers = { 'X-API-KEY': opts.key ?? key.get() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: opts.signal });
  if (!r.ok) throw await errorOf(r);
  if (opts.raw) return r;
  const t = await r.text();
  return t ? JSON.parse(t) : null;
}

// Streams a response body as lines (NDJSON: one JSON value a line).
export async function* lines(r) {
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) yield line;
    }
  }
  if (buf.trim()) yield buf;
}

// Server-sent events over fetch (EventSource cannot send X-API-KEY):
// yields {event, data, id} per message.
export async function* sse(path, signal) {
  const r = await api('GET', path, undefined, { raw: true, signal });
  let ev = { event: 'message', data: [], id: '' };
  for await (const raw of linesKeepingBlank(r)) {
    if (raw === '') {
      if (ev.data.length) yield { event: ev.event, data: ev.data.join('\n'), id: ev.id };
      ev = { event: 'message', data: [], id: '' };
      continue;
    }
    if (raw.startsWith(':')) continue;
    const c = raw.indexOf(':');
    const field = c < 0 ? raw : raw.slice(0, c);
    const value = c < 0 ? '' : raw.slice(c + 1).replace(/^ /, '');
    if (field === 'data') ev.data.push(value);
    else if (field === 'event') ev.event = value;
    else if (field === 'id') ev.id = value;
  }
}

async function* linesKeepingBlank(r) {
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      yield buf.slice(0, i).replace(/\r$/, '');
      buf = buf.slice(i + 1);
    }
  }
}

// ------------------------------------------------------------ sandboxes

// What a sandbox call needs: its id and envd access token (from
// GET /sandboxes/{id}; absent for sandboxes made with secure: false).
function envdHeaders(sbx, extra = {}) {
  const h = { 'E2b-Sandbox-Id': sbx.sandboxID, 'E2b-Sandbox-Port': '49983', ...extra };
  if (sbx.envdAccessToken) h['X-Access-Token'] = sbx.envdAccessToken;
  return h;
}

// A unary envd (Connect, JSON) call: `rpc` is `process.Process/List`.
export async function envd(sbx, rpc, msg, signal) {
  const r = await fetch('/' + rpc, {
    method: 'POST',
    headers: envdHeaders(sbx, { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' }),
    body: JSON.stringify(msg),
    signal,
  });
  if (!r.ok) throw await errorOf(r);
  return r.json();
}

function envelope(obj) {
  const payload = new TextEncoder().encode(JSON.stringify(obj));
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

// A server-streaming envd call: yields each message; throws the
// end-of-stream error if there is one.
export async function* envdStream(sbx, rpc, msg, signal) {
  const r = await fetch('/' + rpc, {
    method: 'POST',
    headers: envdHeaders(sbx, { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1' }),
    body: envelope(msg),
    signal,
  });
  if (!r.ok) throw await errorOf(r);
  const reader = r.body.getReader();
  let buf = new Uint8Array(0);
  const dec = new TextDecoder();
  for (;;) {
    while (buf.length >= 5) {
      const len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
      if (buf.length < 5 + len) break;
      const flags = buf[0];
      const body = JSON.parse(dec.decode(buf.subarray(5, 5 + len)) || '{}');
      buf = buf.slice(5 + len);
      if (flags & 2) {
        if (body.error) throw new ApiError(0, body.error.message || body.error.code);
        return;
      }
      yield body;
    }
    const { value, done } = await reader.read();
    if (done) return;
    const next = new Uint8Array(buf.length + value.length);
    next.set(buf);
    next.set(value, buf.length);
    buf = next;
  }
}

export function b64encode(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function b64decode(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// Downloads a sandbox file as a Blob.
export async function download(sbx, path) {
  const r = await fetch('/files?' + new URLSearchParams({ path }), { headers: envdHeaders(sbx) });
  if (!r.ok) throw await errorOf(r);
  return r.blob();
}

// Uploads `file` to `path` (raw body), calling progress(sent, total).
// XMLHttpRequest because fetch reports no upload progress.
export function upload(sbx, path, file, progress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', '/files?' + new URLSearchParams({ path }));
    for (const [k, v] of Object.entries(envdHeaders(sbx, { 'Content-Type': 'application/octet-stream' }))) x.setRequestHeader(k, v);
    x.upload.onprogress = (e) => progress(e.loaded, e.total || file.size);
    x.onload = () => {
      if (x.status >= 200 && x.status < 300) return resolve(true);
      let msg = `${x.status}`;
      try { msg = JSON.parse(x.responseText).message || msg; } catch { /* not JSON */ }
      reject(new ApiError(x.status, msg));
    };
    x.onerror = () => reject(new ApiError(0, 'upload failed: the connection broke'));
    x.send(file);
  });
}

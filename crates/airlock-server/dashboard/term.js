// The terminal: xterm.js (vendored, loaded only when this tab opens) on
// envd's PTY API through this origin: Start with a pty streams output,
// SendInput carries keystrokes and pastes, Update resizes.
//
// xterm.js writes its generated CSS (cell sizes, theme colours) into
// <style> elements, which the dashboard's Content-Security-Policy refuses
// (style-src 'self', no 'unsafe-inline'). Rather than weakening the
// policy for every page, the elements xterm.js asks for are inert
// <xterm-style> ones (hidden by app.css; this app makes no <style> of its
// own) and their text goes into constructed style sheets, which the
// policy does not govern because no markup is parsed.

import { Terminal } from './vendor/xterm.mjs';
import { FitAddon } from './vendor/addon-fit.mjs';
import { envd, envdStream, b64encode, b64decode } from './api.js';

const create = document.createElement.bind(document);
document.createElement = (tag, opts) => create(String(tag).toLowerCase() === 'style' ? 'xterm-style' : tag, opts);

function mirrorStyles(root) {
  const sheets = new Map();
  const sync = (el) => {
    let s = sheets.get(el);
    if (!s) {
      s = new CSSStyleSheet();
      sheets.set(el, s);
      document.adoptedStyleSheets = [...document.adoptedStyleSheets, s];
    }
    s.replaceSync(el.textContent || '');
  };
  const scan = () => { for (const el of root.querySelectorAll('xterm-style')) sync(el); };
  const obs = new MutationObserver(scan);
  obs.observe(root, { childList: true, subtree: true, characterData: true });
  scan();
  return () => {
    obs.disconnect();
    const gone = new Set(sheets.values());
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !gone.has(s));
  };
}

let cssLoaded = false;
function loadCss() {
  if (cssLoaded) return;
  cssLoaded = true;
  const l = document.createElement('link');
  l.rel = 'stylesheet';
  l.href = '/dashboard/vendor/xterm.css';
  document.head.append(l);
}

export async function openTerminal(box, sbx, signal, say, panel) {
  loadCss();
  const unmirror = mirrorStyles(box);
  const term = new Terminal({ cursorBlink: true, fontSize: 13, fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace', scrollback: 5000, theme: { background: '#0d1117', foreground: '#e6edf3' } });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  try { fit.fit(); } catch { /* hidden: sized when shown */ }
  let pid = 0;
  const enc = new TextEncoder();
  const send = (data) => pid && envd(sbx, 'process.Process/SendInput', { process: { pid }, input: { pty: b64encode(enc.encode(data)) } }).catch((e) => say('Input failed: ' + e.message));
  term.onData(send);
  const resize = () => {
    try { fit.fit(); } catch { return; }
    if (pid) envd(sbx, 'process.Process/Update', { process: { pid }, pty: { size: { cols: term.cols, rows: term.rows } } }).catch(() => {});
  };
  const ro = new ResizeObserver(resize);
  ro.observe(box);
  panel.addEventListener('shown', () => { resize(); term.focus(); });
  signal.addEventListener('abort', () => {
    ro.disconnect();
    if (pid) envd(sbx, 'process.Process/SendSignal', { process: { pid }, signal: 'SIGNAL_SIGKILL' }).catch(() => {});
    term.dispose();
    unmirror();
  });
  term.focus();
  const start = { process: { cmd: '/bin/bash', args: ['-i', '-l'], envs: { TERM: 'xterm-256color', LANG: 'C.UTF-8' } }, pty: { size: { cols: term.cols, rows: term.rows } }, stdin: true };
  try {
    for await (const m of envdStream(sbx, 'process.Process/Start', start, signal)) {
      const ev = m.event || {};
      if (ev.start) {
        pid = ev.start.pid;
        box.dataset.pid = pid;
        say(`Shell running (pid ${pid}). Paste with Ctrl+Shift+V or the browser’s paste.`);
      } else if (ev.data?.pty) term.write(b64decode(ev.data.pty));
      else if (ev.end) {
        say(`The shell ended${ev.end.exitCode ? ` with exit code ${ev.end.exitCode}` : ''}${ev.end.error ? ': ' + ev.end.error : ''}. Reopen the page for a new one.`);
        pid = 0;
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') say('The terminal connection ended: ' + e.message);
  }
}

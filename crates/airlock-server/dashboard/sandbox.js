// One sandbox: details and actions, live CPU/memory/disk charts (history
// from GET /sandboxes/{id}/metrics, then its SSE stream), the followed
// log, processes, a file browser and a terminal (term.js).

import { api, sse, lines, envd, download, upload } from './api.js';
import { h, $, toast, attempt, ask, bytes, duration, pct, time, kv, every, sandboxAction } from './app.js';

const KEEP = 180; // points per chart

// A line chart in SVG (no canvas, no library): values 0..max.
function chart(id, label, max) {
  const W = 300, H = 80;
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('class', 'line');
  const area = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  area.setAttribute('class', 'area');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label + ' over time');
  svg.append(area, path);
  const value = h('span', { class: 'big', id: id + '-value' }, '–');
  const sub = h('span', { class: 'muted', id: id + '-sub' });
  const card = h('div', { class: 'card chart', id }, h('div', {}, h('span', { class: 'muted' }, label), ' ', value, ' ', sub), svg);
  const pts = [];
  return {
    card,
    push(v, text, subText, newMax) {
      if (newMax) max = newMax;
      pts.push(v);
      if (pts.length > KEEP) pts.shift();
      value.textContent = text;
      sub.textContent = subText || '';
      const step = W / (KEEP - 1);
      const x0 = W - (pts.length - 1) * step;
      const y = (p) => (H - 2 - (Math.min(p, max) / (max || 1)) * (H - 4)).toFixed(1);
      const d = pts.map((p, i) => `${i ? 'L' : 'M'}${(x0 + i * step).toFixed(1)},${y(p)}`).join('');
      path.setAttribute('d', d);
      area.setAttribute('d', `${d}L${W},${H}L${x0.toFixed(1)},${H}Z`);
      card.dataset.points = pts.length;
    },
  };
}

export async function sandboxPage(view, signal, id) {
  const path = '/sandboxes/' + encodeURIComponent(id);
  let sbx = await api('GET', path, undefined, { signal });
  const facts = h('dl', { class: 'facts', id: 'facts' });
  const head = h('div', { class: 'head' });
  const tabs = ['Overview', 'Logs', 'Processes', 'Files', 'Terminal'];
  const panels = Object.fromEntries(tabs.map((t) => [t, h('section', { id: 'panel-' + t.toLowerCase(), role: 'tabpanel', 'aria-labelledby': 'tab-' + t.toLowerCase(), hidden: true })]));
  const opened = new Set();
  const tablist = h('div', { role: 'tablist', class: 'tabs', 'aria-label': 'Sandbox' }, tabs.map((t) => h('button', { type: 'button', role: 'tab', id: 'tab-' + t.toLowerCase(), 'aria-controls': 'panel-' + t.toLowerCase(), onclick: () => show(t) }, t)));

  function show(t) {
    for (const x of tabs) {
      panels[x].hidden = x !== t;
      $('#tab-' + x.toLowerCase()).setAttribute('aria-selected', String(x === t));
    }
    history.replaceState(null, '', `#/sandbox/${encodeURIComponent(id)}/${t.toLowerCase()}`);
    if (!opened.has(t)) {
      opened.add(t);
      const open = { Logs: logsPanel, Processes: processesPanel, Files: filesPanel, Terminal: terminalPanel }[t];
      if (open) attempt('Opening ' + t, () => open(panels[t], sbx, signal));
    }
    if (t === 'Terminal') panels[t].dispatchEvent(new Event('shown'));
  }

  function drawHead() {
    const now = Date.now();
    head.replaceChildren(h('h1', {}, h('span', { class: 'mono', id: 'sandbox-id' }, sbx.sandboxID)), h('span', { class: 'badge ' + sbx.state, id: 'sandbox-state' }, sbx.state), h('span', { class: 'grow' }),
      ...['pause', 'resume', 'extend', 'snapshot', 'kill'].filter((a) => ({ pause: sbx.state === 'running', resume: sbx.state === 'paused', extend: sbx.state !== 'dead', snapshot: sbx.state === 'running' || sbx.state === 'paused', kill: sbx.state !== 'dead' })[a])
        .map((a) => h('button', { type: 'button', 'data-act': a, class: a === 'kill' ? 'danger' : '', onclick: () => act(a) }, a[0].toUpperCase() + a.slice(1))));
    facts.replaceChildren(...[['Template', sbx.templateID], ['Started', time(sbx.startedAt)], ['Ends', sbx.state === 'running' ? `${time(sbx.endAt)} (in ${duration(Date.parse(sbx.endAt) - now)})` : time(sbx.endAt)],
      ['At the timeout', sbx.lifecycle?.onTimeout], ['CPUs', sbx.cpuCount], ['Memory', `${sbx.memoryMB} MiB`], ['Disk', sbx.diskSizeMB ? `${sbx.diskSizeMB} MiB` : 'shared'], ['Internet', sbx.allowInternetAccess ? 'yes' : 'no'],
      ['Metadata', kv(sbx.metadata) || '–'], ['Cause of death', sbx.death]].filter(([, v]) => v !== undefined && v !== null).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]));
  }

  async function act(a) {
    if (a === 'snapshot') {
      const v = await ask('Name the snapshot (a template name sandboxes can start from):', [{ name: 'name', label: 'Name', value: `${id}-snap` }]);
      if (!v) return;
      await attempt('Snapshot', async () => { const s = await api('POST', path + '/snapshots', { name: v.name || undefined }); toast(`Snapshot ${s.snapshotID} taken`); });
      return;
    }
    if (await attempt(a, () => sandboxAction(id, a))) await reload();
  }

  async function reload() {
    try {
      sbx = { ...sbx, ...(await api('GET', path, undefined, { signal })) };
    } catch (e) {
      if (e.name === 'AbortError') return;
      sbx = { ...sbx, state: 'dead', death: e.message };
    }
    drawHead();
  }

  const cpu = chart('chart-cpu', 'CPU', 100), mem = chart('chart-mem', 'Memory', 1), disk = chart('chart-disk', 'Disk', 1);
  const sample = (m) => {
    cpu.push(m.cpuUsedPct, pct(m.cpuUsedPct), `of ${m.cpuCount} CPU${m.cpuCount === 1 ? '' : 's'}`);
    mem.push(m.memUsed, bytes(m.memUsed), `of ${bytes(m.memTotal)}`, m.memTotal);
    disk.push(m.diskUsed, bytes(m.diskUsed), m.diskTotal ? `of ${bytes(m.diskTotal)}` : '', m.diskTotal || Math.max(m.diskUsed * 2, 1));
  };
  panels.Overview.append(h('div', { class: 'cards charts' }, cpu.card, mem.card, disk.card), facts);
  view.append(h('p', { class: 'crumbs' }, h('a', { href: '#/sandboxes' }, 'Sandboxes'), ' / '), head, tablist, ...Object.values(panels));
  drawHead();
  const first = (location.hash.split('/')[3] || 'overview').toLowerCase();
  show(tabs.find((t) => t.toLowerCase() === first) || 'Overview');
  every(5000, reload, signal);

  // History (the last 10 minutes), then the live stream.
  const start = Math.floor(Date.now() / 1000) - 600;
  const past = await api('GET', `${path}/metrics?start=${start}`, undefined, { signal }).catch(() => []);
  for (const m of past.slice(-KEEP)) sample(m);
  if (sbx.state === 'running') {
    (async () => {
      for await (const m of sse(`${path}/metrics/stream?interval=1`, signal)) {
        if (m.event === 'metrics') sample(JSON.parse(m.data));
        if (m.event === 'end') { await reload(); break; }
      }
    })().catch((e) => { if (e.name !== 'AbortError') toast('The metrics stream ended: ' + e.message, true); });
  }
}

// ------------------------------------------------------------------ logs

// Terminal output in the log without its escape sequences (colours,
// titles, bracketed-paste switches) and other control characters.
// eslint-disable-next-line no-control-regex
const plain = (s) => s.replace(/\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]/g, '');

async function logsPanel(panel, sbx, signal) {
  const out = h('pre', { class: 'log', id: 'logs', tabindex: 0, 'aria-label': 'Log' });
  const level = h('select', { 'aria-label': 'Level' }, ['debug', 'info', 'warn', 'error'].map((l) => h('option', { value: l, selected: l === 'info' }, l)));
  panel.append(h('div', { class: 'filters' }, level, h('span', { class: 'muted' }, 'the set-up log, every execution with its output, lifecycle events; following live')), out);
  let ctl;
  async function follow() {
    ctl?.abort();
    ctl = new AbortController();
    signal.addEventListener('abort', () => ctl.abort());
    out.replaceChildren();
    const r = await api('GET', `/sandboxes/${encodeURIComponent(sbx.sandboxID)}/logs?` + new URLSearchParams({ follow: 'true', lines: '500', level: level.value }), undefined, { raw: true, signal: ctl.signal });
    for await (const line of lines(r)) {
      const e = JSON.parse(line);
      const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      out.append(h('span', { class: 'lvl-' + e.level }, `${e.timestamp.slice(11, 23)} ${e.source.padEnd(9)} ${plain(e.message)}${e.exitCode !== undefined ? ` (exit ${e.exitCode}, ${e.durationMs} ms)` : ''}\n`));
      while (out.childNodes.length > 3000) out.firstChild.remove();
      if (stick) out.scrollTop = out.scrollHeight;
    }
    out.append(h('span', { class: 'muted' }, '— the sandbox stopped running; the log ends here —\n'));
  }
  level.onchange = () => attempt('Following the log', follow);
  attempt('Following the log', follow);
}

// ------------------------------------------------------------- processes

async function processesPanel(panel, sbx, signal) {
  const tbody = h('tbody', { id: 'process-rows' });
  panel.append(h('div', { class: 'filters' }, h('button', { type: 'button', onclick: () => attempt('Listing processes', refresh) }, 'Refresh')),
    h('div', { class: 'scroll' }, h('table', { id: 'processes' }, h('thead', {}, h('tr', {}, ['PID', 'Command', 'Tag', 'Directory', ''].map((c) => h('th', { scope: 'col' }, c)))), tbody)));
  async function refresh() {
    const r = await envd(sbx, 'process.Process/List', {}, signal);
    const ps = (r.processes || []).sort((a, b) => a.pid - b.pid);
    tbody.replaceChildren(...(ps.length ? ps.map((p) => h('tr', {}, h('td', { class: 'num' }, p.pid), h('td', { class: 'mono' }, [p.config.cmd, ...(p.config.args || [])].join(' ')), h('td', {}, p.tag || ''), h('td', { class: 'mono' }, p.config.cwd || ''),
      h('td', {}, h('button', { type: 'button', class: 'small danger', 'aria-label': 'Kill process ' + p.pid, onclick: async () => { if (await ask(`Kill process ${p.pid}?`)) await attempt('Killing the process', async () => { await envd(sbx, 'process.Process/SendSignal', { process: { pid: p.pid }, signal: 'SIGNAL_SIGKILL' }); await refresh(); }); } }, 'Kill'))))
      : [h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No processes started through the API are running.'))]));
  }
  await refresh();
  every(5000, () => refresh().catch(() => {}), signal);
}

// ----------------------------------------------------------------- files

async function filesPanel(panel, sbx, signal) {
  let dir = '/home/user';
  const where = h('input', { id: 'f-path', class: 'mono', 'aria-label': 'Directory', value: dir });
  const pick = h('input', { id: 'f-upload', type: 'file', multiple: true, 'aria-label': 'Upload files' });
  const progress = h('progress', { id: 'f-progress', max: 1, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  const status = h('span', { id: 'f-status', class: 'muted', role: 'status' });
  const tbody = h('tbody', { id: 'file-rows' });
  panel.append(
    h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); go(where.value.trim() || '/'); } }, h('button', { type: 'button', 'aria-label': 'Parent directory', onclick: () => go(parent(dir)) }, '↑'), where, h('button', { type: 'submit' }, 'Open'), h('label', { class: 'button' }, 'Upload…', pick), progress, status),
    h('div', { class: 'scroll' }, h('table', { id: 'files' }, h('thead', {}, h('tr', {}, ['Name', 'Size', 'Mode', 'Owner', 'Modified', ''].map((c) => h('th', { scope: 'col' }, c)))), tbody)));
  const parent = (p) => p.replace(/\/[^/]*\/?$/, '') || '/';
  const join = (d, n) => (d.endsWith('/') ? d : d + '/') + n;

  async function go(d) {
    const r = await attempt('Listing ' + d, () => envd(sbx, 'filesystem.Filesystem/ListDir', { path: d, depth: 1 }, signal));
    if (!r) return;
    dir = d;
    where.value = d;
    const entries = (r.entries || []).sort((a, b) => (b.type === 'FILE_TYPE_DIRECTORY') - (a.type === 'FILE_TYPE_DIRECTORY') || a.name.localeCompare(b.name));
    tbody.replaceChildren(...(entries.length ? entries.map((e) => {
      const isDir = e.type === 'FILE_TYPE_DIRECTORY';
      return h('tr', { 'data-path': e.path },
        h('td', {}, isDir ? h('a', { href: '#', class: 'dir', onclick: (ev) => { ev.preventDefault(); go(e.path); } }, e.name + '/') : h('span', { class: 'mono' }, e.name + (e.symlinkTarget ? ` → ${e.symlinkTarget}` : ''))),
        h('td', { class: 'num' }, isDir ? '' : bytes(Number(e.size))), h('td', { class: 'mono' }, e.permissions), h('td', {}, `${e.owner}:${e.group}`), h('td', {}, time(e.modifiedTime)),
        h('td', { class: 'actions' }, !isDir && h('button', { type: 'button', class: 'small', 'data-act': 'download', 'aria-label': 'Download ' + e.name, onclick: () => save(e) }, 'Download'),
          h('button', { type: 'button', class: 'small danger', 'data-act': 'delete', 'aria-label': 'Delete ' + e.name, onclick: () => remove(e) }, 'Delete')));
    }) : [h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'An empty directory.'))]));
  }

  async function save(e) {
    await attempt('Downloading ' + e.name, async () => {
      const blob = await download(sbx, e.path);
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: e.name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    });
  }

  async function remove(e) {
    if (!(await ask(`Delete ${e.path}${e.type === 'FILE_TYPE_DIRECTORY' ? ' and everything in it' : ''}?`))) return;
    await attempt('Deleting ' + e.name, async () => { await envd(sbx, 'filesystem.Filesystem/Remove', { path: e.path }); toast(`Deleted ${e.path}`); await go(dir); });
  }

  pick.onchange = async () => {
    const files = [...pick.files];
    pick.value = '';
    const total = files.reduce((n, f) => n + f.size, 0) || 1;
    let done = 0;
    progress.hidden = false;
    for (const f of files) {
      status.textContent = `Uploading ${f.name}…`;
      const ok = await attempt('Uploading ' + f.name, () => upload(sbx, join(dir, f.name), f, (sent) => { progress.value = (done + sent) / total; }));
      done += f.size;
      if (!ok) { status.textContent = `Uploading ${f.name} failed`; break; }
      progress.value = done / total;
      status.textContent = `Uploaded ${f.name}`;
    }
    setTimeout(() => { progress.hidden = true; }, 1500);
    await go(dir);
  };
  await go(dir);
}

// -------------------------------------------------------------- terminal

async function terminalPanel(panel, sbx, signal) {
  const box = h('div', { id: 'terminal', class: 'terminal' });
  const status = h('span', { id: 'term-status', class: 'muted', role: 'status' }, 'Starting a shell…');
  panel.append(h('div', { class: 'filters' }, status), box);
  const { openTerminal } = await import('./term.js');
  await openTerminal(box, sbx, signal, (s) => { status.textContent = s; }, panel);
}

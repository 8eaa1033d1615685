// The dashboard's shell: sign-in, hash routing, and every page but the
// sandbox page (sandbox.js). DOM is built with h(), which sets text as
// text: names, metadata and file names come from sandboxes and are never
// parsed as HTML.

import { api, key, sse, lines, ApiError } from './api.js';

export function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function toast(msg, bad = false) {
  const t = $('#toast');
  t.textContent = msg;
  t.className = bad ? 'show bad' : 'show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ''; }, bad ? 8000 : 3000);
}

// Runs an action, reporting its failure instead of throwing.
export async function attempt(what, f) {
  try {
    return await f();
  } catch (e) {
    if (e.name === 'AbortError') return undefined;
    if (e instanceof ApiError && e.status === 401) return signOut('The API key was refused: sign in again.');
    toast(`${what}: ${e.message}`, true);
    return undefined;
  }
}

// An in-page confirmation (native dialogs block pages and tests alike).
// `fields` are extra inputs; resolves to their values, or null.
export function ask(text, fields = []) {
  const d = $('#ask');
  $('#ask-text').textContent = text;
  const extra = $('#ask-extra');
  extra.replaceChildren(...fields.map((f) => h('label', {}, f.label, h('input', { id: 'ask-' + f.name, name: f.name, value: f.value ?? '', type: f.type || 'text', inputmode: f.inputmode }))));
  d.showModal();
  return new Promise((resolve) => {
    const done = (ok) => {
      d.close();
      $('#ask-form').onsubmit = null;
      $('#ask-cancel').onclick = null;
      d.oncancel = null;
      resolve(ok ? Object.fromEntries(fields.map((f) => [f.name, $('#ask-' + f.name).value])) : null);
    };
    $('#ask-form').onsubmit = (e) => { e.preventDefault(); done(true); };
    $('#ask-cancel').onclick = () => done(false);
    d.oncancel = () => done(false);
  });
}

// ------------------------------------------------------------ formatting

export function bytes(n) {
  if (n === undefined || n === null || isNaN(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${u[i]}`;
}

export function duration(ms) {
  if (!isFinite(ms)) return '–';
  const neg = ms < 0;
  let s = Math.round(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const out = d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  return neg ? '-' + out : out;
}

export const pct = (x) => (x === undefined || x === null ? '–' : `${x.toFixed(1)}%`);
export const time = (iso) => (iso ? new Date(iso).toLocaleString() : '–');

export function kv(obj) {
  const e = Object.entries(obj || {});
  return e.length ? e.map(([k, v]) => `${k}=${v}`).join(' ') : '';
}

// Parses `K=V` lines (or comma-separated pairs) into an object.
export function parseKv(text) {
  const out = {};
  for (const part of text.split(/[\n,]/)) {
    const t = part.trim();
    if (!t) continue;
    const i = t.indexOf('=');
    if (i <= 0) throw new Error(`"${t}" is not KEY=VALUE`);
    out[t.slice(0, i).trim()] = t.slice(i + 1).trim();
  }
  return out;
}

function table(cols, rows, attrs = {}) {
  return h('div', { class: 'scroll' }, h('table', attrs, h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))), h('tbody', {}, rows)));
}

const empty = (n, text) => h('tr', {}, h('td', { colspan: n, class: 'muted' }, text));

// --------------------------------------------------------------- routing

// Each page gets an AbortSignal that fires when the user leaves it, so
// its streams and timers end with it.
let leave = new AbortController();

export function every(ms, f, signal) {
  const t = setInterval(f, ms);
  signal.addEventListener('abort', () => clearInterval(t));
}

const pages = {
  sandboxes: sandboxesPage,
  sandbox: (view, signal, id) => import('./sandbox.js').then((m) => m.sandboxPage(view, signal, id)),
  templates: templatesPage,
  template: templatePage,
  snapshots: snapshotsPage,
  volumes: volumesPage,
  events: eventsPage,
  webhooks: webhooksPage,
  pools: poolsPage,
  server: serverPage,
};

async function route() {
  leave.abort();
  leave = new AbortController();
  const signed = !!key.get();
  $('#signin-view').hidden = signed;
  $('#nav').hidden = !signed;
  $('#signout').hidden = !signed;
  const view = $('#view');
  view.replaceChildren();
  if (!signed) {
    $('#key').focus();
    return;
  }
  const [name, ...args] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const page = pages[name] || pages.sandboxes;
  for (const a of document.querySelectorAll('#nav a')) {
    const here = a.getAttribute('href') === '#/' + (name === 'sandbox' ? 'sandboxes' : name === 'template' ? 'templates' : name || 'sandboxes');
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  await attempt('Loading the page', () => page(view, leave.signal, ...args));
}

function signOut(message) {
  key.clear();
  $('#signin-error').textContent = message || '';
  location.hash = '#/sandboxes';
  route();
}

async function signIn(e) {
  e.preventDefault();
  const k = $('#key').value.trim();
  const err = $('#signin-error');
  err.textContent = '';
  try {
    await api('GET', '/health/details', undefined, { key: k });
  } catch (x) {
    err.textContent = x.status === 401 ? 'That API key is not valid on this server.' : `The server could not be reached: ${x.message}`;
    return;
  }
  key.set(k);
  $('#key').value = '';
  route();
}

// ------------------------------------------------------------- sandboxes

function stateBadge(s) {
  return h('span', { class: 'badge ' + s }, s);
}

export async function sandboxAction(id, act) {
  const path = `/sandboxes/${encodeURIComponent(id)}`;
  if (act === 'kill') {
    if (!(await ask(`Kill sandbox ${id}? Its processes and files are gone for good.`))) return false;
    await api('DELETE', path);
    toast(`Killed ${id}`);
  } else if (act === 'pause') {
    await api('POST', path + '/pause', {});
    toast(`Paused ${id}`);
  } else if (act === 'resume') {
    await api('POST', path + '/resume', {});
    toast(`Resumed ${id}`);
  } else if (act === 'extend') {
    const v = await ask(`Set the time left for ${id}, from now:`, [{ name: 'timeout', label: 'Seconds', value: '600', type: 'number', inputmode: 'numeric' }]);
    if (!v) return false;
    await api('POST', path + '/timeout', { timeout: Number(v.timeout) });
    toast(`${id} now ends in ${duration(Number(v.timeout) * 1000)}`);
  }
  return true;
}

function actions(s, after) {
  const b = (act, label, show) => show && h('button', { type: 'button', class: 'small' + (act === 'kill' ? ' danger' : ''), 'data-act': act, 'aria-label': `${label} ${s.sandboxID}`, onclick: async (e) => { e.stopPropagation(); if (await attempt(label, () => sandboxAction(s.sandboxID, act))) after(); } }, label);
  return h('span', { class: 'actions' }, b('pause', 'Pause', s.state === 'running'), b('resume', 'Resume', s.state === 'paused'), b('extend', 'Extend', s.state === 'running' || s.state === 'paused'), b('kill', 'Kill', s.state !== 'dead'));
}

async function sandboxesPage(view, signal) {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const state = h('select', { id: 'f-state', 'aria-label': 'State' }, ['running,paused', 'running', 'paused', 'dead'].map((s) => h('option', { value: s, selected: q.get('state') === s }, s === 'running,paused' ? 'running or paused' : s)));
  const template = h('select', { id: 'f-template', 'aria-label': 'Template' }, h('option', { value: '' }, 'any template'));
  const search = h('input', { id: 'f-search', type: 'search', placeholder: 'Search id, template, metadata', 'aria-label': 'Search' });
  const selected = new Set();
  const bulk = h('button', { type: 'button', id: 'bulk-kill', class: 'danger', disabled: true, onclick: bulkKill }, 'Kill selected');
  const tbody = h('tbody', { id: 'sandbox-rows' });
  const total = h('span', { class: 'muted', id: 'sandbox-total' });
  let list = [];
  let metrics = {};

  view.append(
    h('div', { class: 'head' }, h('h1', {}, 'Sandboxes'), total, h('span', { class: 'grow' }), bulk, h('button', { type: 'button', id: 'new-sandbox', onclick: () => createDialog(refresh) }, 'New sandbox')),
    h('div', { class: 'filters' }, state, template, search),
    h('div', { class: 'scroll' }, h('table', { id: 'sandboxes' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, h('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'Select all', onchange: (e) => { for (const s of shown()) e.target.checked ? selected.add(s.sandboxID) : selected.delete(s.sandboxID); draw(); } })),
        ['Sandbox', 'State', 'Template', 'Age', 'Time left', 'CPU', 'Memory', 'Metadata', ''].map((c) => h('th', { scope: 'col' }, c)))),
      tbody)),
  );

  function shown() {
    const t = template.value, s = search.value.trim().toLowerCase();
    return list.filter((x) => (!t || x.templateID === t) && (!s || [x.sandboxID, x.templateID, x.alias, kv(x.metadata)].join(' ').toLowerCase().includes(s)));
  }

  function draw() {
    const now = Date.now();
    const rows = shown().map((s) => {
      const m = metrics[s.sandboxID];
      return h('tr', { 'data-id': s.sandboxID, class: 'link', onclick: () => { location.hash = '#/sandbox/' + encodeURIComponent(s.sandboxID); } },
        h('td', { onclick: (e) => e.stopPropagation() }, h('input', { type: 'checkbox', 'aria-label': 'Select ' + s.sandboxID, checked: selected.has(s.sandboxID), onchange: (e) => { e.target.checked ? selected.add(s.sandboxID) : selected.delete(s.sandboxID); bulk.disabled = !selected.size; } })),
        h('td', {}, h('a', { href: '#/sandbox/' + encodeURIComponent(s.sandboxID), class: 'mono', onclick: (e) => e.stopPropagation() }, s.sandboxID)),
        h('td', {}, stateBadge(s.state)),
        h('td', {}, s.templateID),
        h('td', {}, duration(now - Date.parse(s.startedAt))),
        h('td', {}, s.state === 'running' ? duration(Date.parse(s.endAt) - now) : '–'),
        h('td', { class: 'num' }, m ? pct(m.cpuUsedPct) : '–', h('span', { class: 'muted' }, ` of ${s.cpuCount}`)),
        h('td', { class: 'num' }, m ? bytes(m.memUsed) : '–', h('span', { class: 'muted' }, ` of ${s.memoryMB} MiB`)),
        h('td', { class: 'meta' }, kv(s.metadata)),
        h('td', {}, actions(s, refresh)));
    });
    tbody.replaceChildren(...(rows.length ? rows : [empty(10, list.length ? 'Nothing matches the filters.' : 'No sandboxes. Create one with “New sandbox”.')]));
    for (const id of [...selected]) if (!list.some((s) => s.sandboxID === id)) selected.delete(id);
    bulk.disabled = !selected.size;
  }

  async function refresh() {
    const r = await api('GET', '/v2/sandboxes?' + new URLSearchParams({ state: state.value, limit: '100' }), undefined, { raw: true, signal });
    list = await r.json();
    total.textContent = `${list.length} shown, ${r.headers.get('x-total-running') ?? '?'} running`;
    const templates = [...new Set(list.map((s) => s.templateID))].sort();
    const cur = template.value;
    template.replaceChildren(h('option', { value: '' }, 'any template'), ...templates.map((t) => h('option', { value: t, selected: t === cur }, t)));
    const running = list.filter((s) => s.state === 'running').map((s) => s.sandboxID).slice(0, 100);
    if (running.length) {
      const m = await api('GET', '/sandboxes/metrics?' + new URLSearchParams({ sandbox_ids: running.join(',') }), undefined, { signal }).catch(() => null);
      metrics = (m && m.sandboxes) || {};
    }
    draw();
  }

  async function bulkKill() {
    const ids = [...selected];
    if (!(await ask(`Kill ${ids.length} sandbox${ids.length === 1 ? '' : 'es'}? ${ids.join(', ')}`))) return;
    const results = await Promise.allSettled(ids.map((id) => api('DELETE', `/sandboxes/${encodeURIComponent(id)}`)));
    const failed = results.filter((r) => r.status === 'rejected');
    selected.clear();
    toast(failed.length ? `${failed.length} of ${ids.length} could not be killed: ${failed[0].reason.message}` : `Killed ${ids.length}`, failed.length > 0);
    refresh();
  }

  state.onchange = () => attempt('Listing sandboxes', refresh);
  template.onchange = draw;
  search.oninput = draw;
  await refresh();
  every(2000, () => attempt('Listing sandboxes', refresh), signal);
}

async function createDialog(after) {
  const templates = await attempt('Listing templates', () => api('GET', '/templates'));
  if (!templates) return;
  const d = h('dialog', { id: 'create', 'aria-labelledby': 'create-title' });
  const field = (label, input) => h('label', {}, label, input);
  const form = h('form', { id: 'create-form' },
    h('h2', { id: 'create-title' }, 'New sandbox'),
    field('Template', h('select', { id: 'c-template', name: 'template' }, templates.map((t) => h('option', { value: t.name, selected: t.name === 'base' }, t.name)))),
    h('div', { class: 'row' },
      field('Timeout (s)', h('input', { id: 'c-timeout', name: 'timeout', type: 'number', min: 1, value: 300 })),
      field('CPUs', h('input', { id: 'c-cpus', name: 'cpus', type: 'number', min: 0.1, step: 0.1, placeholder: 'default' })),
      field('Memory (MiB)', h('input', { id: 'c-memory', name: 'memory', type: 'number', min: 16, placeholder: 'default' })),
      field('Disk (MiB)', h('input', { id: 'c-disk', name: 'disk', type: 'number', min: 0, placeholder: 'default' }))),
    field('Environment (KEY=VALUE a line)', h('textarea', { id: 'c-envs', name: 'envs', rows: 2 })),
    field('Metadata (KEY=VALUE a line)', h('textarea', { id: 'c-metadata', name: 'metadata', rows: 2 })),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', id: 'c-autopause', name: 'autopause' }), 'Pause at the timeout instead of killing'),
    h('p', { class: 'error', role: 'alert', id: 'c-error' }),
    h('div', { class: 'row end' }, h('button', { type: 'button', class: 'ghost', onclick: () => d.close() }, 'Cancel'), h('button', { type: 'submit', id: 'c-submit' }, 'Create')));
  d.append(form);
  d.addEventListener('close', () => d.remove());
  document.body.append(d);
  d.showModal();
  form.onsubmit = async (e) => {
    e.preventDefault();
    const v = (id) => $('#' + id, form).value.trim();
    const body = { templateID: v('c-template'), timeout: Number(v('c-timeout')) || 300, autoPause: $('#c-autopause', form).checked };
    try {
      if (v('c-cpus')) body.cpuCount = Number(v('c-cpus'));
      if (v('c-memory')) body.memoryMB = Number(v('c-memory'));
      if (v('c-disk')) body.diskMB = Number(v('c-disk'));
      body.envVars = parseKv(v('c-envs'));
      body.metadata = parseKv(v('c-metadata'));
    } catch (x) {
      $('#c-error', form).textContent = x.message;
      return;
    }
    $('#c-submit', form).disabled = true;
    $('#c-submit', form).textContent = 'Creating…';
    try {
      const s = await api('POST', '/v2/sandboxes', body);
      d.close();
      toast(`Created ${s.sandboxID}`);
      after();
    } catch (x) {
      $('#c-error', form).textContent = x.message;
      $('#c-submit', form).disabled = false;
      $('#c-submit', form).textContent = 'Create';
    }
  };
}

// ------------------------------------------------------------- templates

async function templatesPage(view, signal) {
  const list = await api('GET', '/templates', undefined, { signal });
  const recipe = h('textarea', { id: 'b-recipe', rows: 8, spellcheck: 'false', 'aria-label': 'Recipe', placeholder: 'FROM base\nRUN echo hello > /hello' });
  const name = h('input', { id: 'b-name', required: true, placeholder: 'my-template', 'aria-label': 'Template name' });
  const log = h('pre', { id: 'build-log', class: 'log', 'aria-live': 'polite', hidden: true });
  const button = h('button', { type: 'submit', id: 'b-submit' }, 'Build');
  view.append(
    h('div', { class: 'head' }, h('h1', {}, 'Templates')),
    table(['Name', 'Aliases', 'Layers', 'Size', 'Created', 'Snapshot of'], list.length ? list.map((t) =>
      h('tr', { class: 'link', onclick: () => { location.hash = '#/template/' + encodeURIComponent(t.name); } },
        h('td', {}, h('a', { href: '#/template/' + encodeURIComponent(t.name), onclick: (e) => e.stopPropagation() }, t.name)), h('td', {}, (t.aliases || []).join(', ')), h('td', { class: 'num' }, t.layers), h('td', { class: 'num' }, bytes(t.sizeBytes)), h('td', {}, time(t.createdAt)), h('td', {}, t.snapshot?.sandboxID || ''))) : [empty(6, 'No templates.')], { id: 'templates' }),
    h('h2', {}, 'Build a template'),
    h('form', { id: 'build', onsubmit: build }, h('label', {}, 'Name', name), h('label', {}, 'Recipe (FROM, RUN, COPY, ENV, WORKDIR, USER, START, READY)', recipe), h('div', { class: 'row end' }, button)),
    log,
  );
  async function build(e) {
    e.preventDefault();
    button.disabled = true;
    log.hidden = false;
    log.textContent = '';
    const say = (t, cls) => { log.append(h('span', { class: cls }, t + '\n')); log.scrollTop = log.scrollHeight; };
    try {
      const r = await api('POST', '/templates', { name: name.value.trim(), recipe: recipe.value }, { raw: true, signal });
      for await (const line of lines(r)) {
        const ev = JSON.parse(line);
        if (ev.type === 'step') say(`Step ${ev.step}/${ev.total}: ${ev.text}${ev.cached ? ' (cached)' : ''}`, 'step');
        else if (ev.type === 'log') say(ev.text, ev.stderr ? 'stderr' : '');
        else if (ev.type === 'done') { say(`Built ${ev.name} (${bytes(ev.size_bytes)}) in ${duration(ev.elapsed_ms)}`, 'ok'); toast(`Built ${ev.name}`); }
        else if (ev.type === 'error') say(`Error: ${ev.message}`, 'stderr');
      }
    } catch (x) {
      if (x.name !== 'AbortError') say(`Error: ${x.message}`, 'stderr');
    } finally {
      button.disabled = false;
    }
  }
}

async function templatePage(view, signal, name) {
  const t = await api('GET', '/templates/' + encodeURIComponent(name), undefined, { signal });
  const dl = (pairs) => h('dl', { class: 'facts' }, pairs.filter(([, v]) => v !== undefined && v !== '' && v !== null).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  view.append(
    h('div', { class: 'head' }, h('h1', {}, 'Template ', h('span', { class: 'mono' }, t.name)), h('span', { class: 'grow' }),
      h('button', { type: 'button', class: 'danger', onclick: async () => { if (await ask(`Delete template ${t.name}?`)) { await attempt('Deleting', async () => { await api('DELETE', '/templates/' + encodeURIComponent(t.name)); location.hash = '#/templates'; }); } } }, 'Delete')),
    dl([['ID', t.templateID], ['Aliases', (t.aliases || []).join(', ')], ['Digest', h('span', { class: 'mono' }, t.digest)], ['Layers', t.layers], ['Size', bytes(t.sizeBytes)], ['Created', time(t.createdAt)],
      ['User', t.defaultUser], ['Workdir', t.workdir], ['Start command', t.startCmd && h('code', {}, t.startCmd)], ['Ready command', t.readyCmd && h('code', {}, t.readyCmd)], ['Environment', kv(t.env)],
      ['Snapshot of', t.snapshot && JSON.stringify(t.snapshot)]]),
  );
}

// ------------------------------------------------ snapshots and volumes

async function snapshotsPage(view, signal) {
  const list = await api('GET', '/snapshots', undefined, { signal });
  view.append(h('div', { class: 'head' }, h('h1', {}, 'Snapshots')),
    h('p', { class: 'hint' }, 'A snapshot is a template: start sandboxes from it by name. Take one from a sandbox’s page.'),
    table(['Snapshot', 'Names', 'Of sandbox', 'Mode', 'Size', 'Taken'], list.length ? list.map((s) => h('tr', {}, h('td', { class: 'mono' }, s.snapshotID), h('td', {}, (s.names || []).join(', ')), h('td', { class: 'mono' }, s.sandboxID || ''), h('td', {}, s.mode), h('td', { class: 'num' }, bytes(s.sizeBytes)), h('td', {}, time(s.createdAt)))) : [empty(6, 'No snapshots.')]));
}

async function volumesPage(view, signal) {
  const list = await api('GET', '/volumes', undefined, { signal });
  const name = h('input', { id: 'v-name', required: true, 'aria-label': 'Volume name', placeholder: 'name' });
  view.append(h('div', { class: 'head' }, h('h1', {}, 'Volumes')),
    table(['Volume', 'Name', 'Size limit', 'Created', ''], list.length ? list.map((v) => h('tr', {}, h('td', { class: 'mono' }, v.volumeID), h('td', {}, v.name), h('td', { class: 'num' }, v.sizeMB ? `${v.sizeMB} MiB${v.limitEnforced ? '' : ' (not enforced)'}` : '–'), h('td', {}, time(v.createdAt)),
      h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: async () => { if (await ask(`Delete volume ${v.name} and its files?`)) await attempt('Deleting the volume', async () => { await api('DELETE', '/volumes/' + encodeURIComponent(v.volumeID)); route(); }); } }, 'Delete')))) : [empty(5, 'No volumes.')]),
    h('form', { class: 'inline', onsubmit: async (e) => { e.preventDefault(); await attempt('Creating the volume', async () => { await api('POST', '/volumes', { name: name.value.trim() }); route(); }); } }, name, h('button', { type: 'submit' }, 'Create volume')));
}

// --------------------------------------------------------------- events

export function eventRow(e) {
  const type = e.airlockType || e.type;
  const id = e.sandboxId || e.sandboxID;
  const data = e.eventData ?? e.data;
  return h('tr', { 'data-event': e.id }, h('td', { class: 'num' }, e.id), h('td', {}, time(e.timestamp)), h('td', {}, h('span', { class: 'badge ' + type }, type)),
    h('td', {}, h('a', { class: 'mono', href: '#/sandbox/' + encodeURIComponent(id) }, id)), h('td', { class: 'meta' }, data && Object.keys(data).length ? JSON.stringify(data) : ''));
}

async function eventsPage(view, signal) {
  const all = 'created,ready,error,paused,resumed,timeout,timeout_changed,snapshot,reset,restarted,resources_changed,configured,resource_alert,oom,died,killed,destroyed';
  const past = await api('GET', '/events/sandboxes?' + new URLSearchParams({ limit: '100', types: all }), undefined, { signal });
  const tbody = h('tbody', { id: 'event-rows' }, past.map(eventRow));
  view.append(h('div', { class: 'head' }, h('h1', {}, 'Events'), h('span', { class: 'muted' }, 'newest first, live')),
    h('div', { class: 'scroll' }, h('table', { id: 'events' }, h('thead', {}, h('tr', {}, ['#', 'When', 'Type', 'Sandbox', 'Data'].map((c) => h('th', { scope: 'col' }, c)))), tbody)));
  const last = past.reduce((m, e) => Math.max(m, Number(e.id)), 0);
  (async () => {
    for await (const m of sse('/events?' + new URLSearchParams({ lastEventId: String(last) }), signal)) {
      if (!m.data) continue;
      tbody.prepend(eventRow(JSON.parse(m.data)));
      while (tbody.children.length > 500) tbody.lastChild.remove();
    }
  })().catch((e) => { if (e.name !== 'AbortError') toast('The event stream ended: ' + e.message, true); });
}

// ------------------------------------------------------------- webhooks

async function webhooksPage(view, signal) {
  const list = await api('GET', '/webhooks', undefined, { signal });
  const f = { url: h('input', { id: 'w-url', type: 'url', required: true, placeholder: 'http://receiver:8080/hook', 'aria-label': 'URL' }), name: h('input', { id: 'w-name', placeholder: 'name', 'aria-label': 'Name' }), events: h('input', { id: 'w-events', placeholder: 'all events, or ready,killed,…', 'aria-label': 'Events' }), secret: h('input', { id: 'w-secret', type: 'password', placeholder: 'signing secret (optional)', 'aria-label': 'Secret', autocomplete: 'off' }) };
  view.append(h('div', { class: 'head' }, h('h1', {}, 'Webhooks')),
    table(['Webhook', 'URL', 'Events', 'Enabled', 'Delivered', 'Failed', 'Last error', ''], list.length ? list.map((w) => h('tr', {}, h('td', {}, w.name || h('span', { class: 'mono' }, w.id)), h('td', { class: 'mono' }, w.url), h('td', {}, (w.events || []).join(', ') || 'all'),
      h('td', {}, h('input', { type: 'checkbox', checked: w.enabled, 'aria-label': 'Enabled', onchange: (e) => attempt('Changing the webhook', () => api('PATCH', '/webhooks/' + encodeURIComponent(w.id), { enabled: e.target.checked })) })),
      h('td', { class: 'num' }, w.delivery?.delivered ?? 0), h('td', { class: 'num' }, w.delivery?.failed ?? 0), h('td', { class: 'meta' }, w.delivery?.lastError || ''),
      h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: async () => { if (await ask(`Remove webhook ${w.name || w.id}?`)) await attempt('Removing the webhook', async () => { await api('DELETE', '/webhooks/' + encodeURIComponent(w.id)); route(); }); } }, 'Remove')))) : [empty(8, 'No webhooks.')]),
    h('h2', {}, 'Add a webhook'),
    h('form', { class: 'inline', onsubmit: async (e) => { e.preventDefault(); const body = { url: f.url.value.trim(), name: f.name.value.trim() || undefined, secret: f.secret.value || undefined, events: f.events.value.split(',').map((s) => s.trim()).filter(Boolean) }; await attempt('Adding the webhook', async () => { await api('POST', '/webhooks', body); route(); }); } }, f.url, f.name, f.events, f.secret, h('button', { type: 'submit' }, 'Add')));
}

// ---------------------------------------------------------------- pools

async function poolsPage(view, signal) {
  const list = await api('GET', '/pools', undefined, { signal });
  const f = { name: h('input', { id: 'p-name', required: true, placeholder: 'name', 'aria-label': 'Pool name' }), template: h('input', { id: 'p-template', required: true, value: 'base', 'aria-label': 'Template' }), size: h('input', { id: 'p-size', type: 'number', min: 0, value: 2, 'aria-label': 'Size' }) };
  view.append(h('div', { class: 'head' }, h('h1', {}, 'Warm pools')),
    table(['Pool', 'Template', 'Size', 'Ready', 'Filling', 'Claims', 'Misses', 'Last error', ''], list.length ? list.map((p) => h('tr', {}, h('td', {}, p.name), h('td', {}, p.spec?.templateID ?? p.templateID), h('td', { class: 'num' }, p.spec?.size ?? p.size), h('td', { class: 'num' }, p.ready), h('td', { class: 'num' }, p.filling), h('td', { class: 'num' }, p.claims), h('td', { class: 'num' }, p.misses), h('td', { class: 'meta' }, p.lastError || ''),
      h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: async () => { if (await ask(`Delete pool ${p.name}? Its ready sandboxes are discarded.`)) await attempt('Deleting the pool', async () => { await api('DELETE', '/pools/' + encodeURIComponent(p.name)); route(); }); } }, 'Delete')))) : [empty(9, 'No pools.')]),
    h('h2', {}, 'Set a pool'),
    h('form', { class: 'inline', onsubmit: async (e) => { e.preventDefault(); await attempt('Setting the pool', async () => { await api('PUT', '/pools/' + encodeURIComponent(f.name.value.trim()), { templateID: f.template.value.trim(), size: Number(f.size.value) }); route(); }); } }, f.name, f.template, f.size, h('button', { type: 'submit' }, 'Set')));
}

// --------------------------------------------------------------- server

async function serverPage(view, signal) {
  const [health, running, paused, dead] = await Promise.all([
    api('GET', '/health/details', undefined, { signal }),
    api('GET', '/v2/sandboxes?state=running&limit=1', undefined, { raw: true, signal }).then((r) => r.headers.get('x-total-running')),
    api('GET', '/v2/sandboxes?state=paused&limit=100', undefined, { signal }).then((l) => l.length),
    api('GET', '/v2/sandboxes?state=dead&limit=100', undefined, { signal }).then((l) => l.length),
  ]);
  const k = key.get();
  const flat = (o, p = '') => Object.entries(o || {}).flatMap(([n, v]) => (v && typeof v === 'object' && !Array.isArray(v) ? flat(v, p + n + '.') : [[p + n, String(v)]]));
  view.append(h('div', { class: 'head' }, h('h1', {}, 'Server'), h('span', { id: 'health-status', class: 'badge ' + (health.status === 'ok' ? 'running' : 'dead') }, health.status)),
    h('div', { class: 'cards' }, [['Running', running], ['Paused', paused], ['Dead (kept an hour)', dead >= 100 ? '100+' : dead]].map(([n, v]) => h('div', { class: 'card' }, h('div', { class: 'muted' }, n), h('div', { class: 'big' }, v ?? '–')))),
    h('h2', {}, 'Health'),
    h('dl', { class: 'facts', id: 'health' }, flat(health).filter(([n]) => n !== 'status').map(([n, v]) => [h('dt', {}, n), h('dd', {}, /bytes|Bytes/.test(n) && !isNaN(v) ? `${bytes(Number(v))}` : v)])),
    h('h2', {}, 'API key'),
    h('p', {}, 'Signed in with ', h('code', { id: 'key-in-use' }, k.slice(0, 8) + '…' + k.slice(-4)), '. The server has no API for managing keys: on its host, ', h('code', {}, 'airlock keys create NAME'), ', ', h('code', {}, 'airlock keys list'), ' and ', h('code', {}, 'airlock keys revoke ID'), ' manage them (or ', h('code', {}, '--api-key'), ').'),
    h('p', {}, h('a', { href: '/openapi.json' }, 'The OpenAPI document'), ' describes every call this dashboard makes.'));
}

// ---------------------------------------------------------------- start

$('#signin').addEventListener('submit', signIn);
$('#signout').addEventListener('click', () => signOut(''));
window.addEventListener('hashchange', route);
route();

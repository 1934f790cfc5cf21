// enforcer's live view. Plain JavaScript and SVG, no dependencies, nothing fetched from
// elsewhere. One server-sent event stream (/debug/events/stream) brings the graph every second
// and each refusal with its fix; /debug/registryz is polled for the registry view.
//
// Memory is bounded: the last MAX_REFUSALS refusals, graph samples for RATE_WINDOW_MS, the
// registry as last fetched. When the agent goes away the page says "reconnecting" and keeps
// trying; a new agent (another pid) starts the rates afresh.
'use strict';

const MAX_REFUSALS = 200;
const RATE_WINDOW_MS = 10000;
const STALE_MS = 5000;
const REGISTRY_EVERY_MS = 10000;
const MAX_REGISTRY_SERVICES = 300;
const MAX_ENDPOINTS_SHOWN = 50;
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  es: null,
  backoff: 1000,
  lastMessage: 0,
  pid: null,
  samples: [], // {t, edges: Map(edgeId -> edge)}
  refusals: [], // newest first
  seen: new Set(),
  registry: null,
  registryAt: 0,
  registryTimer: null,
  drawn: null, // the last graph drawn, for redrawing on resize
};

// ---------------------------------------------------------------------------------------------
// small DOM helpers (text always goes through textContent: names come from DNS and processes)

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (id) => document.getElementById(id);

function fmtBytes(n) {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

function fmtRate(r) {
  if (r === null || r === undefined) return '–';
  if (r === 0) return '0';
  if (r < 0.1) return r.toFixed(2);
  if (r < 10) return r.toFixed(1);
  return String(Math.round(r));
}

function fmtTime(secs) {
  const d = new Date(secs * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

function fmtDuration(s) {
  if (s < 0) s = 0;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch (_) {
    const ta = el('textarea', { class: 'offscreen' }, text);
    document.body.append(ta);
    ta.select();
    try {
      ok = document.execCommand('copy');
    } catch (_) {
      ok = false;
    }
    ta.remove();
  }
  if (button) {
    const old = button.textContent;
    button.textContent = ok ? 'copied' : 'select and copy';
    setTimeout(() => { button.textContent = old; }, 1200);
  }
}

// ---------------------------------------------------------------------------------------------
// connection

function setStatus(s, detail) {
  const e = $('status');
  e.dataset.state = s;
  e.textContent = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…' }[s] + (detail ? ` ${detail}` : '');
}

function banner(text) {
  const b = $('banner');
  b.textContent = text || '';
  b.hidden = !text;
}

function connect() {
  if (state.es) state.es.close();
  setStatus(state.pid === null ? 'connecting' : 'reconnecting');
  const es = new EventSource('/debug/events/stream');
  state.es = es;
  es.addEventListener('open', () => {
    if (state.es !== es) return;
    state.backoff = 1000;
    state.lastMessage = Date.now();
    setStatus('live');
    fetchRegistry();
  });
  es.addEventListener('graph', (e) => { touch(es); onGraph(JSON.parse(e.data)); });
  es.addEventListener('refusal', (e) => { touch(es); onRefusal(JSON.parse(e.data)); });
  es.addEventListener('notice', (e) => { touch(es); onNotice(JSON.parse(e.data)); });
  es.addEventListener('error', () => {
    if (state.es !== es) return;
    // Our own retry loop (the browser's gives up for good on some errors).
    es.close();
    state.es = null;
    setStatus('reconnecting');
    setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 5000);
  });
}

function touch(es) {
  if (state.es === es) state.lastMessage = Date.now();
}

// A stream that stopped talking (agent frozen, connection half-open): start a new one.
setInterval(() => {
  if (state.es && $('status').dataset.state === 'live' && Date.now() - state.lastMessage > STALE_MS) {
    state.es.close();
    state.es = null;
    setStatus('reconnecting');
    connect();
  }
  updateExpiries();
}, 1000);

// ---------------------------------------------------------------------------------------------
// graph

const edgeId = (e) => `${e.source}|${e.target}`;

function onGraph(g) {
  if (state.pid !== null && g.agent.pid !== state.pid) {
    state.samples = [];
    banner(`The agent restarted at ${fmtTime(g.generated_at)} (pid ${state.pid} → ${g.agent.pid}); rates start afresh.`);
  }
  state.pid = g.agent.pid;
  $('agent').textContent = `pid ${g.agent.pid} · ${g.agent.version} · updated ${fmtTime(g.generated_at)}`;
  const mode = $('mode');
  mode.textContent = g.agent.mode;
  mode.dataset.mode = g.agent.mode;
  mode.title = `outbound traffic policy (${g.agent.mode_source})`;
  $('audit-hint').hidden = g.agent.mode !== 'AUDIT';
  $('bytes-note').textContent = g.bytes_source === 'tc'
    ? `bytes: IP packets counted on the --interface(s)${g.unattributed_bytes ? ` (${fmtBytes(g.unattributed_bytes)} of no local socket, e.g. neighbour discovery, not drawn)` : ''}`
    : 'bytes: TCP payload of closed connections (pass --interface IFACE to count live bytes)';

  const t = g.generated_at * 1000;
  const edges = new Map(g.edges.map((e) => [edgeId(e), e]));
  state.samples.push({ t, edges });
  while (state.samples.length > 2 && t - state.samples[0].t > RATE_WINDOW_MS) state.samples.shift();

  const rated = g.edges.map((e) => ({ ...e, rates: rates(e) }));
  state.drawn = { nodes: g.nodes, edges: rated };
  drawGraph(g.nodes, rated);
  drawEdgeTable(g.nodes, rated);
}

const ZERO = { connections_opened: 0, denied: 0, audited: 0, http: null };

// Per-second rates over the window: from the oldest sample (an edge it lacks had counted nothing
// then) to now. A counter that went down (the agent's maps were recreated) gives no rate until the
// window refills.
function rates(e) {
  const id = edgeId(e);
  const last = state.samples[state.samples.length - 1];
  const first = state.samples[0];
  if (!first || first === last) return { conns: null, denied: null, http: null };
  const o = first.edges.get(id) || ZERO;
  const dt = (last.t - first.t) / 1000;
  const r = (a, b) => (a === undefined || b === undefined || a < b || dt <= 0 ? null : (a - b) / dt);
  return {
    conns: r(e.connections_opened, o.connections_opened),
    denied: r(e.denied + e.audited, o.denied + o.audited),
    http: e.http ? r(e.http.requests, o.http ? o.http.requests : 0) : null,
  };
}

function edgeLabel(e) {
  if (e.state === 'denied') {
    const r = e.rates.denied;
    return [`${e.denied} refused${r ? ` · ${fmtRate(r)}/s` : ''}`];
  }
  const lines = [];
  const parts = [];
  if (e.connections_opened) parts.push(`${e.connections_opened} conn${e.rates.conns ? ` · ${fmtRate(e.rates.conns)}/s` : ''}`);
  if (e.udp_calls) parts.push(`${e.udp_calls} UDP`);
  if (e.audited) parts.push(`${e.audited} would be refused`);
  lines.push(parts.join(' · ') || 'traffic');
  const second = [];
  if (e.request_bytes || e.response_bytes) second.push(`↑${fmtBytes(e.request_bytes)} ↓${fmtBytes(e.response_bytes)}`);
  if (e.http) {
    const err = e.http.requests ? Math.round((100 * e.http.errors) / e.http.requests) : 0;
    second.push(`${e.http.requests} req${e.rates.http ? ` (${fmtRate(e.rates.http)}/s)` : ''} · ${err}% err`);
  }
  if (second.length) lines.push(second.join(' · '));
  return lines;
}

function truncate(s, n) {
  return s.length <= n ? s : `…${s.slice(s.length - n + 1)}`;
}

function drawGraph(nodes, edges) {
  const root = $('graph');
  root.replaceChildren();
  $('graph-empty').hidden = nodes.length > 0;
  root.classList.toggle('hidden', nodes.length === 0);
  if (!nodes.length) return;
  const order = { service: 0, passthrough: 1, blackhole: 2 };
  const left = nodes.filter((n) => n.kind === 'workload');
  const right = nodes.filter((n) => n.kind !== 'workload').sort((a, b) => order[a.kind] - order[b.kind] || a.label.localeCompare(b.label));
  const W = Math.max(root.parentElement.clientWidth || 900, 700);
  const nodeW = 250;
  const nodeH = 40;
  const gap = 26;
  const top = 12;
  const rows = Math.max(left.length, right.length);
  const H = top * 2 + rows * nodeH + (rows - 1) * gap;
  root.setAttribute('viewBox', `0 0 ${W} ${H}`);
  root.setAttribute('width', W);
  root.setAttribute('height', H);
  const pos = new Map();
  const place = (list, x) => {
    const span = list.length * nodeH + (list.length - 1) * gap;
    const y0 = top + (H - 2 * top - span) / 2;
    list.forEach((n, i) => pos.set(n.id, { x, y: y0 + i * (nodeH + gap), n }));
  };
  place(left, 8);
  place(right, W - nodeW - 8);

  const maxRate = Math.max(1, ...edges.map((e) => e.rates.conns || 0));
  const gEdges = svg('g', { class: 'edges' });
  const gLabels = svg('g', { class: 'labels' });
  for (const e of edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + nodeW;
    const y1 = a.y + nodeH / 2;
    const x2 = b.x;
    const y2 = b.y + nodeH / 2;
    const mx = (x1 + x2) / 2;
    const width = 2 + 6 * Math.sqrt((e.rates.conns || 0) / maxRate);
    const path = svg('path', {
      d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
      class: `edge ${e.state}`,
      'stroke-width': width.toFixed(1),
      dataset: { source: e.source, target: e.target, state: e.state },
    }, svg('title', {}, `${e.source} → ${e.target}: ${edgeLabel(e).join(' · ')}`));
    gEdges.append(path);
    // label where the curve crosses the middle, on a backing box
    const lines = edgeLabel(e);
    const ly = (y1 + y2) / 2;
    const w = Math.max(...lines.map((l) => l.length)) * 6.6 + 12;
    const h = lines.length * 14 + 6;
    const label = svg('g', { class: `edge-label ${e.state}`, dataset: { source: e.source, target: e.target } });
    label.append(svg('rect', { x: mx - w / 2, y: ly - h / 2, width: w, height: h, rx: 4 }));
    lines.forEach((l, i) => label.append(svg('text', { x: mx, y: ly - h / 2 + 14 + i * 14, 'text-anchor': 'middle' }, l)));
    gLabels.append(label);
  }
  const gNodes = svg('g', { class: 'nodes' });
  for (const { x, y, n } of pos.values()) {
    const g = svg('g', { class: `node ${n.kind}`, dataset: { id: n.id, kind: n.kind } });
    g.append(svg('title', {}, n.kind === 'service' ? `${n.label} (${n.namespace}/${n.name})` : n.label));
    g.append(svg('rect', { x, y, width: nodeW, height: nodeH, rx: 6 }));
    const sub = { workload: 'workload', service: n.namespace ? `${n.namespace}/${n.name}` : n.name || 'service', passthrough: 'no registry service', blackhole: 'refused' }[n.kind];
    g.append(svg('text', { x: x + 10, y: y + 17, class: 'name' }, truncate(n.label, 36)));
    g.append(svg('text', { x: x + 10, y: y + 32, class: 'kind' }, truncate(sub, 40)));
    gNodes.append(g);
  }
  root.append(gEdges, gNodes, gLabels);
}

function drawEdgeTable(nodes, edges) {
  const label = new Map(nodes.map((n) => [n.id, n.label]));
  const body = $('edges').tBodies[0];
  body.replaceChildren(...edges.map((e) => {
    const cell = (k, v, title) => el('td', { dataset: { k }, title }, v);
    const err = e.http && e.http.requests ? `${((100 * e.http.errors) / e.http.requests).toFixed(1)}%` : '–';
    return el('tr', { class: e.state, dataset: { source: e.source, target: e.target, state: e.state } },
      cell('source', label.get(e.source) || e.source),
      cell('target', label.get(e.target) || e.target, e.target),
      cell('state', e.state),
      e.state === 'denied'
        ? cell('conn_rate', `${fmtRate(e.rates.denied)} refused`, 'refused connect()/sendmsg() calls per second')
        : cell('conn_rate', fmtRate(e.rates.conns)),
      el('td', { dataset: { k: 'connections', opened: e.connections_opened, closed: e.connections_closed } },
        `${e.connections_opened} / ${Math.max(0, e.connections_opened - e.connections_closed)} open`),
      el('td', { dataset: { k: 'refused', denied: e.denied, audited: e.audited } }, `${e.denied} / ${e.audited}`),
      cell('udp_calls', e.udp_calls),
      el('td', { dataset: { k: 'request_bytes', value: e.request_bytes }, title: `${e.request_bytes} bytes` }, fmtBytes(e.request_bytes)),
      el('td', { dataset: { k: 'response_bytes', value: e.response_bytes }, title: `${e.response_bytes} bytes` }, fmtBytes(e.response_bytes)),
      el('td', { dataset: { k: 'http_rate', requests: e.http ? e.http.requests : 0 } }, e.http ? fmtRate(e.rates.http) : '–'),
      el('td', { dataset: { k: 'http_errors', errors: e.http ? e.http.errors : 0 } }, err));
  }));
}

// ---------------------------------------------------------------------------------------------
// refusals

function onRefusal(ev) {
  const key = `${ev.time}|${ev.line || ev.message}|${ev.pid}`;
  if (state.seen.has(key)) return;
  state.seen.add(key);
  state.refusals.unshift(ev);
  const body = $('refusals').tBodies[0];
  body.prepend(refusalRow(ev));
  while (state.refusals.length > MAX_REFUSALS) {
    const old = state.refusals.pop();
    state.seen.delete(`${old.time}|${old.line || old.message}|${old.pid}`);
    body.lastElementChild.remove();
  }
  $('refusals-empty').hidden = true;
  $('refusal-count').textContent = `(last ${state.refusals.length}${state.refusals.length === MAX_REFUSALS ? ', older ones dropped' : ''})`;
}

function refusalRow(ev) {
  const fix = ev.fix || {};
  const fixCell = el('td', { class: 'fix' });
  if (fix.allow) {
    const code = el('code', { class: 'allow' }, fix.allow);
    fixCell.append(el('div', { class: 'fix-line' }, code,
      el('button', { type: 'button', onclick: (e) => copyText(fix.allow, e.target) }, 'copy')));
  }
  if (fix.service_entry) {
    fixCell.append(el('details', { class: 'service-entry' },
      el('summary', {}, 'or a ServiceEntry (as enforcer suggest drafts it)'),
      el('pre', {}, fix.service_entry),
      el('button', { type: 'button', onclick: (e) => copyText(fix.service_entry, e.target) }, 'copy YAML')));
  }
  const proc = ev.comm ? `${ev.comm}[${ev.pid}]` : (ev.hook || '');
  return el('tr', { class: `refusal ${ev.verdict}`, dataset: { verdict: ev.verdict, destination: ev.destination, reason: ev.reason } },
    el('td', { class: 'time' }, ev.time ? fmtTime(ev.time) : ''),
    el('td', {}, el('span', { class: `badge ${ev.verdict}` }, ev.verdict === 'audit' ? 'would refuse' : 'refused')),
    el('td', { class: 'workload' }, ev.workload || ''),
    el('td', { class: 'process' }, proc),
    el('td', { class: 'destination' }, `${ev.destination}/${ev.protocol}`),
    el('td', { class: 'host' }, ev.host || '–'),
    el('td', { class: 'reason', title: ev.line || '' }, ev.message),
    fixCell);
}

function onNotice(n) {
  if (n.verdict === 'dropped') banner(n.message);
}

// ---------------------------------------------------------------------------------------------
// registry

async function fetchRegistry() {
  clearTimeout(state.registryTimer);
  try {
    const r = await fetch('/debug/registryz', { cache: 'no-store' });
    if (r.ok) {
      state.registry = await r.json();
      state.registryAt = Date.now();
      drawRegistry();
    }
  } catch (_) {
    // The stream's reconnect loop reports the outage.
  }
  state.registryTimer = setTimeout(fetchRegistry, REGISTRY_EVERY_MS);
}

function drawRegistry() {
  const reg = state.registry;
  if (!reg) return;
  const q = $('registry-filter').value.trim().toLowerCase();
  const match = (s) => !q || s.name.toLowerCase().includes(q) || s.hosts.some((h) => h.toLowerCase().includes(q));
  const all = reg.services.filter(match);
  const shown = all.slice(0, MAX_REGISTRY_SERVICES);
  $('registry-meta').textContent = `${reg.mode} (${reg.mode_source}) · ${reg.services.length} services · ${reg.map.allow_entries}/${reg.map.allow_capacity} map entries, ${reg.map.learned_entries} learned`
    + (all.length > shown.length ? ` · showing ${shown.length} of ${all.length}: filter to see more` : '');
  const body = $('registry').tBodies[0];
  body.replaceChildren(...shown.map((s) => {
    const eps = s.endpoints.slice(0, MAX_ENDPOINTS_SHOWN).map((ep) => {
      const exp = ep.expires_in_secs === null || ep.expires_in_secs === undefined ? null : state.registryAt + ep.expires_in_secs * 1000;
      return el('li', { class: `endpoint ${ep.status.toLowerCase()}` },
        el('code', {}, ep.address), ep.host ? ` (${ep.host})` : '', ` · ${ep.source} · ${ep.ports.join(',')}/${ep.protocol} · `,
        el('span', { class: 'expires', dataset: exp ? { at: exp } : {} }, exp ? fmtDuration((exp - Date.now()) / 1000) : 'never'),
        ' · ', el('span', { class: 'ep-status' }, ep.status));
    });
    if (s.endpoints.length > MAX_ENDPOINTS_SHOWN) eps.push(el('li', {}, `… ${s.endpoints.length - MAX_ENDPOINTS_SHOWN} more`));
    return el('tr', { dataset: { service: s.name } },
      el('td', {}, el('strong', {}, s.name)),
      el('td', {}, s.hosts.join(', ')),
      el('td', {}, s.ports.map((p) => `${p.number}/${p.protocol}${p.name ? ` (${p.name})` : ''}`).join(', ')),
      el('td', {}, s.resolution, s.location ? el('div', { class: 'kind' }, s.location) : null),
      el('td', { class: 'source' }, s.source),
      el('td', {}, eps.length ? el('ul', { class: 'endpoints' }, eps) : '–'));
  }));
}

function updateExpiries() {
  for (const e of document.querySelectorAll('#registry .expires[data-at]')) {
    e.textContent = fmtDuration((Number(e.dataset.at) - Date.now()) / 1000);
  }
}

$('registry-filter').addEventListener('input', drawRegistry);
window.addEventListener('resize', () => {
  if (state.drawn) drawGraph(state.drawn.nodes, state.drawn.edges);
});

connect();

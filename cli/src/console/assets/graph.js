// The console's drawings of a job: its graph (task by task, the critical path marked)
// and its timeline (attempts by worker slot). Uses app.js's helpers; loaded before it.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element with attributes and children. */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** The most edges drawn; past it only the critical path's are. */
const EDGE_LIMIT = 20000;

function renderGraph(graphBox, timelineBox, g, groups) {
  if (!g.drawn) {
    fill(graphBox, h('h2', {}, groups ? 'Graph, by group' : 'Graph'),
      h('p', { class: 'muted', id: 'dag-not-drawn' }, `Not drawn task by task: ${g.why_not}.`),
      groups ? [groupPath(groups), groupDag(g.job_id, groups), groupTable(g.job_id, groups)] : h('p', { class: 'muted' }, 'Search its tasks below.'));
    timelineBox.hidden = true;
    return;
  }
  timelineBox.hidden = false;
  fill(graphBox, h('h2', {}, 'Graph'), criticalPath(g), dag(g));
  fill(timelineBox, h('h2', {}, 'Timeline: attempts by worker slot'), timeline(g));
}

/** Ids' natural order: `level-2-` before `level-10-`. */
const natural = new Intl.Collator('en', { numeric: true }).compare;

/** A job too large to draw: its groups (task ids up to their last separator) with
 *  their counts by state, each a way into its tasks. */
function groupTable(jobId, view) {
  const groups = [...view.groups].sort((a, b) => natural(a.group, b.group));
  if (!groups.length) return h('div', { class: 'empty', id: 'groups' }, 'No counts by group yet.');
  const rows = groups.map((gr) => h('tr', { 'data-group': gr.group, 'data-total': gr.total },
    h('td', { class: 'mono' }, gr.group === '~other' ? `other groups (past ${view.groups_kept})`
      : h('a', { href: `${jobHref(jobId)}?prefix=${enc(gr.group)}` }, gr.group)),
    h('td', { class: 'num' }, fmt(gr.total, 0)),
    TASK_STATES.map((st) => h('td', { class: 'num', 'data-state': st }, gr.task_counts[st] ? fmt(gr.task_counts[st], 0) : '')),
    h('td', {}, countsBar(gr.task_counts))));
  return h('table', { id: 'groups' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Group'), h('th', { class: 'num' }, 'Tasks'), TASK_STATES.map((st) => h('th', { class: 'num' }, st)), h('th', {}, 'By state'))),
    h('tbody', {}, rows));
}

/** The chain of groups that held the job up (before anything ran: its longest chain). */
function groupPath(view) {
  const byGroup = new Map(view.groups.map((gr) => [gr.group, gr]));
  const first = byGroup.get(view.critical_path[0]);
  const last = byGroup.get(view.critical_path[view.critical_path.length - 1]);
  const span = first && last && first.first_started_at ? ((last.last_finished_at || Date.now()) - first.first_started_at) / 1000 : null;
  return h('p', {}, h('strong', {}, 'Critical path: '),
    h('span', { id: 'group-critical-path' }, view.critical_path.join(' → ') || '–'),
    h('span', { class: 'muted' }, span === null ? ' (the longest chain of groups; nothing has run yet)' : ` (${fmt(span, 1)} s from its first start to its last finish)`));
}

/** Each group's depth: the longest chain of groups before it (an edge that would close
 *  a cycle is not followed). */
function groupDepths(names, edges) {
  const preds = new Map(names.map((n) => [n, []]));
  for (const e of edges) if (preds.has(e.to) && preds.has(e.from)) preds.get(e.to).push(e.from);
  const depth = new Map();
  const onStack = new Set();
  const visit = (n) => {
    if (depth.has(n)) return depth.get(n);
    if (onStack.has(n)) return -1;
    onStack.add(n);
    const d = Math.max(0, ...preds.get(n).map((p) => visit(p) + 1));
    onStack.delete(n);
    depth.set(n, d);
    return d;
  };
  for (const n of names) visit(n);
  return depth;
}

/** The groups as boxes in columns by depth, each with its tasks by state as a bar and a
 *  link to its tasks; the edges between groups, the critical path's marked. */
function groupDag(jobId, view) {
  const groups = view.groups.filter((gr) => gr.group !== '~other').sort((a, b) => natural(a.group, b.group));
  if (!groups.length) return null;
  const names = groups.map((gr) => gr.group);
  const depth = groupDepths(names, view.edges);
  const columns = [];
  for (const gr of groups) (columns[depth.get(gr.group)] = columns[depth.get(gr.group)] || []).push(gr);
  const W = 150;
  const H = 34;
  const colW = 200;
  const rowH = 48;
  const tallest = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const width = columns.length * colW + 20;
  const height = tallest * rowH + 10;
  const pos = new Map();
  columns.forEach((col, ci) => (col || []).forEach((gr, ri) => {
    pos.set(gr.group, [10 + ci * colW, 5 + ((tallest - col.length) * rowH) / 2 + ri * rowH]);
  }));
  const onPath = new Set();
  for (let i = 1; i < view.critical_path.length; i += 1) onPath.add(`${view.critical_path[i - 1]}>${view.critical_path[i]}`);
  const edges = view.edges.filter((e) => pos.has(e.from) && pos.has(e.to)).map((e) => {
    const [x1, y1] = pos.get(e.from);
    const [x2, y2] = pos.get(e.to);
    return s('line', { x1: x1 + W, y1: y1 + H / 2, x2, y2: y2 + H / 2, class: onPath.has(`${e.from}>${e.to}`) ? 'edge critical' : 'edge', 'data-edge': `${e.from}>${e.to}` });
  });
  const nodes = groups.map((gr) => {
    const [x, y] = pos.get(gr.group);
    const critical = view.critical_path.includes(gr.group);
    let left = 0;
    const bars = TASK_STATES.filter((st) => gr.task_counts[st]).map((st) => {
      const w = (W * gr.task_counts[st]) / Math.max(1, gr.total);
      const bar = s('rect', { x: x + left, y: y + H - 8, width: w, height: 8 });
      bar.style.fill = `var(--${st})`;
      left += w;
      return bar;
    });
    const done = (gr.task_counts.SUCCEEDED || 0) + (gr.task_counts.FAILED || 0) + (gr.task_counts.CANCELLED || 0);
    return s('a', { href: `${jobHref(jobId)}?prefix=${enc(gr.group)}` },
      s('rect', { x, y, width: W, height: H, rx: 4, class: `group-node${critical ? ' critical' : ''}`, 'data-group': gr.group },
        s('title', {}, `${gr.group}: ${fmt(done, 0)} of ${fmt(gr.total, 0)} ended`)),
      s('text', { x: x + 6, y: y + 14, class: 'label' }, gr.group.length > 20 ? gr.group.slice(0, 19) + '…' : gr.group),
      s('text', { x: x + W - 6, y: y + 14, class: 'tick', 'text-anchor': 'end' }, `${fmt(done, 0)}/${fmt(gr.total, 0)}`),
      bars);
  });
  return h('div', {},
    h('div', { class: 'scroll' }, s('svg', { id: 'group-dag', width, height, viewBox: `0 0 ${width} ${height}` }, edges, nodes)),
    view.edges_complete ? null : h('p', { class: 'muted' }, 'More edges between groups than are kept: some are not drawn.'));
}

function criticalPath(g) {
  const byId = new Map(g.tasks.map((t) => [t.id, t]));
  const ran = (t) => (t && t.started_at ? (t.finished_at || Date.now()) - t.started_at : 0);
  const total = g.critical_path.reduce((a, id) => a + ran(byId.get(id)), 0);
  return h('p', {}, h('strong', {}, 'Critical path: '),
    h('span', { id: 'critical-path' }, g.critical_path.join(' → ') || '–'),
    h('span', { class: 'muted' }, ` (${fmt(total / 1000, 2)} s of run time)`));
}

/** Each task's depth: the longest chain of dependencies below it. */
function depths(tasks) {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const depth = new Map();
  const visit = (id) => {
    if (depth.has(id)) return depth.get(id);
    depth.set(id, 0);
    const t = byId.get(id);
    const d = t ? Math.max(0, ...t.deps.filter((x) => byId.has(x)).map((x) => visit(x) + 1)) : 0;
    depth.set(id, d);
    return d;
  };
  for (const t of tasks) visit(t.id);
  return depth;
}

function dag(g) {
  const depth = depths(g.tasks);
  const columns = [];
  for (const t of g.tasks) (columns[depth.get(t.id)] = columns[depth.get(t.id)] || []).push(t);
  // Order each column by where its dependencies sit, so edges cross less.
  const row = new Map();
  for (const col of columns) {
    if (!col) continue;
    const key = (t) => {
      const ys = t.deps.filter((d) => row.has(d)).map((d) => row.get(d));
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : 0;
    };
    col.sort((a, b) => key(a) - key(b) || (a.id < b.id ? -1 : 1));
    col.forEach((t, i) => row.set(t.id, i));
  }
  const labels = g.tasks.length <= 80;
  const colW = labels ? 150 : 36;
  const rowH = labels ? 40 : 12;
  const r = labels ? 6 : 4;
  const tallest = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const width = columns.length * colW + 80;
  const height = tallest * rowH + 20;
  const at = (id) => {
    const col = columns[depth.get(id)];
    const offset = ((tallest - col.length) * rowH) / 2;
    return [60 + depth.get(id) * colW, offset + row.get(id) * rowH + (labels ? 14 : rowH / 2)];
  };
  const onPath = new Set();
  for (let i = 1; i < g.critical_path.length; i += 1) onPath.add(`${g.critical_path[i - 1]}>${g.critical_path[i]}`);
  const edgeCount = g.tasks.reduce((a, t) => a + t.deps.length, 0);
  const edges = [];
  for (const t of g.tasks) {
    for (const d of t.deps) {
      if (!row.has(d)) continue;
      const critical = onPath.has(`${d}>${t.id}`);
      if (!critical && edgeCount > EDGE_LIMIT) continue;
      const [x1, y1] = at(d);
      const [x2, y2] = at(t.id);
      edges.push(s('line', { x1: x1 + r, y1, x2: x2 - r, y2, class: critical ? 'edge critical' : 'edge' }));
    }
  }
  const nodes = g.tasks.map((t) => {
    const [x, y] = at(t.id);
    const circle = s('circle', { cx: x, cy: y, r, class: `node ${g.critical_path.includes(t.id) ? 'critical' : ''}`, 'data-task': t.id, 'data-state': t.state }, s('title', {}, `${t.id}: ${t.state}`));
    circle.style.fill = `var(--${t.state})`;
    return s('a', { href: taskHref(g.job_id, t.id) }, circle, labels ? s('text', { x, y: y + r + 12, class: 'label', 'text-anchor': 'middle' }, t.id) : null);
  });
  const svg = s('svg', { id: 'dag', width, height, viewBox: `0 0 ${width} ${height}` }, edges, nodes);
  const counts = {};
  for (const t of g.tasks) counts[t.state] = (counts[t.state] || 0) + 1;
  return h('div', {}, h('div', { class: 'scroll' }, svg), legend(counts),
    edgeCount > EDGE_LIMIT ? h('p', { class: 'muted' }, `${fmt(edgeCount, 0)} edges: only the critical path's are drawn.`) : null);
}

/** Attempts as bars on a time axis, one row per worker slot (a worker's attempts packed
 *  into as few rows as never overlap: as many as it ran at once). */
function timeline(g) {
  const attempts = [];
  for (const t of g.tasks) {
    for (const a of t.attempts) {
      const running = a.finished_at === null || a.finished_at === undefined;
      attempts.push({ task: t.id, ...a, end: running ? (t.state === 'RUNNING' ? Date.now() : a.started_at) : a.finished_at, running: running && t.state === 'RUNNING' });
    }
  }
  if (!attempts.length) return h('div', { class: 'empty', id: 'timeline' }, 'No attempt has started yet.');
  attempts.sort((a, b) => a.started_at - b.started_at);
  const lanes = new Map(); // worker → the end of each of its rows
  const rows = [];
  for (const a of attempts) {
    const ends = lanes.get(a.worker_id) || [];
    let lane = ends.findIndex((end) => end <= a.started_at);
    if (lane < 0) { lane = ends.length; ends.push(0); rows.push([a.worker_id, lane]); }
    ends[lane] = a.end;
    lanes.set(a.worker_id, ends);
    a.row = `${a.worker_id}#${lane}`;
  }
  rows.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] - y[1]));
  const rowIndex = new Map(rows.map(([w, l], i) => [`${w}#${l}`, i]));
  const t0 = Math.min(...attempts.map((a) => a.started_at));
  const t1 = Math.max(t0 + 1, ...attempts.map((a) => a.end));
  const labelW = 230;
  const width = 1180;
  const rowH = 16;
  const height = rows.length * rowH + 30;
  const x = (t) => labelW + ((width - labelW - 10) * (t - t0)) / (t1 - t0);
  const ticks = [];
  for (let i = 0; i <= 5; i += 1) {
    const t = t0 + ((t1 - t0) * i) / 5;
    ticks.push(s('text', { x: x(t), y: height - 6, class: 'tick', 'text-anchor': i === 0 ? 'start' : i === 5 ? 'end' : 'middle' }, `${fmt((t - t0) / 1000, 2)} s`));
  }
  const rowLabels = rows.map(([w, l], i) => s('text', { x: 4, y: i * rowH + 12, class: 'label' }, `${w.length > 26 ? '…' + w.slice(-25) : w} · ${l + 1}`));
  const bars = attempts.map((a) => {
    const state = a.running ? 'RUNNING' : a.signal || (a.exit_code !== null && a.exit_code !== undefined && a.exit_code !== 0) ? 'FAILED' : 'SUCCEEDED';
    const rect = s('rect', { x: x(a.started_at), y: rowIndex.get(a.row) * rowH + 2, width: Math.max(2, x(a.end) - x(a.started_at)), height: rowH - 4, rx: 2, 'data-attempt': `${a.task}#${a.attempt}` },
      s('title', {}, `${a.task} attempt ${a.attempt} on ${a.worker_id}: ${fmt((a.end - a.started_at) / 1000, 2)} s, ${a.signal ? 'signal ' + a.signal : a.running ? 'running' : 'exit ' + a.exit_code}`));
    rect.style.fill = `var(--${state})`;
    return s('a', { href: taskHref(g.job_id, a.task) }, rect);
  });
  return h('div', { class: 'scroll' }, s('svg', { id: 'timeline', width, height, viewBox: `0 0 ${width} ${height}` }, rowLabels, bars, ticks));
}


/**
 * An attempt's use over its life, one small chart a measure: memory against what it
 * reserved, CPU against its reservation, and GPU memory and utilisation where it had one.
 */
function usageCharts(a) {
  const u = a.usage_series;
  if (!u) return null;
  const charts = [
    ['Memory', 'MiB', u.rss_mib, a.memory_mib],
    ['CPU', '% of a core', u.cpu_percent, a.cpu ? a.cpu * 100 : null],
  ];
  if (u.gpu_memory_mib && u.gpu_memory_mib.length) {
    charts.push(['GPU memory', 'MiB', u.gpu_memory_mib, null], ['GPU', '% SM', u.gpu_percent, 100]);
  }
  const seconds = (u.step_ms * u.rss_mib.length) / 1000;
  return h('div', { class: 'card usage', id: `usage-${a.attempt}` },
    h('h3', {}, `Attempt ${a.attempt} over its ${fmt(seconds, 0)} s (a point every ${fmt(u.step_ms / 1000, 1)} s)`),
    h('div', { class: 'charts' }, charts.map(([title, unit, values, reserved]) => lineChart(title, unit, values, reserved))));
}

function lineChart(title, unit, values, reserved) {
  const W = 280;
  const H = 80;
  const top = Math.max(1, ...values, reserved || 0);
  const x = (i) => (values.length < 2 ? W / 2 : (W * i) / (values.length - 1));
  const y = (v) => H - (H * v) / top;
  const line = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const peak = Math.max(...values);
  return h('figure', { class: 'chart' },
    s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', class: 'usage-chart', 'data-measure': title },
      reserved ? s('line', { class: 'reserved', x1: 0, x2: W, y1: y(reserved), y2: y(reserved) }, s('title', {}, `reserved: ${fmt(reserved)} ${unit}`)) : null,
      s('polyline', { class: 'used', points: line })),
    h('figcaption', {}, `${title}: peak ${fmt(peak)} ${unit}` + (reserved ? ` of ${fmt(reserved)} reserved` : '')));
}

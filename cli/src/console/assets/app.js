// Batchplane's console: plain JavaScript, no framework, nothing fetched from elsewhere.
// Every API call goes to this console's own server (`/api/...`), which forwards it to
// the deployment signed with its user's credentials. Pages read a page of anything at
// a time: a job of a million tasks never loads its tasks all at once.
'use strict';

const TOKEN = document.querySelector('meta[name="console-token"]').content;
const TASK_STATES = ['PENDING', 'RUNNABLE', 'STARTING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const JOB_STATES = ['SUBMITTED', 'PENDING', 'RUNNABLE', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const REFRESH_MS = 5000;
/** Who the console's user is (`GET /v1/access/me`): read once, at start. */
let ME = { principal: { id: '?' }, admin: false, teams: {} };

// ---- small helpers ----

/** An element with attributes and children (strings become text, never markup). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's children (strings become text; null, undefined and false are left out). */
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(`${e.code || 'HTTP ' + status}: ${e.message || ''}`.trim());
    this.status = status;
    this.code = e.code;
  }
}

async function api(path, options) {
  const res = await fetch('/api/' + path, {
    method: (options && options.method) || 'GET',
    headers: { 'x-console-token': TOKEN },
    body: options && options.body,
  });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

const enc = encodeURIComponent;
const jobHref = (id) => `#/jobs/${enc(id)}`;
const taskHref = (job, task) => `#/jobs/${enc(job)}/tasks/${enc(task)}`;

function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function duration(fromIso, toIso) {
  if (!fromIso) return '–';
  const ms = (toIso ? new Date(toIso) : new Date()) - new Date(fromIso);
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  const m = s / 60;
  return m < 120 ? `${m.toFixed(1)} min` : `${(m / 60).toFixed(1)} h`;
}

const fmt = (n, digits) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 1 : digits }));
const badge = (state) => h('span', { class: `badge ${state}` }, state);

/** A bar of counts by state, and optionally its legend. */
function countsBar(counts, big) {
  const total = TASK_STATES.reduce((a, s) => a + (counts[s] || 0), 0);
  const bar = h('div', { class: big ? 'bar big' : 'bar', title: TASK_STATES.filter((s) => counts[s]).map((s) => `${s} ${counts[s]}`).join(', ') });
  for (const s of TASK_STATES) {
    const n = counts[s] || 0;
    if (!n) continue;
    const seg = h('span', { 'data-state': s });
    seg.style.width = `${(100 * n) / total}%`;
    seg.style.background = `var(--${s})`;
    bar.append(seg);
  }
  return bar;
}

function legend(counts) {
  return h('div', { class: 'legend' }, TASK_STATES.map((s) => {
    const i = h('i');
    i.style.background = `var(--${s})`;
    return h('span', { 'data-count': s }, i, `${s} ${fmt(counts[s] || 0, 0)}`);
  }));
}

function showError(e) {
  const box = document.getElementById('error');
  if (!e) { box.hidden = true; box.textContent = ''; return; }
  box.hidden = false;
  box.textContent = e.message || String(e);
}

// ---- routing ----

let timer = null;
let generation = 0;

/** Re-run `load` every few seconds while the page is shown and `live()` holds. */
function refreshEvery(gen, load, live) {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (gen !== generation) return;
    if (!document.hidden && live()) {
      try { await load(); showError(null); } catch (e) { showError(e); }
    }
    refreshEvery(gen, load, live);
  }, REFRESH_MS);
}

function route() {
  generation += 1;
  clearTimeout(timer);
  showError(null);
  const hash = location.hash.replace(/^#/, '') || '/jobs';
  const [path, qs] = hash.split('?');
  const params = Object.fromEntries(new URLSearchParams(qs || ''));
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const page = document.getElementById('page');
  fill(page, );
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('current', a.dataset.nav === parts[0]);
  let shown;
  if (parts[0] === 'jobs' && parts.length === 1) shown = jobsPage(page, params);
  else if (parts[0] === 'jobs' && parts.length === 2) shown = jobPage(page, parts[1], params);
  else if (parts[0] === 'jobs' && parts[2] === 'tasks' && parts.length === 4) shown = taskPage(page, parts[1], parts[3]);
  else if (parts[0] === 'teams') shown = teamsPage(page);
  else if (parts[0] === 'pools') shown = poolsPage(page);
  else { page.append(h('div', { class: 'empty' }, `No page ${hash}`)); return; }
  shown.catch((e) => showError(e));
}

// ---- jobs ----

async function jobsPage(page, params) {
  const gen = generation;
  document.title = 'Jobs · Batchplane';
  const me = ME;
  const teams = Object.keys(me.teams || {});
  const field = (name, el) => h('label', {}, name, el);
  const team = h('select', { name: 'team' }, h('option', { value: '' }, me.admin ? 'every team' : 'all my teams'), teams.map((t) => h('option', { value: t, selected: params.team === t }, t)));
  const state = h('select', { name: 'state' }, h('option', { value: '' }, 'any state'), JOB_STATES.map((s) => h('option', { value: s, selected: params.state === s }, s)));
  const queue = h('input', { name: 'queue', value: params.queue || '', placeholder: 'any queue', size: 12 });
  const name = h('input', { name: 'name', value: params.name || '', placeholder: 'name begins with', size: 16 });
  const form = h('form', { class: 'filters', onsubmit: (ev) => {
    ev.preventDefault();
    location.hash = '#/jobs' + query({ team: team.value, state: state.value, queue: queue.value, name: name.value });
  } }, field('Team', team), field('State', state), field('Queue', queue), field('Name', name), h('button', { class: 'primary', type: 'submit' }, 'Filter'));
  const summary = h('div', { class: 'card' });
  const list = h('div', { id: 'jobs' });
  const pager = h('div', { class: 'pager' });
  page.append(h('h1', {}, 'Jobs'), h('p', { class: 'muted' }, 'Every job you may see, newest first; updated every few seconds.'), form, summary, list, pager);

  // Tokens of the pages before this one, so Newer goes back.
  const tokens = [];
  let token = null;
  const load = async () => {
    const body = await api('jobs' + query({ team: params.team, state: params.state, queue: params.queue, name: params.name, limit: 25, next_token: token }));
    if (gen !== generation) return;
    renderJobs(list, body.jobs);
    const byState = {};
    for (const j of body.jobs) byState[j.state] = (byState[j.state] || 0) + 1;
    fill(summary, h('div', { class: 'row' }, h('strong', {}, `${body.jobs.length} jobs on this page`), JOB_STATES.filter((s) => byState[s]).map((s) => h('span', {}, badge(s), ` ${byState[s]}`))));
    fill(pager, 
      h('button', { disabled: tokens.length === 0, onclick: async () => { token = tokens.pop(); await load(); } }, '← Newer'),
      h('button', { disabled: !body.next_token, onclick: async () => { tokens.push(token); token = body.next_token; await load(); } }, 'Older →'),
    );
  };
  await load();
  refreshEvery(gen, load, () => true);
}

function renderJobs(list, jobs) {
  if (!jobs.length) {
    fill(list, h('div', { class: 'empty', id: 'no-jobs' }, 'No jobs to show.'));
    return;
  }
  const rows = jobs.map((j) => h('tr', { 'data-job': j.job_id },
    h('td', {}, h('a', { href: jobHref(j.job_id) }, j.name), h('div', { class: 'muted mono' }, j.job_id)),
    h('td', {}, j.team), h('td', {}, j.queue), h('td', {}, badge(j.state)),
    h('td', {}, when(j.created_at)), h('td', {}, duration(j.started_at || j.created_at, j.finished_at)),
    h('td', { class: 'num' }, fmt(j.total_tasks, 0)),
    h('td', {}, countsBar(j.task_counts))));
  fill(list, h('table', {},
    h('thead', {}, h('tr', {}, ['Job', 'Team', 'Queue', 'State', 'Created', 'Duration', 'Tasks', 'Tasks by state'].map((c) => h('th', { class: c === 'Tasks' ? 'num' : '' }, c)))),
    h('tbody', {}, rows)));
}

// ---- a job ----

async function jobPage(page, jobId, params) {
  const gen = generation;
  const head = h('div');
  const facts = h('div', { class: 'split' });
  const over = h('div', { class: 'card' });
  const why = h('div', { class: 'card' });
  const failed = h('div');
  const graph = h('div', { class: 'card' });
  const timeline = h('div', { class: 'card' });
  const tasks = h('div');
  page.append(head, facts, over, why, failed, graph, timeline, tasks);
  let job = null;
  const load = async () => {
    const [j, ex, history] = await Promise.all([api(`jobs/${enc(jobId)}`), api(`jobs/${enc(jobId)}/explain`), api(`jobs/${enc(jobId)}/history`)]);
    if (gen !== generation) return;
    job = j;
    document.title = `${j.name} · Batchplane`;
    renderJobHead(head, j);
    renderJobFacts(facts, j);
    // Until the latest counts are folded in, the last point is the job's counts now.
    const points = history.points.concat(TERMINAL.has(j.state) ? [] : [{ at: Date.now(), counts: j.task_counts }]);
    fill(over, h('h2', {}, 'Tasks by state over its life'), sparkline(points),
      h('p', { class: 'muted', id: 'history-note' }, points.length ? `${fmt(points.length, 0)} points from ${when(new Date(points[0].at).toISOString())}, each at least ${fmt(history.step_ms / 1000, 0)} s apart.` : 'No task has been counted yet.'));
    fill(why, h('h2', {}, 'Why it is where it is'), h('ul', { class: 'reasons', id: 'explain' }, ex.reasons.map((r) => h('li', {}, h('code', {}, r.code), ' ', r.message))));
    const g = await api(`jobs/${enc(jobId)}/graph`);
    const groups = !g.drawn && !j.array ? await api(`jobs/${enc(jobId)}/groups`) : null;
    if (gen !== generation) return;
    renderGraph(graph, timeline, g, groups);
  };
  await load();
  if ((job.task_counts.FAILED || 0) > 0) {
    failed.append(h('h2', {}, 'Failed tasks'));
    failed.append(await taskTable(jobId, { state: 'FAILED' }, 'failed-tasks'));
  }
  tasks.append(h('h2', {}, 'Tasks'), taskSearch(jobId, params));
  refreshEvery(gen, load, () => job && !TERMINAL.has(job.state));
}

function renderJobHead(head, j) {
  const cancel = h('button', { class: 'danger', id: 'cancel', onclick: async () => {
    if (!confirm(`Cancel job ${j.name} (${j.job_id})? Its waiting tasks end CANCELLED and its running ones are killed.`)) return;
    try { await api(`jobs/${enc(j.job_id)}/cancel`, { method: 'POST', body: '' }); route(); } catch (e) { showError(e); }
  } }, 'Cancel job');
  fill(head, 
    h('div', { class: 'row' }, h('h1', { id: 'job-name' }, j.name), badge(j.state), TERMINAL.has(j.state) ? null : cancel),
    h('div', { class: 'muted mono' }, j.job_id),
    j.reason ? h('p', { id: 'job-reason' }, j.reason) : null,
    h('div', { class: 'card' }, countsBar(j.task_counts, true), legend(j.task_counts)));
}

function renderJobFacts(facts, j) {
  const u = j.usage || {};
  const pct = (used, req) => (req > 0 ? ` (${((100 * used) / req).toFixed(0)}% of requested)` : '');
  fill(facts, 
    h('div', { class: 'card' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Team'), h('dd', {}, j.team),
      h('dt', {}, 'Queue'), h('dd', {}, j.queue),
      h('dt', {}, 'Tasks'), h('dd', {}, fmt(j.total_tasks, 0)),
      h('dt', {}, 'Created'), h('dd', {}, when(j.created_at)),
      h('dt', {}, 'Started'), h('dd', {}, when(j.started_at)),
      h('dt', {}, 'Finished'), h('dd', {}, when(j.finished_at)),
      h('dt', {}, 'Ran for'), h('dd', {}, j.started_at ? duration(j.started_at, j.finished_at) : '–'))),
    h('div', { class: 'card', id: 'cost' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Attempts measured'), h('dd', {}, fmt(u.attempts, 0)),
      h('dt', {}, 'CPU-seconds requested'), h('dd', {}, fmt(u.cpu_seconds_requested, 3)),
      h('dt', {}, 'CPU-seconds used'), h('dd', {}, fmt(u.cpu_seconds_used, 3) + pct(u.cpu_seconds_used, u.cpu_seconds_requested)),
      h('dt', {}, 'Memory requested'), h('dd', {}, mibSeconds(u.memory_mib_seconds_requested)),
      h('dt', {}, 'Memory used'), h('dd', {}, mibSeconds(u.memory_mib_seconds_used) + pct(u.memory_mib_seconds_used, u.memory_mib_seconds_requested)))));
}

/** Memory over time, in the unit that reads best. */
function mibSeconds(v) {
  const x = v || 0;
  if (x >= 1024 * 3600) return `${fmt(x / 1024 / 3600, 2)} GiB-hours`;
  return `${fmt(x, 2)} MiB-seconds`;
}

/** Counts by state over time, as stacked areas (each point held until the next). */
function sparkline(history) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 600 90');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.id = 'history';
  svg.dataset.points = history.length;
  if (history.length < 2) return svg;
  const totals = history.map((p) => TASK_STATES.reduce((a, s) => a + (p.counts[s] || 0), 0));
  const top = Math.max(1, ...totals);
  const t0 = history[0].at;
  const t1 = Math.max(t0 + 1, history[history.length - 1].at);
  const x = (i) => (600 * (history[i].at - t0)) / (t1 - t0);
  let below = history.map(() => 0);
  for (const s of TASK_STATES) {
    const above = history.map((p, i) => below[i] + (p.counts[s] || 0));
    if (above.every((v, i) => v === below[i])) continue;
    const pts = above.map((v, i) => `${x(i)},${90 - (90 * v) / top}`)
      .concat(below.map((v, i) => `${x(i)},${90 - (90 * v) / top}`).reverse());
    const poly = document.createElementNS(NS, 'polygon');
    poly.setAttribute('points', pts.join(' '));
    poly.style.fill = `var(--${s})`;
    svg.append(poly);
    below = above;
  }
  return svg;
}

/** Search by id prefix and state, a page at a time. */
function taskSearch(jobId, params) {
  const prefix = h('input', { name: 'prefix', id: 'task-prefix', value: params.prefix || '', placeholder: 'task id begins with', size: 20 });
  const state = h('select', { name: 'state', id: 'task-state' }, h('option', { value: '' }, 'any state'), TASK_STATES.map((s) => h('option', { value: s, selected: params.state === s }, s)));
  const results = h('div');
  const search = async () => {
    try { fill(results, await taskTable(jobId, { prefix: prefix.value, state: state.value }, 'tasks')); showError(null); } catch (e) { showError(e); }
  };
  const form = h('form', { class: 'filters', onsubmit: (ev) => { ev.preventDefault(); search(); } },
    h('label', {}, 'Task id', prefix), h('label', {}, 'State', state), h('button', { class: 'primary', type: 'submit' }, 'Search'));
  search();
  return h('div', {}, form, results);
}

async function taskTable(jobId, filter, id) {
  const box = h('div', { id });
  const tokens = [];
  let token = null;
  const load = async () => {
    const body = await api(`jobs/${enc(jobId)}/tasks` + query({ ...filter, limit: 50, next_token: token }));
    const rows = body.tasks.map((t) => h('tr', { 'data-task': t.task_id },
      h('td', {}, h('a', { href: taskHref(jobId, t.task_id) }, t.task_id)), h('td', {}, badge(t.state)),
      h('td', { class: 'num' }, t.attempt), h('td', { class: 'num' }, t.exit_code === null || t.exit_code === undefined ? '–' : t.exit_code),
      h('td', {}, t.status_reason || '')));
    fill(box, 
      rows.length ? h('table', {}, h('thead', {}, h('tr', {}, ['Task', 'State', 'Attempt', 'Exit', 'Reason'].map((c) => h('th', {}, c)))), h('tbody', {}, rows))
        : h('div', { class: 'empty' }, 'No tasks match.'),
      h('div', { class: 'pager' },
        h('button', { disabled: tokens.length === 0, onclick: async () => { token = tokens.pop(); await load(); } }, '← Back'),
        h('button', { disabled: !body.next_token, onclick: async () => { tokens.push(token); token = body.next_token; await load(); } }, 'More →')));
  };
  await load();
  return box;
}

// ---- a task ----

async function taskPage(page, jobId, taskId) {
  const gen = generation;
  const body = h('div');
  const logs = h('div', { class: 'card' });
  page.append(h('p', {}, h('a', { href: jobHref(jobId) }, '← job ' + jobId)), body, logs);
  let task = null;
  let shownAttempt = null;
  const load = async () => {
    const [t, ex] = await Promise.all([
      api(`jobs/${enc(jobId)}/tasks/${enc(taskId)}`),
      api(`jobs/${enc(jobId)}/tasks/${enc(taskId)}/explain`),
    ]);
    if (gen !== generation) return;
    task = t;
    document.title = `${taskId} · Batchplane`;
    renderTask(body, t, ex);
    const last = t.attempts.length ? t.attempts[t.attempts.length - 1].attempt : null;
    if (last !== null && last !== shownAttempt) {
      shownAttempt = last;
      followLog(logs, jobId, taskId, last, gen);
    } else if (last === null) {
      fill(logs, h('h2', {}, 'Output'), h('p', { class: 'muted' }, 'No attempt has started yet.'));
    }
  };
  await load();
  refreshEvery(gen, load, () => task && !TERMINAL.has(task.state));
}

function shellQuote(w) {
  return /^[A-Za-z0-9\-_./:=@%+,]+$/.test(w) ? w : `'${w.replace(/'/g, "'\\''")}'`;
}

function copyBox(text, id) {
  const pre = h('pre', { id }, text);
  const button = h('button', { onclick: async () => {
    try { await navigator.clipboard.writeText(text); button.textContent = 'Copied'; } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = 'Selected: copy it';
    }
  } }, 'Copy');
  return h('div', { class: 'copy' }, pre, button);
}

function renderTask(body, t, ex) {
  const deps = (ids) => (ids.length ? h('ul', {}, ids.map((d) => h('li', {}, d.startsWith('~') ? h('span', { class: 'muted' }, d) : h('a', { href: taskHref(t.job_id, d) }, d), t.dependency_states && t.dependency_states[d] ? [' ', badge(t.dependency_states[d])] : null))) : h('p', { class: 'muted' }, 'none'));
  const env = Object.entries(t.env || {});
  fill(body, 
    h('div', { class: 'row' }, h('h1', { id: 'task-id' }, t.task_id), badge(t.state)),
    t.status_reason ? h('p', { id: 'task-reason' }, t.status_reason) : null,
    h('div', { class: 'card' }, h('ul', { class: 'reasons' }, ex.reasons.map((r) => h('li', {}, h('code', {}, r.code), ' ', r.message)))),
    h('div', { class: 'split' },
      h('div', { class: 'card' }, h('dl', { class: 'facts' },
        h('dt', {}, 'Command'), h('dd', {}, h('code', { id: 'argv' }, t.command.map(shellQuote).join(' '))),
        h('dt', {}, 'CPU'), h('dd', {}, fmt(t.cpu, 3)),
        h('dt', {}, 'Memory'), h('dd', {}, `${fmt(t.memory_mib, 0)} MiB`),
        t.gpu ? [h('dt', {}, 'GPU'), h('dd', {}, t.gpu)] : null,
        h('dt', {}, 'Pool'), h('dd', {}, t.pool),
        h('dt', {}, 'Timeout'), h('dd', {}, t.timeout_seconds ? `${t.timeout_seconds} s` : 'none'),
        h('dt', {}, 'Created'), h('dd', {}, when(t.created_at)),
        h('dt', {}, 'Started'), h('dd', {}, when(t.started_at)),
        h('dt', {}, 'Finished'), h('dd', {}, when(t.finished_at)))),
      h('div', { class: 'card' }, h('h2', {}, 'Environment'),
        env.length ? h('table', { id: 'env' }, h('tbody', {}, env.map(([k, v]) => h('tr', {}, h('td', { class: 'mono' }, k), h('td', { class: 'mono' }, v))))) : h('p', { class: 'muted' }, 'none of its own'))),
    h('div', { class: 'split' },
      h('div', { class: 'card' }, h('h2', {}, 'Depends on'), deps(t.depends_on || [])),
      h('div', { class: 'card' }, h('h2', {}, 'Dependents'), deps(t.dependents || []))),
    h('h2', {}, 'Run it here'),
    copyBox(`batchplane repro ${shellQuote(t.job_id)} ${shellQuote(t.task_id)} --run`, 'repro'),
    h('h2', {}, 'Attempts'),
    attemptsTable(t.attempts),
    t.attempts.map(usageCharts));
}

function attemptsTable(attempts) {
  if (!attempts.length) return h('div', { class: 'empty' }, 'No attempts yet.');
  const rss = (kib) => (kib === undefined || kib === null ? '–' : `${fmt(kib / 1024)} MiB`);
  return h('table', { id: 'attempts' },
    h('thead', {}, h('tr', {}, ['#', 'Worker', 'Started', 'Ran for', 'Exit', 'CPU user/sys s', 'Max RSS', 'Avg RSS', 'GPU', 'Isolation', 'Reason'].map((c) => h('th', {}, c)))),
    h('tbody', {}, attempts.map((a) => h('tr', {},
      h('td', {}, a.attempt), h('td', { class: 'mono' }, a.worker_id), h('td', {}, when(a.started_at)),
      h('td', {}, duration(a.started_at, a.finished_at)),
      h('td', {}, a.signal ? `signal ${a.signal}` : a.exit_code === null || a.exit_code === undefined ? '–' : a.exit_code),
      h('td', {}, `${fmt(a.cpu_user_seconds, 2)} / ${fmt(a.cpu_system_seconds, 2)}`),
      h('td', {}, rss(a.max_rss_kib)), h('td', {}, rss(a.avg_rss_kib)),
      h('td', {}, a.gpu_peak_memory_mib === undefined ? '–' : `${fmt(a.gpu_peak_memory_mib, 0)} MiB, ${fmt(a.gpu_utilization_percent)}%`),
      h('td', {}, a.isolation || '–'), h('td', {}, a.reason || '')))));
}

/** An attempt's output, page after page, followed while the attempt runs. */
async function followLog(box, jobId, taskId, attempt, gen) {
  const pre = h('pre', { id: 'log' });
  const note = h('p', { class: 'muted' });
  fill(box, h('h2', {}, `Output of attempt ${attempt}`), pre, note);
  let token = null;
  let lines = 0;
  for (;;) {
    if (gen !== generation) return;
    let page;
    try {
      page = await api(`jobs/${enc(jobId)}/tasks/${enc(taskId)}/logs` + query({ attempt, next_token: token }));
    } catch (e) {
      note.textContent = `Its output cannot be read: ${e.message}`;
      return;
    }
    for (const l of page.lines) { pre.append(l.message + '\n'); lines += 1; }
    const moved = page.next_token && page.next_token !== token;
    token = page.next_token || token;
    note.textContent = `${lines} lines${page.running ? ', following while it runs' : ''}` + (page.shipping ? ` · ${page.shipping}` : '') + (page.log_group ? ` · CloudWatch Logs ${page.log_group} ${page.log_stream}` : '');
    if (moved) continue;
    if (!page.running) return;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---- teams and clusters ----

async function teamsPage(page) {
  document.title = 'Teams and clusters · Batchplane';
  const [teams, clusters] = await Promise.all([api('teams'), ME.admin ? api('clusters') : null]);
  const used = (u, l) => `${fmt(u)} / ${fmt(l)}`;
  const gpus = (g) => Object.entries(g || {}).map(([k, v]) => `${k}: ${v}`).join(', ') || '–';
  page.append(h('h1', {}, 'Teams and clusters'),
    h('h2', {}, 'Teams: quota used against limit'),
    rowsOr(asList(teams, 'teams'), ['Team', 'CPU', 'Memory MiB', 'GPU limit', 'Workers by cluster'], (t) => [
      t.team, used(t.used && t.used.cpu, t.limit && t.limit.cpu), used(t.used && t.used.memory_mib, t.limit && t.limit.memory_mib),
      gpus(t.limit && t.limit.gpu), Object.entries(t.workers || {}).map(([c, n]) => `${c}: ${n}`).join(', ') || '–'], 'teams'),
    h('h2', {}, 'Clusters: capacity used'),
    !clusters ? adminsOnly('clusters') : rowsOr(asList(clusters, 'clusters'), ['Cluster', 'Kind', 'Enabled', 'CPU', 'Memory MiB'], (c) => [
      c.name, c.kind || '', c.enabled ? 'yes' : 'no', used(c.used && c.used.cpu, c.capacity && c.capacity.cpu),
      used(c.used && c.used.memory_mib, c.capacity && c.capacity.memory_mib)], 'clusters'));
}

// ---- queues and pools ----

async function poolsPage(page) {
  const gen = generation;
  document.title = 'Queues and pools · Batchplane';
  const body = h('div');
  page.append(h('h1', {}, 'Queues and worker pools'), h('p', { class: 'muted' }, "Backlog and workers as the autoscaler saw them at its last ticks; updated every few seconds."), body);
  if (!ME.admin) {
    body.append(adminsOnly('worker pools, the autoscaler and capacity marks'));
    return;
  }
  const load = async () => {
    const [history, capacity] = await Promise.all([api('autoscaler/history?limit=30'), api('capacity')]);
    if (gen !== generation) return;
    const ticks = asList(history, 'decisions');
    // The newest tick that saw any pool: an idle deployment's ticks see none.
    const latest = ticks.find((d) => (d.pools || []).length) || ticks[0] || null;
    const why = (p) => [p.limited_by ? `limited by ${p.limited_by}` : null, p.refused ? `refused: ${typeof p.refused === 'string' ? p.refused : JSON.stringify(p.refused)}` : null].filter(Boolean).join('; ') || (p.wanted > 0 ? `wants ${p.wanted} more` : 'enough workers');
    fill(body, 
      h('h2', {}, latest ? `Pools at ${when(latest.at)}` : 'Pools'),
      rowsOr(latest ? latest.pools || [] : [], ['Pool', 'Team', 'Queued', 'Oldest waiting', 'In flight', 'Workers (starting)', 'Slots each', 'Wanted', 'Launched', 'Why'], (p) => [
        p.pool, p.team, fmt(p.queued, 0), `${fmt(p.oldest_seconds)} s`, fmt(p.in_flight, 0), `${fmt(p.live_workers, 0)} (${fmt(p.starting_workers, 0)})`,
        fmt(p.slots_per_worker, 0), fmt(p.wanted, 0), fmt(p.launched, 0), why(p)], 'pools'),
      h('h2', {}, "The autoscaler's recent ticks"),
      rowsOr(ticks, ['At', 'Pools', 'Queued', 'Launched', 'Errors', 'Took'], (d) => [
        when(d.at), (d.pools || []).length, fmt((d.pools || []).reduce((a, p) => a + (p.queued || 0), 0), 0),
        fmt((d.pools || []).reduce((a, p) => a + (p.launched || 0), 0), 0), (d.errors || []).length ? d.errors.map((e) => (typeof e === 'string' ? e : JSON.stringify(e))).join('; ') : 'none', `${d.took_ms} ms`], 'ticks'),
      h('h2', {}, 'Launch configs marked capacity-limited'),
      rowsOr(capacity.capacity_limited || [], ['Launch config', 'Reason', 'Marked', 'Until'], (m) => [m.launch_config, m.reason, when(m.marked_at), when(m.until)], 'capacity'));
  };
  await load();
  refreshEvery(gen, load, () => true);
}

function adminsOnly(what) {
  return h('div', { class: 'empty admins-only' }, `Only the deployment's admins see ${what}.`);
}

function asList(body, key) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body[key])) return body[key];
  return [];
}

function rowsOr(items, columns, cells, id) {
  if (!items.length) return h('div', { class: 'empty', id }, 'Nothing to show.');
  return h('table', { id }, h('thead', {}, h('tr', {}, columns.map((c) => h('th', {}, c)))),
    h('tbody', {}, items.map((it) => h('tr', {}, cells(it).map((c) => h('td', {}, c))))));
}

// ---- start ----

async function start() {
  try {
    ME = await api('access/me');
    document.getElementById('who').textContent = `${ME.principal.id}${ME.admin ? ' (admin)' : ''}`;
  } catch (e) { showError(e); }
  window.addEventListener('hashchange', route);
  route();
}

start();

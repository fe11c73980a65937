// Small DOM helpers and formatters. Text from the API (names, labels, logs) is always set as
// text, never parsed as HTML.

/** An element: `h('a', {href: '#/', class: 'x', onclick: f}, 'text', child, [more])`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** The element with this id (null when absent). */
export const byId = (id) => document.getElementById(id);

/** Replaces an element's children. */
export function fill(el, ...children) {
  if (!el) return;
  el.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** A number for a table: two decimals (as the Markdown report), `–` when absent. */
export function fixed2(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(2) : '–';
}

/** A number at a glance: three significant digits, whole numbers as they are. */
export function num(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '–';
  if (Number.isInteger(v) || Math.abs(v) >= 1000) return String(Math.round(v));
  return Number(v.toPrecision(3)).toString();
}

/** An axis value as the report shows it (strings bare, anything else as JSON). */
export function axisText(v) {
  if (v === null || v === undefined) return '';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/** A time of day and date, in the browser's locale. */
export function when(ms) {
  return typeof ms === 'number' ? new Date(ms).toLocaleString() : '–';
}

/** A duration as people write it: 42s, 3m 05s, 2h 07m. */
export function duration(ms) {
  const s = Math.max(0, Math.floor((ms || 0) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

/** Whether nothing more will happen to an experiment in this state. */
export function finished(state) {
  return !['queued', 'running'].includes(state);
}

/** A coloured state label. */
export function badge(state) {
  return h('span', { class: `state state-${state}` }, state);
}

/** The job states in the order they are shown. */
export const STATES = ['running', 'queued', 'blocked', 'succeeded', 'failed', 'cancelled'];

/** Counts of jobs by state (`{succeeded: 3, …}`) as a bar: finished parts filled. */
export function progressBar(jobs) {
  const total = Object.values(jobs || {}).reduce((a, b) => a + b, 0);
  const done = ['succeeded', 'failed', 'cancelled'].reduce((a, s) => a + (jobs?.[s] || 0), 0);
  const bar = h('div', { class: 'progress', title: `${done} of ${total} job(s) finished` });
  for (const s of ['succeeded', 'failed', 'cancelled', 'running']) {
    const n = jobs?.[s] || 0;
    if (n > 0 && total > 0) {
      const part = h('span', { class: `part part-${s}` });
      part.style.width = `${(100 * n) / total}%`;
      bar.append(part);
    }
  }
  return h('div', { class: 'progress-wrap' }, bar, h('span', { class: 'progress-text' }, `${done}/${total}`));
}

/** Counts of jobs by state as short labels: `3 succeeded · 1 running`. */
export function stateCounts(jobs) {
  const parts = STATES.filter((s) => (jobs?.[s] || 0) > 0).map((s) =>
    h('span', { class: `count count-${s}` }, `${jobs[s]} ${s}`),
  );
  return parts.length ? parts : [h('span', { class: 'muted' }, 'no jobs')];
}

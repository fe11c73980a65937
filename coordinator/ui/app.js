// The SpatialLock web UI: hash routes, the token form, and the polling loop.
//
//   #/                                   experiments (list.js)
//   #/experiments/{id}[/trials/{trial}]  an experiment and one of its trials (experiment.js)
//
// Plain ES modules served from the coordinator's binary: no build step.

import { ApiError, setToken, token } from './api.js';
import { byId, fill, h } from './dom.js';
import { ExperimentView } from './experiment.js';
import { ListView } from './list.js';

const app = { view: null, seq: 0, timer: null, asking: false };

function parseRoute() {
  const parts = location.hash
    .replace(/^#\/?/, '')
    .split('/')
    .filter(Boolean)
    .map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
  if (parts[0] === 'experiments' && parts[1]) {
    return { name: 'experiment', id: parts[1], trial: parts[2] === 'trials' ? parts[3] || null : null };
  }
  return { name: 'list' };
}

const ctx = {
  refreshNow: () => refresh(),
  showAuth: (message) => showAuth(message),
  crumbs: (...nodes) => fill(byId('crumbs'), nodes.length ? [h('span', { class: 'sep' }, '›'), nodes] : []),
};

function navigate() {
  app.seq += 1;
  clearTimeout(app.timer);
  app.view?.destroy();
  const route = parseRoute();
  const root = byId('view');
  fill(root);
  app.view = route.name === 'experiment' ? new ExperimentView(root, route, ctx) : new ListView(root, ctx);
  refresh();
}

async function refresh() {
  if (app.asking) return;
  const seq = app.seq;
  const current = () => seq === app.seq && !app.asking;
  clearTimeout(app.timer);
  let delay = 5000;
  try {
    const result = await app.view.refresh(current);
    if (!current() || !result) return;
    delay = result.delay;
    banner(null);
    byId('live').textContent = `${result.note} · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (seq !== app.seq) return;
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      showAuth(e.message);
      return;
    }
    banner(e.message);
    byId('live').textContent = 'not updated';
  }
  if (seq !== app.seq) return;
  clearTimeout(app.timer);
  app.timer = setTimeout(refresh, document.hidden ? Math.max(delay, 10000) : delay);
}

function banner(message) {
  const el = byId('banner');
  el.hidden = !message;
  el.textContent = message || '';
}

function showAuth(message) {
  app.asking = true;
  clearTimeout(app.timer);
  byId('auth-why').textContent = message;
  byId('auth-token').value = '';
  byId('auth').hidden = false;
  byId('auth-token').focus();
}

function tokenButton() {
  byId('forget').hidden = !token();
}

byId('auth-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = byId('auth-token').value.trim();
  if (!value) return;
  setToken(value);
  byId('auth').hidden = true;
  app.asking = false;
  tokenButton();
  refresh();
});

byId('forget').addEventListener('click', () => {
  setToken('');
  tokenButton();
  refresh();
});

window.addEventListener('hashchange', navigate);
window.addEventListener('resize', () => app.view?.resize?.());
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});

/** For the browser test and the curious: what the page shows now. */
window.spatiallockUi = {
  chartPoints: () => app.view?.chartPoints?.() ?? {},
  refresh: () => refresh(),
};

tokenButton();
navigate();

// One trial of an experiment page: live curves of its jobs' metric series, the sample grid of
// each evaluation, and every job with its state, attempts and log tail.

import { api, seg } from './api.js';
import { axisText, badge, duration, fill, h, when } from './dom.js';
import { CHART_METRICS, ChartPanel } from './charts.js';

/** The selected trial's panel; `refresh` reads its metric series and logs again. */
export class TrialPanel {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.title = h('h2', { id: 'trial-title' }, 'Trial');
    this.meta = h('div', { id: 'trial-meta', class: 'small' });
    this.picker = h('div', { id: 'job-picker', class: 'picker' });
    const charts = h('div', { id: 'charts', class: 'charts' });
    this.samples = h('div', { id: 'samples', class: 'samples' });
    this.jobs = h('div', { id: 'jobs' });
    root.append(this.title, this.meta, h('h3', {}, 'Curves'), this.picker, charts, h('h3', {}, 'Samples'), this.samples, h('h3', {}, 'Jobs'), this.jobs);
    this.charts = new ChartPanel(charts);
    this.images = new Map(); // `${job}#${attempt}` → {url} | {error} | {loading}
    this.open = new Set(); // jobs whose log is unfolded
    this.metricsJob = null;
    this.logsShown = '';
  }

  async refresh(exp, trial, current) {
    const id = seg(trial.id);
    const [metrics, logs] = await Promise.all([
      api(`/v1/trials/${id}/metrics?names=${encodeURIComponent(CHART_METRICS.join(','))}&max_points=400`),
      api(`/v1/trials/${id}/logs?lines=80`),
    ]);
    if (!current() || this.destroyed) return;
    this.title.textContent = `Trial ${trial.index}`;
    fill(
      this.meta,
      badge(trial.state),
      ' ',
      Object.entries(trial.axes || {}).map(([k, v]) => h('span', { class: 'axis' }, `${k} = ${axisText(v)}`)),
      h('span', { class: 'muted mono' }, ` ${trial.id}`),
    );
    this.#curves(exp, trial, metrics.jobs || []);
    this.#samples(logs.jobs || []);
    this.#jobs(logs.jobs || []);
  }

  #curves(exp, trial, jobs) {
    const drawn = jobs.filter((j) => CHART_METRICS.some((n) => (j.series?.[n] || []).length > 0));
    const model = trial.model_job ? [trial.model_job, `${exp.id}.${trial.model_job}`] : [];
    if (!drawn.some((j) => j.job === this.metricsJob)) {
      const pick =
        drawn.find((j) => model.includes(j.job)) || drawn.find((j) => j.kind === 'train') || drawn[0] || null;
      this.metricsJob = pick ? pick.job : null;
    }
    fill(
      this.picker,
      drawn.length > 1 ? h('span', { class: 'muted small' }, 'Series of: ') : '',
      drawn.length > 1
        ? drawn.map((j) =>
            h(
              'button',
              {
                class: `chip${j.job === this.metricsJob ? ' on' : ''}`,
                'data-job': j.job,
                onclick: () => {
                  this.metricsJob = j.job;
                  this.ctx.refreshNow();
                },
              },
              `${j.kind}: ${j.label}`,
            ),
          )
        : drawn.map((j) => h('span', { class: 'muted small' }, `${j.kind}: ${j.label}`)),
      drawn.length === 0 ? h('span', { class: 'muted small' }, 'No training metrics reported yet.') : '',
    );
    const job = drawn.find((j) => j.job === this.metricsJob);
    this.charts.update(job ? job.series : {});
  }

  #samples(jobs) {
    const evals = jobs.filter((j) => j.kind === 'evaluate');
    if (evals.length === 0) {
      fill(this.samples, h('p', { class: 'muted small' }, 'This trial has no evaluation.'));
      return;
    }
    const shown = JSON.stringify(
      evals.map((j) => {
        const image = this.images.get(`${j.job}#${j.attempt}`);
        return [j.job, j.state, j.attempt, image?.url || image?.error || Boolean(image)];
      }),
    );
    if (shown === this.samplesShown) return;
    this.samplesShown = shown;
    const figures = evals.map((j) => {
      const caption = h('figcaption', { class: 'small' }, j.label);
      if (j.state !== 'succeeded') {
        return h('figure', {}, h('div', { class: 'placeholder muted small' }, `the sample grid appears when the evaluation succeeds (it is ${j.state})`), caption);
      }
      const key = `${j.job}#${j.attempt}`;
      const image = this.images.get(key);
      if (!image) this.#load(j.job, key);
      if (image?.url) return h('figure', {}, h('img', { src: image.url, alt: `generated samples of ${j.label}`, 'data-job': j.job }), caption);
      if (image?.error) return h('figure', {}, h('div', { class: 'placeholder muted small' }, image.error), caption);
      return h('figure', {}, h('div', { class: 'placeholder muted small' }, 'loading…'), caption);
    });
    fill(this.samples, figures);
  }

  async #load(job, key) {
    this.images.set(key, { loading: true });
    try {
      const response = await api(`/v1/jobs/${seg(job)}/files/samples.png`, { raw: true });
      const blob = await response.blob();
      if (this.destroyed) return;
      this.images.set(key, { url: URL.createObjectURL(blob) });
    } catch (e) {
      if (this.destroyed) return;
      this.images.set(key, { error: e.message });
    }
    if (this.lastJobs) this.#samples(this.lastJobs);
  }

  #jobs(jobs) {
    this.lastJobs = jobs;
    const shown = JSON.stringify(jobs);
    if (shown === this.logsShown) return;
    this.logsShown = shown;
    fill(
      this.jobs,
      jobs.map((j) => {
        const details = h(
          'details',
          { class: 'job', 'data-job': j.job, open: this.open.has(j.job) },
          h(
            'summary',
            {},
            badge(j.state),
            h('span', { class: 'kind' }, j.kind),
            h('span', {}, j.label),
            h('span', { class: 'muted small' }, ` · attempt ${j.attempt}`),
            j.last_error ? h('span', { class: 'error-text small clip' }, ` · ${j.last_error}`) : '',
          ),
          this.#attempts(j.attempts || []),
          h('pre', { class: 'log' }, (j.lines || []).length ? j.lines.join('\n') : '(no log lines yet)'),
        );
        details.addEventListener('toggle', () => {
          if (details.open) this.open.add(j.job);
          else this.open.delete(j.job);
        });
        return details;
      }),
    );
    for (const pre of this.jobs.querySelectorAll('pre.log')) pre.scrollTop = pre.scrollHeight;
  }

  #attempts(attempts) {
    if (attempts.length === 0) return h('p', { class: 'muted small' }, 'Not started yet.');
    return h(
      'table',
      { class: 'grid small attempts' },
      h('thead', {}, h('tr', {}, ['attempt', 'worker', 'started', 'took', 'outcome', 'error'].map((t) => h('th', {}, t)))),
      h(
        'tbody',
        {},
        attempts.map((a) =>
          h(
            'tr',
            {},
            h('td', { class: 'num' }, a.attempt),
            h('td', { class: 'mono' }, a.worker),
            h('td', {}, when(a.started_at_ms)),
            h('td', {}, duration((a.ended_at_ms ?? Date.now()) - a.started_at_ms)),
            h('td', {}, a.outcome),
            h('td', { class: 'error-text' }, a.error || ''),
          ),
        ),
      ),
    );
  }

  chartPoints() {
    return this.charts.points();
  }

  resize() {
    this.charts.resize();
  }

  destroy() {
    this.destroyed = true;
    this.charts.destroy();
    for (const image of this.images.values()) if (image.url) URL.revokeObjectURL(image.url);
  }
}

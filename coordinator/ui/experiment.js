// An experiment's page (`#/experiments/{id}[/trials/{trial}]`): its state and progress, the
// actions (cancel, retry failed, priority), the report beside the paper's numbers, and the
// selected trial (curves, samples, jobs and logs; see trial.js).

import { api, seg } from './api.js';
import { axisText, badge, byId, finished, fill, fixed2, h, progressBar, stateCounts, when } from './dom.js';
import { TrialPanel } from './trial.js';

/** The experiment page; `refresh` reads the experiment, its report and its trials again. */
export class ExperimentView {
  constructor(root, route, ctx) {
    this.ctx = ctx;
    this.id = route.id;
    this.wanted = route.trial;
    ctx.crumbs(h('span', { class: 'mono' }, this.id));
    root.append(
      h(
        'section',
        { class: 'experiment' },
        h(
          'div',
          { class: 'exp-head' },
          h('h1', { id: 'exp-name' }, this.id),
          h('span', { id: 'exp-state' }),
          h('div', { id: 'exp-meta', class: 'muted small' }),
          h('div', { id: 'exp-progress' }),
          h('div', { id: 'exp-counts', class: 'counts' }),
        ),
        this.#actions(),
        h('h2', {}, 'Results'),
        h(
          'p',
          { class: 'muted small' },
          'Our numbers, the paper’s in parentheses where the grid gives them. mAP, AP50 and AP75 in percent; ' +
            'FID (or the detector-feature distance) lower is better; s/img: seconds per generated image. ' +
            'Click a row to see its trial.',
        ),
        h('div', { class: 'table-wrap' }, h('table', { id: 'report', class: 'grid' })),
        h('h2', {}, 'Comparison'),
        h(
          'p',
          { class: 'muted small' },
          'The first validation layouts with the same seeds in every trial: input boxes green, detections red ' +
            '(spatiallock figures writes the same rows as one comparison.png).',
        ),
        h('div', { id: 'comparison', class: 'comparison' }),
        h('div', { id: 'trial' }),
        h('details', { id: 'spec-box' }, h('summary', {}, 'Spec'), h('pre', { id: 'spec', class: 'log' })),
      ),
    );
    this.trial = new TrialPanel(byId('trial'), ctx);
    this.strips = new Map();
  }

  #actions() {
    const msg = h('span', { id: 'action-msg', class: 'small', role: 'status' });
    const run = async (button, path, options, describe) => {
      button.disabled = true;
      msg.className = 'small';
      msg.textContent = '…';
      try {
        const answer = await api(path, { method: 'POST', ...options });
        msg.textContent = describe(answer);
        this.ctx.refreshNow();
      } catch (e) {
        msg.className = 'small error-text';
        msg.textContent = e.message;
        if (e.status === 401) this.ctx.showAuth(e.message);
      } finally {
        button.disabled = false;
        if (button === this.cancelButton) button.disabled = finished(this.state);
      }
    };
    const base = `/v1/experiments/${seg(this.id)}`;
    const ask = h('span', { id: 'cancel-ask', class: 'ask', hidden: true });
    this.cancelButton = h(
      'button',
      {
        id: 'cancel',
        class: 'danger',
        disabled: true,
        onclick: () => {
          ask.hidden = false;
          this.cancelButton.hidden = true;
        },
      },
      'Cancel experiment',
    );
    const hideAsk = () => {
      ask.hidden = true;
      this.cancelButton.hidden = false;
    };
    const confirm = h(
      'button',
      {
        id: 'cancel-confirm',
        class: 'danger',
        onclick: () => {
          hideAsk();
          run(this.cancelButton, `${base}/cancel`, {}, (a) => `cancel requested: ${a.jobs} job(s); running ones stop at their next heartbeat`);
        },
      },
      'Yes, cancel',
    );
    fill(ask, 'Cancel its queued and running jobs? ', confirm, ' ', h('button', { id: 'cancel-keep', class: 'secondary', onclick: hideAsk }, 'Keep running'));
    const withCancelled = h('input', { id: 'retry-cancelled', type: 'checkbox' });
    const retry = h(
      'button',
      {
        id: 'retry',
        onclick: () =>
          run(
            retry,
            `${base}/retry-failed${withCancelled.checked ? '?include_cancelled=true' : ''}`,
            {},
            (a) => `${a.jobs} job(s) requeued from their last checkpoints`,
          ),
      },
      'Retry failed',
    );
    this.priority = h('input', { id: 'priority', type: 'number', step: '1', 'aria-label': 'Priority', oninput: () => (this.priorityEdited = true) });
    const setPriority = h(
      'button',
      {
        id: 'priority-set',
        class: 'secondary',
        onclick: () => {
          const text = this.priority.value.trim();
          const value = Number(text);
          if (text === '' || !Number.isInteger(value)) {
            msg.className = 'small error-text';
            msg.textContent = 'the priority is a whole number';
            return;
          }
          this.priorityEdited = false;
          run(setPriority, `${base}/priority`, { body: { priority: value } }, (a) => `priority ${value} set on ${a.jobs} job(s)`);
        },
      },
      'Set priority',
    );
    return h(
      'div',
      { class: 'actions' },
      this.cancelButton,
      ask,
      h('span', { class: 'group' }, retry, h('label', { class: 'small' }, withCancelled, ' and cancelled')),
      h('span', { class: 'group' }, this.priority, setPriority),
      msg,
    );
  }

  async refresh(current) {
    const base = `/v1/experiments/${seg(this.id)}`;
    const [exp, report, trials] = await Promise.all([api(base), api(`${base}/report`), api(`${base}/trials`)]);
    if (!current()) return null;
    this.state = exp.state;
    this.#head(exp);
    const trial =
      trials.find((t) => t.id === this.wanted) || trials.find((t) => String(t.index) === this.wanted) || trials[0];
    this.#report(report, trials, trial);
    this.#comparison(exp.id, report, trials);
    if (trial) await this.trial.refresh(exp, trial, current);
    if (!current()) return null;
    const done = finished(exp.state);
    return { delay: done ? 15000 : 2500, note: done ? `${exp.state}` : 'live' };
  }

  #head(exp) {
    this.ctx.crumbs(h('span', {}, exp.name));
    byId('exp-name').textContent = exp.name;
    fill(byId('exp-state'), badge(exp.state));
    fill(
      byId('exp-meta'),
      h('span', { class: 'mono' }, exp.id),
      ` · ${exp.num_trials} trial(s) · priority ${exp.priority} · submitted ${when(exp.created_at_ms)}`,
    );
    fill(byId('exp-progress'), progressBar(exp.jobs));
    fill(byId('exp-counts'), stateCounts(exp.jobs));
    this.cancelButton.disabled = finished(exp.state);
    if (!this.priorityEdited && document.activeElement !== this.priority) this.priority.value = String(exp.priority);
    const spec = byId('spec');
    if (exp.spec && spec && !spec.textContent) spec.textContent = JSON.stringify(exp.spec, null, 2);
  }

  #report(report, trials, selected) {
    const fidKind = report.rows.find((r) => r.fid_kind)?.fid_kind || 'fid';
    const fidName = fidKind === 'fd_detector' ? 'FD (detector)' : 'FID';
    const dims = fidKind === 'fd_detector' ? 128 : 2048;
    const metrics = ['mAP', 'AP50', 'AP75', 'grounding acc.', 'cat. recall', 's/img'];
    // Detector augmentation (paper Table 5): a column only when some trial has one.
    const augmented = report.rows.some((r) => r.augmentation);
    const head = ['trial', ...report.axes, 'val', 'state', fidName, ...metrics, ...(augmented ? ['detector gain'] : [])];
    const idOf = new Map(trials.map((t) => [t.index, t.id]));
    const pair = (ours, paper, note) =>
      h(
        'td',
        { class: 'num', title: note || null },
        fixed2(ours),
        note ? ' *' : '',
        typeof paper === 'number' ? h('span', { class: 'paper', title: 'the paper’s number' }, ` (${fixed2(paper)})`) : '',
      );
    const rows = report.rows.map((r) => {
      const paper = r.paper || {};
      const few = typeof r.fid_images === 'number' && r.fid_images < dims && typeof r.ours.fid === 'number';
      const trialId = idOf.get(r.trial);
      return h(
        'tr',
        {
          class: `clickable${selected && selected.index === r.trial ? ' selected' : ''}`,
          'data-trial': r.trial,
          onclick: () => {
            if (trialId) location.hash = `#/experiments/${seg(this.id)}/trials/${seg(trialId)}`;
          },
        },
        h('td', { class: 'num' }, r.trial),
        report.axes.map((a) => h('td', {}, axisText(r.axes[a]))),
        h('td', {}, r.val),
        h('td', {}, badge(r.state)),
        pair(r.ours.fid, paper.fid, few ? `from ${r.fid_images} images, fewer than its ${dims} feature dimensions: biased upward` : ''),
        pair(r.ours.map, paper.map),
        pair(r.ours.ap50, paper.ap50),
        pair(r.ours.ap75, paper.ap75),
        h(
          'td',
          {
            class: 'num',
            title: `input boxes matched by a detection (score ≥ 0.3) of their category at IoU ≥ 0.5 (%); mean IoU ${fixed2(r.mean_iou)}`,
          },
          fixed2(r.grounding_accuracy),
        ),
        h('td', { class: 'num', title: 'input objects whose category is detected (score ≥ 0.3) anywhere (%)' }, fixed2(r.category_recall)),
        pair(r.ours.infer_s, paper.infer_s),
        augmented ? augmentationCell(r.augmentation, paper.map_gain) : '',
      );
    });
    fill(byId('report'), h('thead', {}, h('tr', {}, head.map((t) => h('th', {}, t)))), h('tbody', {}, rows));
  }

  /** One row per (trial, evaluation): the trial's axes, then the evaluation's `strip.png`. */
  #comparison(expId, report, trials) {
    const rows = [];
    for (const t of trials) {
      const mine = report.rows.filter((r) => r.trial === t.index);
      (t.eval_jobs || []).forEach((key, k) => {
        const row = mine[k];
        rows.push({ trial: t, job: `${expId}.${key}`, state: row ? row.state : 'blocked', val: row ? row.val : '' });
      });
    }
    const target = byId('comparison');
    if (rows.length === 0) {
      fill(target, h('p', { class: 'muted small' }, 'This experiment has no evaluations.'));
      return;
    }
    for (const r of rows) if (r.state === 'succeeded' && !this.strips.has(r.job)) this.#loadStrip(r.job);
    const shown = JSON.stringify(rows.map((r) => [r.job, r.state, this.strips.get(r.job)]));
    if (shown === this.comparisonShown) return;
    this.comparisonShown = shown;
    fill(
      target,
      rows.map((r) => {
        const label = h(
          'div',
          { class: 'comparison-label small' },
          h('div', {}, `trial ${r.trial.index}`),
          Object.entries(r.trial.axes || {}).map(([a, v]) => h('div', {}, `${a} = ${axisText(v)}`)),
          h('div', { class: 'muted' }, r.val),
        );
        const strip = this.strips.get(r.job);
        const picture =
          r.state !== 'succeeded'
            ? h('div', { class: 'placeholder muted small' }, `appears when the evaluation succeeds (it is ${r.state})`)
            : strip?.url
              ? h('img', { src: strip.url, alt: `comparison strip of trial ${r.trial.index}`, 'data-job': r.job })
              : h('div', { class: 'placeholder muted small' }, strip?.error || 'loading…');
        return h('div', { class: 'comparison-row', 'data-trial': r.trial.index }, label, picture);
      }),
    );
  }

  async #loadStrip(job) {
    this.strips.set(job, { loading: true });
    try {
      const response = await api(`/v1/jobs/${seg(job)}/files/strip.png`, { raw: true });
      const blob = await response.blob();
      this.strips.set(job, { url: URL.createObjectURL(blob) });
    } catch (e) {
      this.strips.set(job, { error: e.message });
    }
  }

  chartPoints() {
    return this.trial.chartPoints();
  }

  resize() {
    this.trial.resize();
  }

  destroy() {
    for (const s of this.strips.values()) if (s.url) URL.revokeObjectURL(s.url);
    this.trial.destroy();
  }
}

/**
 * A trial's detector augmentation as a report cell: the gain in mAP points with the paper's "UP"
 * beside it, the two mAPs in the tooltip; empty on rows without one.
 */
function augmentationCell(a, paperGain) {
  if (!a) return h('td', {});
  const signed = (v) => (typeof v === 'number' ? `${v >= 0 ? '+' : ''}${fixed2(v)}` : '–');
  return h(
    'td',
    {
      class: 'num',
      title: `evaluation detector mAP on real validation images: ${fixed2(a.map_real)} trained on real images, ${fixed2(
        a.map_augmented,
      )} with ${a.synthetic_images ?? '–'} synthetic added (${a.state})`,
    },
    signed(a.map_gain),
    typeof paperGain === 'number' ? h('span', { class: 'paper', title: 'the paper’s number' }, ` (${signed(paperGain)})`) : '',
  );
}

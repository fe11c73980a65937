// The experiment list (`#/`): every experiment with its state, job counts and progress.

import { api } from './api.js';
import { badge, fill, h, progressBar, stateCounts, when } from './dom.js';

/** The list page; `refresh` reads `GET /v1/experiments` again. */
export class ListView {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.size = 100;
    this.name = '';
    ctx.crumbs();
    this.filter = h('input', {
      id: 'filter',
      type: 'search',
      placeholder: 'Filter by name',
      'aria-label': 'Filter experiments by name',
      oninput: () => {
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => {
          this.name = this.filter.value.trim();
          ctx.refreshNow();
        }, 300);
      },
    });
    this.summary = h('span', { id: 'list-summary', class: 'muted' });
    this.body = h('tbody');
    this.empty = h(
      'p',
      { class: 'muted', hidden: true },
      'No experiments yet. Submit a grid with ',
      h('code', {}, 'spatiallock submit GRID'),
      ' or run one here with ',
      h('code', {}, 'spatiallock run GRID --serve'),
      '.',
    );
    this.more = h(
      'button',
      {
        id: 'more',
        class: 'secondary',
        hidden: true,
        onclick: () => {
          this.size = Math.min(1000, this.size + 100);
          ctx.refreshNow();
        },
      },
      'Show more',
    );
    const head = ['Experiment', 'State', 'Progress', 'Jobs', 'Trials', 'Priority', 'Submitted'];
    root.append(
      h(
        'section',
        {},
        h('div', { class: 'toolbar' }, h('h1', {}, 'Experiments'), this.filter, this.summary),
        h(
          'div',
          { class: 'table-wrap' },
          h('table', { id: 'experiments', class: 'grid' }, h('thead', {}, h('tr', {}, head.map((t) => h('th', {}, t)))), this.body),
        ),
        this.empty,
        this.more,
      ),
    );
  }

  async refresh(current) {
    const query = new URLSearchParams({ page_size: String(this.size) });
    if (this.name) query.set('name', this.name);
    const page = await api(`/v1/experiments?${query}`);
    if (!current()) return null;
    const items = page.items || [];
    fill(
      this.body,
      items.map((e) =>
        h(
          'tr',
          { 'data-experiment': e.id },
          h(
            'td',
            {},
            h('a', { href: `#/experiments/${encodeURIComponent(e.id)}` }, e.name),
            h('div', { class: 'muted small mono' }, e.id),
          ),
          h('td', {}, badge(e.state)),
          h('td', {}, progressBar(e.jobs)),
          h('td', {}, h('div', { class: 'counts' }, stateCounts(e.jobs))),
          h('td', { class: 'num' }, e.num_trials),
          h('td', { class: 'num' }, e.priority),
          h('td', { class: 'small' }, when(e.created_at_ms)),
        ),
      ),
    );
    const byState = {};
    for (const e of items) byState[e.state] = (byState[e.state] || 0) + 1;
    this.summary.textContent = Object.entries(byState)
      .map(([s, n]) => `${n} ${s}`)
      .join(' · ');
    this.empty.hidden = items.length > 0 || Boolean(this.name);
    this.more.hidden = !page.next_page_token || this.size >= 1000;
    return { delay: 3000, note: 'live' };
  }

  destroy() {
    clearTimeout(this.debounce);
  }
}

// Live curves of one job's metric series, drawn with uPlot (vendored under vendor/uplot/,
// loaded before this module as the global `uPlot`).

import { h, fill } from './dom.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2'];

// Steps are whole numbers: ticks at 1, 2, 5, 10, 20, 50, … only.
const STEP_INCREMENTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].flatMap((e) => [1, 2, 5].map((m) => m * 10 ** e));

/** The charts of a job: a title and the metric names (with legend labels) it draws. */
export const CHARTS = [
  {
    key: 'loss',
    title: 'Loss (diffusion / perception)',
    series: [
      ['loss_diffusion', 'L diffusion'],
      ['loss_perception', 'L perception'],
      ['loss', 'L total'],
    ],
  },
  { key: 'weights', title: 'Loss weights λg / λp', series: [['lambda_g', 'λg'], ['lambda_p', 'λp']] },
  { key: 'gate', title: 'Mean gate tanh(α)', series: [['gate_mean', 'gate mean']] },
  { key: 'speed', title: 'Images / s', series: [['images_per_second', 'images/s']] },
];

/** Every metric name the charts draw (for `?names=`). */
export const CHART_METRICS = [...new Set(CHARTS.flatMap((c) => c.series.map(([name]) => name)))];

/** uPlot's aligned data for `names` of `series` (`{name: [{step, value}]}`): the union of
 * their steps, null where a series has no point. */
export function align(series, names) {
  const steps = new Set();
  for (const name of names) for (const p of series[name] || []) steps.add(p.step);
  const xs = [...steps].sort((a, b) => a - b);
  const at = new Map(xs.map((s, i) => [s, i]));
  const ys = names.map((name) => {
    const column = new Array(xs.length).fill(null);
    for (const p of series[name] || []) column[at.get(p.step)] = typeof p.value === 'number' ? p.value : null;
    return column;
  });
  return [xs, ...ys];
}

/** The four charts of one job, updated in place as new points arrive. */
export class ChartPanel {
  constructor(container) {
    this.container = container;
    this.slots = new Map();
    fill(container);
    for (const def of CHARTS) {
      const plot = h('div', { class: 'chart-plot' });
      const empty = h('div', { class: 'chart-empty muted' }, 'no points yet');
      const box = h('div', { class: 'chart', 'data-chart': def.key }, h('h4', {}, def.title), plot, empty);
      container.append(box);
      this.slots.set(def.key, { def, box, plot, empty, chart: null, names: '' });
    }
  }

  /** Draws `series` (`{name: [{step, value}]}`), keeping charts whose series are unchanged. */
  update(series) {
    for (const slot of this.slots.values()) {
      const present = slot.def.series.filter(([name]) => (series?.[name] || []).length > 0);
      const names = present.map(([name]) => name).join(',');
      const data = align(series || {}, present.map(([name]) => name));
      if (present.length === 0) {
        this.#drop(slot);
        slot.empty.hidden = false;
        continue;
      }
      slot.empty.hidden = true;
      if (slot.chart && slot.names === names) {
        slot.chart.setData(data);
        continue;
      }
      this.#drop(slot);
      slot.names = names;
      slot.chart = new globalThis.uPlot(
        {
          width: this.#width(slot),
          height: 190,
          scales: { x: { time: false } },
          legend: { live: true },
          cursor: { drag: { x: true, y: false } },
          axes: [{ label: 'step', labelSize: 18, size: 36, incrs: STEP_INCREMENTS }, { size: 56 }],
          series: [
            { label: 'step' },
            ...present.map(([, label], i) => ({
              label,
              stroke: COLORS[i % COLORS.length],
              width: 1.5,
              spanGaps: true,
              points: { show: data[0].length <= 40 },
            })),
          ],
        },
        data,
        slot.plot,
      );
    }
  }

  /** The number of steps each chart draws (`{loss: 4, …}`; 0 when it has none). */
  points() {
    const out = {};
    for (const [key, slot] of this.slots) out[key] = slot.chart ? slot.chart.data[0].length : 0;
    return out;
  }

  /** Fits the charts to their boxes again (after the window changed size). */
  resize() {
    for (const slot of this.slots.values()) {
      if (slot.chart) slot.chart.setSize({ width: this.#width(slot), height: 190 });
    }
  }

  /** Frees the charts. */
  destroy() {
    for (const slot of this.slots.values()) this.#drop(slot);
  }

  #width(slot) {
    return Math.max(240, Math.floor(slot.box.clientWidth - 16));
  }

  #drop(slot) {
    if (slot.chart) slot.chart.destroy();
    slot.chart = null;
    slot.names = '';
  }
}

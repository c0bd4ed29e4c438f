// The charts and tables every lab draws: bars per block and lines (uPlot), a rows x blocks
// heatmap (canvas), histograms over bin centres, tables from rows, and their exports (PNG of
// the drawing, CSV of the numbers) wired to buttons. uPlot is a small, fast canvas charting
// library with hover values built in.

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

const BLUE = '#3b6ea8';

export function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return x.toLocaleString('en-US');
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? x.toExponential(4) : x.toPrecision(5);
}

/** Saves text (CSV unless `type` says otherwise) or a canvas (PNG) as a download. */
export function download(name: string, data: string | Uint8Array | Blob | HTMLCanvasElement, type = 'text/csv'): void {
  const a = document.createElement('a');
  a.download = name;
  const blob = !(data instanceof HTMLCanvasElement);
  if (blob) {
    a.href = URL.createObjectURL(data instanceof Blob ? data : new Blob([data as BlobPart], { type }));
  } else {
    a.href = data.toDataURL('image/png');
  }
  a.click();
  if (blob) setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}

export function csv(header: string[], rows: (string | number | null)[][]): string {
  const cell = (v: string | number | null) => {
    const s = v === null ? '' : String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [header, ...rows].map((r) => r.map(cell).join(',')).join('\n') + '\n';
}

/** A uPlot canvas with its axes, legend-free, for PNG export (background filled white). */
export function plotCanvas(u: uPlot): HTMLCanvasElement {
  const src = u.ctx.canvas;
  const out = document.createElement('canvas');
  out.width = src.width;
  out.height = src.height;
  const ctx = out.getContext('2d');
  if (ctx) {
    ctx.fillStyle = 'white';
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(src, 0, 0);
  }
  return out;
}

/**
 * What a chart shows, kept on its element as `data-chart` (JSON) at every draw, so the
 * browser tests check a chart's data and axis ranges rather than its pixels: x (bin centres,
 * blocks, or the index of a category), the category labels where x is categorical, every
 * series, and the x and y ranges drawn.
 */
export interface ChartState {
  x: number[];
  categories: string[] | null;
  series: { label: string; y: (number | null)[] }[];
  xRange: [number, number];
  yRange: [number, number];
  /** The labels of the x and the y axis. */
  ticks: [string[], string[]];
}

function exposeState(el: HTMLElement, categories: string[] | null = null): uPlot.Hooks.Arrays {
  return {
    draw: [
      (u: uPlot) => {
        const state: ChartState = {
          x: [...(u.data[0] as number[])],
          categories,
          series: u.series.slice(1).map((s, i) => ({ label: String(s.label ?? ''), y: [...(u.data[i + 1] as (number | null)[])] })),
          xRange: [u.scales.x.min ?? NaN, u.scales.x.max ?? NaN],
          yRange: [u.scales.y.min ?? NaN, u.scales.y.max ?? NaN],
          // The tick labels drawn (uPlot keeps them on each axis after its layout).
          ticks: u.axes.map((a) => ((a as { _values?: unknown[] })._values ?? [])
            .filter((v) => v !== null && v !== undefined && v !== '').map(String)) as [string[], string[]],
        };
        el.dataset.chart = JSON.stringify(state);
      },
    ],
  };
}

/** The chart state `exposeState` keeps on `el`, or null before it is drawn. */
export function chartState(el: HTMLElement): ChartState | null {
  return el.dataset.chart ? (JSON.parse(el.dataset.chart) as ChartState) : null;
}

/**
 * An x range that keeps every bar and point whole inside the plot: bars get half their
 * spacing beyond the first and last x; points 5% of the span, and at least 2% of their size
 * either side, so values that are nearly equal (50% and 49.9% sparsity) sit well inside an
 * axis with readable ticks instead of on its two edges.
 */
export function paddedRange(xs: number[], bars: boolean): [number, number] {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return [0, 1];
  const lo = Math.min(...v);
  const hi = Math.max(...v);
  if (bars) {
    const sorted = [...new Set(v)].sort((a, b) => a - b);
    let step = Infinity;
    for (let i = 1; i < sorted.length; i++) step = Math.min(step, sorted[i] - sorted[i - 1]);
    const half = Number.isFinite(step) ? step / 2 : Math.max(0.5, Math.abs(lo) * 0.02);
    return [lo - half, hi + half];
  }
  const pad = Math.max(0.05 * (hi - lo), 0.02 * Math.max(Math.abs(lo), Math.abs(hi)), 1e-9);
  return [lo - pad, hi + pad];
}

/**
 * A log axis labelled at 1, 2 and 5 of every decade (uPlot labels only the powers of ten,
 * which leaves a kurtosis axis from 3 to 300 with two labels); only the powers of ten when it
 * spans more than four decades.
 */
function logAxis(label: string): uPlot.Axis {
  return {
    label,
    size: 70,
    filter: (_u, splits) => splits,
    values: (u, splits) => {
      const lo = u.scales.y.min ?? 1;
      const hi = u.scales.y.max ?? 10;
      const decades = Math.log10(hi / Math.max(lo, 1e-300));
      return splits.map((v) => {
        if (!(v > 0)) return '';
        const lead = Math.round(v / 10 ** Math.floor(Math.log10(v) + 1e-9));
        const keep = decades > 4 ? lead === 1 : lead === 1 || lead === 2 || lead === 5;
        return keep ? fmt(v) : '';
      });
    },
  };
}

/** Bars of one value per block (x = block index). */
export function barsPerBlock(el: HTMLElement, label: string, x: number[], y: (number | null)[], log = false): uPlot {
  el.replaceChildren();
  const width = Math.max(320, el.clientWidth || 640);
  const range = paddedRange(x, true);
  return new uPlot(
    {
      width,
      height: 240,
      scales: { x: { time: false, range: () => range }, y: log ? { distr: 3 } : {} },
      axes: [{ label: 'block' }, log ? logAxis(label) : { label, size: 70 }],
      series: [
        { label: 'block' },
        { label, stroke: BLUE, fill: BLUE + '99', paths: uPlot.paths.bars!({ size: [0.7, 40] }), points: { show: false } },
      ],
      legend: { live: true },
      hooks: exposeState(el),
    },
    [x, y.map((v) => (v === null || (log && v <= 0) ? null : v))] as uPlot.AlignedData,
    el,
  );
}

/** Equal bins over [lo, hi]: bin i spans [lo + i w, lo + (i + 1) w], w = (hi - lo) / n. */
export function binEdges(h: { lo: number; hi: number; counts: number[] }): { lo: number; hi: number; centre: number }[] {
  const w = (h.hi - h.lo) / h.counts.length;
  return h.counts.map((_, i) => ({ lo: h.lo + i * w, hi: h.lo + (i + 1) * w, centre: h.lo + (i + 0.5) * w }));
}

/** The centre of every bin, the x of a histogram's bars. */
export function binCentres(h: { lo: number; hi: number; counts: number[] }): number[] {
  return binEdges(h).map((b) => b.centre);
}

/** A histogram: bars over bin centres, log-scaled counts (empty bins drawn as gaps). */
export function histogram(el: HTMLElement, lo: number, hi: number, counts: number[]): uPlot {
  el.replaceChildren();
  const width = Math.max(320, el.clientWidth || 640);
  const x = binCentres({ lo, hi, counts });
  const range = paddedRange(x, true);
  return new uPlot(
    {
      width,
      height: 220,
      scales: { x: { time: false, range: () => range }, y: { distr: 3 } },
      axes: [{ label: 'value' }, logAxis('count (log)')],
      hooks: exposeState(el),
      series: [
        { label: 'bin centre', value: (_u, v) => fmt(v) },
        { label: 'count', stroke: BLUE, fill: BLUE + '99', paths: uPlot.paths.bars!({ size: [1, 100] }), points: { show: false } },
      ],
    },
    [x, counts.map((c) => (c > 0 ? c : null))] as uPlot.AlignedData,
    el,
  );
}

/** Viridis-like colour ramp, t in [0, 1]. */
function colour(t: number): string {
  const stops = [
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
  ];
  const x = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1);
  const i = Math.floor(x);
  const f = x - i;
  const c = stops[i].map((a, k) => Math.round(a + f * (stops[i + 1][k] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export interface Heatmap {
  canvas: HTMLCanvasElement;
}

/**
 * A rows x columns heatmap (rows = linear roles, columns = blocks), colour on a linear or
 * log scale; hovering a cell shows its value in `tip`, clicking it calls `onPick(row, col)`.
 * The colour bar beside it is labelled with the lowest and highest value (one label when
 * they are equal) and the quantity, and the canvas is as wide as its labels need. What it
 * shows is kept on the canvas as `data-chart` (rows, columns, the colour range) for tests.
 */
export function heatmap(
  canvas: HTMLCanvasElement,
  tip: HTMLElement,
  rows: string[],
  cols: number[],
  value: (r: number, c: number) => number | null,
  label: string,
  log: boolean,
  xName = 'block',
  onPick?: (r: number, c: number) => void,
  /** A fixed colour scale [lo, hi] (linear) instead of the values' own range. */
  range?: [number, number],
): Heatmap {
  const left = 90;
  const top = 8;
  const bottom = 40;
  const cw = Math.max(8, Math.min(28, Math.floor(900 / Math.max(1, cols.length))));
  const ch = 22;
  const vals: number[] = [];
  for (let r = 0; r < rows.length; r++) for (let c = 0; c < cols.length; c++) {
    const v = value(r, c);
    if (v !== null && Number.isFinite(v) && (!log || v > 0)) vals.push(log ? Math.log10(v) : v);
  }
  const lo = range ? range[0] : Math.min(...vals);
  const hi = range ? range[1] : Math.max(...vals);
  const span = hi > lo ? hi - lo : 1;
  const show = (v: number) => fmt(log ? 10 ** v : v);
  const font = '12px system-ui, sans-serif';
  // The colour bar's labels decide the right margin: bar, gap, numbers, gap, the quantity
  // written upwards.
  const measure = canvas.getContext('2d');
  if (!measure) return { canvas };
  measure.font = font;
  const numbers = vals.length ? Math.max(measure.measureText(show(hi)).width, measure.measureText(show(lo)).width) : 0;
  const right = 16 + 12 + 6 + Math.ceil(numbers) + 8 + 16;
  canvas.width = left + cols.length * cw + right;
  canvas.height = Math.max(top + rows.length * ch + bottom, top + Math.ceil(measure.measureText(label).width) + 16);
  const ctx = canvas.getContext('2d');
  if (!ctx) return { canvas };
  ctx.fillStyle = 'white';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = font;
  ctx.textBaseline = 'middle';
  for (let r = 0; r < rows.length; r++) {
    ctx.fillStyle = '#1d232a';
    ctx.textAlign = 'right';
    ctx.fillText(rows[r], left - 6, top + r * ch + ch / 2);
    for (let c = 0; c < cols.length; c++) {
      const v = value(r, c);
      const t = v === null || !Number.isFinite(v) || (log && v <= 0) ? null : ((log ? Math.log10(v) : v) - lo) / span;
      ctx.fillStyle = t === null ? '#eee' : colour(t);
      ctx.fillRect(left + c * cw, top + r * ch, cw - 1, ch - 1);
    }
  }
  ctx.fillStyle = '#1d232a';
  ctx.textAlign = 'center';
  const step = Math.ceil(cols.length / 20);
  for (let c = 0; c < cols.length; c += step) ctx.fillText(String(cols[c]), left + c * cw + cw / 2, top + rows.length * ch + 10);
  ctx.fillText(xName, left + (cols.length * cw) / 2, top + rows.length * ch + 28);
  // Colour bar.
  const bx = left + cols.length * cw + 16;
  const bh = rows.length * ch;
  for (let i = 0; i < bh; i++) {
    ctx.fillStyle = colour(hi > lo ? 1 - i / bh : 0);
    ctx.fillRect(bx, top + i, 12, 1);
  }
  ctx.textAlign = 'left';
  ctx.fillStyle = '#1d232a';
  if (vals.length) {
    ctx.fillText(show(hi), bx + 18, top + 6);
    if (hi > lo) ctx.fillText(show(lo), bx + 18, top + bh - 6);
  }
  ctx.save();
  ctx.translate(bx + 18 + numbers + 8 + 8, top + bh / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = 'center';
  ctx.fillText(log ? `${label} (log)` : label, 0, 0);
  ctx.restore();
  canvas.dataset.chart = JSON.stringify({
    rows,
    cols,
    colourRange: vals.length ? [log ? 10 ** lo : lo, log ? 10 ** hi : hi] : null,
    width: canvas.width,
    labelsEnd: bx + 18 + numbers,
  });
  canvas.setAttribute('aria-label', `${label} per ${xName} and ${rows.length > 0 ? 'row' : 'linear layer'}`);
  const cellAt = (ev: MouseEvent): [number, number] | null => {
    const rect = canvas.getBoundingClientRect();
    const x = ((ev.clientX - rect.left) * canvas.width) / rect.width;
    const y = ((ev.clientY - rect.top) * canvas.height) / rect.height;
    const c = Math.floor((x - left) / cw);
    const r = Math.floor((y - top) / ch);
    return r >= 0 && r < rows.length && c >= 0 && c < cols.length ? [r, c] : null;
  };
  canvas.onmousemove = (ev) => {
    const at = cellAt(ev);
    tip.textContent = at ? `${xName} ${cols[at[1]]}, ${rows[at[0]]}: ${label} = ${fmt(value(at[0], at[1]))}${onPick ? ' (click to select)' : ''}` : '';
  };
  canvas.onmouseleave = () => (tip.textContent = '');
  canvas.style.cursor = onPick ? 'pointer' : '';
  canvas.onclick = (ev) => {
    const at = cellAt(ev);
    if (at && onPick) onPick(at[0], at[1]);
  };
  return { canvas };
}

const PALETTE = ['#3b6ea8', '#d9822b', '#2e8b57', '#a23b72', '#6b5ca5', '#8c6d31', '#c0392b', '#16a085'];

export interface Series {
  label: string;
  y: (number | null)[];
  /** Draw as bars (one bar series at most per chart reads well) instead of a line. */
  bars?: boolean;
  /** A fixed colour (e.g. one per norm placement) instead of the palette's next. */
  colour?: string;
  /** Points only, no line (values measured only at some x, e.g. every eval step). */
  pointsOnly?: boolean;
}

/**
 * Several series over one x axis, as lines with points (or bars for a series that asks).
 * `log` puts y on a log scale (non-positive values become gaps). Hovering shows every
 * series' value at that x. With `categories`, x is not a quantity but one of these names
 * (runs): the axis names each at its place, x = 0 … n-1. The x axis always keeps every bar
 * and point inside the plot (`paddedRange`).
 */
export function multi(el: HTMLElement, xLabel: string, yLabel: string, x: number[], series: Series[],
  opts: { log?: boolean; height?: number; categories?: string[]; wholeX?: boolean } = {}): uPlot {
  el.replaceChildren();
  const width = Math.max(320, el.clientWidth || 640);
  const clean = (y: (number | null)[]) => y.map((v) => (v === null || !Number.isFinite(v) || (opts.log && v <= 0) ? null : v));
  const cats = opts.categories ?? null;
  const xs = cats ? cats.map((_, i) => i) : x;
  const range = paddedRange(xs, cats !== null || series.some((s) => s.bars));
  const tilt = cats !== null && cats.length > 3;
  const xAxis: uPlot.Axis = cats
    ? {
      label: xLabel,
      splits: () => xs,
      values: (_u, splits) => splits.map((v) => cats[v] ?? ''),
      ...(tilt ? { rotate: -20, size: 90 } : { size: 50 }),
    }
    // wholeX: ticks only at whole numbers (block indices).
    : { label: xLabel, ...(opts.wholeX ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {}) };
  return new uPlot(
    {
      width,
      height: (opts.height ?? 240) + (tilt ? 40 : 0),
      scales: { x: { time: false, range: () => range }, y: opts.log ? { distr: 3 } : {} },
      axes: [xAxis, opts.log ? logAxis(yLabel) : { label: yLabel, size: 70 }],
      series: [
        { label: xLabel, value: (_u, v) => (cats ? (cats[v] ?? '') : fmt(v)) },
        ...series.map((s, i) => {
          const c = s.colour ?? PALETTE[i % PALETTE.length];
          if (s.bars) return { label: s.label, stroke: c, fill: c + '66', value: (_u: uPlot, v: number) => fmt(v), points: { show: false }, paths: uPlot.paths.bars!({ size: [0.7, 40] }) };
          if (s.pointsOnly) return { label: s.label, stroke: c, width: 0, value: (_u: uPlot, v: number) => fmt(v), points: { show: true, size: 8, fill: c }, paths: () => null };
          return { label: s.label, stroke: c, width: 2, value: (_u: uPlot, v: number) => fmt(v), points: { show: x.length <= 60, size: 6 }, spanGaps: true };
        }),
      ],
      legend: { live: true },
      hooks: exposeState(el, cats),
    },
    [xs, ...series.map((s) => clean(s.y))] as uPlot.AlignedData,
    el,
  );
}

/** A lab's uPlot charts by name: drawing one again destroys the old drawing first. */
export class Plots {
  private plots: Record<string, uPlot | null> = {};

  draw(key: string, make: () => uPlot): uPlot {
    this.plots[key]?.destroy();
    const p = make();
    this.plots[key] = p;
    return p;
  }

  clear(key: string): void {
    this.plots[key]?.destroy();
    this.plots[key] = null;
  }

  get(key: string): uPlot | null {
    return this.plots[key] ?? null;
  }
}

/** The button saves a PNG of what `drawing` gives now (a uPlot or a canvas; null: nothing). */
export function pngButton(button: HTMLElement, name: string, drawing: () => uPlot | HTMLCanvasElement | null): void {
  button.onclick = () => {
    const d = drawing();
    if (d) download(name, d instanceof HTMLCanvasElement ? d : plotCanvas(d));
  };
}

export interface Table {
  header: string[];
  rows: (string | number | null)[][];
}

/** The button saves a CSV of what `table` gives now (null: nothing yet); `name` may depend on it. */
export function csvButton(button: HTMLElement, name: string | (() => string), table: () => Table | null): void {
  button.onclick = () => {
    const t = table();
    if (t) download(typeof name === 'string' ? name : name(), csv(t.header, t.rows));
  };
}

/** Table rows of text cells; `each(tr, i)` may add a class, a data attribute or a click. */
export function tableRows(body: HTMLTableSectionElement, rows: string[][], each?: (tr: HTMLTableRowElement, i: number) => void): void {
  body.replaceChildren(...rows.map((cells, i) => {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.append(td);
    }
    each?.(tr, i);
    return tr;
  }));
}

/** A two-column table: a header cell (the name) and a value cell per row. */
export function keyValueRows(body: HTMLTableSectionElement, rows: [string, string][], each?: (td: HTMLTableCellElement, key: string, i: number) => void): void {
  body.replaceChildren(...rows.map(([k, v], i) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.textContent = k;
    const td = document.createElement('td');
    td.textContent = v;
    each?.(td, k, i);
    tr.append(th, td);
    return tr;
  }));
}

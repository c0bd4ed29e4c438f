// The page: reads the experiment from the URL and the form, sends requests to the worker
// that owns the lab, and draws its replies. Nothing heavy runs here, so the page never
// freezes; if the worker dies it is restarted and the form keeps what the user typed.

import type { BackendInfo, FromWorker, ReduceRequest, StatsRun, ToWorker } from './protocol';

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page is missing #${id}`);
  return el as T;
};

const backendLine = $<HTMLParagraphElement>('backend');
const form = $<HTMLFormElement>('reduce-form');
const runButton = $<HTMLButtonElement>('run');
const cancelButton = $<HTMLButtonElement>('cancel');
const progress = $<HTMLProgressElement>('progress');
const statusLine = $<HTMLSpanElement>('status');
const noticeBox = $<HTMLParagraphElement>('notice');
const errorBox = $<HTMLParagraphElement>('error');
const resultBox = $<HTMLDivElement>('result');
const cliLine = $<HTMLElement>('cli-line');

const fields = {
  rows: $<HTMLInputElement>('rows'),
  cols: $<HTMLInputElement>('cols'),
  seed: $<HTMLInputElement>('seed'),
  k: $<HTMLInputElement>('k'),
  bins: $<HTMLInputElement>('bins'),
  perColumn: $<HTMLInputElement>('per-column'),
};

const params = new URLSearchParams(location.search);
const allowGpu = params.get('backend') !== 'cpu';

// ---- experiment <-> URL and form ----------------------------------------------------------

function loadFromUrl(): void {
  for (const key of ['rows', 'cols', 'seed', 'k', 'bins'] as const) {
    const v = params.get(key);
    if (v !== null) fields[key].value = v;
  }
  const pc = params.get('per_column');
  if (pc !== null) fields.perColumn.checked = pc !== '0';
}

function readForm(): ReduceRequest {
  const int = (el: HTMLInputElement, name: string, min: number, max: number): number => {
    const v = Number(el.value);
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new Error(`${name} must be a whole number from ${min} to ${max}, not "${el.value}"`);
    }
    return v;
  };
  const k = Number(fields.k.value);
  if (!Number.isFinite(k) || k < 0) throw new Error(`k must be a number >= 0, not "${fields.k.value}"`);
  return {
    rows: int(fields.rows, 'rows', 1, 1 << 26),
    cols: int(fields.cols, 'cols', 1, 1 << 22),
    seed: int(fields.seed, 'seed', 0, Number.MAX_SAFE_INTEGER),
    outlier_k: k,
    bins: int(fields.bins, 'bins', 1, 256),
    per_column: fields.perColumn.checked,
  };
}

function saveToUrl(r: ReduceRequest): void {
  const p = new URLSearchParams(location.search);
  p.set('rows', String(r.rows));
  p.set('cols', String(r.cols));
  p.set('seed', String(r.seed));
  p.set('k', String(r.outlier_k));
  p.set('bins', String(r.bins));
  p.set('per_column', r.per_column ? '1' : '0');
  history.replaceState(null, '', `${location.pathname}?${p}`);
  cliLine.textContent =
    `layerlab reduce --seed ${r.seed} --rows ${r.rows} --cols ${r.cols} --k ${r.outlier_k} --bins ${r.bins}` +
    (r.per_column ? '' : ' --no-columns');
}

// ---- the worker ---------------------------------------------------------------------------

let worker: Worker;
let nextId = 1;
let running: number | null = null;
let cancelTimer: number | undefined;
let lastRun: StatsRun | null = null;

function showBackend(b: BackendInfo): void {
  backendLine.dataset.kind = b.kind;
  backendLine.textContent =
    b.kind === 'gpu' ? `Backend: GPU, ${b.name}` : `Backend: ${b.name}${b.reason ? `, because ${b.reason}` : ''}`;
}

function showError(msg: string | null): void {
  errorBox.hidden = msg === null;
  errorBox.textContent = msg ?? '';
}

function setRunning(id: number | null): void {
  running = id;
  runButton.disabled = id !== null;
  cancelButton.disabled = id === null;
  if (id === null) window.clearTimeout(cancelTimer);
}

function send(msg: ToWorker): void {
  worker.postMessage(msg);
}

function startWorker(): void {
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = (ev: MessageEvent<FromWorker>) => onReply(ev.data);
  worker.onerror = (ev: ErrorEvent) => {
    ev.preventDefault();
    restartWorker(`the lab's worker stopped (${ev.message || 'unknown error'})`);
  };
  runButton.disabled = true;
  send({ type: 'init', allowGpu });
}

function restartWorker(reason: string): void {
  worker.terminate();
  setRunning(null);
  progress.value = 0;
  statusLine.textContent = `Restarted the lab: ${reason}.`;
  startWorker();
}

function onReply(msg: FromWorker): void {
  switch (msg.type) {
    case 'ready':
      showBackend(msg.backend);
      runButton.disabled = false;
      statusLine.textContent = 'Ready.';
      break;
    case 'init-failed':
      backendLine.textContent = 'Backend: none';
      showError(`The lab could not start: ${msg.message}`);
      statusLine.textContent = 'Not started.';
      break;
    case 'progress':
      if (msg.id !== running) return;
      progress.max = msg.total;
      progress.value = msg.done;
      statusLine.textContent = `${msg.stage}: ${msg.done} of ${msg.total} steps`;
      break;
    case 'result':
      if (msg.id !== running) return;
      setRunning(null);
      showBackend(msg.backend);
      lastRun = msg.run;
      drawRun(msg.run);
      statusLine.textContent = 'Done.';
      break;
    case 'error':
      if (msg.id !== running) return;
      setRunning(null);
      showBackend(msg.backend);
      progress.value = 0;
      if (msg.message === 'the run was cancelled') {
        statusLine.textContent = 'Cancelled.';
      } else {
        statusLine.textContent = 'Failed.';
        showError(msg.message);
      }
      break;
    case 'device-lost':
      showBackend(msg.backend);
      statusLine.textContent = msg.lost
        ? 'The GPU device was destroyed; the next run will finish on the CPU.'
        : 'No GPU is in use, so there is nothing to lose.';
      break;
  }
}

// ---- drawing ------------------------------------------------------------------------------

function fmt(x: number | null): string {
  if (x === null) return 'undefined';
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return x.toLocaleString('en-US');
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? x.toExponential(5) : x.toPrecision(6);
}

function drawRun(run: StatsRun): void {
  const s = run.stats;
  noticeBox.hidden = run.notice === null;
  noticeBox.textContent = run.notice ?? '';
  const rows: [string, string, number | null][] = [
    ['shape', 'shape', null],
    ['count', 'values', s.count],
    ['mean', 'mean', s.mean],
    ['std', 'std', s.std],
    ['mean_abs', 'mean |w|', s.mean_abs],
    ['max_abs', 'max |w|', s.max_abs],
    ['min', 'min', s.min],
    ['max', 'max', s.max],
    ['kurtosis', 'kurtosis (Pearson)', s.kurtosis],
    ['outlier_threshold', `outlier threshold (${s.outlier_k} × mean |w|)`, s.outlier_threshold],
    ['outlier_count', 'outliers', s.outlier_count],
    ['outlier_fraction', 'outlier fraction', s.outlier_fraction],
  ];
  const body = document.querySelector('#stats-table tbody') as HTMLTableSectionElement;
  body.replaceChildren(
    ...rows.map(([key, label, value]) => {
      const tr = document.createElement('tr');
      const th = document.createElement('th');
      th.textContent = label;
      const td = document.createElement('td');
      td.dataset.stat = key;
      if (key === 'shape') {
        td.textContent = `[${s.rows}, ${s.cols}]`;
      } else {
        td.dataset.value = String(value);
        td.textContent = fmt(value);
      }
      tr.append(th, td);
      return tr;
    }),
  );
  drawHistogram(s.histogram.counts, s.histogram.lo, s.histogram.hi);
  drawColumns(run);
  resultBox.hidden = false;
}

function drawHistogram(counts: number[], lo: number, hi: number): void {
  const canvas = $<HTMLCanvasElement>('histogram');
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  // Log scale: heavy tails are the point of this view.
  const top = Math.log10(1 + Math.max(1, ...counts));
  const bw = w / counts.length;
  ctx.fillStyle = '#3b6ea8';
  counts.forEach((c, i) => {
    const bh = (Math.log10(1 + c) / top) * (h - 4);
    ctx.fillRect(i * bw + 0.5, h - bh, Math.max(1, bw - 1), bh);
  });
  $('histogram-caption').textContent =
    `Histogram of the values over [${fmt(lo)}, ${fmt(hi)}], ${counts.length} bins, log-scaled counts.`;
}

function drawColumns(run: StatsRun): void {
  const table = $<HTMLTableElement>('columns-table');
  const c = run.stats.columns;
  table.hidden = c === null;
  if (!c) return;
  const order = c.outlier_fraction.map((_, i) => i).sort((a, b) => c.outlier_fraction[b] - c.outlier_fraction[a]);
  const body = table.querySelector('tbody') as HTMLTableSectionElement;
  body.replaceChildren(
    ...order.slice(0, 8).map((i) => {
      const tr = document.createElement('tr');
      for (const text of [String(i), fmt(c.mean_abs[i]), fmt(c.outlier_fraction[i]), fmt(c.kurtosis[i])]) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
}

// ---- controls -----------------------------------------------------------------------------

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (running !== null) return;
  let request: ReduceRequest;
  try {
    request = readForm();
  } catch (e) {
    showError((e as Error).message);
    return;
  }
  showError(null);
  saveToUrl(request);
  const id = nextId++;
  setRunning(id);
  progress.value = 0;
  statusLine.textContent = 'Running…';
  send({ type: 'reduce', id, request });
});

cancelButton.addEventListener('click', () => {
  if (running === null) return;
  statusLine.textContent = 'Cancelling…';
  send({ type: 'cancel' });
  // A step that never yields cannot hear "cancel": after 3 s, stop the worker outright.
  cancelTimer = window.setTimeout(() => {
    if (running !== null) restartWorker('a cancelled run did not stop within 3 s');
  }, 3000);
});

$('lose-device').addEventListener('click', () => send({ type: 'lose-device' }));

$('download-json').addEventListener('click', () => {
  if (!lastRun) return;
  const blob = new Blob([JSON.stringify(lastRun, null, 2)], { type: 'application/json' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'layerlab-reduce.json';
  a.click();
  URL.revokeObjectURL(a.href);
});

loadFromUrl();
try {
  saveToUrl(readForm());
} catch {
  // An invalid value from the URL stays in the form; Run reports it.
}
startWorker();

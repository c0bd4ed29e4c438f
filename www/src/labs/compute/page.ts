// The compute check: statistics of a seeded synthetic matrix on the page's backend, the
// same numbers `layerlab reduce` prints, so the page and the CLI can be compared directly.

import { download, fmt } from './charts';
import { $, showFailure } from './dom';
import type { LabClient } from './lab-client';
import type { ReduceRequest, StatsRun } from './protocol';


export class ComputeCheck {
  private form = $<HTMLFormElement>('reduce-form');
  private runButton = $<HTMLButtonElement>('run');
  private cancelButton = $<HTMLButtonElement>('cancel');
  private progress = $<HTMLProgressElement>('progress');
  private status = $<HTMLSpanElement>('status');
  private notice = $<HTMLParagraphElement>('notice');
  private error = $<HTMLParagraphElement>('error');
  private result = $<HTMLDivElement>('result');
  private cliLine = $<HTMLElement>('cli-line');
  private fields = {
    rows: $<HTMLInputElement>('rows'),
    cols: $<HTMLInputElement>('cols'),
    seed: $<HTMLInputElement>('seed'),
    k: $<HTMLInputElement>('k'),
    bins: $<HTMLInputElement>('bins'),
    perColumn: $<HTMLInputElement>('per-column'),
  };
  private lastRun: StatsRun | null = null;

  constructor(private client: LabClient) {
    const params = new URLSearchParams(location.search);
    for (const key of ['rows', 'cols', 'seed'] as const) {
      const v = params.get(key);
      if (v !== null) this.fields[key].value = v;
    }
    // ck and cbins: the layer view owns k and bins in the URL.
    if (params.get('ck')) this.fields.k.value = params.get('ck') ?? '';
    if (params.get('cbins')) this.fields.bins.value = params.get('cbins') ?? '';
    const pc = params.get('per_column');
    if (pc !== null) this.fields.perColumn.checked = pc !== '0';
    try {
      this.showCli(this.read());
    } catch {
      // An invalid value from the URL stays in the form; Run reports it.
    }
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.run();
    });
    this.cancelButton.addEventListener('click', () => {
      this.status.textContent = 'Cancelling…';
      client.cancel();
    });
    $('lose-device').addEventListener('click', () => client.loseDevice());
    client.onDeviceLost = (lost) => {
      this.status.textContent = lost
        ? 'The GPU device was destroyed; the next run will finish on the CPU.'
        : 'No GPU is in use, so there is nothing to lose.';
    };
    $('download-json').addEventListener('click', () => {
      if (this.lastRun) download('layerlab-reduce.json', JSON.stringify(this.lastRun, null, 2), 'application/json');
    });
    client.ready.then(() => {
      this.runButton.disabled = false;
      this.status.textContent = 'Ready.';
    }, (e: Error) => this.showError(e.message));
  }

  private read(): ReduceRequest {
    const int = (el: HTMLInputElement, name: string, min: number, max: number): number => {
      const v = Number(el.value);
      if (!Number.isInteger(v) || v < min || v > max) {
        throw new Error(`${name} must be a whole number from ${min} to ${max}, not "${el.value}"`);
      }
      return v;
    };
    const k = Number(this.fields.k.value);
    if (!Number.isFinite(k) || k < 0) throw new Error(`k must be a number >= 0, not "${this.fields.k.value}"`);
    return {
      rows: int(this.fields.rows, 'rows', 1, 1 << 26),
      cols: int(this.fields.cols, 'cols', 1, 1 << 22),
      seed: int(this.fields.seed, 'seed', 0, Number.MAX_SAFE_INTEGER),
      outlier_k: k,
      bins: int(this.fields.bins, 'bins', 1, 256),
      per_column: this.fields.perColumn.checked,
    };
  }

  private showCli(r: ReduceRequest): void {
    this.cliLine.textContent =
      `layerlab reduce --seed ${r.seed} --rows ${r.rows} --cols ${r.cols} --k ${r.outlier_k} --bins ${r.bins}` +
      (r.per_column ? '' : ' --no-columns');
  }

  private saveUrl(r: ReduceRequest): void {
    const p = new URLSearchParams(location.search);
    p.set('tab', 'compute');
    p.set('rows', String(r.rows));
    p.set('cols', String(r.cols));
    p.set('seed', String(r.seed));
    p.set('ck', String(r.outlier_k));
    p.set('cbins', String(r.bins));
    p.set('per_column', r.per_column ? '1' : '0');
    history.replaceState(null, '', `${location.pathname}?${p}`);
    this.showCli(r);
  }

  private showError(msg: string | null): void {
    this.error.hidden = msg === null;
    this.error.textContent = msg ?? '';
  }

  private async run(): Promise<void> {
    if (this.client.busy) {
      this.showError('The lab is busy with another run; wait for it or cancel it.');
      return;
    }
    let request: ReduceRequest;
    try {
      request = this.read();
    } catch (e) {
      this.showError((e as Error).message);
      return;
    }
    this.showError(null);
    this.saveUrl(request);
    this.runButton.disabled = true;
    this.cancelButton.disabled = false;
    this.progress.value = 0;
    this.status.textContent = 'Running…';
    try {
      const reply = await this.client.call({ type: 'reduce', request }, 'result', (stage, done, total) => {
        this.progress.max = total;
        this.progress.value = done;
        this.status.textContent = `${stage}: ${done} of ${total} steps`;
      });
      this.lastRun = reply.run;
      this.draw(reply.run);
      this.status.textContent = 'Done.';
    } catch (e) {
      showFailure(e, this.status, this.progress, (m) => this.showError(m));
    } finally {
      this.runButton.disabled = false;
      this.cancelButton.disabled = true;
    }
  }

  private draw(run: StatsRun): void {
    const s = run.stats;
    this.notice.hidden = run.notice === null;
    this.notice.textContent = run.notice ?? '';
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
    this.drawHistogram(s.histogram.counts, s.histogram.lo, s.histogram.hi);
    this.drawColumns(run);
    this.result.hidden = false;
  }

  private drawHistogram(counts: number[], lo: number, hi: number): void {
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

  private drawColumns(run: StatsRun): void {
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
}

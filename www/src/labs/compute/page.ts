// The compute check: statistics of a seeded synthetic matrix on the page's backend, the
// same numbers `layerlab reduce` prints, so the page and the CLI can be compared directly.

import { download, fmt, histogram, keyValueRows, Plots, tableRows } from '../../shell/charts';
import { $, numberFrom, onEdit, show } from '../../shell/dom';
import type { LabContext, PageLab } from '../../shell/lab';
import { duration, RunStatus } from '../../shell/status';
import type { ComputeSpec, Experiment, ExperimentOf, StatsRun } from '../../protocol';

export function create(ctx: LabContext): PageLab {
  return new ComputeCheck(ctx);
}

class ComputeCheck implements PageLab {
  readonly name = 'compute';
  private runButton = $<HTMLButtonElement>('run');
  private notice = $<HTMLParagraphElement>('notice');
  private result = $<HTMLDivElement>('result');
  private cliLine = $<HTMLElement>('cli-line');
  private status: RunStatus;
  private fields = {
    rows: $<HTMLInputElement>('rows'),
    cols: $<HTMLInputElement>('cols'),
    seed: $<HTMLInputElement>('seed'),
    k: $<HTMLInputElement>('k'),
    bins: $<HTMLInputElement>('bins'),
    perColumn: $<HTMLInputElement>('per-column'),
  };
  private lastRun: StatsRun | null = null;

  constructor(private ctx: LabContext) {
    this.status = new RunStatus(
      { progress: $('progress'), status: $('status'), error: $('error'), cancel: $('cancel') },
      ctx.client,
    );
    this.load(ctx.initial('compute'));
    try {
      this.showCli(this.experiment());
    } catch {
      // An invalid value from the link stays in the form; Run reports it.
    }
    $<HTMLFormElement>('reduce-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.run();
    });
    onEdit(Object.values(this.fields), () => ctx.publish(this));
    $('lose-device').addEventListener('click', () => ctx.client.loseDevice());
    ctx.client.onDeviceLost = (lost) => {
      this.status.say(lost
        ? 'The GPU device was destroyed; the next run will finish on the CPU.'
        : 'No GPU is in use, so there is nothing to lose.');
    };
    $('download-json').addEventListener('click', () => {
      if (this.lastRun) download('layerlab-reduce.json', JSON.stringify(this.lastRun, null, 2), 'application/json');
    });
    this.runButton.disabled = false;
    this.status.say('Ready.');
  }

  private load(e: ExperimentOf<'compute'>): void {
    show(this.fields.rows, e.rows);
    show(this.fields.cols, e.cols);
    show(this.fields.seed, e.seed);
    show(this.fields.k, e.outlier_k);
    show(this.fields.bins, e.bins);
    show(this.fields.perColumn, e.per_column);
  }

  activate(): void {}

  describe(): { what: string; takes: string } {
    const e = this.experiment();
    if (e.lab !== 'compute') throw new Error('not a compute check');
    const values = e.rows * e.cols;
    // Two passes over the values, some 20 million values a second in the browser's CPU path.
    const s = values / 2e7;
    return {
      what: `the statistics of a seeded ${e.rows} × ${e.cols} synthetic matrix (seed ${e.seed}, k = ${e.outlier_k}, ${e.bins} bins${e.per_column ? ', per column too' : ''})`,
      takes: s < 1 ? 'about a second' : `about ${duration(s)}`,
    };
  }

  runNow(): void {
    void this.run();
  }

  experiment(): Experiment {
    const int = (el: HTMLInputElement, name: string, min: number, max: number): number =>
      numberFrom(el, name, (v) => Number.isInteger(v) && v >= min && v <= max, `a whole number from ${min} to ${max}`);
    const spec: ComputeSpec = {
      lab: 'compute',
      rows: int(this.fields.rows, 'rows', 1, 1 << 26),
      cols: int(this.fields.cols, 'cols', 1, 1 << 22),
      seed: int(this.fields.seed, 'seed', 0, Number.MAX_SAFE_INTEGER),
      outlier_k: numberFrom(this.fields.k, 'k', (x) => x >= 0, 'a number >= 0'),
      bins: int(this.fields.bins, 'bins', 1, 256),
      per_column: this.fields.perColumn.checked,
    };
    return { version: 2, ...spec };
  }

  private showCli(e: Experiment): void {
    if (e.lab !== 'compute') return;
    this.cliLine.textContent =
      `layerlab reduce --seed ${e.seed} --rows ${e.rows} --cols ${e.cols} --k ${e.outlier_k} --bins ${e.bins}` +
      (e.per_column ? '' : ' --no-columns');
  }

  private async run(): Promise<void> {
    if (this.ctx.client.busy) {
      this.status.error('The lab is busy with another run; wait for it or cancel it.');
      return;
    }
    let experiment: Experiment;
    try {
      experiment = this.experiment();
    } catch (e) {
      this.status.error((e as Error).message);
      return;
    }
    this.ctx.publish(this);
    this.showCli(experiment);
    this.runButton.disabled = true;
    this.status.say('Running…');
    await this.status.run(async () => {
      const reply = await this.ctx.client.call('reduce', { experiment },
        this.status.tracker((stage, done, total) => `${stage}: ${done} of ${total} steps`));
      this.lastRun = reply.report;
      this.draw(reply.report);
      return 'Done.';
    });
    this.runButton.disabled = false;
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
    keyValueRows(body, rows.map(([key, label, value]) => [label, key === 'shape' ? `[${s.rows}, ${s.cols}]` : fmt(value)]), (td, _label, i) => {
      const [key, , value] = rows[i];
      td.dataset.stat = key;
      if (key !== 'shape') td.dataset.value = String(value);
    });
    this.result.hidden = false;
    this.drawHistogram(s.histogram.counts, s.histogram.lo, s.histogram.hi);
    this.drawColumns(run);
  }

  private plots = new Plots();

  private drawHistogram(counts: number[], lo: number, hi: number): void {
    // Log-scaled counts: heavy tails are the point of this view.
    this.plots.draw('hist', () => histogram($('histogram'), lo, hi, counts));
    $('histogram-caption').textContent =
      `Histogram of the values over [${fmt(lo)}, ${fmt(hi)}], ${counts.length} bins, log-scaled counts.`;
  }

  private drawColumns(run: StatsRun): void {
    const table = $<HTMLTableElement>('columns-table');
    const c = run.stats.columns;
    table.hidden = c === null;
    if (!c) return;
    const order = c.outlier_fraction.map((_, i) => i).sort((a, b) => c.outlier_fraction[b] - c.outlier_fraction[a]);
    const top = order.slice(0, 8);
    tableRows(table.querySelector('tbody') as HTMLTableSectionElement,
      top.map((i) => [String(i), fmt(c.mean_abs[i]), fmt(c.outlier_fraction[i]), fmt(c.kurtosis[i])]), (tr, i) => {
        tr.dataset.column = String(top[i]);
      });
  }
}

// The bias lab (Sebra): seeded images of shapes whose colour and background texture usually
// go with the class; ERM, Sebra's two stages and the group-balanced oracle trained in turn,
// the ranking drawn as it forms (deselected images per Stage 1 epoch by true group), then
// test accuracy per group, the ranking's weighted tau, and the first- and last-ranked images.
// The experiment lives in the URL; the report is the CLI's JSON (`layerlab run` reruns it).

import { csvButton, download, fmt, multi, Plots, pngButton, tableRows, type Series } from '../../shell/charts';
import { $, numberFrom, onEdit, show } from '../../shell/dom';
import { defaultsOf, type LabContext, type PageLab } from '../../shell/lab';
import { duration, RunStatus } from '../../shell/status';
import type { BackendInfo, Experiment, ExperimentOf, GroupAccuracy, SebraGroup, SebraImages, SebraReport, SebraSpec, StepMetrics } from '../../protocol';

/** The four groups in the true spuriosity order (Rust's Group::order). */
const GROUPS: SebraGroup[] = ['both_aligned', 'colour_aligned', 'texture_aligned', 'none_aligned'];
const GROUP_NAMES = ['both aligned', 'colour only', 'texture only', 'none aligned'];
const GROUP_COLOURS = ['#c0392b', '#d9822b', '#6b5ca5', '#2e8b57'];
const MODEL_COLOURS = { erm: '#7f8c8d', sebra: '#2e8b57', oracle: '#3b6ea8' };
/** Rust's shape names, class by class (src/sebra/data.rs Shape). */
const SHAPES = ['disc', 'square', 'triangle', 'cross', 'ring', 'diamond', 'frame', 'bar'];

type Options = Omit<SebraSpec, 'lab'>;
type Field = Exclude<keyof Options, 'bias' | 'model' | 'optimizer'>;
const NUMBER_FIELDS: Field[] = ['classes', 'image', 'train_per_class', 'val_per_class', 'test_per_class', 'noise', 'seed', 'width', 'momentum',
  'lr', 'batch', 'epochs', 'rank_epochs', 'beta_inv', 'p_critical', 'gap', 'tau', 'ce_weight'];
/** The tiny preset: well under a minute in the page. Only sizes and epochs differ from Rust's
 *  defaults (the other preset); every method setting stays as the defaults have it. At this
 *  size the ranking forms (tau ~0.65 at seed 0) but Stage 2 and the oracle stay near chance. */
const TINY: Partial<Options> = { image: 12, train_per_class: 150, val_per_class: 16, test_per_class: 50, width: 8, epochs: 6, rank_epochs: 10 };
const SIZE_KEYS = Object.keys(TINY) as Field[];

const PHASES: Record<string, string> = { erm: 'ERM', rank: 'Stage 1 (ranking)', mitigate: 'Stage 2 (Sebra)', oracle: 'Oracle' };

export function create(ctx: LabContext): PageLab {
  return new BiasLab(ctx);
}

class BiasLab implements PageLab {
  readonly name = 'sebra';
  private status: RunStatus;
  private defaults: Options;
  private report: SebraReport | null = null;
  /** The ranking as it forms: per Stage 1 epoch, deselected images [class][group]. */
  private live: { epoch: number; deselected: number[][]; remaining: number }[] = [];
  private liveInfo = { epoch: 0, of: 0, scoring: 0, remaining: -1 };
  /** Every finished epoch so far: its phase and mean loss. */
  private losses: { phase: string; epoch: number; loss: number }[] = [];
  private plots = new Plots();
  private f = {
    preset: $<HTMLSelectElement>('sebra-preset'),
    model: $<HTMLSelectElement>('sebra-model'),
    optimizer: $<HTMLSelectElement>('sebra-optimizer'),
    colour: $<HTMLInputElement>('sebra-bias-colour'),
    texture: $<HTMLInputElement>('sebra-bias-texture'),
  };
  private num = Object.fromEntries(NUMBER_FIELDS.map((k) => [k, $<HTMLInputElement>(`sebra-${k.replace(/_/g, '-')}`)])) as Record<Field, HTMLInputElement>;

  constructor(private ctx: LabContext) {
    this.status = new RunStatus(
      { progress: $('sebra-progress'), status: $('sebra-status'), error: $('sebra-error'), cancel: $('sebra-cancel') },
      ctx.client,
    );
    // A step is one batch (tens of ms); generating the default data takes a few seconds.
    this.status.cancelGraceMs = 30_000;
    const { version: _v, lab: _l, ...d } = defaultsOf(ctx.defaults, 'sebra');
    this.defaults = d;
    this.load(ctx.initial('sebra'));
    this.wire();
  }

  private activated = false;

  activate(): void {
    if (this.activated) return;
    this.activated = true;
    if (!this.status.busy) this.status.say('Ready: choose a preset and press Run.');
  }

  /** Where the last run's phases ran (its report's backend), else where a run will. */
  backendNote(b: BackendInfo): string {
    if (this.report?.backend) return `the last bias run: ${this.report.backend}`;
    return b.kind === 'gpu'
      ? "the bias lab trains ERM's, Stage 1's and the oracle's batches on the GPU; Stage 1's scoring, Stage 2 and the test scores on the CPU"
      : 'the bias lab trains on the CPU (WebAssembly)';
  }

  // ---- the form ----------------------------------------------------------------------------

  private load(e: ExperimentOf<'sebra'>): void {
    for (const k of NUMBER_FIELDS) show(this.num[k], e[k]);
    show(this.f.colour, e.bias[0]);
    show(this.f.texture, e.bias[1]);
    show(this.f.model, e.model);
    show(this.f.optimizer, e.optimizer);
    this.syncControls();
  }

  private syncControls(): void {
    const matches = (p: Partial<Options>) => SIZE_KEYS.every((k) => Number(this.num[k].value) === p[k]);
    this.f.preset.value = matches(TINY) ? 'tiny' : matches(this.defaults) ? 'default' : 'custom';
    this.num.momentum.disabled = this.status.busy || this.f.optimizer.value !== 'sgd';
    this.updateCli();
  }

  private wire(): void {
    $<HTMLFormElement>('sebra-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.run();
    });
    this.f.preset.addEventListener('change', () => {
      const p = this.f.preset.value === 'tiny' ? TINY : this.f.preset.value === 'default' ? this.defaults : null;
      if (p) for (const k of SIZE_KEYS) show(this.num[k], p[k] ?? null);
      this.syncControls();
      this.ctx.publish(this);
    });
    const { preset: _p, ...controls } = this.f;
    onEdit([...Object.values(controls), ...Object.values(this.num)], () => {
      this.syncControls();
      this.ctx.publish(this);
    });
    $('sebra-show-data').addEventListener('click', () => {
      void this.status.run(async () => {
        this.status.say('Generating the training images…');
        await this.drawGrid(this.experiment());
        return 'Shown: the training images of these settings.';
      });
    });
    $('sebra-report-json').addEventListener('click', () => {
      if (this.report) download(`layerlab-sebra-seed${this.report.options.seed}.json`, JSON.stringify(this.report, null, 1), 'application/json');
    });
    for (const k of ['grid', 'rank', 'acc', 'ranked']) {
      pngButton($(`sebra-${k}-png`), `sebra-${k}.png`, () => $<HTMLCanvasElement>(k === 'rank' || k === 'acc' ? `sebra-${k}-chart` : `sebra-${k}`));
    }
    pngButton($('sebra-loss-png'), 'sebra-loss.png', () => this.plots.get('loss'));
    csvButton($('sebra-loss-csv'), 'sebra-loss.csv', () => ({
      header: ['phase', 'epoch', 'loss'],
      rows: this.losses.map((l) => [l.phase, l.epoch, l.loss]),
    }));
    csvButton($('sebra-rank-csv'), 'sebra-deselected.csv', () => ({
      header: ['rank_epoch', 'class', ...GROUPS, 'remaining'],
      rows: this.rankEpochs().flatMap((e) => e.deselected.map((c, k) => [e.epoch, k, ...c, e.remaining])),
    }));
    csvButton($('sebra-acc-csv'), 'sebra-accuracy.csv', () => this.report && ({
      header: ['model', ...GROUPS, 'worst_group', 'in_distribution', 'overall'],
      rows: (['erm', 'sebra', 'oracle'] as const).map((m) => {
        const a = this.report!.accuracy[m];
        return [m, ...a.per_group, a.worst_group, a.in_distribution, a.overall];
      }),
    }));
    csvButton($('sebra-ranks-csv'), 'sebra-ranks.csv', () => this.report && ({
      header: ['index', 'class', 'group', 'rank'],
      rows: this.report.ranking.samples.map((s) => [s.index, s.class, s.group, s.rank]),
    }));
  }

  private setBusy(busy: boolean): void {
    this.status.setBusy(busy);
    for (const el of document.querySelectorAll<HTMLInputElement | HTMLSelectElement | HTMLButtonElement>('.sebra-input')) el.disabled = busy;
    this.syncControls();
  }

  private options(): Options {
    const whole = (k: Field, what: string, min: number) => numberFrom(this.num[k], what, (x) => Number.isInteger(x) && x >= min, `a whole number >= ${min}`);
    const real = (k: Field, what: string) => numberFrom(this.num[k], what, (x) => x >= 0, 'a number >= 0');
    const ratio = (el: HTMLInputElement, what: string) => numberFrom(el, what, (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
    return {
      classes: whole('classes', 'classes', 2),
      image: whole('image', 'image', 1),
      train_per_class: whole('train_per_class', 'train per class', 1),
      val_per_class: whole('val_per_class', 'val per class', 1),
      test_per_class: whole('test_per_class', 'test per class', 1),
      bias: [ratio(this.f.colour, 'ρ colour'), ratio(this.f.texture, 'ρ texture')],
      noise: real('noise', 'noise'),
      model: this.f.model.value as Options['model'],
      width: whole('width', 'width', 1),
      optimizer: this.f.optimizer.value as Options['optimizer'],
      momentum: ratio(this.num.momentum, 'momentum'),
      epochs: whole('epochs', 'epochs', 1),
      rank_epochs: whole('rank_epochs', 'rank epochs', 1),
      beta_inv: real('beta_inv', '1/β'),
      p_critical: ratio(this.num.p_critical, 'p critical'),
      gap: whole('gap', 'gap', 0),
      tau: real('tau', 'τ'),
      ce_weight: real('ce_weight', 'CE weight'),
      lr: real('lr', 'lr'),
      batch: whole('batch', 'batch', 1),
      seed: whole('seed', 'seed', 0),
    };
  }

  experiment(): Experiment {
    return { version: 2, lab: 'sebra', ...this.options() };
  }

  /** The `layerlab sebra` command that gives the same numbers. */
  private updateCli(): void {
    let line: string;
    try {
      const o = this.options();
      const flag = (k: Field) => `--${k.replace(/_/g, '-')} ${o[k]}`;
      line = `layerlab sebra ${NUMBER_FIELDS.map(flag).join(' ')} --bias ${o.bias[0]},${o.bias[1]} --model ${o.model} --optimizer ${o.optimizer} --json report.json`;
    } catch (e) {
      line = `(${(e as Error).message})`;
    }
    $('sebra-cli').textContent = line;
  }

  /** Very rough time in this page: work in image passes (training ~3 forward passes, Stage 2
   *  pairs ~7, for ~3/4 of the images) at the pace the tiny preset ran in single-threaded
   *  WebAssembly (7 s) and the default preset's ERM (12 s an epoch) in the 2-thread test build. */
  describe(): { what: string; takes: string } {
    const o = this.options();
    const n = o.classes * o.train_per_class;
    const passes = 3 * n * o.epochs * 2 + 7 * 0.75 * n * o.epochs + 4 * n * o.rank_epochs + 3 * o.classes * o.test_per_class;
    const cost = (o.image * o.image) / 256 * (o.width / 8) * (o.model === 'cnn' ? 1 : 0.3);
    const seconds = 2 + (passes * cost) / 5000;
    return {
      what: `Sebra, ERM and the oracle on ${o.classes} classes of ${o.image} px shapes, ${n} training images (ρ ${o.bias[0]}, ${o.bias[1]}), ${o.model.toUpperCase()} width ${o.width}, ${o.epochs} epochs, ranking up to ${o.rank_epochs} epochs, seed ${o.seed}`,
      takes: `very roughly ${duration(seconds)} on this computer's CPU`,
    };
  }

  runNow(): void {
    void this.run();
  }

  // ---- running -----------------------------------------------------------------------------

  private async run(): Promise<void> {
    if (this.status.busy) return;
    let experiment: Experiment;
    try {
      experiment = this.experiment();
    } catch (e) {
      this.status.error((e as Error).message);
      return;
    }
    this.setBusy(true);
    this.report = null;
    this.ctx.refreshBackend();
    this.live = [];
    this.liveInfo = { epoch: 0, of: 0, scoring: 0, remaining: -1 };
    this.losses = [];
    $('sebra-result').hidden = true;
    this.drawRanking();
    this.drawLosses();
    $('sebra-notice').hidden = true;
    try {
      this.status.say('Generating the data…');
      const track = this.status.tracker((stage) => this.label(stage));
      const reply = await this.ctx.client.call('sebra', { experiment }, (stage, done, total, metrics) => {
        if (metrics) this.onMetrics(stage, metrics);
        track(stage, done, total, metrics);
      });
      this.report = reply.report;
      this.ctx.refreshBackend();
      this.drawResult();
      this.status.say('Drawing the images…');
      await this.drawGrid(experiment);
      await this.drawRanked(experiment);
      this.status.say(`Done in ${duration(reply.report.timings.total_s)}.`);
    } catch (e) {
      this.status.fail(e);
    } finally {
      this.setBusy(false);
    }
  }

  private label(stage: string): string {
    if (stage === 'data') return 'Generating the data…';
    const i = this.liveInfo;
    const name = PHASES[stage] ?? stage;
    if (i.scoring) return `${name}: scoring on the test split`;
    const of = stage === 'rank' ? `at most ${i.of}` : `${i.of}`;
    const left = stage === 'rank' && i.remaining >= 0 ? `, ${fmt(i.remaining)} images still selected` : '';
    return `${name}: epoch ${Math.max(1, i.epoch)} of ${of}${left}`;
  }

  private onMetrics(stage: string, m: StepMetrics): void {
    const v = m.values as unknown as Record<string, number | number[][]>;
    if ('restart' in v) {
      // The GPU failed: the phase starts over on the CPU; its points so far go.
      this.losses = this.losses.filter((l) => l.phase !== stage);
      if (stage === 'rank') {
        this.live = [];
        this.liveInfo.remaining = -1;
        this.drawRanking();
      }
      this.drawLosses();
      const notice = $('sebra-notice');
      notice.textContent = (v as unknown as { notice: string }).notice;
      notice.hidden = false;
      return;
    }
    if (v.loss !== undefined) {
      this.losses.push({ phase: stage, epoch: v.epoch as number, loss: v.loss as number });
      this.drawLosses();
    }
    this.liveInfo.epoch = v.epoch as number;
    this.liveInfo.of = v.of as number;
    this.liveInfo.scoring = v.scoring as number;
    if (v.deselected !== undefined) {
      this.live.push({ epoch: v.rank_epoch as number, deselected: v.deselected as number[][], remaining: v.remaining as number });
      this.liveInfo.remaining = v.remaining as number;
      this.drawRanking();
    }
  }

  private rankEpochs(): { epoch: number; deselected: number[][]; remaining: number }[] {
    return this.report ? this.report.ranking.per_epoch : this.live;
  }

  // ---- drawing -----------------------------------------------------------------------------

  /** Stacked bars: images deselected per Stage 1 epoch, summed over the classes, by group. */
  private drawRanking(): void {
    const epochs = this.rankEpochs();
    $('sebra-rank-figure').hidden = epochs.length === 0;
    if (epochs.length === 0) return;
    const stacks = epochs.map((e) => GROUPS.map((_, g) => e.deselected.reduce((a, c) => a + c[g], 0)));
    bars($<HTMLCanvasElement>('sebra-rank-chart'), epochs.map((e) => String(e.epoch)), GROUP_NAMES, GROUP_COLOURS,
      stacks, { stacked: true, xLabel: 'Stage 1 epoch (= rank)', yLabel: 'images deselected' });
  }

  /** Mean loss per epoch, one line per model. */
  private drawLosses(): void {
    $('sebra-loss-figure').hidden = this.losses.length === 0;
    if (this.losses.length === 0) return;
    const n = Math.max(...this.losses.map((l) => l.epoch));
    const x = Array.from({ length: n }, (_, i) => i + 1);
    const colours: Record<string, string> = { erm: MODEL_COLOURS.erm, rank: GROUP_COLOURS[0], mitigate: MODEL_COLOURS.sebra, oracle: MODEL_COLOURS.oracle };
    const series: Series[] = Object.keys(PHASES).filter((p) => this.losses.some((l) => l.phase === p)).map((p) => ({
      label: PHASES[p], colour: colours[p], y: x.map((e) => this.losses.find((l) => l.phase === p && l.epoch === e)?.loss ?? null),
    }));
    this.plots.draw('loss', () => multi($('sebra-loss-chart'), 'epoch', 'mean loss', x, series, { wholeX: true }));
  }

  private drawResult(): void {
    const r = this.report;
    if (!r) return;
    $('sebra-result').hidden = false;
    this.drawRanking();
    this.losses = r.epochs.map((e) => ({ phase: e.phase, epoch: e.epoch, loss: e.loss }));
    this.drawLosses();
    const models = ['erm', 'sebra', 'oracle'] as const;
    const names = { erm: 'ERM', sebra: 'Sebra', oracle: 'oracle (uses groups)' };
    const cats = [...GROUP_NAMES, 'worst group'];
    const value = (a: GroupAccuracy, i: number) => (i < 4 ? a.per_group[i] : a.worst_group);
    bars($<HTMLCanvasElement>('sebra-acc-chart'), cats, models.map((m) => names[m]), models.map((m) => MODEL_COLOURS[m]),
      cats.map((_, i) => models.map((m) => value(r.accuracy[m], i))), { stacked: false, xLabel: 'test group', yLabel: 'accuracy', yMax: 1 });
    const pct = (x: number | null) => (x === null || Number.isNaN(x) ? '—' : `${(100 * x).toFixed(1)}%`);
    tableRows($<HTMLTableElement>('sebra-acc-table').tBodies[0], models.map((m) => {
      const a = r.accuracy[m];
      return [names[m], ...a.per_group.map(pct), pct(a.worst_group), pct(a.in_distribution), pct(a.overall)];
    }), (tr, i) => (tr.dataset.model = models[i]));
    tableRows($<HTMLTableElement>('sebra-tau-table').tBodies[0], [
      ...r.tau.per_class.map((t, k) => [`${k} (${SHAPES[k] ?? k})`, fmt(t)]),
      ['mean', fmt(r.tau.mean)],
    ]);
    const t = r.timings;
    const never = r.ranking.samples.filter((x) => x.rank > r.ranking.epochs).length;
    const s = (x: number) => x.toFixed(1);
    $('sebra-timing').textContent = `Stage 1 ran ${r.ranking.epochs} epochs; ${fmt(never)} images were never deselected (rank ${r.ranking.epochs + 1}). ` +
      `Stage 2 trained on ${fmt(r.ranking.pairs_per_epoch)} anchors per epoch. ` +
      `Time: data ${s(t.data_s)} s, ERM ${s(t.erm_s)} s (${fmt(Math.round(t.erm_images_per_s))} images/s), ranking ${s(t.rank_s)} s, ` +
      `Sebra ${s(t.mitigate_s)} s, oracle ${s(t.oracle_s)} s, on ${t.threads} thread${t.threads === 1 ? '' : 's'}.`;
  }

  private async images(experiment: Experiment, indices: number[]): Promise<SebraImages> {
    return this.ctx.client.call('sebra-images', { experiment, indices });
  }

  /** Up to 5 training images per class (rows) and group (columns). */
  private async drawGrid(experiment: Experiment): Promise<void> {
    const all = await this.images(experiment, []);
    const per = 5;
    const cells: number[][][] = Array.from({ length: all.classes }, () => GROUPS.map(() => []));
    all.labels.forEach((y, i) => {
      const cell = cells[y][all.groups[i]];
      if (cell.length < per) cell.push(i);
    });
    const counts = GROUPS.map((_, g) => all.groups.filter((x) => x === g).length);
    $('sebra-grid-counts').textContent = `Training images per group: ${GROUP_NAMES.map((n, g) => `${n} ${fmt(counts[g])}`).join(', ')}.`;
    const indices = cells.flat(2);
    const px = await this.images(experiment, indices);
    const at = new Map(indices.map((idx, j) => [idx, j]));
    const rows = cells.map((row) => row.map((cell) => cell.map((i) => at.get(i) ?? -1)));
    drawImageTable($<HTMLCanvasElement>('sebra-grid'), px, rows, Array.from({ length: all.classes }, (_, k) => `${k} ${SHAPES[k] ?? ''}`),
      GROUP_NAMES, per, null);
    $('sebra-grid-figure').hidden = false;
  }

  /** The 6 first-ranked and 6 last-ranked training images of each class, each marked by its
   *  true group's colour. */
  private async drawRanked(experiment: Experiment): Promise<void> {
    const r = this.report;
    if (!r) return;
    const per = 6;
    const byClass = Array.from({ length: r.options.classes }, (_, k) =>
      r.ranking.samples.filter((s) => s.class === k).sort((a, b) => a.rank - b.rank || a.index - b.index));
    const picks = byClass.map((s) => [s.slice(0, per), s.slice(Math.max(per, s.length - per)).reverse()]);
    const indices = picks.flat(2).map((s) => s.index);
    const px = await this.images(experiment, indices);
    const at = new Map(indices.map((idx, j) => [idx, j]));
    const rows = picks.map((cols) => cols.map((c) => c.map((s) => at.get(s.index) ?? -1)));
    const marks = new Map(r.ranking.samples.map((s) => [s.index, GROUPS.indexOf(s.group)]));
    drawImageTable($<HTMLCanvasElement>('sebra-ranked'), px, rows, byClass.map((_, k) => `${k} ${SHAPES[k] ?? ''}`),
      ['first ranked (rank 1, 2, …)', 'last ranked'], per, (j) => marks.get(indices[j]) ?? null);
    const canvas = $<HTMLCanvasElement>('sebra-ranked');
    canvas.dataset.chart = JSON.stringify({ ranks: picks.map((cols) => cols.map((c) => c.map((s) => [s.index, s.rank, s.group]))) });
  }
}

/**
 * Bars on a canvas: per category, one bar per series side by side, or stacked. The data
 * are kept on the canvas as `data-chart` for the tests.
 */
function bars(canvas: HTMLCanvasElement, cats: string[], series: string[], colours: string[], values: (number | null)[][],
  opts: { stacked: boolean; xLabel: string; yLabel: string; yMax?: number }): void {
  const left = 60;
  const top = 28;
  const bottom = 44;
  const slot = Math.max(opts.stacked ? 14 : 60, Math.min(90, Math.floor(760 / Math.max(1, cats.length))));
  canvas.width = left + cats.length * slot + 20;
  canvas.height = 280;
  const h = canvas.height - top - bottom;
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const total = (row: (number | null)[]) => (opts.stacked ? row.reduce<number>((a, v) => a + (v ?? 0), 0) : Math.max(0, ...row.map((v) => v ?? 0)));
  const max = opts.yMax ?? Math.max(1, ...values.map(total));
  const y = (v: number) => top + h - (h * v) / max;
  ctx.fillStyle = 'white';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = '12px system-ui, sans-serif';
  ctx.strokeStyle = '#ccc';
  ctx.fillStyle = '#1d232a';
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(canvas.width - 10, y(v));
    ctx.stroke();
    ctx.fillText(opts.yMax === 1 ? v.toFixed(2) : fmt(Math.round(v)), left - 6, y(v));
  }
  values.forEach((row, c) => {
    const x0 = left + c * slot;
    let base = 0;
    row.forEach((v, s) => {
      if (v === null || Number.isNaN(v)) return;
      ctx.fillStyle = colours[s];
      if (opts.stacked) {
        ctx.fillRect(x0 + 2, y(base + v), slot - 4, y(base) - y(base + v));
        base += v;
      } else {
        const w = (slot - 10) / row.length;
        ctx.fillRect(x0 + 5 + s * w, y(v), w - 2, y(0) - y(v));
      }
    });
  });
  ctx.fillStyle = '#1d232a';
  ctx.textAlign = 'center';
  const step = Math.ceil((cats.length * 30) / Math.max(1, cats.length * slot));
  cats.forEach((name, c) => {
    if (c % step === 0) ctx.fillText(name, left + c * slot + slot / 2, top + h + 12);
  });
  ctx.fillText(opts.xLabel, left + (cats.length * slot) / 2, top + h + 32);
  // Legend along the top.
  ctx.textAlign = 'left';
  let lx = left;
  series.forEach((name, s) => {
    ctx.fillStyle = colours[s];
    ctx.fillRect(lx, 8, 12, 12);
    ctx.fillStyle = '#1d232a';
    ctx.fillText(name, lx + 16, 14);
    lx += 16 + ctx.measureText(name).width + 14;
  });
  ctx.save();
  ctx.translate(14, top + h / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = 'center';
  ctx.fillText(opts.yLabel, 0, 0);
  ctx.restore();
  canvas.dataset.chart = JSON.stringify({ cats, series, values });
  canvas.setAttribute('aria-label', `${opts.yLabel} per ${opts.xLabel}`);
}

/**
 * A table of images: a row per class, column groups of up to `per` images each (`rows[r][g]`:
 * indices into `px`'s images, -1 for none), scaled up without smoothing; `mark(j)` colours a
 * strip under image j by its group.
 */
function drawImageTable(canvas: HTMLCanvasElement, px: SebraImages, rows: number[][][], rowNames: string[], colNames: string[], per: number,
  mark: ((j: number) => number | null) | null): void {
  const s = px.side;
  const scale = Math.max(1, Math.round(48 / s));
  const cell = s * scale + 3;
  const left = 90;
  const top = 22;
  const groupW = per * cell + 16;
  const rowH = cell + (mark ? 6 : 2);
  canvas.width = left + colNames.length * groupW;
  canvas.height = top + rows.length * rowH + 4;
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  ctx.fillStyle = 'white';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = '12px system-ui, sans-serif';
  ctx.fillStyle = '#1d232a';
  ctx.textBaseline = 'middle';
  colNames.forEach((n, g) => ctx.fillText(n, left + g * groupW, 10));
  const tile = document.createElement('canvas');
  tile.width = s;
  tile.height = s;
  const tctx = tile.getContext('2d');
  if (!tctx) return;
  ctx.imageSmoothingEnabled = false;
  rows.forEach((groups, r) => {
    const y = top + r * rowH;
    ctx.fillStyle = '#1d232a';
    ctx.textAlign = 'right';
    ctx.fillText(rowNames[r], left - 8, y + cell / 2);
    groups.forEach((imgs, g) => {
      imgs.forEach((j, i) => {
        if (j < 0) return;
        const data = new ImageData(new Uint8ClampedArray(px.rgba.subarray(j * s * s * 4, (j + 1) * s * s * 4)), s, s);
        tctx.putImageData(data, 0, 0);
        const x = left + g * groupW + i * cell;
        ctx.drawImage(tile, x, y, s * scale, s * scale);
        const m = mark?.(j);
        if (m !== null && m !== undefined) {
          ctx.fillStyle = GROUP_COLOURS[m];
          ctx.fillRect(x, y + s * scale + 1, s * scale, 4);
        }
      });
    });
  });
}

// The training lab (Mix-LN): train Pre-LN, Post-LN and Mix-LN decoders from scratch on a
// text, one after another with the same seed and data, and watch the per-layer diagnostics
// the paper plots as they train: loss curves, gradient norm per block, hidden-state RMS,
// angular distance between block outputs, and the loss increase when a block is skipped.
// Runs train on the GPU (WebGPU) where the backend is one, else on the CPU; a GPU that fails
// mid-run leaves the run to the CPU from its last evaluation. Pause holds a run between two
// steps and Resume goes on; Stop keeps what was trained. Sample writes text from the model,
// during a run from its current weights; the last model's files and the report (the CLI's
// JSON) download. The experiment lives in the URL.

import { csvButton, download, fmt, heatmap, multi, Plots, pngButton, tableRows, type Series } from '../../shell/charts';
import { $, numberFrom, onEdit, show } from '../../shell/dom';
import { defaultsOf, type LabContext, type PageLab } from '../../shell/lab';
import { RunStatus } from '../../shell/status';
import type { AngularDistance, BackendInfo, Experiment, ExperimentOf, NormPlacement, StepMetrics, StepRecord, TextSource, TrainReport, TrainRunReport, TrainSpec } from '../../protocol';

const NAMES: Record<NormPlacement, string> = { pre: 'Pre-LN', post: 'Post-LN', mix: 'Mix-LN' };
/** One colour per placement, in every chart. */
const COLOURS: Record<NormPlacement, string> = { pre: '#3b6ea8', post: '#c0392b', mix: '#2e8b57' };
const ALL: NormPlacement[] = ['pre', 'post', 'mix'];

type Size = Pick<TrainSpec, 'layers' | 'width' | 'heads' | 'kv_heads' | 'ffn' | 'ctx' | 'batch' | 'steps' | 'eval_every'>;
const SIZE_KEYS: (keyof Size)[] = ['layers', 'width', 'heads', 'kv_heads', 'ffn', 'ctx', 'batch', 'steps', 'eval_every'];
/** The tiny preset: trains in seconds in a browser. The other preset is Rust's default (the
 *  12 x 128 lab-scale measurement of METHODS.md). */
const TINY: Size = { layers: 4, width: 32, heads: 2, kv_heads: 2, ffn: 88, ctx: 32, batch: 8, steps: 300, eval_every: 50 };

/** One run of one placement: live while it trains, its report once it has finished. */
interface Run {
  n: number;
  norm: NormPlacement;
  label: string;
  group: Group;
  steps: StepRecord[];
  angular: AngularDistance[];
  tokensPerS: number;
  report: TrainRunReport | null;
  status: 'training' | 'done' | 'stopped' | 'failed';
  /** Said after its progress once the GPU failed and the CPU took over. */
  note: string;
  /** Where it trained (the report's backend of its own run). */
  backend: BackendInfo | null;
}

/** The runs of one press of Run (or Train all three): one experiment, one report. */
interface Group {
  n: number;
  experiment: Experiment;
  runs: Run[];
  reply: TrainReport | null;
}

export function create(ctx: LabContext): PageLab {
  return new TrainLab(ctx);
}

class TrainLab implements PageLab {
  readonly name = 'train';
  private runs: Run[] = [];
  private groups: Group[] = [];
  private selected: Run | null = null;
  private live: Run | null = null;
  private textFile: File | null = null;
  private plots = new Plots();
  /** Options the form does not show, kept from the link (warm-up, clip, weight decay, tied head). */
  private base: ExperimentOf<'train'>;
  /** A list of placements from a link that is neither one nor all three. */
  private linkRuns: NormPlacement[] = [];
  private status: RunStatus;
  private builtinTexts: string[];
  private paper: Size;
  private stopped = false;
  /** Pause pressed (and not Resume since). */
  private paused = false;

  private f = {
    preset: $<HTMLSelectElement>('train-preset'),
    norm: $<HTMLSelectElement>('train-norm'),
    alpha: $<HTMLInputElement>('train-alpha'),
    layers: $<HTMLInputElement>('train-layers'),
    width: $<HTMLInputElement>('train-width'),
    heads: $<HTMLInputElement>('train-heads'),
    kv_heads: $<HTMLInputElement>('train-kv-heads'),
    ffn: $<HTMLInputElement>('train-ffn'),
    ctx: $<HTMLInputElement>('train-ctx'),
    batch: $<HTMLInputElement>('train-batch'),
    steps: $<HTMLInputElement>('train-steps'),
    lr: $<HTMLInputElement>('train-lr'),
    seed: $<HTMLInputElement>('train-seed'),
    eval_every: $<HTMLInputElement>('train-eval-every'),
    text: $<HTMLSelectElement>('train-text'),
    tokenizer: $<HTMLSelectElement>('train-tokenizer'),
    runs: $<HTMLSelectElement>('train-runs'),
  };

  constructor(private ctx: LabContext) {
    this.status = new RunStatus(
      { progress: $('train-progress'), status: $('train-status'), error: $('train-error'), cancel: $('train-stop') },
      ctx.client,
    );
    // Stop ends the run after the step in progress (a 12 x 128 step in the single-threaded
    // WebAssembly can take seconds, an evaluation more), and keeps it.
    this.status.cancelGraceMs = 120_000;
    this.status.cancelText = 'Stopping after this step…';
    this.status.onCancel = () => {
      this.stopped = true;
      // A held run hears Stop too; the next run starts unpaused.
      this.showPaused(false);
    };
    this.status.metrics.subscribe((m) => this.onMetrics(m));
    this.builtinTexts = ctx.defaults.builtin_texts;
    this.f.text.replaceChildren(...this.builtinTexts.map((t) => new Option(t, t)), new Option('a .txt file…', 'file'));
    const d = defaultsOf(ctx.defaults, 'train');
    this.paper = Object.fromEntries(SIZE_KEYS.map((k) => [k, d[k]])) as Size;
    this.base = ctx.initial('train');
    this.load(this.base);
    this.wire();
  }

  private activated = false;

  activate(): void {
    if (this.activated) return;
    this.activated = true;
    if (!this.status.busy) this.status.say('Ready: choose a preset and press Run, or Train all three.');
  }

  // ---- the form ----------------------------------------------------------------------------

  private load(e: ExperimentOf<'train'>): void {
    for (const k of SIZE_KEYS) show(this.f[k], e[k]);
    show(this.f.norm, e.norm);
    show(this.f.alpha, e.alpha);
    show(this.f.lr, e.lr);
    show(this.f.seed, e.seed);
    show(this.f.tokenizer, e.tokenizer);
    if (this.f.tokenizer.value !== e.tokenizer) {
      this.f.tokenizer.append(new Option(e.tokenizer, e.tokenizer, true, true));
    }
    const t = e.text;
    if (t.kind === 'builtin' && this.builtinTexts.includes(t.name)) this.f.text.value = t.name;
    else {
      this.f.text.value = 'file';
      $('train-text-note').textContent = `This link was made with the text file ${t.kind === 'path' ? t.path : t.name}: choose it again.`;
    }
    if (e.runs.length === 0) this.f.runs.value = 'one';
    else if (e.runs.join() === ALL.join()) this.f.runs.value = 'all';
    else {
      this.linkRuns = e.runs;
      this.f.runs.append(new Option(`from the link: ${e.runs.map((r) => NAMES[r]).join(', ')}`, 'link', true, true));
    }
    this.syncControls();
  }

  /** Which preset the size fields match, and what the form enables. */
  private syncControls(): void {
    const matches = (p: Size) => SIZE_KEYS.every((k) => Number(this.f[k].value) === p[k]);
    this.f.preset.value = matches(TINY) ? 'tiny' : matches(this.paper) ? 'paper' : 'custom';
    this.f.norm.disabled = this.status.busy || this.f.runs.value !== 'one';
    this.f.alpha.disabled = this.status.busy;
    $('train-text-file').hidden = this.f.text.value !== 'file';
    this.updateCli();
  }

  private wire(): void {
    $<HTMLFormElement>('train-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.train();
    });
    $('train-all').addEventListener('click', () => {
      this.f.runs.value = 'all';
      this.syncControls();
      this.ctx.publish(this);
      void this.train();
    });
    this.f.preset.addEventListener('change', () => {
      const p = this.f.preset.value === 'tiny' ? TINY : this.f.preset.value === 'paper' ? this.paper : null;
      if (p) for (const k of SIZE_KEYS) show(this.f[k], p[k]);
      this.syncControls();
      this.ctx.publish(this);
    });
    const { preset: _p, ...experimentControls } = this.f;
    onEdit(Object.values(experimentControls), () => {
      this.syncControls();
      this.ctx.publish(this);
    });
    const file = $<HTMLInputElement>('train-text-file');
    file.addEventListener('change', () => {
      this.textFile = file.files?.[0] ?? null;
      $('train-text-note').textContent = this.textFile ? `${this.textFile.name} (${this.textFile.size.toLocaleString('en-US')} bytes)` : '';
      this.syncControls();
      this.ctx.publish(this);
    });
    $('train-pause').addEventListener('click', () => void this.pause(!this.paused));
    $('train-sample').addEventListener('click', () => void this.sample());
    $('train-download-model').addEventListener('click', () => void this.downloadModel());
    $('train-report-json').addEventListener('click', () => {
      const g = this.selected?.group;
      const report = g ? this.groupReport(g) : null;
      if (g && report) download(`layerlab-train-${g.n}.json`, JSON.stringify(report, null, 1), 'application/json');
    });
    $('train-grad-stat').addEventListener('change', () => this.drawAll());
    this.wireExports();
  }

  private setBusy(busy: boolean): void {
    this.status.setBusy(busy);
    for (const el of document.querySelectorAll<HTMLInputElement | HTMLSelectElement | HTMLButtonElement>('.train-input')) el.disabled = busy;
    // Sample works during a run (from its current weights); the download is of a finished one.
    $<HTMLButtonElement>('train-download-model').disabled = busy;
    $<HTMLButtonElement>('train-pause').disabled = !busy;
    if (!busy) this.showPaused(false);
    this.syncControls();
  }

  private textSource(): TextSource {
    if (this.f.text.value !== 'file') return { kind: 'builtin', name: this.f.text.value };
    if (!this.textFile) throw new Error('choose the training text file');
    return { kind: 'file', name: this.textFile.name, size: this.textFile.size };
  }

  /** The experiment's training spec from the form; an error says which field is wrong. */
  private spec(): TrainSpec {
    const int = (x: number) => Number.isInteger(x);
    const whole = (el: HTMLInputElement, what: string, min: number) => numberFrom(el, what, (x) => int(x) && x >= min, `a whole number >= ${min}`);
    const { version: _v, ...base } = this.base;
    const mode = this.f.runs.value;
    return {
      ...base,
      layers: whole(this.f.layers, 'layers', 1),
      width: whole(this.f.width, 'width', 2),
      heads: whole(this.f.heads, 'heads', 1),
      kv_heads: whole(this.f.kv_heads, 'kv heads', 1),
      ffn: whole(this.f.ffn, 'ffn', 1),
      ctx: whole(this.f.ctx, 'ctx', 1),
      batch: whole(this.f.batch, 'batch', 1),
      steps: whole(this.f.steps, 'steps', 0),
      lr: numberFrom(this.f.lr, 'lr', (x) => x >= 0, 'a number >= 0'),
      seed: whole(this.f.seed, 'seed', 0),
      eval_every: whole(this.f.eval_every, 'eval every', 1),
      norm: this.f.norm.value as NormPlacement,
      alpha: numberFrom(this.f.alpha, 'α', (x) => x >= 0 && x <= 1, 'a number in [0, 1]'),
      text: this.textSource(),
      tokenizer: this.f.tokenizer.value,
      runs: mode === 'all' ? [...ALL] : mode === 'link' ? [...this.linkRuns] : [],
    };
  }

  experiment(): Experiment {
    return { version: 2, ...this.spec() };
  }

  /** The CLI command that gives the same numbers (built-in texts are Debian's files). */
  private updateCli(): void {
    let line: string;
    try {
      const s = this.spec();
      const text = s.text.kind === 'builtin' ? `/usr/share/common-licenses/${s.text.name}` : s.text.kind === 'path' ? s.text.path : s.text.name;
      const flags = `--alpha ${s.alpha} --layers ${s.layers} --width ${s.width} --heads ${s.heads} --kv-heads ${s.kv_heads} --ffn ${s.ffn} ` +
        `--ctx ${s.ctx} --batch ${s.batch} --steps ${s.steps} --lr ${s.lr} --seed ${s.seed} --eval-every ${s.eval_every}` +
        `${s.warmup !== 0.1 ? ` --warmup ${s.warmup}` : ''}${s.clip ? ` --clip ${s.clip}` : ''}${s.weight_decay ? ` --weight-decay ${s.weight_decay}` : ''}` +
        `${s.tied_head ? ' --tied' : ''} --text ${text} --json report.json`;
      const runs = s.runs.length ? s.runs : [s.norm];
      line = runs.length === 1 ? `layerlab train --norm ${runs[0]} ${flags}` : `for n in ${runs.join(' ')}; do layerlab train --norm $n ${flags.replace('report.json', 'report-$n.json')}; done`;
    } catch (e) {
      line = `(${(e as Error).message})`;
    }
    $('train-cli').textContent = line;
  }

  private async loadText(t: TextSource): Promise<string> {
    if (t.kind === 'builtin') {
      const r = await fetch(`texts/${encodeURIComponent(t.name)}`);
      if (!r.ok) throw new Error(`cannot load the built-in text ${t.name} (HTTP ${r.status})`);
      return r.text();
    }
    if (!this.textFile) throw new Error(`choose the file ${t.kind === 'file' ? t.name : ''} again`);
    return this.textFile.text();
  }

  // ---- running -----------------------------------------------------------------------------

  /** Trains every placement the experiment lists, in turn; each run is kept, stopped or not. */
  private async train(): Promise<void> {
    if (this.status.busy) return;
    let spec: TrainSpec;
    try {
      spec = this.spec();
    } catch (e) {
      this.status.error((e as Error).message);
      return;
    }
    const placements = spec.runs.length ? spec.runs : [spec.norm];
    this.setBusy(true);
    this.stopped = false;
    $('train-notice').hidden = true;
    try {
      // A Pause left from a run that was stopped while held must not hold this one.
      await this.ctx.client.callBetween('train-pause', { paused: false });
      this.status.say('Loading the text…');
      const text = await this.loadText(spec.text);
      const experiment: Experiment = { version: 2, ...spec };
      const group: Group = { n: this.groups.length + 1, experiment, runs: [], reply: null };
      this.groups.push(group);
      for (const [i, norm] of placements.entries()) {
        if (this.stopped) break;
        const label = norm === 'mix' ? `Mix-LN (α ${spec.alpha}: ${Math.floor(spec.alpha * spec.layers)} Post-LN)` : NAMES[norm];
        const run: Run = { n: this.runs.length + 1, norm, label, group, steps: [], angular: [], tokensPerS: 0, report: null, status: 'training', note: '', backend: null };
        this.runs.push(run);
        group.runs.push(run);
        this.live = run;
        this.selected = run;
        this.drawAll();
        const prefix = placements.length > 1 ? `Run ${i + 1} of ${placements.length} (${NAMES[norm]}): ` : `${NAMES[norm]}: `;
        this.status.say(`${prefix}starting…`);
        try {
          const reply = await this.ctx.client.call('train', { experiment, norm, text }, this.status.tracker((stage, done, total) =>
            stage === 'layer removal' ? `${prefix}skipping each block in turn…`
              : stage === 'paused' ? `${prefix}paused after step ${done} of ${total}. Resume goes on; Sample writes from the current weights.`
                : `${prefix}step ${done} of ${total}, ${fmt(Math.round(run.tokensPerS))} tokens/s${run.note}`));
          const r = reply.report.runs[0];
          run.report = r;
          run.backend = reply.report.backend;
          run.steps = r.steps;
          run.angular = r.angular_distance;
          run.tokensPerS = r.tokens_per_s;
          run.status = r.stopped ? 'stopped' : 'done';
          group.reply = reply.report;
        } catch (e) {
          run.status = 'failed';
          throw e;
        } finally {
          this.live = null;
          this.drawAll();
        }
      }
      this.status.say(this.stopped ? 'Stopped: what was trained is kept.' : 'Done.');
    } catch (e) {
      this.status.fail(e);
    } finally {
      this.setBusy(false);
    }
  }

  /** Pause (`on`) or Resume the run in progress: the worker holds it after the step in
   *  progress and says so ("paused after step N"). */
  private async pause(on: boolean): Promise<void> {
    if (!this.status.busy) return;
    this.showPaused(on);
    if (on) this.status.say('Pausing after this step…');
    try {
      await this.ctx.client.callBetween('train-pause', { paused: on });
    } catch (e) {
      this.status.error(`Cannot ${on ? 'pause' : 'resume'}: ${(e as Error).message}`);
    }
  }

  /** The Pause button and the time-left estimate follow the pause. */
  private showPaused(on: boolean): void {
    this.paused = on;
    $('train-pause').textContent = on ? 'Resume' : 'Pause';
    this.status.hold(on);
  }

  private redrawQueued = false;
  private lastDraw = 0;

  /** A step or an evaluation of the run in progress: kept, and drawn at most ~3 times a second. */
  private onMetrics(m: StepMetrics & { stage: string }): void {
    const run = this.live;
    if (!run) return;
    const v = m.values;
    if ('rewind' in v) {
      // The GPU failed: the run goes back to its last evaluation and goes on on the CPU.
      const kept = v.rewind as number;
      run.steps.length = Math.min(run.steps.length, kept);
      run.angular = run.angular.filter((a) => a.step < kept);
      run.note = ' (on the CPU: the GPU failed)';
      const notice = $('train-notice');
      notice.textContent = (v as unknown as { notice: string }).notice;
      notice.hidden = false;
    } else if ('angular' in v) {
      run.angular.push({ step: m.step, matrix: v.angular as (number | null)[][] });
    } else if ('loss' in v) {
      run.steps.push(v as unknown as StepRecord);
      run.tokensPerS = (v.tokens_per_s as number) ?? 0;
    }
    if (this.redrawQueued) return;
    this.redrawQueued = true;
    const wait = Math.max(0, 300 - (performance.now() - this.lastDraw));
    setTimeout(() => {
      this.redrawQueued = false;
      this.lastDraw = performance.now();
      this.drawAll();
    }, wait);
  }

  /** The report of a group: the CLI's JSON (`layerlab run` of its experiment). */
  private groupReport(g: Group): TrainReport | null {
    if (!g.reply) return null;
    const done = g.runs.filter((r) => r.report);
    return { ...g.reply, backend: groupBackend(done) ?? g.reply.backend, experiment: g.experiment, runs: done.flatMap((r) => (r.report ? [r.report] : [])) };
  }

  private async sample(): Promise<void> {
    const out = $('train-sample-out');
    try {
      const prompt = $<HTMLInputElement>('train-prompt').value;
      const length = numberFrom($<HTMLInputElement>('train-sample-length'), 'length', (x) => Number.isInteger(x) && x >= 1 && x <= 4000, 'a whole number in 1..4000');
      const temperature = numberFrom($<HTMLInputElement>('train-temperature'), 'temperature', (x) => x >= 0, 'a number >= 0');
      const seed = numberFrom($<HTMLInputElement>('train-sample-seed'), 'seed', (x) => Number.isInteger(x) && x >= 0, 'a whole number >= 0');
      out.textContent = 'Sampling…';
      // During a run the run itself answers, between two steps (or while paused).
      const ask = { prompt, length, temperature, seed };
      const reply = this.status.busy ? await this.ctx.client.callBetween('train-sample', ask) : await this.ctx.client.call('train-sample', ask);
      out.textContent = prompt + reply.text;
    } catch (e) {
      out.textContent = `No sample: ${(e as Error).message}`;
    }
  }

  private async downloadModel(): Promise<void> {
    try {
      const reply = await this.ctx.client.call('train-export', {});
      download(reply.name, reply.model, 'application/octet-stream');
      download('config.json', reply.config, 'application/json');
    } catch (e) {
      this.status.error(`Cannot write the model: ${(e as Error).message}`);
    }
  }

  // ---- drawing -----------------------------------------------------------------------------

  private drawAll(): void {
    $('train-result').hidden = this.runs.length === 0;
    if (this.runs.length === 0) return;
    this.drawTable();
    this.drawLoss();
    this.drawGradients();
    this.drawPerBlock();
    this.drawAngular();
  }

  private drawTable(): void {
    const last = <T>(xs: T[]) => xs[xs.length - 1];
    const lastVal = (r: Run) => [...r.steps].reverse().find((s) => s.val_loss !== undefined)?.val_loss ?? null;
    tableRows($<HTMLTableElement>('train-runs-table').tBodies[0], this.runs.map((r) => [
      String(r.n), r.label, `${r.steps.length} of ${r.group.experiment.lab === 'train' ? r.group.experiment.steps : '?'}`,
      fmt(last(r.steps)?.loss ?? null), fmt(lastVal(r)), fmt(Math.round(r.tokensPerS)), r.status,
    ]), (tr, i) => {
      const run = this.runs[i];
      tr.dataset.norm = run.norm;
      tr.onclick = () => {
        this.selected = run;
        this.drawAll();
      };
      tr.classList.toggle('selected', run === this.selected);
    });
  }

  private drawLoss(): void {
    const n = Math.max(1, ...this.runs.map((r) => r.steps.length));
    const x = Array.from({ length: n }, (_, i) => i + 1);
    const series: Series[] = this.runs.flatMap((r) => {
      const loss = x.map((_, i) => r.steps[i]?.loss ?? null);
      const val = x.map((_, i) => r.steps[i]?.val_loss ?? null);
      return [
        { label: `#${r.n} ${NAMES[r.norm]} train`, y: loss, colour: COLOURS[r.norm] },
        { label: `#${r.n} ${NAMES[r.norm]} val`, y: val, colour: COLOURS[r.norm], pointsOnly: true },
      ];
    });
    this.plots.draw('loss', () => multi($('train-loss-chart'), 'step', 'loss (nats)', x, series, { height: 300 }));
  }

  /** The selected run's gradient norm per block and step (at most ~120 step columns). */
  private drawGradients(): void {
    const r = this.selected;
    if (!r || r.steps.length === 0) return;
    const layers = r.steps[0].grad_norm.length;
    const stride = Math.ceil(r.steps.length / 120);
    const cols = r.steps.filter((_, i) => i % stride === 0);
    heatmap($<HTMLCanvasElement>('train-grad-heatmap'), $('train-grad-tip'), Array.from({ length: layers }, (_, l) => `block ${l}`),
      cols.map((s) => s.step + 1), (ri, ci) => cols[ci]?.grad_norm[ri] ?? null, 'gradient norm', true, 'step');
    $('train-grad-title').textContent = `Gradient norm per block and step: run #${r.n}, ${r.label}${stride > 1 ? ` (every ${stride}th step)` : ''}`;
  }

  /** Per-block lines of every run: the gradient norm statistic, the hidden RMS and the layer removal. */
  private drawPerBlock(): void {
    const layers = Math.max(1, ...this.runs.map((r) => r.steps[0]?.grad_norm.length ?? 0));
    const x = Array.from({ length: layers }, (_, l) => l);
    const stat = $<HTMLSelectElement>('train-grad-stat').value;
    const gradSeries: Series[] = this.runs.filter((r) => r.steps.length).map((r) => {
      const steps = stat === 'final' ? r.steps.slice(-1) : stat === 'early' ? r.steps.slice(0, Math.max(1, Math.ceil(r.steps.length / 10))) : r.steps;
      return { label: `#${r.n} ${NAMES[r.norm]}`, colour: COLOURS[r.norm], y: x.map((l) => steps.reduce((a, s) => a + (s.grad_norm[l] ?? 0), 0) / steps.length) };
    });
    this.plots.draw('gradlines', () => multi($('train-gradlines-chart'), 'block', 'gradient norm (log)', x, gradSeries, { log: true, wholeX: true }));
    const rmsSeries: Series[] = this.runs.filter((r) => r.steps.length).map((r) => ({
      label: `#${r.n} ${NAMES[r.norm]}`, colour: COLOURS[r.norm], y: r.steps[r.steps.length - 1].hidden_rms,
    }));
    this.plots.draw('rms', () => multi($('train-rms-chart'), 'block', 'hidden RMS (log)', x, rmsSeries, { log: true, wholeX: true }));
    const removal = this.runs.filter((r) => r.report && r.report.layer_removal.length);
    const removalSeries: Series[] = removal.map((r) => ({
      label: `#${r.n} ${NAMES[r.norm]}`, colour: COLOURS[r.norm], y: x.map((l) => r.report?.layer_removal[l]?.increase ?? null),
    }));
    this.plots.draw('removal', () => multi($('train-removal-chart'), 'block skipped', 'validation loss increase', x, removalSeries, { wholeX: true }));
  }

  /** The selected run's latest angular-distance evaluation, on a fixed [0, 1] scale. */
  private drawAngular(): void {
    const r = this.selected;
    const a = r?.angular[r.angular.length - 1];
    if (!r || !a) return;
    const layers = a.matrix.length;
    heatmap($<HTMLCanvasElement>('train-angular-heatmap'), $('train-angular-tip'),
      Array.from({ length: layers }, (_, l) => (l === 0 ? 'l = 0 (emb.)' : `l = ${l}`)),
      Array.from({ length: layers }, (_, i) => i + 1), (ri, ci) => a.matrix[ri]?.[ci] ?? null, 'angular distance', false, 'n (blocks later)', undefined, [0, 1]);
    $('train-angular-title').textContent = `Angular distance between the outputs of block l and l + n: run #${r.n}, ${r.label}, after step ${a.step + 1}`;
  }

  private wireExports(): void {
    for (const key of ['loss', 'gradlines', 'rms', 'removal']) pngButton($(`train-${key}-png`), `${key}.png`, () => this.plots.get(key));
    pngButton($('train-grad-png'), 'gradient-norm.png', () => $<HTMLCanvasElement>('train-grad-heatmap'));
    pngButton($('train-angular-png'), 'angular-distance.png', () => $<HTMLCanvasElement>('train-angular-heatmap'));
    csvButton($('train-loss-csv'), 'loss.csv', () => ({
      header: ['run', 'placement', 'step', 'lr', 'loss', 'val_loss'],
      rows: this.runs.flatMap((r) => r.steps.map((s) => [r.n, r.norm, s.step, s.lr, s.loss, s.val_loss ?? null])),
    }));
    const perBlock = (key: 'grad_norm' | 'hidden_rms') => ({
      header: ['run', 'placement', 'step', 'block', key],
      rows: this.runs.flatMap((r) => r.steps.flatMap((s) => s[key].map((v, l) => [r.n, r.norm, s.step, l, v]))),
    });
    csvButton($('train-grad-csv'), 'gradient-norm.csv', () => perBlock('grad_norm'));
    csvButton($('train-rms-csv'), 'hidden-rms.csv', () => perBlock('hidden_rms'));
    csvButton($('train-angular-csv'), 'angular-distance.csv', () => ({
      header: ['run', 'placement', 'step', 'l', 'n', 'angular_distance'],
      rows: this.runs.flatMap((r) => r.angular.flatMap((a) => a.matrix.flatMap((row, l) => row.map((v, i) => [r.n, r.norm, a.step, l, i + 1, v])))),
    }));
    csvButton($('train-removal-csv'), 'layer-removal.csv', () => ({
      header: ['run', 'placement', 'block', 'val_loss', 'increase'],
      rows: this.runs.flatMap((r) => (r.report?.layer_removal ?? []).map((x) => [r.n, r.norm, x.block, x.loss, x.increase])),
    }));
    csvButton($('train-runs-csv'), 'runs.csv', () => ({
      header: ['run', 'placement', 'alpha', 'steps', 'final_train_loss', 'final_val_loss', 'tokens_per_s', 'status'],
      rows: this.runs.map((r) => [r.n, r.norm, r.group.experiment.lab === 'train' ? r.group.experiment.alpha : null, r.steps.length,
        r.steps[r.steps.length - 1]?.loss ?? null, [...r.steps].reverse().find((s) => s.val_loss !== undefined)?.val_loss ?? null, r.tokensPerS, r.status]),
    }));
  }
}

/** The backend of a group's runs: theirs when they share it; else (a GPU that failed in one
 *  of them) the last one's, with the reason saying where each run trained. */
function groupBackend(runs: Run[]): BackendInfo | null {
  const all = runs.flatMap((r) => (r.backend ? [r.backend] : []));
  if (!all.length) return null;
  const last = all[all.length - 1];
  if (all.every((b) => JSON.stringify(b) === JSON.stringify(last))) return last;
  const where = runs.map((r) => `${r.label}: ${r.backend?.kind === 'gpu' ? `GPU, ${r.backend.name}` : `${r.backend?.name}${r.backend?.reason ? `, because ${r.backend.reason}` : ''}`}`);
  return { ...last, reason: where.join('; ') };
}

// The pruning lab (OWL): pick a method, a sparsity, OWL's M and lambda, N:M, the
// calibration and evaluation texts; run; see the outlier ratio per block, the allocation,
// the achieved sparsity, the perplexities of every run so far, the pruning curve and the OWL
// grid; download the pruned model and the report. The experiment lives in the URL.

import { binCentres, binEdges, csvButton, download, fmt, heatmap, keyValueRows, multi, Plots, pngButton, tableRows, type Series } from '../../shell/charts';
import { $, numberFrom, onEdit, show } from '../../shell/dom';
import { modelOpened } from '../../shell/events';
import { defaultsOf, type LabContext, type PageLab } from '../../shell/lab';
import { duration, RunStatus, type Plan } from '../../shell/status';
import type { Experiment, ExperimentOf, Histogram, Method, ModelSource, PruneReport, PruneSpec, TextSource } from '../../protocol';

const METHODS: Record<Method, string> = { magnitude: 'Magnitude', wanda: 'Wanda', sparsegpt: 'SparseGPT' };

/** One finished run: its label and report, kept for the comparison charts. */
interface Run {
  n: number;
  label: string;
  family: string;
  report: PruneReport;
  /** Run by "Run grid": the OWL grid shows these runs only. */
  grid: boolean;
  /** What a later run's dense perplexity may be reused from: model, text, worker. */
  model: ModelSource;
  evalText: TextSource | null;
  generation: number;
}

type Options = Pick<PruneSpec, 'method' | 'nm' | 'owl' | 'sparsity'>;

function labelOf(spec: Options): { label: string; family: string } {
  const m = METHODS[spec.method];
  const family = `${spec.owl ? 'OWL-' : ''}${m}${spec.nm ? ` ${spec.nm[0]}:${spec.nm[1]}` : ''}`;
  const amount = spec.nm ? '' : ` ${Math.round(spec.sparsity * 1000) / 10}%`;
  const owl = spec.owl ? ` (M ${spec.owl.hyper_m}, λ ${spec.owl.lamda})` : '';
  return { label: `${family}${amount}${owl}`, family };
}

/** A model source in a few words: its file name. */
function modelName(m: ModelSource): string {
  if (m.kind === 'url') return decodeURIComponent(m.url.split('/').pop() ?? m.url);
  return m.kind === 'file' ? m.name : m.path;
}

/** Numbers from a comma-separated list ("0.5, 0.6, 0.7"); an error names the bad entry. */
function numberList(text: string, what: string, ok: (x: number) => boolean): number[] {
  const out = text.split(/[,\s]+/).filter((s) => s !== '').map((s) => {
    const x = Number(s);
    if (!Number.isFinite(x) || !ok(x)) throw new Error(`${what}: "${s}" is not allowed`);
    return x;
  });
  if (out.length === 0) throw new Error(`${what}: give at least one value`);
  return out;
}

export function create(ctx: LabContext): PageLab {
  return new PruneLab(ctx);
}

class PruneLab implements PageLab {
  readonly name = 'prune';
  private runs: Run[] = [];
  private current: Run | null = null;
  private calibFile: File | null = null;
  private evalFile: File | null = null;
  private plots = new Plots();
  private histTensor: string | null = null;
  /** The model of the experiment: the one open in the Layers tab, else the link's. */
  private model: ModelSource;
  /** Options the form does not show, kept from the link (batch, the outlier sweep's M). */
  private base: ExperimentOf<'prune'>;
  private status: RunStatus;
  private builtinTexts: string[];

  private f = {
    method: $<HTMLSelectElement>('prune-method'),
    sparsity: $<HTMLInputElement>('prune-sparsity'),
    nm: $<HTMLSelectElement>('prune-nm'),
    owl: $<HTMLInputElement>('prune-owl'),
    m: $<HTMLInputElement>('prune-m'),
    lamda: $<HTMLInputElement>('prune-lamda'),
    nsamples: $<HTMLInputElement>('prune-nsamples'),
    seqlen: $<HTMLInputElement>('prune-seqlen'),
    seed: $<HTMLInputElement>('prune-seed'),
    calib: $<HTMLSelectElement>('prune-calib'),
    eval: $<HTMLSelectElement>('prune-eval'),
    evalSeqlen: $<HTMLInputElement>('prune-eval-seqlen'),
    evalWindows: $<HTMLInputElement>('prune-eval-windows'),
    dense: $<HTMLInputElement>('prune-dense'),
    sweep: $<HTMLInputElement>('prune-sweep-list'),
    gridLamda: $<HTMLInputElement>('prune-grid-lamda'),
    gridM: $<HTMLInputElement>('prune-grid-m'),
  };

  constructor(private ctx: LabContext) {
    this.status = new RunStatus(
      { progress: $('prune-progress'), status: $('prune-status'), error: $('prune-error'), cancel: $('prune-cancel') },
      ctx.client,
    );
    this.status.onCancel = () => {
      this.cancelled = true;
    };
    this.builtinTexts = ctx.defaults.builtin_texts;
    for (const sel of [this.f.calib, this.f.eval]) {
      sel.replaceChildren(...this.builtinTexts.map((t) => new Option(`${t} (license text)`, t)), new Option('a .txt file…', 'file'));
    }
    this.base = ctx.initial('prune');
    this.model = this.base.model;
    this.load(this.base);
    this.wire();
    modelOpened.subscribe(({ source, summary, params }) => {
      this.model = source;
      this.params = params;
      $('prune-model').textContent = `Model: ${summary}`;
      ctx.publish(this);
    });
  }

  private activated = false;
  /** The open model's parameters, for the estimate of a run's time. */
  private params = 0;

  describe(): { what: string; takes: string } {
    const spec = this.spec();
    const text = (t: TextSource | null) => (t ? (t.kind === 'builtin' ? t.name : t.kind === 'file' ? t.name : t.path) : 'no text');
    const what = `${labelOf(spec).label.trim()} on ${this.params ? modelName(this.model) : 'the model it names'}, calibrated on ` +
      `${spec.nsamples} windows of ${spec.seqlen} tokens of ${text(spec.calib_text)}, perplexity on ${text(spec.eval_text)}` +
      (spec.dense_ppl ? ' (dense and pruned)' : '');
    return { what, takes: this.estimate(spec) };
  }

  /**
   * About how long a run takes on the CPU backend: a forward pass costs about 8e-5 s per
   * million parameters and token (SmolLM2-135M, 7,424 tokens of dense perplexity in 82 s on
   * a laptop's CPU, the release build); the calibration passes count about 2.3 times (the
   * dense pass, then pruning each block and calibrating the next on its output), the
   * evaluation once per model measured. A guess to plan by; the bar gives the real time left.
   */
  private estimate(spec: PruneSpec): string {
    if (!this.params) return 'a few minutes for a model of SmolLM2\'s size (the estimate follows once the model is open)';
    // The built-in texts hold about 6,000 to 8,000 tokens.
    const windows = Math.min(spec.eval.max_windows ?? Infinity, Math.floor(7500 / spec.eval.seqlen));
    const tokens = spec.nsamples * spec.seqlen * (spec.method === 'sparsegpt' ? 3 : 2.3) + windows * spec.eval.seqlen * (spec.dense_ppl ? 2 : 1);
    const s = 8e-5 * (this.params / 1e6) * tokens;
    return `about ${duration(Math.max(5, s))} on a laptop's CPU (longer on a slower machine or in a debug build)`;
  }

  runNow(): void {
    void this.runMany(() => [this.spec()]);
  }

  /** Called when the tab is shown: makes sure a model is open (the Layers tab's). */
  activate(): void {
    if (this.activated) return;
    this.activated = true;
    void this.ctx.models.ensureOpen().then((m) => {
      if (!m) $('prune-model').textContent = 'No model is open: open one in the Layers tab (or drop one there).';
      if (!this.status.busy) this.status.say(m ? 'Ready: choose the options and press Run.' : 'No model is open.');
    });
  }

  /** The controls show the experiment. */
  private load(e: ExperimentOf<'prune'>): void {
    show(this.f.method, e.method);
    show(this.f.sparsity, e.sparsity);
    show(this.f.nm, e.nm ? `${e.nm[0]}:${e.nm[1]}` : '');
    show(this.f.owl, e.owl !== null);
    const owl = e.owl ?? this.ctx.defaults.owl;
    show(this.f.m, owl.hyper_m);
    show(this.f.lamda, owl.lamda);
    show(this.f.nsamples, e.nsamples);
    show(this.f.seqlen, e.seqlen);
    show(this.f.seed, e.calib_seed);
    show(this.f.evalSeqlen, e.eval.seqlen);
    show(this.f.evalWindows, e.eval.max_windows);
    show(this.f.dense, e.dense_ppl);
    // An experiment without an evaluation text (the CLI's, without --eval) shows the default.
    const evalText = e.eval_text ?? this.defaultEvalText();
    for (const [key, sel, t] of [['calib', this.f.calib, e.calib_text], ['eval', this.f.eval, evalText]] as const) {
      if (t.kind === 'builtin' && this.builtinTexts.includes(t.name)) sel.value = t.name;
      else {
        sel.value = 'file';
        $(`prune-${key}-note`).textContent = `This link was made with the text file ${t.kind === 'path' ? t.path : t.name}: choose it again.`;
      }
    }
    this.syncControls();
  }

  private defaultEvalText(): TextSource {
    const t = defaultsOf(this.ctx.defaults, 'prune').eval_text;
    if (!t) throw new Error('this build has no default evaluation text');
    return t;
  }

  /** The papers' calibration: 128 windows of 2048 tokens of C4. */
  private static readonly PAPER_TOKENS = 128 * 2048;

  /** Says when the calibration is smaller than the papers', and what that means. */
  private showScale(): void {
    const windows = Number(this.f.nsamples.value);
    const tokens = Number(this.f.seqlen.value);
    const el = $('prune-scale-notice');
    const total = windows * tokens;
    el.hidden = !(total > 0 && total < PruneLab.PAPER_TOKENS);
    el.textContent = `Smaller than the papers: this calibrates on ${windows} windows × ${tokens} tokens = ${total.toLocaleString('en-US')} tokens ` +
      `of a license text; OWL and Wanda calibrate on 128 × 2048 = ${PruneLab.PAPER_TOKENS.toLocaleString('en-US')} tokens of C4 web text, on models of 7 billion ` +
      'parameters and more. Runs here take minutes instead of hours, and their numbers are noisier and may differ from the papers\'.';
  }

  private syncControls(): void {
    this.showScale();
    const nm = this.f.nm.value !== '';
    this.f.sparsity.disabled = this.status.busy || nm;
    this.f.m.disabled = this.status.busy || !this.f.owl.checked;
    this.f.lamda.disabled = this.status.busy || !this.f.owl.checked;
    $('prune-calib-file').hidden = this.f.calib.value !== 'file';
    $('prune-eval-file').hidden = this.f.eval.value !== 'file';
  }

  private wire(): void {
    $<HTMLFormElement>('prune-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.runMany(() => [this.spec()]);
    });
    $('prune-sweep').addEventListener('click', () => void this.runMany(() => {
      const base = this.spec();
      if (base.nm) throw new Error('the sweep varies the unstructured sparsity: choose "unstructured" first');
      return numberList(this.f.sweep.value, 'sweep sparsities', (x) => x >= 0 && x < 1).map((s) => ({ ...base, sparsity: s, dense_ppl: false }));
    }));
    $('prune-grid').addEventListener('click', () => void this.runMany(() => {
      const base = this.spec();
      const lamdas = numberList(this.f.gridLamda.value, 'grid λ values', (x) => x >= 0);
      const ms = numberList(this.f.gridM.value, 'grid M values', (x) => x > 0);
      return lamdas.flatMap((l) => ms.map((m) => ({ ...base, owl: { hyper_m: m, lamda: l }, dense_ppl: false })));
    }, true));
    for (const el of [this.f.nm, this.f.owl, this.f.calib, this.f.eval]) el.addEventListener('change', () => this.syncControls());
    const { sweep: _s, gridLamda: _l, gridM: _m, ...experimentControls } = this.f;
    onEdit(Object.values(experimentControls), () => {
      this.ctx.publish(this);
      this.showScale();
    });
    for (const [input, which] of [[$<HTMLInputElement>('prune-calib-file'), 'calib'], [$<HTMLInputElement>('prune-eval-file'), 'eval']] as const) {
      input.addEventListener('change', () => {
        const file = input.files?.[0] ?? null;
        if (which === 'calib') this.calibFile = file;
        else this.evalFile = file;
        $(`prune-${which}-note`).textContent = file ? `${file.name} (${file.size.toLocaleString('en-US')} bytes)` : '';
        this.ctx.publish(this);
      });
    }
    $('prune-download-model').addEventListener('click', () => void this.downloadModel());
    $('prune-report-json').addEventListener('click', () => {
      if (this.current) download(`layerlab-prune-${this.current.n}.json`, JSON.stringify(this.current.report, null, 1), 'application/json');
    });
    $<HTMLSelectElement>('prune-tensor').addEventListener('change', () => void this.drawHistograms());
    this.wireExports();
  }

  private setBusy(busy: boolean): void {
    this.status.setBusy(busy);
    for (const el of document.querySelectorAll<HTMLInputElement | HTMLSelectElement | HTMLButtonElement>('.prune-input')) el.disabled = busy;
    this.syncControls();
  }

  private text(sel: HTMLSelectElement, file: File | null, what: string): TextSource {
    if (sel.value !== 'file') return { kind: 'builtin', name: sel.value };
    if (!file) throw new Error(`choose the ${what} text file`);
    return { kind: 'file', name: file.name, size: file.size };
  }

  /** The experiment's pruning spec from the form; an error says which field is wrong. */
  private spec(): PruneSpec {
    const int = (x: number) => Number.isInteger(x);
    const nmText = this.f.nm.value;
    const nm = nmText ? (nmText.split(':').map(Number) as [number, number]) : null;
    const seedText = this.f.seed.value.trim();
    const windowsText = this.f.evalWindows.value.trim();
    const num = numberFrom;
    const { version: _v, ...base } = this.base;
    return {
      ...base,
      model: this.model,
      method: this.f.method.value as Method,
      sparsity: nm ? nm[0] / nm[1] : num(this.f.sparsity, 'sparsity', (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
      nm,
      owl: this.f.owl.checked
        ? { hyper_m: num(this.f.m, 'M', (x) => x > 0, 'a number > 0'), lamda: num(this.f.lamda, 'λ', (x) => x >= 0, 'a number >= 0') }
        : null,
      nsamples: num(this.f.nsamples, 'calibration windows', (x) => int(x) && x >= 1, 'a whole number >= 1'),
      seqlen: num(this.f.seqlen, 'calibration window length', (x) => int(x) && x >= 2, 'a whole number >= 2'),
      calib_seed: seedText === '' ? null : num(this.f.seed, 'seed', (x) => int(x) && x >= 0, 'empty or a whole number >= 0'),
      eval: {
        ...base.eval,
        seqlen: num(this.f.evalSeqlen, 'evaluation window length', (x) => int(x) && x >= 2, 'a whole number >= 2'),
        max_windows: windowsText === '' ? null : num(this.f.evalWindows, 'evaluation windows', (x) => int(x) && x >= 1, 'empty (all) or a whole number >= 1'),
      },
      dense_ppl: this.f.dense.checked,
      calib_text: this.text(this.f.calib, this.calibFile, 'calibration'),
      eval_text: this.text(this.f.eval, this.evalFile, 'evaluation'),
    };
  }

  experiment(): Experiment {
    return { version: 2, ...this.spec() };
  }

  private async loadText(t: TextSource, file: File | null): Promise<string> {
    if (t.kind === 'builtin') {
      const r = await fetch(`texts/${encodeURIComponent(t.name)}`);
      if (!r.ok) throw new Error(`cannot load the built-in text ${t.name} (HTTP ${r.status})`);
      return r.text();
    }
    if (!file) throw new Error(`choose the file ${t.kind === 'file' ? t.name : ''} again`);
    return file.text();
  }

  private cancelled = false;

  /**
   * The phases of a run and their expected shares of its time, for one progress bar over the
   * whole run: the last run's measured times, scaled by the calibration and evaluation
   * tokens, or before any run a guess from the token counts (SmolLM2-sized models: each
   * block's pruning costs about a calibration pass, SparseGPT more). The dense perplexity is
   * left out when the worker will reuse the one measured by an earlier run (same model, text
   * and settings).
   */
  private plan(spec: PruneSpec, evalChars: number): Plan {
    const calibTokens = spec.nsamples * spec.seqlen;
    // About 4 characters per token for English text with a BPE tokeniser.
    const windows = Math.max(1, Math.floor(evalChars / 4 / spec.eval.seqlen));
    const evalTokens = Math.min(windows, spec.eval.max_windows ?? windows) * spec.eval.seqlen;
    const reuse = spec.dense_ppl && this.runs.some((r) => r.report.perplexity?.dense != null && r.generation === this.ctx.client.generation &&
      JSON.stringify(r.report.options.eval) === JSON.stringify(spec.eval) && JSON.stringify(r.evalText) === JSON.stringify(spec.eval_text) &&
      JSON.stringify(r.model) === JSON.stringify(this.model));
    const last = this.runs[this.runs.length - 1]?.report;
    let dense = calibTokens;
    let prune = calibTokens * (spec.method === 'sparsegpt' ? 2.5 : 1.3);
    let ppl = evalTokens * 1.5;
    if (last && last.timings.total > 0) {
      const lastCalib = last.calibration.windows * last.calibration.seqlen;
      const lastEval = last.perplexity ? last.perplexity.windows * last.perplexity.seqlen : 0;
      dense = last.timings.dense_pass * (calibTokens / lastCalib);
      prune = last.timings.prune * (calibTokens / lastCalib) * (spec.method === last.options.method ? 1 : 2);
      if (lastEval > 0 && last.timings.perplexity_pruned) ppl = last.timings.perplexity_pruned * (evalTokens / lastEval);
    }
    return [
      { stage: 'dense pass', weight: dense },
      { stage: 'prune', weight: prune },
      ...(spec.dense_ppl && !reuse ? [{ stage: 'perplexity (dense)', weight: ppl }] : []),
      { stage: 'perplexity (pruned)', weight: ppl },
    ];
  }

  /** Runs one or more experiments in turn; each finished run is kept and drawn. */
  private async runMany(specs: () => PruneSpec[], grid = false): Promise<void> {
    if (this.status.busy) return;
    let list: PruneSpec[];
    try {
      list = specs();
    } catch (e) {
      this.status.error((e as Error).message);
      return;
    }
    this.setBusy(true);
    this.cancelled = false;
    try {
      this.status.say('Opening the model…');
      const model = await this.ctx.models.ensureOpen();
      if (!model) throw new Error('no model is open: open one in the Layers tab');
      const calib = await this.loadText(list[0].calib_text, this.calibFile);
      const evalText = await this.loadText(list[0].eval_text ?? this.defaultEvalText(), this.evalFile);
      for (const [i, spec] of list.entries()) {
        if (this.cancelled) break;
        const { label, family } = labelOf(spec);
        const experiment: Experiment = { version: 2, ...spec, model };
        const prefix = list.length > 1 ? `Run ${i + 1} of ${list.length} (${label}): ` : `${label}: `;
        this.status.say(`${prefix}starting…`);
        const plan = this.plan(spec, evalText.length);
        let blocks = 0;
        const reply = await this.ctx.client.call('prune', { experiment, calib, eval: evalText },
          this.status.tracker((stage, done, total) => {
            // The perplexity counts every block (all windows through it), then every window's
            // scores: say which, so "window 3 of 29" matches the 29 windows reported.
            if (stage === 'dense pass' || stage === 'prune') blocks = total;
            let detail = `${stage}: block ${done} of ${total}`;
            if (stage.startsWith('perplexity') && blocks > 0 && total > blocks) {
              detail = done <= blocks ? `${stage}: block ${done} of ${blocks}` : `${stage}: window ${done - blocks} of ${total - blocks}`;
            }
            return `${prefix}${Math.floor(100 * this.status.done)}% done; ${detail}`;
          }, () => plan));
        const run: Run = { n: this.runs.length + 1, label, family, report: reply.report, grid, model, evalText: spec.eval_text, generation: this.ctx.client.generation };
        this.runs.push(run);
        this.current = run;
        this.ctx.publish(this);
        this.drawRun();
        this.drawRuns();
      }
      this.status.say(this.cancelled ? 'Cancelled.' : 'Done.');
    } catch (e) {
      this.status.fail(e);
    } finally {
      this.setBusy(false);
    }
  }

  // ---- drawing ---------------------------------------------------------------------------

  private drawRun(): void {
    const run = this.current;
    if (!run) return;
    const r = run.report;
    $('prune-result').hidden = false;
    const blocks = r.blocks.map((b) => b.index);
    const ppl = r.perplexity;
    const rows: [string, string][] = [
      ['run', `#${run.n}: ${run.label}`],
      ['perplexity, dense', fmt(ppl?.dense ?? null)],
      ['perplexity, pruned', fmt(ppl?.pruned ?? null)],
      ['evaluated on', ppl ? `${ppl.windows} windows of ${ppl.seqlen} tokens (${ppl.predicted_tokens.toLocaleString('en-US')} predicted, text ${ppl.text_tokens.toLocaleString('en-US')} tokens)` : '—'],
      ['calibration', `${r.calibration.windows} windows of ${r.calibration.seqlen} tokens (text ${r.calibration.text_tokens.toLocaleString('en-US')} tokens)`],
      ['achieved sparsity', `${(100 * r.achieved_sparsity).toFixed(3)}% (${r.pruned_weights.toLocaleString('en-US')} of ${r.linear_weights.toLocaleString('en-US')} linear weights)`],
      ['time', `${r.timings.total.toFixed(1)} s (dense pass ${r.timings.dense_pass.toFixed(1)} s, pruning ${r.timings.prune.toFixed(1)} s` +
        `${r.timings.perplexity_dense !== null ? `, dense perplexity ${r.timings.perplexity_dense.toFixed(1)} s` : ''}` +
        `${r.timings.perplexity_pruned !== null ? `, pruned perplexity ${r.timings.perplexity_pruned.toFixed(1)} s` : ''})`],
    ];
    keyValueRows($<HTMLTableElement>('prune-summary').tBodies[0], rows, (td, k) => {
      td.dataset.key = k;
    });
    $('prune-notices').hidden = r.notices.length === 0;
    $('prune-notices').textContent = r.notices.join(' ');

    this.plots.draw('outliers', () => multi($('prune-outlier-chart'), 'block', 'outliers (%)', blocks,
      [{ label: `outlier ratio D (M = ${r.outlier_m})`, y: r.blocks.map((b) => b.outlier_ratio), bars: true }]));
    $('prune-outlier-title').textContent = `Outlier ratio per block: % of Wanda scores above ${r.outlier_m} × the block's mean score (dense model)`;
    const allocation: Series[] = [
      { label: 'uniform', y: r.allocation_uniform },
      { label: r.options.owl ? 'OWL (this run)' : 'this run', y: r.blocks.map((b) => b.sparsity) },
      { label: 'achieved', y: r.blocks.map((b) => b.achieved_sparsity) },
    ];
    this.plots.draw('allocation', () => multi($('prune-allocation-chart'), 'block', 'sparsity', blocks, allocation));
    const roles = [...new Set(r.blocks.flatMap((b) => b.linears.map((l) => l.role)))];
    const cell = (ri: number, ci: number) => r.blocks[ci].linears.find((l) => l.role === roles[ri])?.achieved_sparsity ?? null;
    heatmap($<HTMLCanvasElement>('prune-heatmap'), $('prune-heatmap-tip'), roles, blocks, cell, 'achieved sparsity', false);
    const sweep = r.outlier_sweep;
    heatmap($<HTMLCanvasElement>('prune-sweep-heatmap'), $('prune-sweep-tip'), sweep.m.map((m) => `M = ${m}`), blocks,
      (ri, ci) => sweep.blocks[ci]?.[ri] ?? null, 'outlier ratio (%)', true);
    this.fillTensorPicker();
    void this.drawHistograms();
  }

  private fillTensorPicker(): void {
    const r = this.current?.report;
    if (!r) return;
    const names = r.blocks.flatMap((b) => b.linears.map((l) => l.tensor));
    const pick = $<HTMLSelectElement>('prune-tensor');
    const keep = this.histTensor && names.includes(this.histTensor) ? this.histTensor : names[0];
    pick.replaceChildren(...names.map((n) => new Option(n, n, false, n === keep)));
    pick.value = keep ?? '';
  }

  private histograms: { before: Histogram; after: Histogram } | null = null;

  private async drawHistograms(): Promise<void> {
    const tensor = $<HTMLSelectElement>('prune-tensor').value;
    if (!tensor) return;
    this.histTensor = tensor;
    try {
      const reply = await this.ctx.client.call('prune-histograms', { tensor, bins: 64 });
      this.histograms = { before: reply.before, after: reply.after };
      const { before, after } = reply;
      const x = binCentres(before);
      this.plots.draw('hist', () => multi($('prune-hist-chart'), 'weight', 'count (log)', x,
        [{ label: 'dense', y: before.counts, bars: true }, { label: 'pruned', y: after.counts }], { log: true }));
      const total = before.counts.reduce((a, b) => a + b, 0);
      $('prune-hist-caption').textContent = `${tensor}: ${total.toLocaleString('en-US')} weights in ${before.counts.length} bins over [${fmt(before.lo)}, ${fmt(before.hi)}] (the dense range); the pruned weights are the zeros in the bin holding 0.`;
    } catch (e) {
      $('prune-hist-caption').textContent = `No histogram: ${(e as Error).message}`;
    }
  }

  private drawRuns(): void {
    $('prune-runs').hidden = this.runs.length === 0;
    const table = $<HTMLTableElement>('prune-runs-table');
    tableRows(table.tBodies[0], this.runs.map((run) => {
      const p = run.report.perplexity;
      return [String(run.n), run.label, `${(100 * run.report.achieved_sparsity).toFixed(2)}%`, fmt(p?.dense ?? null), fmt(p?.pruned ?? null), `${run.report.timings.total.toFixed(1)} s`];
    }), (tr, i) => {
      const run = this.runs[i];
      tr.onclick = () => {
        this.current = run;
        this.drawRun();
      };
      tr.classList.toggle('selected', run === this.current);
    });
    const withPpl = this.runs.filter((r) => r.report.perplexity);
    // Runs are categories, not a quantity: one bar per run, named.
    this.plots.draw('ppl', () => multi($('prune-ppl-chart'), 'run', 'perplexity (log)', [],
      [{ label: 'pruned', y: withPpl.map((r) => r.report.perplexity?.pruned ?? null), bars: true },
        { label: 'dense', y: withPpl.map((r) => r.report.perplexity?.dense ?? null) }],
      { log: true, categories: withPpl.map((r) => `#${r.n} ${r.label}`) }));
    this.paperNote(withPpl);
    // The pruning curve: perplexity against achieved sparsity, one line per method family.
    const families = [...new Set(withPpl.map((r) => r.family))];
    const xs = [...new Set(withPpl.map((r) => Math.round(r.report.achieved_sparsity * 1e4) / 1e4))].sort((a, b) => a - b);
    const curve: Series[] = families.map((f) => ({
      label: f,
      y: xs.map((x) => {
        const hits = withPpl.filter((r) => r.family === f && Math.round(r.report.achieved_sparsity * 1e4) / 1e4 === x);
        return hits.length ? (hits[hits.length - 1].report.perplexity?.pruned ?? null) : null;
      }),
    }));
    this.plots.draw('curve', () => multi($('prune-curve-chart'), 'sparsity', 'perplexity (log)', xs, curve, { log: true }));
    // The OWL grid: the grid runs ("Run grid") at the current run's method, pattern and
    // sparsity; there is no grid to draw before a grid run.
    const cur = this.current?.report.options;
    const owlRuns = withPpl.filter((r) => r.grid && r.report.options.owl && cur && r.report.options.method === cur.method &&
      r.report.options.sparsity === cur.sparsity && JSON.stringify(r.report.options.nm) === JSON.stringify(cur.nm));
    const lamdas = [...new Set(owlRuns.map((r) => r.report.options.owl!.lamda))].sort((a, b) => a - b);
    const ms = [...new Set(owlRuns.map((r) => r.report.options.owl!.hyper_m))].sort((a, b) => a - b);
    $('prune-grid-figure').hidden = owlRuns.length === 0;
    if (owlRuns.length) {
      const at = (l: number, m: number) => owlRuns.filter((r) => r.report.options.owl!.lamda === l && r.report.options.owl!.hyper_m === m).pop()?.report.perplexity?.pruned ?? null;
      heatmap($<HTMLCanvasElement>('prune-grid-heatmap'), $('prune-grid-tip'), lamdas.map((l) => `λ = ${l}`), ms,
        (ri, ci) => at(lamdas[ri], ms[ci]), 'perplexity', true, 'M');
      $('prune-grid-title').textContent = `OWL grid: pruned perplexity over λ and M (${cur ? labelOf({ ...cur, owl: null }).label.trim() : ''})`;
    }
  }

  /**
   * Says in plain words when OWL did worse than the same method with uniform sparsity (same
   * pattern, sparsity, texts and windows): the paper's finding goes the other way, and why a
   * small model here can differ. The numbers are never adjusted.
   */
  private paperNote(runs: Run[]): void {
    const el = $('prune-paper-note');
    const same = (a: PruneReport, b: PruneReport) => a.options.method === b.options.method && a.options.sparsity === b.options.sparsity &&
      JSON.stringify(a.options.nm) === JSON.stringify(b.options.nm) && JSON.stringify(a.options.eval) === JSON.stringify(b.options.eval) &&
      a.options.nsamples === b.options.nsamples && a.options.seqlen === b.options.seqlen;
    const worse: string[] = [];
    for (const owl of runs.filter((r) => r.report.options.owl)) {
      const uniform = runs.filter((r) => !r.report.options.owl && same(r.report, owl.report) && JSON.stringify(r.evalText) === JSON.stringify(owl.evalText)).pop();
      const a = owl.report.perplexity?.pruned;
      const b = uniform?.report.perplexity?.pruned;
      if (uniform && a != null && b != null && a > b) worse.push(`${owl.label}: ${fmt(a)} against ${uniform.label}: ${fmt(b)}`);
    }
    el.hidden = worse.length === 0;
    el.textContent = worse.length === 0 ? '' :
      `Against the paper: here OWL's allocation gave a higher perplexity (worse) than the same method with the same sparsity in every block (${worse.join('; ')}). ` +
      'OWL\'s published gains are measured on models of 7 billion parameters and more (LLaMA 7B to 65B), mostly at 70% sparsity and above, calibrated on 128 × 2048 tokens of C4. ' +
      'A model of 135 million parameters with a short calibration text can go either way: its outliers are fewer and spread differently. That is a real result, not an error, and nothing here is tuned to make one method win.';
  }

  private async downloadModel(): Promise<void> {
    if (!this.current) return;
    const button = $<HTMLButtonElement>('prune-download-model');
    button.disabled = true;
    const was = $('prune-status').textContent ?? '';
    this.status.say('Writing the pruned model…');
    try {
      const reply = await this.ctx.client.call('prune-export', {});
      download(reply.name, reply.file, 'application/octet-stream');
      // A GGUF source has no config.json for transformers: offer the one made for it.
      const config = $<HTMLButtonElement>('prune-download-config');
      config.hidden = !reply.config;
      config.onclick = () => reply.config && download('config.json', reply.config, 'application/json');
      this.status.say(was);
    } catch (e) {
      this.status.error(`Cannot write the pruned model: ${(e as Error).message}`);
      this.status.say(was);
    } finally {
      button.disabled = false;
    }
  }

  private wireExports(): void {
    const report = () => this.current?.report;
    for (const key of ['outliers', 'allocation', 'hist', 'ppl', 'curve']) {
      const id = key === 'outliers' ? 'outlier' : key;
      pngButton($(`prune-${id}-png`), `${key}.png`, () => this.plots.get(key));
    }
    pngButton($('prune-heatmap-png'), 'achieved-sparsity.png', () => $<HTMLCanvasElement>('prune-heatmap'));
    pngButton($('prune-sweep-png'), 'outlier-sweep.png', () => $<HTMLCanvasElement>('prune-sweep-heatmap'));
    pngButton($('prune-grid-png'), 'owl-grid.png', () => $<HTMLCanvasElement>('prune-grid-heatmap'));
    csvButton($('prune-blocks-csv'), 'blocks.csv', () => {
      const r = report();
      return r ? {
        header: ['block', 'outlier_ratio_percent', 'sparsity_uniform', 'sparsity_allocated', 'nm_n', 'achieved_sparsity'],
        rows: r.blocks.map((b, i) => [b.index, b.outlier_ratio, r.allocation_uniform[i] ?? null, b.sparsity, b.nm_n, b.achieved_sparsity]),
      } : null;
    });
    csvButton($('prune-linears-csv'), 'linears.csv', () => {
      const r = report();
      return r ? {
        header: ['block', 'role', 'tensor', 'rows', 'cols', 'outlier_ratio_percent', 'achieved_sparsity'],
        rows: r.blocks.flatMap((b) => b.linears.map((l) => [b.index, l.role, l.tensor, l.rows, l.cols, l.outlier_ratio, l.achieved_sparsity])),
      } : null;
    });
    csvButton($('prune-sweep-csv'), 'outlier-sweep.csv', () => {
      const r = report();
      return r ? { header: ['block', ...r.outlier_sweep.m.map((m) => `M=${m}`)], rows: r.blocks.map((b, i) => [b.index, ...(r.outlier_sweep.blocks[i] ?? [])]) } : null;
    });
    csvButton($('prune-hist-csv'), () => `histogram-${this.histTensor}.csv`, () => {
      const h = this.histograms;
      return h ? { header: ['bin_lo', 'bin_hi', 'dense', 'pruned'], rows: binEdges(h.before).map((b, i) => [b.lo, b.hi, h.before.counts[i], h.after.counts[i]]) } : null;
    });
    csvButton($('prune-runs-csv'), 'runs.csv', () => ({
      header: ['run', 'label', 'method', 'owl', 'hyper_m', 'lamda', 'nm', 'sparsity', 'achieved_sparsity', 'ppl_dense', 'ppl_pruned', 'seconds'],
      rows: this.runs.map((r) => {
        const o = r.report.options;
        return [r.n, r.label, o.method, o.owl ? 1 : 0, o.owl?.hyper_m ?? null, o.owl?.lamda ?? null, o.nm ? o.nm.join(':') : null, o.sparsity,
          r.report.achieved_sparsity, r.report.perplexity?.dense ?? null, r.report.perplexity?.pruned ?? null, r.report.timings.total];
      }),
    }));
  }
}

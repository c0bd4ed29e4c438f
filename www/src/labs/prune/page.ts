// The pruning lab (OWL): pick a method, a sparsity, OWL's M and lambda, N:M, the
// calibration and evaluation texts; run; see the outlier ratio per block, the allocation,
// the achieved sparsity, the perplexities of every run so far, the pruning curve and the OWL
// grid; download the pruned model and the report. The experiment lives in the URL.

import type uPlot from 'uplot';
import { csv, download, fmt, heatmap, multi, plotCanvas, type Series } from './charts';
import { $, showFailure } from './dom';
import type { LabClient } from './lab-client';
import type { LayersLab } from './layers';
import type { Experiment, Histogram, Method, PruneReport, PruneSpec, TextSource } from './protocol';

/** License texts served beside the page (texts/NAME), copied from /usr/share/common-licenses. */
export const BUILTIN_TEXTS = ['LGPL-2.1', 'GPL-3', 'GPL-2', 'GFDL-1.3', 'MPL-2.0', 'Apache-2.0'];
const DEFAULT_CALIB = 'LGPL-2.1';
const DEFAULT_EVAL = 'GPL-3';
const METHODS: Record<Method, string> = { magnitude: 'Magnitude', wanda: 'Wanda', sparsegpt: 'SparseGPT' };

/** One finished run: its label and report, kept for the comparison charts. */
interface Run {
  n: number;
  label: string;
  family: string;
  report: PruneReport;
}

function labelOf(spec: PruneSpec): { label: string; family: string } {
  const m = METHODS[spec.method];
  const family = `${spec.owl ? 'OWL-' : ''}${m}${spec.nm ? ` ${spec.nm[0]}:${spec.nm[1]}` : ''}`;
  const amount = spec.nm ? '' : ` ${Math.round(spec.sparsity * 1000) / 10}%`;
  const owl = spec.owl ? ` (M ${spec.owl.hyper_m}, λ ${spec.owl.lamda})` : '';
  return { label: `${family}${amount}${owl}`, family };
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

export class PruneLab {
  private runs: Run[] = [];
  private current: Run | null = null;
  private busy = false;
  private calibFile: File | null = null;
  private evalFile: File | null = null;
  private plots: Record<string, uPlot | null> = {};
  private histTensor: string | null = null;

  private status = $<HTMLSpanElement>('prune-status');
  private progress = $<HTMLProgressElement>('prune-progress');
  private error = $<HTMLParagraphElement>('prune-error');
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

  constructor(private client: LabClient, private layers: LayersLab) {
    for (const sel of [this.f.calib, this.f.eval]) {
      sel.replaceChildren(...BUILTIN_TEXTS.map((t) => new Option(t, t)), new Option('a .txt file…', 'file'));
    }
    this.f.calib.value = DEFAULT_CALIB;
    this.f.eval.value = DEFAULT_EVAL;
    this.readUrl();
    this.wire();
    layers.onOpened = (_source, summary) => {
      $('prune-model').textContent = `Model: ${summary}`;
    };
  }

  private activated = false;

  /** Called when the tab is shown: makes sure a model is open (the Layers tab's). */
  activate(): void {
    if (this.activated) return;
    this.activated = true;
    void this.layers.ensureOpen().then((m) => {
      if (!m) $('prune-model').textContent = 'No model is open: open one in the Layers tab (or drop one there).';
      if (!this.busy) this.status.textContent = m ? 'Ready: choose the options and press Run.' : 'No model is open.';
    });
  }

  private readUrl(): void {
    const p = new URLSearchParams(location.search);
    const set = (el: HTMLInputElement | HTMLSelectElement, key: string) => {
      const v = p.get(key);
      if (v !== null) el.value = v;
    };
    set(this.f.method, 'method');
    set(this.f.sparsity, 'sparsity');
    set(this.f.nm, 'nm');
    set(this.f.m, 'm');
    set(this.f.lamda, 'lamda');
    set(this.f.nsamples, 'nsamples');
    set(this.f.seqlen, 'seqlen');
    set(this.f.seed, 'seed');
    set(this.f.evalSeqlen, 'eval_seqlen');
    set(this.f.evalWindows, 'eval_windows');
    if (p.has('owl')) this.f.owl.checked = p.get('owl') === '1';
    if (p.has('dense')) this.f.dense.checked = p.get('dense') === '1';
    for (const [key, sel] of [['calib', this.f.calib], ['eval', this.f.eval]] as const) {
      const v = p.get(key);
      if (v && BUILTIN_TEXTS.includes(v)) sel.value = v;
      else if (v) $(`prune-${key}-note`).textContent = `This link was made with the text file ${v}: choose it again.`;
    }
    this.syncControls();
  }

  private saveUrl(spec: PruneSpec): void {
    const p = new URLSearchParams(location.search);
    p.set('method', spec.method);
    p.set('sparsity', String(spec.sparsity));
    p.set('nm', spec.nm ? `${spec.nm[0]}:${spec.nm[1]}` : '');
    p.set('owl', spec.owl ? '1' : '0');
    p.set('m', this.f.m.value);
    p.set('lamda', this.f.lamda.value);
    p.set('nsamples', String(spec.nsamples));
    p.set('seqlen', String(spec.seqlen));
    p.set('seed', spec.calib_seed === null ? '' : String(spec.calib_seed));
    p.set('eval_seqlen', String(spec.eval.seqlen));
    p.set('eval_windows', spec.eval.max_windows === null ? '' : String(spec.eval.max_windows));
    p.set('dense', spec.dense_ppl ? '1' : '0');
    const name = (t: TextSource) => (t.kind === 'builtin' ? t.name : t.kind === 'file' ? t.name : t.path);
    p.set('calib', name(spec.calib_text));
    p.set('eval', name(spec.eval_text));
    history.replaceState(null, '', `${location.pathname}?${p}`);
  }

  private syncControls(): void {
    const nm = this.f.nm.value !== '';
    this.f.sparsity.disabled = this.busy || nm;
    this.f.m.disabled = this.busy || !this.f.owl.checked;
    this.f.lamda.disabled = this.busy || !this.f.owl.checked;
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
    }));
    $('prune-cancel').addEventListener('click', () => {
      this.cancelled = true;
      this.status.textContent = 'Cancelling…';
      this.client.cancel();
    });
    for (const el of [this.f.nm, this.f.owl, this.f.calib, this.f.eval]) el.addEventListener('change', () => this.syncControls());
    for (const [input, which] of [[$<HTMLInputElement>('prune-calib-file'), 'calib'], [$<HTMLInputElement>('prune-eval-file'), 'eval']] as const) {
      input.addEventListener('change', () => {
        const file = input.files?.[0] ?? null;
        if (which === 'calib') this.calibFile = file;
        else this.evalFile = file;
        $(`prune-${which}-note`).textContent = file ? `${file.name} (${file.size.toLocaleString('en-US')} bytes)` : '';
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
    this.busy = busy;
    for (const el of document.querySelectorAll<HTMLInputElement | HTMLSelectElement | HTMLButtonElement>('.prune-input')) el.disabled = busy;
    $<HTMLButtonElement>('prune-cancel').disabled = !busy;
    this.syncControls();
  }

  private showError(msg: string | null): void {
    this.error.hidden = msg === null;
    this.error.textContent = msg ?? '';
  }

  private num(el: HTMLInputElement, what: string, ok: (x: number) => boolean, rule: string): number {
    const x = Number(el.value);
    if (el.value.trim() === '' || !Number.isFinite(x) || !ok(x)) throw new Error(`${what} must be ${rule}, not "${el.value}"`);
    return x;
  }

  private text(sel: HTMLSelectElement, file: File | null, what: string): TextSource {
    if (sel.value !== 'file') return { kind: 'builtin', name: sel.value };
    if (!file) throw new Error(`choose the ${what} text file`);
    return { kind: 'file', name: file.name, size: file.size };
  }

  /** The experiment's pruning part from the form; an error says which field is wrong. */
  private spec(): PruneSpec {
    const int = (x: number) => Number.isInteger(x);
    const nmText = this.f.nm.value;
    const nm = nmText ? (nmText.split(':').map(Number) as [number, number]) : null;
    const seedText = this.f.seed.value.trim();
    const windowsText = this.f.evalWindows.value.trim();
    return {
      method: this.f.method.value as Method,
      sparsity: nm ? nm[0] / nm[1] : this.num(this.f.sparsity, 'sparsity', (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
      nm,
      owl: this.f.owl.checked
        ? { hyper_m: this.num(this.f.m, 'M', (x) => x > 0, 'a number > 0'), lamda: this.num(this.f.lamda, 'λ', (x) => x >= 0, 'a number >= 0') }
        : null,
      nsamples: this.num(this.f.nsamples, 'calibration windows', (x) => int(x) && x >= 1, 'a whole number >= 1'),
      seqlen: this.num(this.f.seqlen, 'calibration window length', (x) => int(x) && x >= 2, 'a whole number >= 2'),
      calib_seed: seedText === '' ? null : this.num(this.f.seed, 'seed', (x) => int(x) && x >= 0, 'empty or a whole number >= 0'),
      batch: 8,
      eval: {
        seqlen: this.num(this.f.evalSeqlen, 'evaluation window length', (x) => int(x) && x >= 2, 'a whole number >= 2'),
        max_windows: windowsText === '' ? null : this.num(this.f.evalWindows, 'evaluation windows', (x) => int(x) && x >= 1, 'empty (all) or a whole number >= 1'),
        batch: 8,
      },
      dense_ppl: this.f.dense.checked,
      outlier_sweep: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
      calib_text: this.text(this.f.calib, this.calibFile, 'calibration'),
      eval_text: this.text(this.f.eval, this.evalFile, 'evaluation'),
    };
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

  /** Runs one or more experiments in turn; each finished run is kept and drawn. */
  private async runMany(specs: () => PruneSpec[]): Promise<void> {
    if (this.busy) return;
    let list: PruneSpec[];
    try {
      list = specs();
    } catch (e) {
      this.showError((e as Error).message);
      return;
    }
    this.setBusy(true);
    this.showError(null);
    this.cancelled = false;
    try {
      this.status.textContent = 'Opening the model…';
      const model = await this.layers.ensureOpen();
      if (!model) throw new Error('no model is open: open one in the Layers tab');
      const calib = await this.loadText(list[0].calib_text, this.calibFile);
      const evalText = await this.loadText(list[0].eval_text, this.evalFile);
      for (const [i, spec] of list.entries()) {
        if (this.cancelled) break;
        const { label, family } = labelOf(spec);
        const experiment: Experiment = { version: 1, lab: 'prune', model, stats: { outlier_k: 5, bins: 64, per_column: false }, prune: spec };
        const prefix = list.length > 1 ? `Run ${i + 1} of ${list.length} (${label}): ` : `${label}: `;
        this.status.textContent = `${prefix}starting…`;
        const reply = await this.client.call({ type: 'prune', experiment, calib, eval: evalText }, 'prune-report', (stage, done, total) => {
          this.progress.max = Math.max(1, total);
          this.progress.value = done;
          this.status.textContent = `${prefix}${stage} ${done} of ${total}`;
        });
        const run: Run = { n: this.runs.length + 1, label, family, report: reply.report };
        this.runs.push(run);
        this.current = run;
        this.saveUrl(spec);
        this.drawRun();
        this.drawRuns();
      }
      this.status.textContent = this.cancelled ? 'Cancelled.' : 'Done.';
    } catch (e) {
      showFailure(e, this.status, this.progress, (m) => this.showError(m));
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
    $<HTMLTableElement>('prune-summary').tBodies[0].replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement('tr');
      const th = document.createElement('th');
      th.textContent = k;
      const td = document.createElement('td');
      td.textContent = v;
      td.dataset.key = k;
      tr.append(th, td);
      return tr;
    }));
    $('prune-notices').hidden = r.notices.length === 0;
    $('prune-notices').textContent = r.notices.join(' ');

    this.plot('outliers', () => multi($('prune-outlier-chart'), 'block', 'outliers (%)', blocks,
      [{ label: `outlier ratio D (M = ${r.outlier_m})`, y: r.blocks.map((b) => b.outlier_ratio), bars: true }]));
    $('prune-outlier-title').textContent = `Outlier ratio per block: % of Wanda scores above ${r.outlier_m} × the block's mean score (dense model)`;
    const allocation: Series[] = [
      { label: 'uniform', y: r.allocation_uniform },
      { label: r.options.owl ? 'OWL (this run)' : 'this run', y: r.blocks.map((b) => b.sparsity) },
      { label: 'achieved', y: r.blocks.map((b) => b.achieved_sparsity) },
    ];
    this.plot('allocation', () => multi($('prune-allocation-chart'), 'block', 'sparsity', blocks, allocation));
    const roles = [...new Set(r.blocks.flatMap((b) => b.linears.map((l) => l.role)))];
    const cell = (ri: number, ci: number) => r.blocks[ci].linears.find((l) => l.role === roles[ri])?.achieved_sparsity ?? null;
    heatmap($<HTMLCanvasElement>('prune-heatmap'), $('prune-heatmap-tip'), roles, blocks, cell, 'achieved sparsity', false);
    const sweep = r.outlier_sweep;
    heatmap($<HTMLCanvasElement>('prune-sweep-heatmap'), $('prune-sweep-tip'), sweep.m.map((m) => `M = ${m}`), blocks,
      (ri, ci) => sweep.blocks[ci]?.[ri] ?? null, 'outlier ratio (%)', true);
    this.fillTensorPicker();
    void this.drawHistograms();
  }

  private plot(key: string, draw: () => uPlot): void {
    this.plots[key]?.destroy();
    this.plots[key] = draw();
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
      const reply = await this.client.call({ type: 'prune-histograms', tensor, bins: 64 }, 'tensor-histograms');
      this.histograms = { before: reply.before, after: reply.after };
      const { before, after } = reply;
      const w = (before.hi - before.lo) / before.counts.length;
      const x = before.counts.map((_, i) => before.lo + (i + 0.5) * w);
      this.plot('hist', () => multi($('prune-hist-chart'), 'weight', 'count (log)', x,
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
    table.tBodies[0].replaceChildren(...this.runs.map((run) => {
      const tr = document.createElement('tr');
      const p = run.report.perplexity;
      for (const v of [String(run.n), run.label, `${(100 * run.report.achieved_sparsity).toFixed(2)}%`, fmt(p?.dense ?? null), fmt(p?.pruned ?? null), `${run.report.timings.total.toFixed(1)} s`]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      }
      tr.onclick = () => {
        this.current = run;
        this.drawRun();
      };
      tr.classList.toggle('selected', run === this.current);
      return tr;
    }));
    const withPpl = this.runs.filter((r) => r.report.perplexity);
    this.plot('ppl', () => multi($('prune-ppl-chart'), 'run', 'perplexity (log)', withPpl.map((r) => r.n),
      [{ label: 'pruned', y: withPpl.map((r) => r.report.perplexity?.pruned ?? null), bars: true },
        { label: 'dense', y: withPpl.map((r) => r.report.perplexity?.dense ?? null) }], { log: true }));
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
    this.plot('curve', () => multi($('prune-curve-chart'), 'sparsity', 'perplexity (log)', xs, curve, { log: true }));
    // The OWL grid: runs with OWL at the current run's method, pattern and sparsity.
    const cur = this.current?.report.options;
    const owlRuns = withPpl.filter((r) => r.report.options.owl && cur && r.report.options.method === cur.method &&
      r.report.options.sparsity === cur.sparsity && JSON.stringify(r.report.options.nm) === JSON.stringify(cur.nm));
    const lamdas = [...new Set(owlRuns.map((r) => r.report.options.owl!.lamda))].sort((a, b) => a - b);
    const ms = [...new Set(owlRuns.map((r) => r.report.options.owl!.hyper_m))].sort((a, b) => a - b);
    $('prune-grid-figure').hidden = owlRuns.length === 0;
    if (owlRuns.length) {
      const at = (l: number, m: number) => owlRuns.filter((r) => r.report.options.owl!.lamda === l && r.report.options.owl!.hyper_m === m).pop()?.report.perplexity?.pruned ?? null;
      heatmap($<HTMLCanvasElement>('prune-grid-heatmap'), $('prune-grid-tip'), lamdas.map((l) => `λ = ${l}`), ms,
        (ri, ci) => at(lamdas[ri], ms[ci]), 'perplexity', true, 'M');
      $('prune-grid-title').textContent = `OWL grid: pruned perplexity over λ and M (${cur ? labelOf({ ...(cur as PruneSpec), owl: null }).label.trim() : ''})`;
    }
  }

  private async downloadModel(): Promise<void> {
    if (!this.current) return;
    const button = $<HTMLButtonElement>('prune-download-model');
    button.disabled = true;
    const was = this.status.textContent;
    this.status.textContent = 'Writing the pruned model…';
    try {
      const reply = await this.client.call({ type: 'prune-export' }, 'pruned-model');
      download(reply.name, reply.file, 'application/octet-stream');
      // A GGUF source has no config.json for transformers: offer the one made for it.
      const config = $<HTMLButtonElement>('prune-download-config');
      config.hidden = !reply.config;
      config.onclick = () => reply.config && download('config.json', reply.config, 'application/json');
      this.status.textContent = was;
    } catch (e) {
      this.showError(`Cannot write the pruned model: ${(e as Error).message}`);
      this.status.textContent = was;
    } finally {
      button.disabled = false;
    }
  }

  private wireExports(): void {
    const png = (key: string) => () => {
      const p = this.plots[key];
      if (p) download(`${key}.png`, plotCanvas(p));
    };
    const report = () => this.current?.report;
    $('prune-outlier-png').onclick = png('outliers');
    $('prune-allocation-png').onclick = png('allocation');
    $('prune-hist-png').onclick = png('hist');
    $('prune-ppl-png').onclick = png('ppl');
    $('prune-curve-png').onclick = png('curve');
    $('prune-heatmap-png').onclick = () => download('achieved-sparsity.png', $<HTMLCanvasElement>('prune-heatmap'));
    $('prune-sweep-png').onclick = () => download('outlier-sweep.png', $<HTMLCanvasElement>('prune-sweep-heatmap'));
    $('prune-grid-png').onclick = () => download('owl-grid.png', $<HTMLCanvasElement>('prune-grid-heatmap'));
    $('prune-blocks-csv').onclick = () => {
      const r = report();
      if (r) download('blocks.csv', csv(['block', 'outlier_ratio_percent', 'sparsity_uniform', 'sparsity_allocated', 'nm_n', 'achieved_sparsity'],
        r.blocks.map((b, i) => [b.index, b.outlier_ratio, r.allocation_uniform[i] ?? null, b.sparsity, b.nm_n, b.achieved_sparsity])));
    };
    $('prune-linears-csv').onclick = () => {
      const r = report();
      if (r) download('linears.csv', csv(['block', 'role', 'tensor', 'rows', 'cols', 'outlier_ratio_percent', 'achieved_sparsity'],
        r.blocks.flatMap((b) => b.linears.map((l) => [b.index, l.role, l.tensor, l.rows, l.cols, l.outlier_ratio, l.achieved_sparsity]))));
    };
    $('prune-sweep-csv').onclick = () => {
      const r = report();
      if (r) download('outlier-sweep.csv', csv(['block', ...r.outlier_sweep.m.map((m) => `M=${m}`)], r.blocks.map((b, i) => [b.index, ...(r.outlier_sweep.blocks[i] ?? [])])));
    };
    $('prune-hist-csv').onclick = () => {
      const h = this.histograms;
      if (!h) return;
      const w = (h.before.hi - h.before.lo) / h.before.counts.length;
      download(`histogram-${this.histTensor}.csv`, csv(['bin_lo', 'bin_hi', 'dense', 'pruned'],
        h.before.counts.map((c, i) => [h.before.lo + i * w, h.before.lo + (i + 1) * w, c, h.after.counts[i]])));
    };
    $('prune-runs-csv').onclick = () => download('runs.csv', csv(['run', 'label', 'method', 'owl', 'hyper_m', 'lamda', 'nm', 'sparsity', 'achieved_sparsity', 'ppl_dense', 'ppl_pruned', 'seconds'],
      this.runs.map((r) => {
        const o = r.report.options;
        return [r.n, r.label, o.method, o.owl ? 1 : 0, o.owl?.hyper_m ?? null, o.owl?.lamda ?? null, o.nm ? o.nm.join(':') : null, o.sparsity,
          r.report.achieved_sparsity, r.report.perplexity?.dense ?? null, r.report.perplexity?.pruned ?? null, r.report.timings.total];
      })));
  }
}

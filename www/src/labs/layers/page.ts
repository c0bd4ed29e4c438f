// The layer view: open a model (the built-in SmolLM2, a dropped file or folder, a URL), and
// draw the statistics of every block and tensor. The experiment (model source, k, bins) and
// the view (statistic, tensor) live in the URL, so a link reopens the same view.

import type uPlot from 'uplot';
import { barsPerBlock, csv, download, fmt, heatmap, histogram, plotCanvas } from './charts';
import { $, showFailure } from './dom';
import type { LabClient } from './lab-client';
import { summaryOf, type BlockEntry, type Experiment, type ModelReport, type ModelSource, type OpenRequest, type Summary, type TensorEntry } from './protocol';

export const BUILTIN_MODEL = 'models/SmolLM2-135M-Instruct.Q4_1.gguf';

type StatKey = 'mean_abs' | 'std' | 'max_abs' | 'kurtosis' | 'outlier_fraction' | 'params';
const STATS: Record<StatKey, { label: string; log: boolean }> = {
  mean_abs: { label: 'mean |w|', log: false },
  std: { label: 'std', log: false },
  max_abs: { label: 'max |w|', log: true },
  kurtosis: { label: 'kurtosis', log: true },
  outlier_fraction: { label: 'outlier fraction', log: false },
  params: { label: 'parameters', log: false },
};


/** A tensor or block with its statistics nested (null when not analysed), for drawing. */
type Entry<T> = T & { stats: (Summary & { params: number }) | null };

function nest<T extends TensorEntry | BlockEntry>(e: T): Entry<T> {
  const s = summaryOf(e);
  return { ...e, stats: s && { ...s, params: e.params } };
}

function statOf(s: (Summary & { params: number }) | null, key: StatKey): number | null {
  if (!s) return null;
  return key === 'params' ? s.params : (s[key] as number | null);
}

export class LayersLab {
  private report: ReportView | null = null;
  private request: OpenRequest | null = null;
  private source: ModelSource | null = null;
  private openedIn = -1;
  private busy = false;

  private status = $<HTMLSpanElement>('layers-status');
  private progress = $<HTMLProgressElement>('layers-progress');
  private error = $<HTMLParagraphElement>('layers-error');
  private cancelButton = $<HTMLButtonElement>('layers-cancel');
  private k = $<HTMLInputElement>('layers-k');
  private bins = $<HTMLInputElement>('layers-bins');
  private stat = $<HTMLSelectElement>('layers-stat');

  constructor(private client: LabClient) {
    const params = new URLSearchParams(location.search);
    if (params.get('k')) this.k.value = params.get('k') ?? '';
    if (params.get('bins')) this.bins.value = params.get('bins') ?? '';
    const stat = params.get('stat');
    if (stat && stat in STATS) this.stat.value = stat;
    this.wireControls();
  }

  private activated = false;
  private opening: Promise<void> = Promise.resolve();
  /** Told whenever a model has been opened (the pruning lab shows which). */
  onOpened?: (source: ModelSource, summary: string) => void;

  /**
   * The model the worker holds, reopened first if the worker was restarted since; null
   * when no model is open. Waits for an open in progress.
   */
  async ensureOpen(): Promise<ModelSource | null> {
    this.activate();
    await this.opening;
    if (!this.request || !this.source) return null;
    if (this.openedIn !== this.client.generation) {
      await this.client.call({ type: 'open-model', request: this.request }, 'model-opened', this.onProgress);
      this.openedIn = this.client.generation;
    }
    return this.source;
  }

  /** Opens a model dropped or picked elsewhere (the pruning tab's own picker). */
  openFiles(files: File[]): Promise<void> {
    return this.open({ kind: 'files', files });
  }

  /** Called when the tab is first shown: opens the model the URL names (or the built-in). */
  activate(): void {
    if (this.activated) return;
    this.activated = true;
    const params = new URLSearchParams(location.search);
    const file = params.get('file');
    const model = params.get('model');
    if (file) {
      const size = Number(params.get('size') ?? 0);
      this.status.textContent = `This link was made with the file ${file}${size ? ` (${size.toLocaleString('en-US')} bytes)` : ''}: drop it here to reopen the view.`;
    } else {
      void this.open({ kind: 'url', url: model ?? BUILTIN_MODEL });
    }
  }

  private wireControls(): void {
    const drop = $<HTMLDivElement>('drop-zone');
    drop.addEventListener('dragover', (ev) => {
      ev.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', async (ev) => {
      ev.preventDefault();
      drop.classList.remove('over');
      const files = await droppedFiles(ev.dataTransfer);
      if (files.length) void this.open({ kind: 'files', files });
    });
    for (const id of ['model-files', 'model-folder']) {
      const input = $<HTMLInputElement>(id);
      input.addEventListener('change', () => {
        const files = [...(input.files ?? [])];
        input.value = '';
        if (files.length) void this.open({ kind: 'files', files });
      });
    }
    $<HTMLFormElement>('url-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const url = $<HTMLInputElement>('model-url').value.trim();
      if (url) void this.open({ kind: 'url', url });
    });
    $('builtin-model').addEventListener('click', () => void this.open({ kind: 'url', url: BUILTIN_MODEL }));
    $<HTMLFormElement>('layers-options').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.compute();
    });
    this.cancelButton.addEventListener('click', () => {
      this.status.textContent = 'Cancelling…';
      this.client.cancel();
    });
    this.stat.addEventListener('change', () => {
      this.saveUrl();
      this.report?.drawStat(this.stat.value as StatKey);
    });
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.cancelButton.disabled = !busy;
    for (const el of document.querySelectorAll<HTMLButtonElement | HTMLInputElement>('.layers-input')) el.disabled = busy;
  }

  private showError(msg: string | null): void {
    this.error.hidden = msg === null;
    this.error.textContent = msg ?? '';
  }

  private onProgress = (stage: string, done: number, total: number): void => {
    this.progress.max = Math.max(1, total);
    this.progress.value = done;
    this.status.textContent =
      stage === 'downloading'
        ? `Downloading: ${(done / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`
        : `Tensor ${done} of ${total}: ${stage}`;
  };

  /** Opens a model; on failure the previous model and its charts stay. */
  open(request: OpenRequest): Promise<void> {
    if (this.busy) return this.opening;
    this.opening = this.openNow(request);
    return this.opening;
  }

  private async openNow(request: OpenRequest): Promise<void> {
    this.setBusy(true);
    this.showError(null);
    this.status.textContent = 'Opening the model…';
    try {
      const reply = await this.client.call({ type: 'open-model', request }, 'model-opened', this.onProgress);
      this.request = request;
      this.source = reply.source;
      this.openedIn = this.client.generation;
      const info = reply.opened.info;
      const h = info.hyper;
      const summary =
        `${info.file}: ${info.format === 'Gguf' ? 'GGUF' : 'safetensors'}, ${info.arch_name} (${info.arch}), ` +
        `${info.blocks} blocks, ${info.tensors} tensors, ${info.params.toLocaleString('en-US')} parameters` +
        (h.hidden ? `, hidden ${h.hidden}` : '') +
        (h.heads ? `, ${h.heads} heads` : '') +
        (h.kv_heads && h.kv_heads !== h.heads ? ` (${h.kv_heads} KV)` : '') +
        (reply.companions.length ? `; with ${reply.companions.join(', ')}` : '');
      $('model-summary').textContent = summary;
      this.onOpened?.(reply.source, summary);
      $('model-notice').hidden = !info.notice;
      $('model-notice').textContent = info.notice ?? '';
      this.setBusy(false);
      void this.compute();
    } catch (e) {
      this.setBusy(false);
      this.progress.value = 0;
      this.status.textContent = this.request ? 'Kept the previous model.' : 'No model is open.';
      this.showError(`Cannot open the model: ${(e as Error).message}`);
    }
  }

  private experiment(): Experiment {
    const k = Number(this.k.value);
    const bins = Number(this.bins.value);
    if (!Number.isFinite(k) || k < 0) throw new Error(`k must be a number >= 0, not "${this.k.value}"`);
    if (!Number.isInteger(bins) || bins < 1 || bins > 256) throw new Error(`bins must be a whole number from 1 to 256, not "${this.bins.value}"`);
    if (!this.source) throw new Error('open a model first');
    return { version: 1, lab: 'layers', model: this.source, stats: { outlier_k: k, bins, per_column: false } };
  }

  /** Statistics of the open model with the current options. */
  async compute(): Promise<void> {
    if (this.busy || !this.request) return;
    let experiment: Experiment;
    try {
      experiment = this.experiment();
    } catch (e) {
      this.showError((e as Error).message);
      return;
    }
    this.setBusy(true);
    this.showError(null);
    try {
      if (this.openedIn !== this.client.generation) {
        // The worker was restarted and lost the model: open it again from what we kept.
        await this.client.call({ type: 'open-model', request: this.request }, 'model-opened', this.onProgress);
        this.openedIn = this.client.generation;
      }
      this.status.textContent = 'Computing statistics…';
      const reply = await this.client.call({ type: 'model-stats', experiment }, 'model-report', this.onProgress);
      this.saveUrl();
      this.report = new ReportView(reply.report, this.stat.value as StatKey);
      this.status.textContent = 'Done.';
    } catch (e) {
      showFailure(e, this.status, this.progress, (m) => this.showError(m));
    } finally {
      this.setBusy(false);
    }
  }

  private saveUrl(): void {
    const p = new URLSearchParams(location.search);
    for (const key of ['model', 'file', 'size']) p.delete(key);
    if (this.source?.kind === 'url') p.set('model', this.source.url);
    if (this.source?.kind === 'file') {
      p.set('file', this.source.name);
      p.set('size', String(this.source.size));
    }
    p.set('k', this.k.value);
    p.set('bins', this.bins.value);
    p.set('stat', this.stat.value);
    const tensor = this.report?.tensor;
    if (tensor) p.set('tensor', tensor);
    history.replaceState(null, '', `${location.pathname}?${p}`);
  }
}

/** Files from a drop: plain files, or the files inside a dropped folder (one level). */
async function droppedFiles(dt: DataTransfer | null): Promise<File[]> {
  if (!dt) return [];
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry?.()).filter((e): e is FileSystemEntry => !!e);
  const dirs = entries.filter((e) => e.isDirectory) as FileSystemDirectoryEntry[];
  if (dirs.length === 0) return [...dt.files];
  const out: File[] = [...dt.files].filter((f) => f.size > 0 || f.type !== '');
  for (const d of dirs) {
    const children = await new Promise<FileSystemEntry[]>((ok, fail) => d.createReader().readEntries(ok, fail));
    for (const c of children.filter((c) => c.isFile) as FileSystemFileEntry[]) {
      out.push(await new Promise<File>((ok, fail) => c.file(ok, fail)));
    }
  }
  return out;
}

type SortKey = 'name' | 'block' | 'role' | 'params' | StatKey;

/** The charts and the table of one report. */
class ReportView {
  tensor: string | null;
  private sortKey: SortKey = 'block';
  private sortUp = true;
  private blockPlot: uPlot | null = null;
  private histPlot: uPlot | null = null;

  private r: { tensors: Entry<TensorEntry>[]; blocks: Entry<BlockEntry>[]; notices: string[] };

  constructor(private report: ModelReport, stat: StatKey) {
    this.r = { tensors: report.tensors.map(nest), blocks: report.blocks.map(nest), notices: report.notices };
    const r = this.r;
    const wanted = new URLSearchParams(location.search).get('tensor');
    const analysed = r.tensors.filter((t) => t.stats);
    this.tensor = analysed.find((t) => t.name === wanted)?.name ?? analysed.find((t) => t.block !== null && t.role !== null && t.role !== 'norm' && t.role !== 'bias')?.name ?? analysed[0]?.name ?? null;
    $('layers-result').hidden = false;
    const notices = [...r.notices];
    $('layers-notices').hidden = notices.length === 0;
    $('layers-notices').textContent = notices.join(' ');
    this.fillTensorPicker();
    this.drawStat(stat);
    this.drawHistogram();
    this.drawTable();
    this.wireExports();
  }

  drawStat(stat: StatKey): void {
    const { label, log } = STATS[stat];
    const blocks = this.r.blocks;
    this.blockPlot?.destroy();
    this.blockPlot = barsPerBlock($('block-chart'), label, blocks.map((b) => b.index), blocks.map((b) => statOf(b.stats, stat)), log);
    $('block-chart-title').textContent = `${label} per block (all linear weights of the block pooled)`;
    const roles = [...new Set(blocks.flatMap((b) => b.linears))];
    const byKey = new Map<string, Entry<TensorEntry>>();
    for (const t of this.r.tensors) if (t.block !== null && t.role) byKey.set(`${t.block}/${t.role}`, t);
    heatmap($<HTMLCanvasElement>('heatmap'), $('heatmap-tip'), roles, blocks.map((b) => b.index),
      (ri, ci) => statOf(byKey.get(`${blocks[ci].index}/${roles[ri]}`)?.stats ?? null, stat), label, log);
    $('heatmap-title').textContent = `${label} per block and linear layer`;
  }

  private fillTensorPicker(): void {
    const pick = $<HTMLSelectElement>('tensor-pick');
    pick.replaceChildren(...this.r.tensors.filter((t) => t.stats).map((t) => new Option(t.name, t.name, false, t.name === this.tensor)));
    pick.onchange = () => this.select(pick.value);
  }

  private select(name: string): void {
    this.tensor = name;
    $<HTMLSelectElement>('tensor-pick').value = name;
    const p = new URLSearchParams(location.search);
    p.set('tensor', name);
    history.replaceState(null, '', `${location.pathname}?${p}`);
    this.drawHistogram();
    for (const tr of document.querySelectorAll<HTMLTableRowElement>('#tensor-table tbody tr')) {
      tr.classList.toggle('selected', tr.dataset.name === name);
    }
  }

  private drawHistogram(): void {
    const t = this.r.tensors.find((x) => x.name === this.tensor);
    this.histPlot?.destroy();
    this.histPlot = null;
    if (!t?.stats) return;
    const h = t.stats.histogram;
    this.histPlot = histogram($('hist-chart'), h.lo, h.hi, h.counts);
    $('hist-caption').textContent = `${t.name} [${t.shape.join(', ')}], ${t.dtype}: ${h.counts.length} bins over [${fmt(h.lo)}, ${fmt(h.hi)}]`;
  }

  private drawTable(): void {
    const table = $<HTMLTableElement>('tensor-table');
    const cols: [SortKey, string][] = [
      ['name', 'tensor'], ['block', 'block'], ['role', 'role'], ['params', 'params'], ['mean_abs', 'mean |w|'],
      ['std', 'std'], ['max_abs', 'max |w|'], ['kurtosis', 'kurtosis'], ['outlier_fraction', 'outliers'],
    ];
    const head = document.createElement('tr');
    for (const [key, label] of cols) {
      const th = document.createElement('th');
      th.textContent = label + (key === this.sortKey ? (this.sortUp ? ' ▲' : ' ▼') : '');
      th.dataset.sort = key;
      th.onclick = () => {
        this.sortUp = key === this.sortKey ? !this.sortUp : true;
        this.sortKey = key;
        this.drawTable();
      };
      head.append(th);
    }
    table.tHead?.replaceChildren(head);
    const value = (t: Entry<TensorEntry>, key: SortKey): string | number => {
      if (key === 'name') return t.name;
      if (key === 'role') return t.role ?? '';
      if (key === 'block') return t.block ?? Number.MAX_SAFE_INTEGER;
      if (key === 'params') return t.params;
      return statOf(t.stats, key) ?? -Infinity;
    };
    const rows = [...this.r.tensors].sort((a, b) => {
      const x = value(a, this.sortKey);
      const y = value(b, this.sortKey);
      const c = typeof x === 'string' ? x.localeCompare(String(y)) : (x as number) - (y as number);
      return (this.sortUp ? c : -c) || a.name.localeCompare(b.name);
    });
    table.tBodies[0].replaceChildren(...rows.map((t) => {
      const tr = document.createElement('tr');
      tr.dataset.name = t.name;
      tr.classList.toggle('selected', t.name === this.tensor);
      const s = t.stats;
      const cells = [t.name, t.block === null ? '' : String(t.block), t.role ?? '', fmt(t.params),
        fmt(s?.mean_abs), fmt(s?.std), fmt(s?.max_abs), fmt(s?.kurtosis ?? null),
        s ? `${(100 * s.outlier_fraction).toFixed(3)}%` : (t.skipped ?? '')];
      for (const c of cells) {
        const td = document.createElement('td');
        td.textContent = c;
        tr.append(td);
      }
      if (s) tr.onclick = () => this.select(t.name);
      return tr;
    }));
  }

  private wireExports(): void {
    const r = this.r;
    const report = this.report;
    const stat = () => $<HTMLSelectElement>('layers-stat').value as StatKey;
    const summaryRow = (s: (Summary & { params: number }) | null) => s
      ? [s.params, s.mean, s.std, s.mean_abs, s.max_abs, s.kurtosis, s.outlier_fraction]
      : [null, null, null, null, null, null, null];
    const summaryHead = ['params', 'mean', 'std', 'mean_abs', 'max_abs', 'kurtosis', 'outlier_fraction'];
    $('block-png').onclick = () => this.blockPlot && download('blocks.png', plotCanvas(this.blockPlot));
    $('block-csv').onclick = () => download('blocks.csv', csv(['block', ...summaryHead], r.blocks.map((b) => [b.index, ...summaryRow(b.stats)])));
    $('heatmap-png').onclick = () => download('heatmap.png', $<HTMLCanvasElement>('heatmap'));
    $('heatmap-csv').onclick = () => download(`heatmap-${stat()}.csv`, csv(['block', 'role', 'tensor', stat()],
      r.tensors.filter((t) => t.block !== null && t.role && t.role !== 'norm').map((t) => [t.block, t.role, t.name, statOf(t.stats, stat())])));
    $('hist-png').onclick = () => this.histPlot && download('histogram.png', plotCanvas(this.histPlot));
    $('hist-csv').onclick = () => {
      const t = r.tensors.find((x) => x.name === this.tensor);
      if (!t?.stats) return;
      const h = t.stats.histogram;
      const w = (h.hi - h.lo) / h.counts.length;
      download(`histogram-${t.name}.csv`, csv(['bin_lo', 'bin_hi', 'count'], h.counts.map((c, i) => [h.lo + i * w, h.lo + (i + 1) * w, c])));
    };
    $('table-csv').onclick = () => download('tensors.csv', csv(['tensor', 'shape', 'dtype', 'block', 'role', ...summaryHead],
      r.tensors.map((t) => [t.name, t.shape.join('x'), t.dtype, t.block, t.role, ...summaryRow(t.stats)])));
    $('report-json').onclick = () => download('layerlab-stats.json', JSON.stringify(report, null, 1), 'application/json');
  }
}

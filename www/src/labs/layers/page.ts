// The layer view: open a model (the built-in SmolLM2, a dropped file or folder, a URL), and
// draw the statistics of every block and tensor. The experiment (model source, k, bins) and
// the view (statistic, tensor) live in the address, so a link reopens the same view.

import { barsPerBlock, binEdges, csvButton, download, fmt, heatmap, histogram, Plots, pngButton, tableRows } from '../../shell/charts';
import { $, numberFrom, onEdit, show } from '../../shell/dom';
import type { LabContext, PageLab } from '../../shell/lab';
import { RunStatus } from '../../shell/status';
import { modelSummary } from '../../shell/model';
import { summaryOf, type BlockEntry, type Experiment, type ModelReport, type ModelSource, type OpenRequest, type Summary, type TensorEntry } from '../../protocol';

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

export function create(ctx: LabContext): PageLab {
  return new LayersLab(ctx);
}

class LayersLab implements PageLab {
  readonly name = 'layers';
  private report: ReportView | null = null;
  /** The model the link names, opened when the tab is first shown. */
  private wanted: ModelSource;
  private status: RunStatus;
  private k = $<HTMLInputElement>('layers-k');
  private bins = $<HTMLInputElement>('layers-bins');
  private stat = $<HTMLSelectElement>('layers-stat');
  private activated = false;

  constructor(private ctx: LabContext) {
    this.status = new RunStatus(
      { progress: $('layers-progress'), status: $('layers-status'), error: $('layers-error'), cancel: $('layers-cancel') },
      ctx.client,
    );
    const e = ctx.initial('layers');
    this.wanted = e.model;
    show(this.k, e.outlier_k);
    show(this.bins, e.bins);
    const stat = ctx.linkView('view.stat');
    if (stat && stat in STATS) this.stat.value = stat;
    this.wireControls();
    // A lab that needs the model (the pruning tab) opens the one this tab would.
    ctx.models.onNeeded = () => this.activate();
    this.status.say('Ready.');
  }

  /** Called when the tab is shown: opens the model the link names (or the built-in) once. */
  activate(): void {
    if (this.activated) return;
    this.activated = true;
    const m = this.wanted;
    if (m.kind === 'file') {
      this.status.say(`This link was made with the file ${m.name}${m.size ? ` (${m.size.toLocaleString('en-US')} bytes)` : ''}: drop it here to reopen the view.`);
    } else if (m.kind === 'url') {
      void this.open({ kind: 'url', url: m.url });
    } else {
      this.status.say(`This link names the path ${m.path} on the machine that made it: open the file here.`);
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
    $('builtin-model').addEventListener('click', () => void this.open({ kind: 'url', url: this.ctx.defaults.builtin_model }));
    $<HTMLFormElement>('layers-options').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.compute();
    });
    onEdit([this.k, this.bins], () => this.ctx.publish(this));
    this.stat.addEventListener('change', () => {
      this.ctx.publish(this);
      this.report?.drawStat(this.stat.value as StatKey);
    });
  }

  private setBusy(busy: boolean): void {
    this.status.setBusy(busy);
    for (const el of document.querySelectorAll<HTMLButtonElement | HTMLInputElement>('.layers-input')) el.disabled = busy;
  }

  private onProgress = (stage: string, done: number, total: number): void =>
    this.status.tracker((st, d, t) => (st === 'downloading'
      ? `Downloading: ${(d / 1e6).toFixed(1)} of ${(t / 1e6).toFixed(1)} MB`
      : `Tensor ${d} of ${t}: ${st}`))(stage, done, total);

  /** Opens a model; on failure the previous model and its charts stay. */
  open(request: OpenRequest): Promise<void> {
    if (this.status.busy) return Promise.resolve();
    return this.openNow(request);
  }

  private async openNow(request: OpenRequest): Promise<void> {
    this.setBusy(true);
    this.status.say('Opening the model…');
    try {
      const reply = await this.ctx.models.open(request, this.onProgress);
      this.wanted = reply.source;
      const info = reply.opened.info;
      $('model-summary').textContent = modelSummary(reply);
      $('model-notice').hidden = !info.notice;
      $('model-notice').textContent = info.notice ?? '';
      this.ctx.publish(this);
      this.setBusy(false);
      void this.compute();
    } catch (e) {
      this.setBusy(false);
      $<HTMLProgressElement>('layers-progress').value = 0;
      this.status.say(this.ctx.models.isOpen ? 'Kept the previous model.' : 'No model is open.');
      this.status.error(`Cannot open the model: ${(e as Error).message}`);
    }
  }

  experiment(): Experiment {
    const k = numberFrom(this.k, 'k', (x) => x >= 0, 'a number >= 0');
    const bins = numberFrom(this.bins, 'bins', (x) => Number.isInteger(x) && x >= 1 && x <= 256, 'a whole number from 1 to 256');
    return { version: 2, lab: 'layers', model: this.ctx.models.source ?? this.wanted, outlier_k: k, bins };
  }

  view(): Record<string, string> {
    return { stat: this.stat.value, tensor: this.report?.tensor ?? this.ctx.linkView('view.tensor') ?? '' };
  }

  /** Statistics of the open model with the current options. */
  async compute(): Promise<void> {
    if (this.status.busy || !this.ctx.models.isOpen) return;
    let experiment: Experiment;
    try {
      experiment = this.experiment();
    } catch (e) {
      this.status.error((e as Error).message);
      return;
    }
    this.setBusy(true);
    try {
      await this.ctx.models.ensureOpen(this.onProgress);
      this.status.say('Computing statistics…');
      const reply = await this.ctx.client.call('model-stats', { experiment }, this.onProgress);
      this.report = new ReportView(reply.report, this.stat.value as StatKey, this.ctx.linkView('view.tensor'), () => this.ctx.publish(this));
      this.ctx.publish(this);
      this.status.say('Done.');
    } catch (e) {
      this.status.fail(e);
    } finally {
      this.setBusy(false);
    }
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
  private plots = new Plots();

  private r: { tensors: Entry<TensorEntry>[]; blocks: Entry<BlockEntry>[]; notices: string[] };

  constructor(private report: ModelReport, stat: StatKey, wanted: string | null, private onSelect: () => void) {
    this.r = { tensors: report.tensors.map(nest), blocks: report.blocks.map(nest), notices: report.notices };
    const r = this.r;
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
    this.plots.draw('blocks', () => barsPerBlock($('block-chart'), label, blocks.map((b) => b.index), blocks.map((b) => statOf(b.stats, stat)), log));
    $('block-chart-title').textContent = `${label} per block (all linear weights of the block pooled)`;
    const roles = [...new Set(blocks.flatMap((b) => b.linears))];
    const byKey = new Map<string, Entry<TensorEntry>>();
    for (const t of this.r.tensors) if (t.block !== null && t.role) byKey.set(`${t.block}/${t.role}`, t);
    const cellTensor = (ri: number, ci: number) => byKey.get(`${blocks[ci].index}/${roles[ri]}`);
    heatmap($<HTMLCanvasElement>('heatmap'), $('heatmap-tip'), roles, blocks.map((b) => b.index),
      (ri, ci) => statOf(cellTensor(ri, ci)?.stats ?? null, stat), label, log, 'block', (ri, ci) => {
        const t = cellTensor(ri, ci);
        if (t?.stats) this.select(t.name);
      });
    $('heatmap-title').textContent = `${label} per block and linear layer (click a cell for its histogram)`;
  }

  private fillTensorPicker(): void {
    const pick = $<HTMLSelectElement>('tensor-pick');
    pick.replaceChildren(...this.r.tensors.filter((t) => t.stats).map((t) => new Option(t.name, t.name, false, t.name === this.tensor)));
    pick.onchange = () => this.select(pick.value);
  }

  private select(name: string): void {
    this.tensor = name;
    $<HTMLSelectElement>('tensor-pick').value = name;
    this.onSelect();
    this.drawHistogram();
    for (const tr of document.querySelectorAll<HTMLTableRowElement>('#tensor-table tbody tr')) {
      tr.classList.toggle('selected', tr.dataset.name === name);
    }
  }

  private drawHistogram(): void {
    const t = this.r.tensors.find((x) => x.name === this.tensor);
    this.plots.clear('hist');
    if (!t?.stats) return;
    const h = t.stats.histogram;
    this.plots.draw('hist', () => histogram($('hist-chart'), h.lo, h.hi, h.counts));
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
    tableRows(table.tBodies[0], rows.map((t) => {
      const s = t.stats;
      return [t.name, t.block === null ? '' : String(t.block), t.role ?? '', fmt(t.params),
        fmt(s?.mean_abs), fmt(s?.std), fmt(s?.max_abs), fmt(s?.kurtosis ?? null),
        s ? `${(100 * s.outlier_fraction).toFixed(3)}%` : (t.skipped ?? '')];
    }), (tr, i) => {
      const t = rows[i];
      tr.dataset.name = t.name;
      tr.classList.toggle('selected', t.name === this.tensor);
      if (t.stats) tr.onclick = () => this.select(t.name);
    });
  }

  private wireExports(): void {
    const r = this.r;
    const report = this.report;
    const stat = () => $<HTMLSelectElement>('layers-stat').value as StatKey;
    const summaryRow = (s: (Summary & { params: number }) | null) => s
      ? [s.params, s.mean, s.std, s.mean_abs, s.max_abs, s.kurtosis, s.outlier_fraction]
      : [null, null, null, null, null, null, null];
    const summaryHead = ['params', 'mean', 'std', 'mean_abs', 'max_abs', 'kurtosis', 'outlier_fraction'];
    pngButton($('block-png'), 'blocks.png', () => this.plots.get('blocks'));
    csvButton($('block-csv'), 'blocks.csv', () => ({ header: ['block', ...summaryHead], rows: r.blocks.map((b) => [b.index, ...summaryRow(b.stats)]) }));
    pngButton($('heatmap-png'), 'heatmap.png', () => $<HTMLCanvasElement>('heatmap'));
    csvButton($('heatmap-csv'), () => `heatmap-${stat()}.csv`, () => ({
      header: ['block', 'role', 'tensor', stat()],
      rows: r.tensors.filter((t) => t.block !== null && t.role && t.role !== 'norm').map((t) => [t.block, t.role, t.name, statOf(t.stats, stat())]),
    }));
    pngButton($('hist-png'), 'histogram.png', () => this.plots.get('hist'));
    csvButton($('hist-csv'), () => `histogram-${this.tensor}.csv`, () => {
      const t = r.tensors.find((x) => x.name === this.tensor);
      if (!t?.stats) return null;
      const h = t.stats.histogram;
      return { header: ['bin_lo', 'bin_hi', 'count'], rows: binEdges(h).map((b, i) => [b.lo, b.hi, h.counts[i]]) };
    });
    csvButton($('table-csv'), 'tensors.csv', () => ({
      header: ['tensor', 'shape', 'dtype', 'block', 'role', ...summaryHead],
      rows: r.tensors.map((t) => [t.name, t.shape.join('x'), t.dtype, t.block, t.role, ...summaryRow(t.stats)]),
    }));
    $('report-json').onclick = () => download('layerlab-stats.json', JSON.stringify(report, null, 1), 'application/json');
  }
}

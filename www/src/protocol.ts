// The messages between the page (main.ts) and the worker (worker.ts) that owns the lab.
// The page only sends requests and draws replies; all heavy state lives in the worker.

export interface BackendInfo {
  kind: 'gpu' | 'cpu';
  name: string;
  reason: string | null;
}

export interface ReduceRequest {
  seed: number;
  rows: number;
  cols: number;
  outlier_k: number;
  bins: number;
  per_column: boolean;
}

export interface Histogram {
  lo: number;
  hi: number;
  counts: number[];
}

export interface ColumnStats {
  sum: number[];
  sum_sq: number[];
  mean: number[];
  mean_abs: number[];
  min: number[];
  max: number[];
  kurtosis: (number | null)[];
  outlier_fraction: number[];
  histogram: number[][];
}

export interface TensorStats {
  rows: number;
  cols: number;
  count: number;
  sum: number;
  sum_sq: number;
  mean: number;
  std: number;
  mean_abs: number;
  max_abs: number;
  min: number;
  max: number;
  m4: number;
  kurtosis: number | null;
  outlier_k: number;
  outlier_threshold: number;
  outlier_count: number;
  outlier_fraction: number;
  histogram: Histogram;
  columns: ColumnStats | null;
}

export interface StatsRun {
  stats: TensorStats;
  backend: BackendInfo;
  notice: string | null;
}

// ---- the layer view ----------------------------------------------------------------------

export type ModelSource =
  | { kind: 'url'; url: string }
  | { kind: 'file'; name: string; size: number }
  | { kind: 'path'; path: string };

export interface StatsOptions {
  outlier_k: number;
  bins: number;
  per_column: boolean;
}

/** A text for calibration or evaluation: one served beside the page, a dropped file, a path. */
export type TextSource =
  | { kind: 'builtin'; name: string }
  | { kind: 'file'; name: string; size: number }
  | { kind: 'path'; path: string };

export interface PplOptions {
  seqlen: number;
  max_windows: number | null;
  batch: number;
}

export type Method = 'magnitude' | 'wanda' | 'sparsegpt';

/** src/prune/driver.rs PruneOptions. */
export interface PruneOptions {
  method: Method;
  sparsity: number;
  nm: [number, number] | null;
  owl: { hyper_m: number; lamda: number } | null;
  nsamples: number;
  seqlen: number;
  calib_seed: number | null;
  batch: number;
  eval: PplOptions;
  dense_ppl: boolean;
  outlier_sweep: number[];
}

/** The pruning lab's part of an experiment: the options and which texts. */
export interface PruneSpec extends PruneOptions {
  calib_text: TextSource;
  eval_text: TextSource;
}

/** The versioned experiment (src/experiment.rs): what the URL, the CLI and reports share. */
export interface Experiment {
  version: 1;
  lab: 'layers' | 'prune';
  model: ModelSource;
  stats: StatsOptions;
  prune?: PruneSpec | null;
}

export interface LinearReport {
  role: string;
  tensor: string;
  rows: number;
  cols: number;
  achieved_sparsity: number;
  outlier_ratio: number;
}

export interface BlockReport {
  index: number;
  outlier_ratio: number;
  sparsity: number;
  nm_n: number | null;
  achieved_sparsity: number;
  linears: LinearReport[];
}

export interface PruneReport {
  experiment?: Experiment | null;
  options: PruneOptions;
  outlier_m: number;
  blocks: BlockReport[];
  outlier_sweep: { m: number[]; blocks: number[][] };
  allocation_uniform: number[];
  perplexity: { dense: number | null; pruned: number; windows: number; seqlen: number; predicted_tokens: number; text_tokens: number } | null;
  achieved_sparsity: number;
  pruned_weights: number;
  linear_weights: number;
  calibration: { text_tokens: number; windows: number; seqlen: number; starts: number[] };
  notices: string[];
  timings: { dense_pass: number; prune: number; perplexity_dense: number | null; perplexity_pruned: number | null; total: number };
  backend?: BackendInfo;
}

export interface Hyper {
  hidden: number | null;
  layers: number | null;
  heads: number | null;
  kv_heads: number | null;
  ffn: number | null;
  vocab: number | null;
  context: number | null;
}

export interface ModelInfo {
  file: string;
  format: 'Safetensors' | 'Gguf';
  arch: string;
  arch_name: string;
  hyper: Hyper;
  blocks: number;
  tensors: number;
  params: number;
  notice: string | null;
}

export interface Summary {
  mean: number;
  std: number;
  mean_abs: number;
  max_abs: number;
  kurtosis: number | null;
  outlier_fraction: number;
  histogram: Histogram;
}

/** A tensor's statistics are flattened into its entry (absent when not analysed). */
export interface TensorEntry extends Partial<Summary> {
  name: string;
  shape: number[];
  dtype: string;
  params: number;
  block: number | null;
  role: string | null;
  skipped: string | null;
}

export interface BlockEntry extends Partial<Summary> {
  index: number;
  linears: string[];
  params: number;
}

/** The statistics of an entry, or null when it was not analysed. */
export function summaryOf(e: Partial<Summary>): Summary | null {
  return e.mean_abs === undefined || e.histogram === undefined ? null : (e as Summary);
}

export interface ModelReport {
  experiment: Experiment | null;
  model: ModelInfo;
  options: StatsOptions;
  tensors: TensorEntry[];
  blocks: BlockEntry[];
  backend: BackendInfo;
  notices: string[];
}

export interface Opened {
  info: ModelInfo;
}

/** What the page hands the worker to open: a URL, or the files the user dropped. */
export type OpenRequest = { kind: 'url'; url: string } | { kind: 'files'; files: File[] };

export type ToWorker =
  | { type: 'init'; backend: 'auto' | 'gpu' | 'cpu' }
  | { type: 'reduce'; id: number; request: ReduceRequest }
  | { type: 'open-model'; id: number; request: OpenRequest }
  | { type: 'model-stats'; id: number; experiment: Experiment }
  | { type: 'prune'; id: number; experiment: Experiment; calib: string; eval: string }
  | { type: 'prune-export'; id: number }
  | { type: 'prune-histograms'; id: number; tensor: string; bins: number }
  | { type: 'cancel' }
  | { type: 'lose-device' };

export type FromWorker =
  | { type: 'ready'; backend: BackendInfo }
  | { type: 'init-failed'; message: string }
  | { type: 'progress'; id: number; stage: string; done: number; total: number }
  | { type: 'result'; id: number; run: StatsRun; backend: BackendInfo }
  | { type: 'error'; id: number; message: string; backend: BackendInfo }
  | { type: 'device-lost'; lost: boolean; backend: BackendInfo }
  | { type: 'model-opened'; id: number; opened: Opened; source: ModelSource; companions: string[] }
  | { type: 'model-report'; id: number; report: ModelReport; backend: BackendInfo }
  | { type: 'prune-report'; id: number; report: PruneReport; backend: BackendInfo }
  | { type: 'pruned-model'; id: number; file: Blob; config: string | null; name: string }
  | { type: 'tensor-histograms'; id: number; before: Histogram; after: Histogram };

// The messages between the page (main.ts) and the worker (worker.ts) that owns the lab.
// The page only sends requests and draws replies; all heavy state lives in the worker.

export interface BackendInfo {
  kind: 'gpu' | 'cpu';
  name: string;
  reason: string | null;
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
  experiment: Experiment;
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

/** The layer view's spec (src/experiment.rs LayersSpec). */
export interface LayersSpec {
  lab: 'layers';
  model: ModelSource;
  outlier_k: number;
  bins: number;
}

/** The pruning lab's spec: the options (flattened), the model and which texts. */
export interface PruneSpec extends PruneOptions {
  lab: 'prune';
  model: ModelSource;
  calib_text: TextSource;
  eval_text: TextSource | null;
}

/** The compute check's spec: a seeded synthetic matrix and the statistics options. */
export interface ComputeSpec extends StatsOptions {
  lab: 'compute';
  seed: number;
  rows: number;
  cols: number;
}

// ---- the training lab (Mix-LN) -------------------------------------------------------------

export type NormPlacement = 'pre' | 'post' | 'mix';

/** src/train/mod.rs TrainOptions: one run's settings. */
export interface TrainOptions {
  layers: number;
  width: number;
  heads: number;
  kv_heads: number;
  ffn: number;
  ctx: number;
  batch: number;
  steps: number;
  lr: number;
  warmup: number;
  clip: number;
  weight_decay: number;
  seed: number;
  eval_every: number;
  norm: NormPlacement;
  alpha: number;
  tied_head: boolean;
}

/** The training lab's spec: the options (flattened), the text, the tokenizer, and which
 *  placements to train in turn (empty: the one in `norm`). */
export interface TrainSpec extends TrainOptions {
  lab: 'train';
  text: TextSource;
  tokenizer: string;
  runs: NormPlacement[];
}

/** One optimizer step's numbers (src/train/mod.rs StepRecord). */
export interface StepRecord {
  step: number;
  lr: number;
  loss: number;
  grad_norm: number[];
  hidden_rms: number[];
  val_loss?: number;
}

/** One angular-distance evaluation: matrix[l][n - 1], null where l + n > L. */
export interface AngularDistance {
  step: number;
  matrix: (number | null)[][];
}

/** One run's report (src/train/mod.rs TrainReport). */
export interface TrainRunReport {
  options: TrainOptions;
  vocab_size: number;
  params: number;
  steps: StepRecord[];
  angular_distance: AngularDistance[];
  layer_removal: { block: number; loss: number; increase: number }[];
  tokens_per_s: number;
  timings: { total_s: number; train_s: number; eval_s: number };
  stopped: boolean;
}

/** What `layerlab train --json` and `layerlab run` write (src/experiment.rs TrainResult). */
export interface TrainReport {
  experiment: Experiment;
  text: string;
  tokenizer: string;
  backend: BackendInfo;
  runs: TrainRunReport[];
}

// ---- the bias lab (Sebra) -------------------------------------------------------------------

/** src/sebra/mod.rs SebraOptions, flattened into the bias lab's spec. */
export interface SebraSpec {
  lab: 'sebra';
  classes: number;
  image: number;
  train_per_class: number;
  val_per_class: number;
  test_per_class: number;
  /** (rho_1 colour, rho_2 texture). */
  bias: [number, number];
  noise: number;
  model: 'cnn' | 'mlp';
  width: number;
  optimizer: 'adam' | 'sgd';
  momentum: number;
  epochs: number;
  rank_epochs: number;
  beta_inv: number;
  p_critical: number;
  gap: number;
  tau: number;
  ce_weight: number;
  lr: number;
  batch: number;
  seed: number;
}

/** src/sebra/metrics.rs GroupAccuracy; per_group: both, colour only, texture only, none
 *  aligned (null: no sample). */
export interface GroupAccuracy {
  per_group: (number | null)[];
  overall: number;
  worst_group: number;
  in_distribution: number;
  gap_colour: number;
  gap_texture: number;
  gap_both: number;
}

export type SebraGroup = 'both_aligned' | 'colour_aligned' | 'texture_aligned' | 'none_aligned';

/** What `layerlab sebra --json` and `layerlab run` write (src/sebra/run.rs SebraReport). */
export interface SebraReport {
  experiment: Experiment;
  options: Omit<SebraSpec, 'lab'>;
  ranking: {
    epochs: number;
    samples: { index: number; class: number; group: SebraGroup; rank: number }[];
    per_epoch: { epoch: number; deselected: number[][]; remaining: number }[];
    pairs_per_epoch: number;
  };
  tau: { per_class: (number | null)[]; mean: number | null };
  accuracy: { erm: GroupAccuracy; sebra: GroupAccuracy; oracle: GroupAccuracy };
  epochs: { phase: 'erm' | 'rank' | 'mitigate' | 'oracle'; epoch: number; of: number; loss: number; seconds: number }[];
  timings: Record<string, number>;
  /** Where each phase ran ("cpu", or "erm training: gpu (...); erm scoring, ...: cpu"). */
  backend?: string;
}

/** Training images of a bias-lab experiment: every sample's class and group order (0 both
 *  aligned .. 3 none), and the asked images as side x side RGBA, one after another. */
export interface SebraImages {
  side: number;
  classes: number;
  labels: number[];
  groups: number[];
  rgba: Uint8Array;
}

/** The versioned experiment (src/experiment.rs, version 2): the lab spec beside the
 *  version, tagged by `lab`. What the URL, the CLI (`layerlab run`) and reports share. */
export type LabSpec = LayersSpec | PruneSpec | ComputeSpec | TrainSpec | SebraSpec;
export type Experiment = LabSpec & { version: 2 };
export type LabName = LabSpec['lab'];
/** The experiment of one lab. */
export type ExperimentOf<L extends LabName> = Extract<LabSpec, { lab: L }> & { version: 2 };

/** What the wasm hands the page before it draws its controls: every default lives in Rust. */
export interface Defaults {
  version: number;
  experiments: Experiment[];
  builtin_model: string;
  builtin_texts: string[];
  /** OWL's M and lambda when OWL is switched on (the pruning spec's default is off). */
  owl: { hyper_m: number; lamda: number };
}

/** A step's measurements, streamed with the progress (a training step's loss, its gradient
 *  norm per block): named numbers and small arrays. */
export interface StepMetrics {
  step: number;
  values: Record<string, number | number[] | (number | null)[][]>;
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
  experiment: Experiment;
  model: string;
  calib: string;
  eval: string | null;
  tokenizer: string;
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
  experiment: Experiment;
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

/**
 * Every request a lab makes of the worker, by name: what goes in and what comes back. A lab
 * adds its own here and its handlers in its folder's worker.ts (registered in labs/index.ts).
 */
export interface Ops {
  'open-model': { request: { request: OpenRequest }; reply: { opened: Opened; source: ModelSource; companions: string[] } };
  'model-stats': { request: { experiment: Experiment }; reply: { report: ModelReport } };
  prune: { request: { experiment: Experiment; calib: string; eval: string }; reply: { report: PruneReport } };
  'prune-export': { request: Record<string, never>; reply: { file: Blob; config: string | null; name: string } };
  'prune-histograms': { request: { tensor: string; bins: number }; reply: { before: Histogram; after: Histogram } };
  reduce: { request: { experiment: Experiment }; reply: { report: StatsRun } };
  train: { request: { experiment: Experiment; norm: NormPlacement; text: string }; reply: { report: TrainReport } };
  'train-pause': { request: { paused: boolean }; reply: { paused: boolean } };
  'train-sample': { request: { prompt: string; length: number; temperature: number; seed: number }; reply: { text: string } };
  'train-export': { request: Record<string, never>; reply: { model: Blob; config: string; name: string } };
  sebra: { request: { experiment: Experiment }; reply: { report: SebraReport } };
  'sebra-images': { request: { experiment: Experiment; indices: number[] }; reply: SebraImages };
}
export type Op = keyof Ops;

export type ToWorker =
  | { type: 'init'; backend: 'auto' | 'gpu' | 'cpu'; link: string }
  | { type: 'call'; id: number; op: Op; request: unknown }
  | { type: 'cancel' }
  | { type: 'lose-device' };

export type FromWorker =
  | { type: 'ready'; backend: BackendInfo; defaults: Defaults; link: { experiment: Experiment; view: [string, string][] } | { error: string } }
  | { type: 'init-failed'; message: string }
  | { type: 'progress'; id: number; stage: string; done: number; total: number; metrics?: StepMetrics }
  | { type: 'reply'; id: number; op: Op; reply: unknown; backend: BackendInfo }
  | { type: 'error'; id: number; message: string; backend: BackendInfo }
  | { type: 'device-lost'; lost: boolean; backend: BackendInfo };

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

export type ToWorker =
  | { type: 'init'; allowGpu: boolean }
  | { type: 'reduce'; id: number; request: ReduceRequest }
  | { type: 'cancel' }
  | { type: 'lose-device' };

export type FromWorker =
  | { type: 'ready'; backend: BackendInfo }
  | { type: 'init-failed'; message: string }
  | { type: 'progress'; id: number; stage: string; done: number; total: number }
  | { type: 'result'; id: number; run: StatsRun; backend: BackendInfo }
  | { type: 'error'; id: number; message: string; backend: BackendInfo }
  | { type: 'device-lost'; lost: boolean; backend: BackendInfo };

// The worker owns the wasm lab and all heavy state; the page never blocks on computation.
// One request runs at a time (the page queues); "cancel" is handled between steps, because
// the lab yields to this worker's event loop at every step.

import type * as Wasm from '../pkg/layerlab.js';
import type { Lab } from '../pkg/layerlab.js';
import type { FromWorker, ToWorker, BackendInfo, Histogram, ModelSource, OpenRequest, Opened } from './protocol';
import { fileSource, urlSource, type JsSource } from './sources';

const scope = self as unknown as DedicatedWorkerGlobalScope;
let lab: Lab | null = null;

function post(msg: FromWorker): void {
  scope.postMessage(msg);
}

function backendOf(l: Lab): BackendInfo {
  return l.backend() as BackendInfo;
}

function messageOf(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

// Browsers hide WebGPU's adapter description; vendor and architecture still say which one.
async function adapterName(): Promise<string> {
  try {
    const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<{ info?: Record<string, string> } | null> } }).gpu;
    const info = (await gpu?.requestAdapter())?.info;
    if (!info) return '';
    return [info.vendor, info.architecture, info.description].filter((x) => x).join(' ');
  } catch {
    return '';
  }
}

const MODEL_EXT = /\.(gguf|safetensors)$/i;

/** The model file among the user's files, its config.json, and the names of the rest. */
function pickFiles(files: File[]): { model: File; config: File | null; tokenizer: File | null; companions: string[] } {
  const models = files.filter((f) => MODEL_EXT.test(f.name));
  if (models.length === 0) {
    if (files.length === 1) return { model: files[0], config: null, tokenizer: null, companions: [] };
    throw new Error(`none of ${files.map((f) => f.name).join(', ')} is a .gguf or .safetensors file`);
  }
  if (models.length > 1) {
    throw new Error(`several model files were given (${models.map((f) => f.name).join(', ')}); give one (sharded checkpoints are not supported yet)`);
  }
  const config = files.find((f) => f.name === 'config.json') ?? null;
  const tokenizer = files.find((f) => f.name === 'tokenizer.json') ?? null;
  const companions = files.filter((f) => f !== models[0]).map((f) => f.name);
  return { model: models[0], config, tokenizer, companions };
}

async function openModel(l: Lab, id: number, request: OpenRequest): Promise<void> {
  let source: JsSource;
  let described: ModelSource;
  let config: string | undefined;
  let tokenizer: string | undefined;
  let companions: string[] = [];
  if (request.kind === 'url') {
    source = await urlSource(request.url, (done, total) =>
      post({ type: 'progress', id, stage: 'downloading', done, total }));
    described = { kind: 'url', url: request.url };
  } else {
    const picked = pickFiles(request.files);
    source = fileSource(picked.model);
    config = picked.config ? new FileReaderSync().readAsText(picked.config) : undefined;
    tokenizer = picked.tokenizer ? new FileReaderSync().readAsText(picked.tokenizer) : undefined;
    companions = picked.companions;
    described = { kind: 'file', name: picked.model.name, size: picked.model.size };
  }
  const opened = l.open_model(source, config, tokenizer) as Opened;
  post({ type: 'model-opened', id, opened, source: described, companions });
}

/** Runs one request; a failure becomes its error reply, with the backend as it now is. */
async function answer(l: Lab, id: number, work: (onProgress: (stage: string, done: number, total: number) => void) => Promise<void>): Promise<void> {
  try {
    await work((stage, done, total) => post({ type: 'progress', id, stage, done, total }));
  } catch (e) {
    post({ type: 'error', id, message: messageOf(e), backend: backendOf(l) });
  }
}

/** Whether WebAssembly here has 128-bit SIMD: validates a function using `i8x16.popcnt`
 *  on a `v128` (the wasm-feature-detect probe). */
function hasWasmSimd(): boolean {
  const probe = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);
  try {
    return WebAssembly.validate(probe);
  } catch {
    return false;
  }
}

/** The wasm-bindgen module: the plain build, or the threaded one with its pool's starter. */
type Pkg = typeof Wasm & { initThreadPool?: (threads: number) => Promise<void> };

/** The threaded build (pkg-threads: rayon's pool on Web Workers sharing the wasm memory) where
 *  the page is cross-origin isolated, as `npm start` serves it, so SharedArrayBuffer exists;
 *  elsewhere, or if the pool does not start, the plain single-threaded build (pkg). The
 *  modules load by URL, beside this worker, not through the bundle. */
async function loadWasm(): Promise<Pkg> {
  const threads = Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 16));
  if (scope.crossOriginIsolated && threads > 1) {
    try {
      const pkg = (await import(new URL('./pkg-threads/layerlab.js', import.meta.url).href)) as Pkg;
      await pkg.default();
      await pkg.initThreadPool?.(threads);
      return pkg;
    } catch (e) {
      console.warn(`the threaded WebAssembly did not start (${messageOf(e)}); running on one thread`);
    }
  }
  const pkg = (await import(new URL('./pkg/layerlab.js', import.meta.url).href)) as Pkg;
  await pkg.default();
  return pkg;
}

scope.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const msg = ev.data;
  switch (msg.type) {
    case 'init': {
      try {
        const pkg = await loadWasm();
        lab = await pkg.Lab.create(msg.backend, msg.backend === 'cpu' ? '' : await adapterName());
        post({ type: 'ready', backend: backendOf(lab) });
      } catch (e) {
        // The wasm is built with 128-bit SIMD: say so where that is what failed.
        const message = hasWasmSimd()
          ? messageOf(e)
          : "this browser's WebAssembly has no SIMD, which the lab needs (Chrome 91, Firefox 89, Safari 16.4 or later)";
        post({ type: 'init-failed', message });
      }
      break;
    }
    case 'reduce': {
      const l = lab;
      if (!l) return;
      await answer(l, msg.id, async (onProgress) => {
        const run = await l.reduce(msg.request, onProgress);
        post({ type: 'result', id: msg.id, run, backend: backendOf(l) });
      });
      break;
    }
    case 'open-model': {
      const l = lab;
      if (!l) return;
      await answer(l, msg.id, () => openModel(l, msg.id, msg.request));
      break;
    }
    case 'model-stats': {
      const l = lab;
      if (!l) return;
      await answer(l, msg.id, async (onProgress) => {
        const report = await l.model_stats(msg.experiment, onProgress);
        post({ type: 'model-report', id: msg.id, report, backend: backendOf(l) });
      });
      break;
    }
    case 'prune': {
      const l = lab;
      if (!l) return;
      await answer(l, msg.id, async (onProgress) => {
        const report = await l.prune(msg.experiment, msg.calib, msg.eval, onProgress);
        post({ type: 'prune-report', id: msg.id, report, backend: backendOf(l) });
      });
      break;
    }
    case 'prune-export': {
      const l = lab;
      if (!l) return;
      await answer(l, msg.id, async () => {
        // The file arrives in ~8 MB pieces; a Blob of them is handed over without a copy
        // (and Chromium may keep a large Blob on disk), so the whole file is never one buffer.
        const out = l.pruned_model() as { parts: Uint8Array[]; config: string | null; name: string };
        const file = new Blob(out.parts as BlobPart[], { type: 'application/octet-stream' });
        post({ type: 'pruned-model', id: msg.id, file, config: out.config, name: out.name });
      });
      break;
    }
    case 'prune-histograms': {
      const l = lab;
      if (!l) return;
      await answer(l, msg.id, async () => {
        const h = l.prune_histograms(msg.tensor, msg.bins) as { before: Histogram; after: Histogram };
        post({ type: 'tensor-histograms', id: msg.id, ...h });
      });
      break;
    }
    case 'cancel':
      lab?.cancel();
      break;
    case 'lose-device': {
      if (!lab) return;
      const lost = lab.lose_device();
      post({ type: 'device-lost', lost, backend: backendOf(lab) });
      break;
    }
  }
};

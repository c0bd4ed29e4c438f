// The worker owns the wasm lab and all heavy state; the page never blocks on computation.
// One request runs at a time (the page queues); "cancel" is handled between steps, because
// the lab yields to this worker's event loop at every step. Each lab's requests are
// answered by the handlers of its folder (labs/NAME/worker.ts), registered from labs/index.ts.

import type * as Wasm from '../pkg/layerlab.js';
import type { Lab } from '../pkg/layerlab.js';
import { LABS } from './labs/index';
import type { Defaults, Experiment, FromWorker, ToWorker, BackendInfo, Op } from './protocol';
import type { Handlers } from './worker-api';

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

let handlers: Handlers = {};

/** Every lab's handlers, from the one list of labs. */
async function loadHandlers(): Promise<Handlers> {
  const parts = await Promise.all(LABS.map((l) => l.worker()));
  return Object.assign({}, ...parts.map((p) => p.handlers)) as Handlers;
}

/** Runs one request; a failure becomes its error reply, with the backend as it now is. */
async function answer(l: Lab, id: number, op: Op, request: unknown): Promise<void> {
  const handler = handlers[op] as ((ctx: unknown, request: unknown) => Promise<unknown>) | undefined;
  try {
    if (!handler) throw new Error(`no lab answers "${op}"`);
    const progress = (stage: string, done: number, total: number, metrics?: unknown) =>
      post({ type: 'progress', id, stage, done, total, ...(metrics ? { metrics: metrics as never } : {}) });
    const reply = await handler({ lab: l, progress }, request);
    post({ type: 'reply', id, op, reply, backend: backendOf(l) });
  } catch (e) {
    post({ type: 'error', id, message: messageOf(e), backend: backendOf(l) });
  }
}

scope.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const msg = ev.data;
  switch (msg.type) {
    case 'init': {
      try {
        const pkg = await loadWasm();
        handlers = await loadHandlers();
        lab = await pkg.Lab.create(msg.backend, msg.backend === 'cpu' ? '' : await adapterName());
        const defaults = pkg.lab_defaults() as Defaults;
        let link: { experiment: Experiment; view: [string, string][] } | { error: string };
        try {
          link = pkg.experiment_from_link(msg.link) as { experiment: Experiment; view: [string, string][] };
        } catch (e) {
          link = { error: `This link cannot be read: ${messageOf(e)}` };
        }
        post({ type: 'ready', backend: backendOf(lab), defaults, link });
      } catch (e) {
        // The wasm is built with 128-bit SIMD: say so where that is what failed.
        const message = hasWasmSimd()
          ? messageOf(e)
          : "this browser's WebAssembly has no SIMD, which the lab needs (Chrome 91, Firefox 89, Safari 16.4 or later)";
        post({ type: 'init-failed', message });
      }
      break;
    }
    case 'call': {
      if (lab) await answer(lab, msg.id, msg.op, msg.request);
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

// The worker owns the wasm lab and all heavy state; the page never blocks on computation.
// One request runs at a time (the page queues); "cancel" is handled between steps, because
// the lab yields to this worker's event loop at every step.

import init, { Lab } from '../pkg/layerlab.js';
import type { FromWorker, ToWorker, BackendInfo } from './protocol';

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

scope.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const msg = ev.data;
  switch (msg.type) {
    case 'init': {
      try {
        await init();
        lab = await Lab.create(msg.allowGpu, msg.allowGpu ? await adapterName() : '');
        post({ type: 'ready', backend: backendOf(lab) });
      } catch (e) {
        post({ type: 'init-failed', message: messageOf(e) });
      }
      break;
    }
    case 'reduce': {
      if (!lab) return;
      const current = lab;
      try {
        const onProgress = (stage: string, done: number, total: number) =>
          post({ type: 'progress', id: msg.id, stage, done, total });
        const run = await current.reduce(msg.request, onProgress);
        post({ type: 'result', id: msg.id, run, backend: backendOf(current) });
      } catch (e) {
        post({ type: 'error', id: msg.id, message: messageOf(e), backend: backendOf(current) });
      }
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

// The page's handle on the worker that owns the lab: requests go out with an id, replies
// come back to the promise that asked. If the worker dies (or a cancelled run will not
// stop), it is restarted and every pending request is rejected with the reason; callers keep
// their own inputs, so nothing the user did is lost.

import type { BackendInfo, Defaults, Experiment, FromWorker, Op, Ops, StepMetrics, ToWorker } from '../protocol';

type Reply = Extract<FromWorker, { type: 'reply' }>;
export type Progress = (stage: string, done: number, total: number, metrics?: StepMetrics) => void;

/** What the worker says once it has started: the backend, Rust's defaults, the link read. */
export interface Ready {
  backend: BackendInfo;
  defaults: Defaults;
  link: { experiment: Experiment; view: [string, string][] } | { error: string };
}

interface Pending {
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
  onProgress?: Progress;
}

export class CancelledError extends Error {}

export class LabClient {
  private worker!: Worker;
  private pending = new Map<number, Pending>();
  private nextId = 1;
  private cancelTimer: number | undefined;
  /** Told whether "lose device" found a GPU to destroy. */
  onDeviceLost?: (lost: boolean) => void;
  /** Bumped at every (re)start: state held in the worker (an open model) is gone. */
  generation = 0;
  ready!: Promise<Ready>;

  constructor(
    private backend: 'auto' | 'gpu' | 'cpu',
    private onBackend: (b: BackendInfo) => void,
    private onNotice: (text: string) => void,
  ) {
    this.start();
  }

  private start(): void {
    this.generation += 1;
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.ready = new Promise((resolve, reject) => {
      this.worker.onmessage = (ev: MessageEvent<FromWorker>) => {
        const msg = ev.data;
        if (msg.type === 'ready') {
          this.onBackend(msg.backend);
          resolve(msg);
        } else if (msg.type === 'init-failed') {
          reject(new Error(`the lab could not start: ${msg.message}`));
        } else {
          this.dispatch(msg);
        }
      };
    });
    this.worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.restart(`the lab's worker stopped (${ev.message || 'unknown error'})`);
    };
    this.send({ type: 'init', backend: this.backend, link: location.search });
  }

  private send(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  private dispatch(msg: FromWorker): void {
    if (msg.type === 'device-lost') {
      this.onBackend(msg.backend);
      this.onDeviceLost?.(msg.lost);
      return;
    }
    if (!('id' in msg)) return;
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === 'progress') {
      p.onProgress?.(msg.stage, msg.done, msg.total, msg.metrics);
      return;
    }
    this.pending.delete(msg.id);
    if (this.pending.size === 0) window.clearTimeout(this.cancelTimer);
    if ('backend' in msg) this.onBackend(msg.backend);
    if (msg.type === 'error') {
      p.reject(msg.message === 'the run was cancelled' ? new CancelledError(msg.message) : new Error(msg.message));
    } else {
      p.resolve(msg);
    }
  }

  restart(reason: string): void {
    this.worker.terminate();
    window.clearTimeout(this.cancelTimer);
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(new Error(`restarted the lab: ${reason}`));
    this.onNotice(`Restarted the lab: ${reason}.`);
    this.start();
  }

  private queue: Promise<unknown> = Promise.resolve();

  /**
   * Sends a request once the requests before it have finished (the labs share one worker
   * and one run at a time); resolves with its reply, rejects with the worker's error.
   */
  call<K extends Op>(op: K, request: Ops[K]['request'], onProgress?: Progress): Promise<Ops[K]['reply']> {
    const run = this.queue.then(() => this.callNow(op, request, onProgress));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async callNow<K extends Op>(op: K, request: Ops[K]['request'], onProgress?: Progress): Promise<Ops[K]['reply']> {
    await this.ready;
    const id = this.nextId++;
    const reply = await new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.send({ type: 'call', id, op, request });
    });
    if (reply.op !== op) throw new Error(`the lab answered ${reply.op}, expected ${op}`);
    return reply.reply as Ops[K]['reply'];
  }

  /** Sends a request at once, past the queue: one that the running request answers between
   *  its steps (the training lab's Pause and Sample while it trains). */
  callBetween<K extends Op>(op: K, request: Ops[K]['request']): Promise<Ops[K]['reply']> {
    return this.callNow(op, request);
  }

  get busy(): boolean {
    return this.pending.size > 0;
  }

  /** Asks the running request to stop; a step that never yields is stopped (the worker
   *  restarted) after `graceMs` (3 s; a lab whose steps take longer gives more). */
  cancel(graceMs = 3000): void {
    if (!this.busy) return;
    this.send({ type: 'cancel' });
    window.clearTimeout(this.cancelTimer);
    this.cancelTimer = window.setTimeout(() => {
      if (this.busy) this.restart(`a cancelled run did not stop within ${Math.round(graceMs / 1000)} s`);
    }, graceMs);
  }

  loseDevice(): void {
    this.send({ type: 'lose-device' });
  }
}

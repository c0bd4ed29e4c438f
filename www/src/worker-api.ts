// What a lab's worker part gets: the wasm lab, a progress callback for the request, and
// the wasm module's free functions. A handler answers one request type of protocol.ts Ops.

import type { Lab } from '../pkg/layerlab.js';
import type { Op, Ops, StepMetrics } from './protocol';

export interface WorkerContext {
  lab: Lab;
  progress: (stage: string, done: number, total: number, metrics?: StepMetrics) => void;
}

export type Handlers = { [K in Op]?: (ctx: WorkerContext, request: Ops[K]['request']) => Promise<Ops[K]['reply']> };

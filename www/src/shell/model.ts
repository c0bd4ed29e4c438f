// The model the worker holds, shared by every lab that reads one: opening it, reopening it
// after the worker was restarted, and telling the page (the `modelOpened` event).

import { modelOpened } from './events';
import type { LabClient, Progress } from './lab-client';
import type { ModelSource, OpenRequest, Ops } from '../protocol';

export class ModelService {
  private request: OpenRequest | null = null;
  private openedIn = -1;
  source: ModelSource | null = null;
  /** The open in progress (labs that need the model wait for it). */
  opening: Promise<unknown> = Promise.resolve();
  /** Starts opening the model a link names, if nothing has asked yet (the Layers tab). */
  onNeeded?: () => void;

  constructor(private client: LabClient) {}

  get isOpen(): boolean {
    return this.request !== null;
  }

  /** Opens a model and makes it current; on failure the previous one stays. */
  async open(request: OpenRequest, onProgress?: Progress): Promise<Ops['open-model']['reply']> {
    const opening = this.client.call('open-model', { request }, onProgress);
    this.opening = opening.catch(() => undefined);
    const reply = await opening;
    this.request = request;
    this.source = reply.source;
    this.openedIn = this.client.generation;
    modelOpened.emit({ source: reply.source, summary: modelSummary(reply), params: reply.opened.info.params });
    return reply;
  }

  /**
   * The model the worker holds, reopened first if the worker was restarted since; null when
   * no model is open. Waits for an open in progress.
   */
  async ensureOpen(onProgress?: Progress): Promise<ModelSource | null> {
    this.onNeeded?.();
    await this.opening;
    if (!this.request || !this.source) return null;
    if (this.openedIn !== this.client.generation) {
      await this.client.call('open-model', { request: this.request }, onProgress);
      this.openedIn = this.client.generation;
    }
    return this.source;
  }
}

/** One line: file, format, architecture, blocks, tensors, parameters, sizes, companions. */
export function modelSummary(reply: Ops['open-model']['reply']): string {
  const info = reply.opened.info;
  const h = info.hyper;
  return (
    `${info.file}: ${info.format === 'Gguf' ? 'GGUF' : 'safetensors'}, ${info.arch_name} (${info.arch}), ` +
    `${info.blocks} blocks, ${info.tensors} tensors, ${info.params.toLocaleString('en-US')} parameters` +
    (h.hidden ? `, hidden ${h.hidden}` : '') +
    (h.heads ? `, ${h.heads} heads` : '') +
    (h.kv_heads && h.kv_heads !== h.heads ? ` (${h.kv_heads} KV)` : '') +
    (reply.companions.length ? `; with ${reply.companions.join(', ')}` : '')
  );
}

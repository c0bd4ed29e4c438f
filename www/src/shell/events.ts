// Page-wide events a lab can subscribe to without knowing who sends them.

import type { ModelSource } from '../protocol';

export interface ModelOpened {
  source: ModelSource;
  /** One line naming the file, its format, architecture and sizes. */
  summary: string;
  /** Its parameters (for estimates of how long a run takes). */
  params: number;
}

type Listener<T> = (value: T) => void;

/** A typed event with any number of listeners. */
export class Channel<T> {
  private listeners: Listener<T>[] = [];
  last: T | null = null;

  /** Calls `fn` at every event (and at once with the last one, if there was one). */
  subscribe(fn: Listener<T>): () => void {
    this.listeners.push(fn);
    if (this.last !== null) fn(this.last);
    return () => {
      this.listeners = this.listeners.filter((l) => l !== fn);
    };
  }

  emit(value: T): void {
    this.last = value;
    for (const l of [...this.listeners]) l(value);
  }
}

/** A model was opened (the Layers tab opens them; any lab may use the open model). */
export const modelOpened = new Channel<ModelOpened>();

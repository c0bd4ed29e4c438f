// The one status line every lab uses: progress bar, status text with an estimate of the
// time left, the Cancel button, the error box, and the step metrics a run streams.

import { CancelledError } from './lab-client';
import { Channel } from './events';
import type { LabClient } from './lab-client';
import type { StepMetrics } from '../protocol';

export interface StatusElements {
  progress: HTMLProgressElement;
  status: HTMLElement;
  error: HTMLElement;
  cancel: HTMLButtonElement;
}

/** Seconds as "12 s" or "3 min 5 s". */
export function duration(s: number): string {
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

export class RunStatus {
  /** Every step's metrics of the run in progress (a lab's live charts subscribe). */
  readonly metrics = new Channel<StepMetrics & { stage: string }>();
  private stage = '';
  private stageStart = 0;
  private running = false;
  /** Says "Cancelling…" and asks the worker to stop; labs may add their own stop flag. */
  onCancel?: () => void;
  /** How long a cancelled step may take before the worker is restarted (LabClient.cancel). */
  cancelGraceMs = 3000;
  /** What the status says when Cancel is pressed. */
  cancelText = 'Cancelling…';

  constructor(private el: StatusElements, private client: LabClient) {
    el.cancel.addEventListener('click', () => {
      this.say(this.cancelText);
      this.onCancel?.();
      this.client.cancel(this.cancelGraceMs);
    });
  }

  get busy(): boolean {
    return this.running;
  }

  /** Starts or ends a run: the Cancel button follows, the error box clears at the start. */
  setBusy(busy: boolean): void {
    this.running = busy;
    this.el.cancel.disabled = !busy;
    if (busy) {
      this.error(null);
      this.stage = '';
    }
  }

  say(text: string): void {
    this.el.status.textContent = text;
  }

  error(msg: string | null): void {
    this.el.error.hidden = msg === null;
    this.el.error.textContent = msg ?? '';
  }

  /**
   * A progress callback for LabClient.call: `label(stage, done, total)` is the status text;
   * the time left is estimated from this stage's pace so far.
   */
  tracker(label: (stage: string, done: number, total: number) => string) {
    return (stage: string, done: number, total: number, metrics?: StepMetrics): void => {
      const now = performance.now();
      if (stage !== this.stage) {
        this.stage = stage;
        this.stageStart = now;
      }
      this.el.progress.max = Math.max(1, total);
      this.el.progress.value = done;
      const elapsed = (now - this.stageStart) / 1000;
      const left = done > 0 && done < total && elapsed > 2 ? ` (about ${duration((elapsed / done) * (total - done))} left)` : '';
      this.say(label(stage, done, total) + left);
      if (metrics) this.metrics.emit({ ...metrics, stage });
    };
  }

  /** How a failed run ends: "Cancelled.", or "Failed." and the error. */
  fail(e: unknown): void {
    this.el.progress.value = 0;
    if (e instanceof CancelledError) {
      this.say('Cancelled.');
    } else {
      this.say('Failed.');
      this.error((e as Error).message);
    }
  }

  /** Runs `work` as one run: busy while it lasts, a failure shown, `done` said at the end. */
  async run(work: () => Promise<string>): Promise<void> {
    this.setBusy(true);
    try {
      this.say(await work());
    } catch (e) {
      this.fail(e);
    } finally {
      this.setBusy(false);
    }
  }
}

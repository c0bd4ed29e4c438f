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

/** The name of the tab a status line belongs to ("Layers"), from the page's tabs. */
function ownerOf(status: HTMLElement): string {
  const section = (status as Partial<HTMLElement>).closest?.('section');
  const tab = section ? document.querySelector(`nav [data-tab="${section.id}"]`) : null;
  return tab?.textContent?.trim() || section?.id || 'another';
}

/** Seconds as "12 s" or "3 min 5 s". */
export function duration(s: number): string {
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

/** A run in progress somewhere on the page: which tab runs it, what it says, how to stop it. */
export interface Activity {
  owner: string;
  text: string;
  cancel(): void;
}

/** The page's one run in progress (the labs share one worker), or null: every status line
 *  shows another tab's run, with a Cancel that stops it. */
export const activity = new Channel<Activity | null>();

/**
 * The phases of a run in order, with each one's expected share of the run's time (any
 * scale): the bar then shows the whole run, not each phase from 0. A phase the run skips
 * counts as done when a later one starts.
 */
export type Plan = { stage: string; weight: number }[];

export class RunStatus {
  /** Every step's metrics of the run in progress (a lab's live charts subscribe). */
  readonly metrics = new Channel<StepMetrics & { stage: string }>();
  private stageStart = 0;
  private stageTotal = 0;
  private runStart = 0;
  /** The run's overall fraction done so far (never goes back within a run). */
  private fraction = 0;
  private running = false;
  /** What this lab last said while idle, shown again when another tab's run ends. */
  private idleText = '';
  private mirroring = false;
  private cancelOther: (() => void) | null = null;
  /** Says "Cancelling…" and asks the worker to stop; labs may add their own stop flag. */
  onCancel?: () => void;
  /** How long a cancelled step may take before the worker is restarted (LabClient.cancel). */
  cancelGraceMs = 3000;
  /** What the status says when Cancel is pressed. */
  cancelText = 'Cancelling…';

  constructor(private el: StatusElements, private client: LabClient, private owner = ownerOf(el.status)) {
    el.cancel.addEventListener('click', () => {
      if (this.cancelOther) {
        this.cancelOther();
        return;
      }
      this.say(this.cancelText);
      this.onCancel?.();
      this.client.cancel(this.cancelGraceMs);
    });
    activity.subscribe((a) => this.mirror(a));
  }

  get busy(): boolean {
    return this.running;
  }

  /** Another tab's run shows here while this lab is idle, with its Cancel. */
  private mirror(a: Activity | null): void {
    if (this.running) return;
    if (a && a.owner !== this.owner) {
      this.mirroring = true;
      this.cancelOther = () => a.cancel();
      this.el.cancel.disabled = false;
      this.el.status.textContent = `Busy: the ${a.owner} tab is running (${a.text}). Wait for it, or press Cancel to stop it.`;
    } else if (this.mirroring) {
      this.mirroring = false;
      this.cancelOther = null;
      this.el.cancel.disabled = true;
      this.el.status.textContent = this.idleText;
    }
  }

  private announce(): void {
    if (!this.running) return;
    activity.emit({
      owner: this.owner,
      text: this.el.status.textContent ?? '',
      cancel: () => this.el.cancel.click(),
    });
  }

  /** Starts or ends a run: the Cancel button follows, the error box clears at the start. */
  setBusy(busy: boolean): void {
    const was = this.running;
    this.running = busy;
    this.el.cancel.disabled = !busy;
    if (busy) {
      this.mirroring = false;
      this.cancelOther = null;
      this.error(null);
      this.stageTotal = 0;
      this.fraction = 0;
      this.runStart = performance.now();
      this.announce();
    } else if (was) {
      this.heldAt = null;
      this.idleText = this.el.status.textContent ?? '';
      if (activity.last?.owner === this.owner) activity.emit(null);
    }
  }

  say(text: string): void {
    if (!this.running) this.idleText = text;
    if (this.mirroring && !this.running) return;
    this.el.status.textContent = text;
    this.announce();
  }

  error(msg: string | null): void {
    this.el.error.hidden = msg === null;
    this.el.error.textContent = msg ?? '';
  }

  /**
   * A progress callback for LabClient.call: `label(stage, done, total)` is the status text.
   * With a `plan` the bar shows the whole run and the time left is estimated from the run's
   * pace since it started; without one, the bar shows the steps of the current count, and
   * the estimate starts again whenever the count starts again.
   */
  tracker(label: (stage: string, done: number, total: number) => string, plan?: () => Plan) {
    return (stage: string, done: number, total: number, metrics?: StepMetrics): void => {
      const now = performance.now();
      let fraction: number;
      let since: number;
      const phases = plan?.();
      const at = phases ? phases.findIndex((p) => p.stage === stage) : -1;
      if (phases) {
        // A stage outside the plan (opening the model) leaves the bar where it is.
        const all = phases.reduce((a, p) => a + p.weight, 0) || 1;
        const before = phases.slice(0, Math.max(0, at)).reduce((a, p) => a + p.weight, 0);
        fraction = at < 0 ? this.fraction : Math.max(this.fraction, (before + phases[at].weight * (total > 0 ? done / total : 0)) / all);
        since = this.runStart;
      } else {
        if (total !== this.stageTotal || done < this.stageDone) this.stageStart = now;
        fraction = total > 0 ? done / total : 0;
        since = this.stageStart;
      }
      this.stageTotal = total;
      this.stageDone = done;
      this.fraction = Math.min(1, fraction);
      if (phases) {
        this.el.progress.max = 1000;
        this.el.progress.value = Math.round(1000 * this.fraction);
      } else {
        this.el.progress.max = Math.max(1, total);
        this.el.progress.value = done;
      }
      const elapsed = (now - since) / 1000;
      const f = this.fraction;
      const left = this.heldAt === null && f > 0 && f < 1 && elapsed > 2 ? ` (about ${duration((elapsed / f) * (1 - f))} left)` : '';
      this.say(label(stage, done, total) + left);
      if (metrics) this.metrics.emit({ ...metrics, stage });
    };
  }

  private stageDone = 0;
  /** When the run was held (Pause), or null. */
  private heldAt: number | null = null;

  /** Pause (`on`) and Resume: while held the time left is not estimated, and the time held
   *  does not count in the run's pace. */
  hold(on: boolean): void {
    const now = performance.now();
    if (on && this.heldAt === null) {
      this.heldAt = now;
    } else if (!on && this.heldAt !== null) {
      this.stageStart += now - this.heldAt;
      this.runStart += now - this.heldAt;
      this.heldAt = null;
    }
  }

  /** The run's overall fraction done, as the bar shows it. */
  get done(): number {
    return this.fraction;
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

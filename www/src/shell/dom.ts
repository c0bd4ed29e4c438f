// Small DOM helpers shared by the labs.

import { CancelledError } from './lab-client';

/** The element with this id; the page is broken (a bug, not user input) if it is missing. */
export const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page is missing #${id}`);
  return el as T;
};

/** How a failed run ends in a lab's status line: "Cancelled.", or "Failed." and the error. */
export function showFailure(e: unknown, status: HTMLElement, progress: HTMLProgressElement, showError: (msg: string) => void): void {
  progress.value = 0;
  if (e instanceof CancelledError) {
    status.textContent = 'Cancelled.';
  } else {
    status.textContent = 'Failed.';
    showError((e as Error).message);
  }
}

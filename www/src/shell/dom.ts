// Small DOM helpers shared by the labs.

/** The element with this id; the page is broken (a bug, not user input) if it is missing. */
export const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page is missing #${id}`);
  return el as T;
};

/** A control shows a value of the experiment: null is an empty field (or unchecked). */
export function show(el: HTMLInputElement | HTMLSelectElement, value: string | number | boolean | null): void {
  if (el instanceof HTMLInputElement && el.type === 'checkbox') el.checked = value === true;
  else el.value = value === null ? '' : String(value);
}

/** A number from a field; the error names the field and what it must be. */
export function numberFrom(el: HTMLInputElement, what: string, ok: (x: number) => boolean, rule: string): number {
  const x = Number(el.value);
  if (el.value.trim() === '' || !Number.isFinite(x) || !ok(x)) throw new Error(`${what} must be ${rule}, not "${el.value}"`);
  return x;
}

/** Runs `fn` whenever any of the controls changes (typing included). */
export function onEdit(controls: (HTMLInputElement | HTMLSelectElement)[], fn: () => void): void {
  for (const el of controls) {
    el.addEventListener('input', fn);
    el.addEventListener('change', fn);
  }
}

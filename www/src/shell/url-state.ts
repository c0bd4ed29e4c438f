// The address bar as one encoding of the Experiment (src/experiment.rs `to_query`): `v=2`,
// `lab` unless it is the layer view, then every leaf of the lab's spec that differs from the
// lab's defaults as `path=value` (`owl.lamda=0.1`, `model.url=…`), paths in alphabetical
// order. A value is its JSON text, except that a string is written bare unless it would
// read back as something else. Reading a link is Rust's job (the worker's
// `experiment_from_link`, the same reader as `layerlab run LINK`, which also upgrades
// version-1 links); writing is this module's, so the address follows every control at once.
// The page's view settings that are not part of the experiment ride along as `view.*`.

import type { Defaults, Experiment, LabName } from '../protocol';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isObject(v: Json | undefined): v is { [key: string]: Json } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function same(a: Json | undefined, b: Json | undefined): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

const join = (path: string, key: string) => (path ? `${path}.${key}` : key);

export function encodeValue(v: Json): string {
  if (typeof v === 'string') {
    try {
      JSON.parse(v);
    } catch {
      return v;
    }
  }
  return JSON.stringify(v);
}

function allLeaves(v: Json, path: string, out: [string, string][]): void {
  if (isObject(v) && Object.keys(v).length > 0) {
    for (const k of Object.keys(v).sort()) allLeaves(v[k], join(path, k), out);
  } else {
    out.push([path, encodeValue(v)]);
  }
}

function diffLeaves(v: Json, d: Json | undefined, path: string, out: [string, string][]): void {
  if (same(v, d)) return;
  if (isObject(v) && isObject(d) && same(v.kind, d.kind)) {
    for (const k of Object.keys(v).sort()) diffLeaves(v[k], d[k] ?? null, join(path, k), out);
  } else if (isObject(v)) {
    for (const k of Object.keys(v).sort()) allLeaves(v[k], join(path, k), out);
  } else {
    out.push([path, encodeValue(v)]);
  }
}

/** The spec as JSON without its tag and version. */
function specOf(e: Experiment): { [key: string]: Json } {
  const { lab: _lab, version: _version, ...rest } = e as unknown as { [key: string]: Json };
  return rest;
}

/** The experiment's link query (no `?`), holding only what differs from `defaults`. */
export function toQuery(e: Experiment, defaults: Defaults): string {
  const d = defaults.experiments.find((x) => x.lab === e.lab);
  const pairs: [string, string][] = [['v', String(defaults.version)]];
  if (e.lab !== 'layers') pairs.push(['lab', e.lab]);
  diffLeaves(specOf(e) as Json, d ? (specOf(d) as Json) : null, '', pairs);
  return new URLSearchParams(pairs).toString();
}

/** The page's settings beside the experiment: `view.*` and `backend`. */
export type View = Record<string, string>;

/**
 * The address bar: the active lab's experiment plus its view. `write` replaces the query at
 * once (history.replaceState: no new history entry per keystroke).
 */
export class UrlState {
  private view: View = {};
  private lab: LabName = 'layers';

  constructor(private defaults: Defaults, initialView: View) {
    for (const [k, v] of Object.entries(initialView)) this.view[k] = v;
  }

  /** A view setting (`view.stat`, …) or `backend` from the link. */
  get(key: string): string | null {
    return this.view[key] ?? null;
  }

  /** The address for `experiment`, with the view settings that belong to its lab. */
  write(experiment: Experiment, view: View = {}): void {
    if (experiment.lab !== this.lab) {
      // Another lab's view settings do not travel with this one's experiment.
      for (const k of Object.keys(this.view)) if (k !== 'backend') delete this.view[k];
      this.lab = experiment.lab;
    }
    for (const [k, v] of Object.entries(view)) {
      if (v === '') delete this.view[`view.${k}`];
      else this.view[`view.${k}`] = v;
    }
    const p = new URLSearchParams(toQuery(experiment, this.defaults));
    for (const [k, v] of Object.entries(this.view)) p.set(k, v);
    history.replaceState(null, '', `${location.pathname}?${p}`);
  }
}

// What a lab is to the page: a tab that shows an experiment in its controls and says which
// experiment its controls describe. The frame (main.ts) gives each lab the worker client,
// Rust's defaults, the address bar and the open model; labs/index.ts lists the labs.

import type { LabClient } from './lab-client';
import type { ModelService } from './model';
import type { View } from './url-state';
import type { BackendInfo, Defaults, Experiment, ExperimentOf, LabName } from '../protocol';

export interface LabContext {
  client: LabClient;
  defaults: Defaults;
  models: ModelService;
  /** The address bar follows this lab's controls now (when its tab is the one shown). */
  publish(lab: PageLab): void;
  /** Draws the backend line again (a lab's `backendNote` changed, e.g. a run finished). */
  refreshBackend(): void;
  /** A setting of the link beside the experiment (`view.stat`, `backend`). */
  linkView(key: string): string | null;
  /** The experiment a lab starts from: the link's, if it is that lab's, else the defaults. */
  initial<L extends LabName>(lab: L): ExperimentOf<L>;
}

export interface PageLab {
  readonly name: LabName;
  /** Called each time its tab is shown. */
  activate(): void;
  /** The experiment the controls describe now; throws a sentence naming a bad control. */
  experiment(): Experiment;
  /** The view settings that ride along in the address (`stat` becomes `view.stat`). */
  view?(): Record<string, string>;
  /** For the banner of a link that holds an experiment: what the controls' experiment is and
   *  about how long it takes to run, in words ("OWL-Wanda at 50% …", "about 4 minutes"). */
  describe?(): { what: string; takes: string };
  /** Runs the experiment the controls show, as the lab's own Run button does. */
  runNow?(): void;
  /** Added to the backend line while this lab's tab is shown (where it computes differs). */
  backendNote?(backend: BackendInfo): string | null;
}

export interface LabModule {
  create(ctx: LabContext): PageLab;
}

/** The defaults of one lab, from Rust. */
export function defaultsOf<L extends LabName>(defaults: Defaults, lab: L): ExperimentOf<L> {
  const e = defaults.experiments.find((x) => x.lab === lab);
  if (!e) throw new Error(`this build of the lab has no ${lab} defaults`);
  return structuredClone(e) as ExperimentOf<L>;
}

export type { View };

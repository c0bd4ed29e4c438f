// The labs, in tab order: each is one folder with a page part (its tab: page.ts) and a
// worker part (its requests: worker.ts). main.ts and the worker both register from this
// list; the parts load lazily, so the worker never runs page code (nor the page the
// worker's). A new lab is a folder here, its line below, its panel in index.html, and its
// variant of src/experiment.rs LabSpec.

import type { LabModule } from '../shell/lab';
import type { Handlers } from '../worker-api';
import type { LabName } from '../protocol';

export interface LabEntry {
  name: LabName;
  page: () => Promise<LabModule>;
  worker: () => Promise<{ handlers: Handlers }>;
}

export const LABS: LabEntry[] = [
  { name: 'layers', page: () => import('./layers/page'), worker: () => import('./layers/worker') },
  { name: 'prune', page: () => import('./prune/page'), worker: () => import('./prune/worker') },
  { name: 'train', page: () => import('./train/page'), worker: () => import('./train/worker') },
  { name: 'sebra', page: () => import('./bias/page'), worker: () => import('./bias/worker') },
  { name: 'compute', page: () => import('./compute/page'), worker: () => import('./compute/worker') },
];

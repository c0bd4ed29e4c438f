// The page: one worker owns the lab (shell/lab-client.ts); each lab is a tab, registered in
// labs/index.ts, that sends it requests and draws the replies. The address bar holds the
// shown tab's experiment (shell/url-state.ts), read by Rust (the worker) at start-up.

import { LABS } from './labs/index';
import { LabClient, type Ready } from './shell/lab-client';
import { defaultsOf, type LabContext, type LabModule, type PageLab } from './shell/lab';
import { ModelService } from './shell/model';
import { UrlState } from './shell/url-state';
import { modelOpened } from './shell/events';
import { activity } from './shell/status';
import type { BackendInfo, Experiment, LabName } from './protocol';

const backendLine = document.getElementById('backend') as HTMLParagraphElement;
const statusBar = document.getElementById('page-notice') as HTMLParagraphElement;

/** Adapters that emulate a GPU on the CPU (Chromium's SwiftShader, Mesa's llvmpipe). */
const SOFTWARE_GPU = /swiftshader|subzero|llvmpipe|lavapipe|software/i;

let lastBackend: BackendInfo | null = null;

/** The backend line: the lab's backend, and what the shown tab adds (the training lab runs
 *  on the CPU whatever the backend, for now). */
function showBackend(b: BackendInfo): void {
  lastBackend = b;
  const note = labs.get(shown)?.backendNote?.(b);
  backendLine.dataset.kind = b.kind;
  backendLine.textContent =
    (b.kind === 'gpu' ? `Backend: GPU, ${b.name}` : `Backend: ${b.name}${b.reason ? `, because ${b.reason}` : ''}`) + (note ? `; ${note}` : '');
  // "auto" never picks a software adapter (Rust's Backend::auto_from); ?backend=gpu can.
  const software = b.kind === 'gpu' && SOFTWARE_GPU.test(b.name);
  backendLine.dataset.software = String(software);
  if (software && !softwareSaid) {
    softwareSaid = true;
    notice(
      `This GPU is a software adapter (${b.name}): a program that emulates a GPU on this computer's CPU. ` +
      'It was chosen by hand with ?backend=gpu, and every run is far slower here than on the CPU backend: ' +
      "expect roughly 50 to 100 times longer (SmolLM2's statistics in the Layers tab take about 8 s on the CPU and " +
      'more than 10 minutes on SwiftShader). Remove backend=gpu from the address to use the CPU.',
    );
  }
}
let softwareSaid = false;

function notice(text: string): void {
  statusBar.hidden = false;
  statusBar.textContent = text;
}

// The labs handle their forms; none may submit (reload the page) before they are ready.
document.addEventListener('submit', (ev) => ev.preventDefault(), true);

const params = new URLSearchParams(location.search);
const wanted = params.get('backend');
const client = new LabClient(wanted === 'cpu' || wanted === 'gpu' ? wanted : 'auto', showBackend, notice);
const modules = Promise.all(LABS.map(async (l) => ({ name: l.name, module: await l.page() })));

const tabs = [...document.querySelectorAll<HTMLButtonElement>('nav [data-tab]')];
const labs = new Map<LabName, PageLab>();
let shown: LabName = 'layers';
let url: UrlState | null = null;

/** The address follows the shown lab's controls; an invalid control leaves it as it was. */
function publish(lab: PageLab): void {
  if (lab.name !== shown || !url) return;
  try {
    url.write(lab.experiment(), lab.view?.() ?? {});
  } catch {
    // The lab says what is wrong when it runs.
  }
}

// Tabs: switching keeps every lab's state; the address shows the shown lab's experiment.
function showTab(name: LabName): void {
  shown = name;
  for (const t of tabs) {
    const on = t.dataset.tab === name;
    t.setAttribute('aria-selected', String(on));
    const panel = document.getElementById(t.dataset.tab ?? '');
    if (panel) panel.hidden = !on;
  }
  const lab = labs.get(name);
  if (lab) {
    publish(lab);
    lab.activate();
  }
  if (lastBackend) showBackend(lastBackend);
}
for (const t of tabs) t.addEventListener('click', () => showTab((t.dataset.tab ?? 'layers') as LabName));

/** Builds every lab from Rust's defaults and the link, then shows the link's tab. */
function start(ready: Ready, loaded: { name: LabName; module: LabModule }[]): void {
  const link = 'error' in ready.link ? null : ready.link;
  if ('error' in ready.link) notice(ready.link.error);
  const view = Object.fromEntries(link?.view ?? []);
  url = new UrlState(ready.defaults, view);
  const first: Experiment | null = link?.experiment ?? null;
  const models = new ModelService(client);
  const ctx: LabContext = {
    client,
    defaults: ready.defaults,
    models,
    publish,
    refreshBackend: () => {
      if (lastBackend) showBackend(lastBackend);
    },
    linkView: (key) => view[key] ?? null,
    initial: (lab) => {
      const d = defaultsOf(ready.defaults, lab);
      if (first?.lab === lab) return first as typeof d;
      // A lab that reads a model starts with the link's model, whichever lab the link is.
      const model = first && 'model' in first ? first.model : null;
      return model && 'model' in d ? { ...d, model } : d;
    },
  };
  for (const { name, module } of loaded) labs.set(name, module.create(ctx));
  showTab(first?.lab ?? 'layers');
  // A link that holds an experiment (more than a tab) says so, with one button to run it.
  const holdsExperiment = [...params.keys()].some((k) => !['v', 'lab', 'tab', 'backend'].includes(k) && !k.startsWith('view.'));
  const lab = first ? labs.get(first.lab) : undefined;
  if (holdsExperiment && lab?.describe && lab.runNow) linkBanner(lab);
}

/** The banner of a link's experiment: what it holds, how long it takes, one Run button. It
 *  goes when the run starts (from it or from the lab's own button). */
function linkBanner(lab: PageLab): void {
  const panel = document.getElementById(lab.name);
  const heading = panel?.querySelector('h2');
  if (!panel || !heading) return;
  const banner = document.createElement('div');
  banner.className = 'link-banner';
  banner.id = `${lab.name}-link-banner`;
  const text = document.createElement('p');
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = 'Run this experiment';
  banner.append(text, button);
  heading.after(banner);
  const refresh = () => {
    try {
      const d = lab.describe?.();
      if (d) text.textContent = `This link holds an experiment: ${d.what}. Reproducing it takes ${d.takes}.`;
    } catch (e) {
      // A control the link set is invalid (or a text file must be chosen again): Run says why.
      text.textContent = `This link holds an experiment, but ${(e as Error).message}.`;
    }
  };
  refresh();
  const offModel = modelOpened.subscribe(refresh);
  const done = () => {
    banner.remove();
    offModel();
    offRun();
  };
  const owner = tabs.find((t) => t.dataset.tab === lab.name)?.textContent?.trim();
  const offRun = activity.subscribe((a) => {
    if (a && a.owner === owner) done();
  });
  button.addEventListener('click', () => {
    done();
    lab.runNow?.();
  });
}

Promise.all([client.ready, modules]).then(([ready, loaded]) => start(ready, loaded), (e: Error) => {
  backendLine.textContent = 'Backend: none';
  notice(e.message);
});
// Until the labs exist, tabs still switch.
const linkTab = params.get('lab') ?? params.get('tab');
showTab(LABS.some((l) => l.name === linkTab) ? (linkTab as LabName) : 'layers');

// The page: one worker owns the lab (lab-client.ts); each lab is a tab that sends it
// requests and draws the replies. The URL holds the tab and each lab's experiment.

import { ComputeCheck } from './compute-check';
import { LabClient } from './lab-client';
import { LayersLab } from './layers';
import { PruneLab } from './prune';
import type { BackendInfo } from './protocol';

const backendLine = document.getElementById('backend') as HTMLParagraphElement;
const statusBar = document.getElementById('page-notice') as HTMLParagraphElement;

function showBackend(b: BackendInfo): void {
  backendLine.dataset.kind = b.kind;
  backendLine.textContent =
    b.kind === 'gpu' ? `Backend: GPU, ${b.name}` : `Backend: ${b.name}${b.reason ? `, because ${b.reason}` : ''}`;
}

const params = new URLSearchParams(location.search);
const wanted = params.get('backend');
const client = new LabClient(wanted === 'cpu' || wanted === 'gpu' ? wanted : 'auto', showBackend, (text) => {
  statusBar.hidden = false;
  statusBar.textContent = text;
});

const layers = new LayersLab(client);
const prune = new PruneLab(client, layers);
new ComputeCheck(client);

// Tabs: the URL's `tab` picks one; switching keeps every lab's state.
const tabs = [...document.querySelectorAll<HTMLButtonElement>('nav [data-tab]')];
function showTab(name: string): void {
  for (const t of tabs) {
    const on = t.dataset.tab === name;
    t.setAttribute('aria-selected', String(on));
    const panel = document.getElementById(t.dataset.tab ?? '');
    if (panel) panel.hidden = !on;
  }
  const p = new URLSearchParams(location.search);
  p.set('tab', name);
  history.replaceState(null, '', `${location.pathname}?${p}`);
  if (name === 'layers') layers.activate();
  if (name === 'prune') prune.activate();
}
for (const t of tabs) t.addEventListener('click', () => showTab(t.dataset.tab ?? 'layers'));
const first = params.get('tab');
showTab(first === 'compute' || first === 'prune' ? first : 'layers');

client.ready.catch((e: Error) => {
  backendLine.textContent = 'Backend: none';
  statusBar.hidden = false;
  statusBar.textContent = e.message;
});

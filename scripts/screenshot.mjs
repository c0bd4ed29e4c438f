// Takes the README's screenshot in headless Chromium: the layer view on the built-in model,
// or, with a QUERY holding lab=prune (or tab=prune), a pruning run on it (the run starts and the shot waits
// for it). Usage: node scripts/screenshot.mjs SITE_DIR OUT.png [QUERY]
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './serve.mjs';

const [site = 'target/site', out = 'docs/screenshot.png', query = ''] = process.argv.slice(2);
const server = await startServer(site, 0);
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'layerlab-shot-')), {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1200, height: 1500 },
  args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
});
const page = context.pages()[0] ?? (await context.newPage());
await page.goto(`http://127.0.0.1:${server.address().port}/${query}`);
await page.waitForFunction(() => document.getElementById('backend')?.dataset.kind !== '');
if (query.includes('tab=prune') || query.includes('lab=prune')) {
  await page.waitForFunction(() => /^Model: /.test(document.getElementById('prune-model')?.textContent ?? ''), null, { timeout: 300_000 });
  await page.click('#prune-run');
  await page.waitForFunction(() => document.getElementById('prune-status')?.textContent === 'Done.', null, { timeout: 900_000 });
  await page.hover('#prune-heatmap', { position: { x: 120, y: 60 } });
  const top = await page.$eval('#prune-result', (e) => e.getBoundingClientRect().top + window.scrollY);
  await page.screenshot({ path: out, clip: { x: 0, y: Math.max(0, top - 700), width: 1200, height: 1500 }, fullPage: true });
} else {
  await page.waitForFunction(() => document.getElementById('layers-status')?.textContent === 'Done.', null, { timeout: 300_000 });
  await page.hover('#heatmap', { position: { x: 120, y: 60 } });
  await page.screenshot({ path: out, clip: { x: 0, y: 0, width: 1200, height: 1500 } });
}
await context.close();
server.close();
console.log(`wrote ${out}`);

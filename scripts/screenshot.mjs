// Takes the README's screenshot: the layer view on the built-in model, in headless Chromium.
// Usage: node scripts/screenshot.mjs SITE_DIR OUT.png [QUERY]
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
await page.waitForFunction(() => document.getElementById('layers-status')?.textContent === 'Done.', null, { timeout: 300_000 });
await page.hover('#heatmap', { position: { x: 120, y: 60 } });
await page.screenshot({ path: out, clip: { x: 0, y: 0, width: 1200, height: 1500 } });
await context.close();
server.close();
console.log(`wrote ${out}`);

// Takes the README's screenshot: the lab in headless Chromium with WebGPU, after a run.
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
  viewport: { width: 1200, height: 900 },
  args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
});
const page = context.pages()[0] ?? (await context.newPage());
await page.goto(`http://127.0.0.1:${server.address().port}/${query}`);
await page.waitForFunction(() => document.getElementById('backend')?.dataset.kind !== '');
await page.click('#run');
await page.waitForFunction(() => document.getElementById('status')?.textContent === 'Done.', null, { timeout: 120_000 });
await page.screenshot({ path: out, fullPage: true });
await context.close();
server.close();
console.log(`wrote ${out}`);

// What the browser tests share: the built site served on a free port, and Debian's Chromium
// (playwright-core, a fresh profile each time) with the flags this machine needs, collecting
// console errors and page errors so every test can assert there were none (and, apart,
// console warnings).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from '../../scripts/serve.mjs';

export const SITE = process.env.LAYERLAB_SITE ?? 'target/site-test';
export const CLI = process.env.LAYERLAB_CLI ?? 'target/debug/layerlab';
export const FLAGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

/** Serves SITE (cross-origin isolated unless `isolated: false`); returns the server and its
 *  base URL (close the server after the tests). */
export async function serveSite({ isolated = true } = {}) {
  const server = await startServer(SITE, 0, '127.0.0.1', { isolated });
  return { server, base: `http://127.0.0.1:${server.address().port}/` };
}

/** Opens `url` in a fresh headless Chromium (extra `flags`, e.g. --enable-unsafe-webgpu). */
export async function openPage(url, flags = []) {
  const profile = mkdtempSync(join(tmpdir(), 'layerlab-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true, args: [...FLAGS, ...flags], acceptDownloads: true,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  const warnings = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    if (m.type() === 'warning') warnings.push(`console warning: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.goto(url);
  const close = async () => { await context.close(); rmSync(profile, { recursive: true, force: true }); };
  return { page, problems, warnings, close };
}

/** The page's address as the page has it now (Playwright's page.url() follows
 *  history.replaceState only after an event round trip). */
export function address(page) {
  return page.evaluate(() => location.href);
}

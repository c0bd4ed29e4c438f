// Benchmark: the OWL-Wanda experiment of benches/prune.sh in the page, in headless Debian
// Chromium (release wasm: the threaded build, one thread per core, as the server makes the page
// cross-origin isolated), driven through the pruning tab's ids: the
// experiment comes in the URL, #prune-run starts it, #prune-status says "Done.".
// Prints one JSON line: seconds from navigation to the model being open, from the click
// to "Done.", and in all, plus the page's own report (perplexities, stage timings).
//
//     node benches/prune_page.mjs SITE      (SITE: a folder built by scripts/build-page.mjs)
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from '../scripts/serve.mjs';

const SITE = process.argv[2] ?? 'target/site-bench';
const QUERY = '?tab=prune&method=wanda&sparsity=0.7&owl=1&m=5&lamda=0.08&nsamples=16&seqlen=256&eval_seqlen=256&dense=1&calib=LGPL-2.1&eval=GPL-3';
const FLAGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

const server = await startServer(SITE, 0);
const base = `http://127.0.0.1:${server.address().port}/`;
const profile = mkdtempSync(join(tmpdir(), 'layerlab-bench-chromium-'));
const context = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: FLAGS, acceptDownloads: true });
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on('pageerror', (e) => problems.push(e.message));
  const t0 = performance.now();
  await page.goto(base + QUERY);
  await page.waitForFunction(() => /Model: /.test(document.getElementById('prune-model')?.textContent ?? ''), null, { timeout: 300_000 });
  const t1 = performance.now();
  await page.click('#prune-run');
  await page.waitForFunction(() => ['Done.', 'Failed.', 'Cancelled.'].includes(document.getElementById('prune-status')?.textContent ?? ''),
    null, { timeout: 3_600_000, polling: 250 });
  const t2 = performance.now();
  const status = await page.textContent('#prune-status');
  if (status !== 'Done.') throw new Error(`the page says ${status} ${await page.textContent('#prune-error')} ${problems.join('; ')}`);
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.click('#prune-report-json')]);
  const report = JSON.parse(readFileSync(await download.path(), 'utf8'));
  console.log(JSON.stringify({
    open_s: (t1 - t0) / 1e3,
    run_s: (t2 - t1) / 1e3,
    total_s: (t2 - t0) / 1e3,
    perplexity: report.perplexity,
    timings: report.timings,
    calibration_tokens: report.calibration?.text_tokens,
    backend: report.backend?.name ?? (await page.textContent('#backend')),
  }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  server.close();
}

// Benchmark: the training lab's 12 x 128 preset (Mix-LN 0.25, ctx 128, batch 16, char-level
// GPL-3) in the page, in headless Debian Chromium (release wasm: the threaded build, one thread
// per core, as the server makes the page cross-origin isolated), against the native CLI on the
// same experiment in the same run: `layerlab run` of the page's own report.
// Two page runs: the CPU (no WebGPU offered) and WebGPU (--enable-unsafe-webgpu with
// ?backend=gpu: here SwiftShader, a CPU emulation of a GPU, so expect it to be far slower than
// the CPU; on a machine with a GPU it names that GPU). Prints one JSON line per run with the
// page's tokens/s (the report's, steps only), the backend named, and the CLI's tokens/s.
//
//     node benches/train_page.mjs SITE [STEPS] [CLI]
//       SITE: a folder built by scripts/build-page.mjs (release wasm, e.g. target/site-bench)
//       STEPS: optimizer steps per run (default 10), CLI: target/release/layerlab
import { execFileSync } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from '../scripts/serve.mjs';

const SITE = process.argv[2] ?? 'target/site-bench';
const STEPS = Number(process.argv[3] ?? 10);
const CLI = process.argv[4] ?? 'target/release/layerlab';
// The defaults are the 12 x 128 preset; no evaluation until the last step.
const QUERY = `?v=2&lab=train&steps=${STEPS}&eval_every=${STEPS}`;
const FLAGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

const server = await startServer(SITE, 0);
const base = `http://127.0.0.1:${server.address().port}/`;
const dir = mkdtempSync(join(tmpdir(), 'layerlab-bench-train-'));

async function pageRun(name, flags, query) {
  const profile = mkdtempSync(join(dir, 'chromium-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: [...FLAGS, ...flags], acceptDownloads: true });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const problems = [];
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(base + query);
    await page.waitForFunction(() => /^Ready/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 300_000 });
    const t0 = performance.now();
    await page.click('#train-run');
    await page.waitForFunction(() => ['Done.', 'Failed.', 'Cancelled.'].includes(document.getElementById('train-status')?.textContent ?? ''),
      null, { timeout: 3_600_000, polling: 250 });
    const seconds = (performance.now() - t0) / 1e3;
    const status = await page.textContent('#train-status');
    if (status !== 'Done.') throw new Error(`${name}: the page says ${status} ${await page.textContent('#train-error')} ${problems.join('; ')}`);
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.click('#train-report-json')]);
    const bytes = readFileSync(await download.path());
    return { bytes, report: JSON.parse(bytes.toString('utf8')), seconds };
  } finally {
    await context.close();
  }
}

try {
  let cli = null;
  for (const [name, flags, query] of [
    ['page, CPU', [], QUERY],
    ['page, WebGPU', ['--enable-unsafe-webgpu'], `${QUERY}&backend=gpu`],
  ]) {
    const { bytes, report, seconds } = await pageRun(name, flags, query);
    if (!cli) {
      const file = join(dir, 'page-report.json');
      writeFileSync(file, bytes);
      cli = JSON.parse(execFileSync(CLI, ['run', file, '--json', '-'], { encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'ignore'] }));
    }
    const run = report.runs[0];
    const ours = run.tokens_per_s;
    const theirs = cli.runs[0].tokens_per_s;
    console.log(JSON.stringify({
      run: name,
      steps: run.steps.length,
      backend: `${report.backend.kind}: ${report.backend.name}`,
      page_tokens_per_s: Math.round(ours),
      cli_tokens_per_s: Math.round(theirs),
      cli_over_page: +(theirs / ours).toFixed(2),
      click_to_done_s: +seconds.toFixed(1),
      first_loss: run.steps[0].loss,
      cli_first_loss: cli.runs[0].steps[0].loss,
    }));
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
  server.close();
}

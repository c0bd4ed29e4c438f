// Browser end-to-end tests of the foundation, in Debian's Chromium driven by playwright-core:
// the page loads with no console errors, states its backend, and its compute check returns
// the same numbers as the native CLI (which runs the kernels on Vulkan, or the CPU). Run
// twice: with WebGPU (SwiftShader, --enable-unsafe-webgpu) and without (the CPU fallback).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, address, openPage, serveSite } from './browser.mjs';

let server;
let base;
before(async () => {
  ({ server, base } = await serveSite());
});
after(() => server?.close());

async function openLab(flags, query) {
  const opened = await openPage(base + query, flags);
  await opened.page.waitForFunction(() => document.getElementById('backend')?.dataset.kind !== '', null, { timeout: 60_000 });
  return opened;
}

async function runCheck(page) {
  await page.click('#run');
  await page.waitForFunction(() => {
    const s = document.getElementById('status')?.textContent ?? '';
    return s === 'Done.' || s === 'Failed.' || s === 'Cancelled.';
  }, null, { timeout: 120_000 });
  const status = await page.textContent('#status');
  assert.equal(status, 'Done.', `the run ended with "${status}": ${await page.textContent('#error')}`);
  return page.$$eval('#stats-table td[data-value]', (tds) =>
    Object.fromEntries(tds.map((td) => [td.dataset.stat, Number(td.dataset.value)])));
}

function cli(args) {
  return JSON.parse(execFileSync(CLI, ['reduce', ...args, '--json', '-'], { encoding: 'utf8' }));
}

// GPU partial sums are f32 and their order differs from the CPU's, so values agree to a
// relative 1e-4 (counts within 0.01% of the values, since a bin or threshold edge can fall
// either side in f32).
function assertSameStats(page, ref, what) {
  const rel = (a, b) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
  for (const key of ['mean_abs', 'std', 'max_abs', 'min', 'max', 'kurtosis', 'outlier_threshold', 'outlier_fraction']) {
    assert.ok(rel(page[key], ref[key]) < 1e-4, `${what}: ${key} page ${page[key]} vs CLI ${ref[key]}`);
  }
  assert.equal(page.count, ref.count, `${what}: count`);
  assert.ok(Math.abs(page.outlier_count - ref.outlier_count) <= Math.max(1, ref.count * 1e-4), `${what}: outlier_count`);
  // The mean is near 0, so compare it on the scale of the values.
  assert.ok(Math.abs(page.mean - ref.mean) < 1e-5 * ref.mean_abs, `${what}: mean ${page.mean} vs ${ref.mean}`);
}

const SHAPE = { seed: 11, rows: 517, cols: 301 };
const query = `?tab=compute&seed=${SHAPE.seed}&rows=${SHAPE.rows}&cols=${SHAPE.cols}&ck=5&cbins=64`;
const cliArgs = ['--seed', '11', '--rows', '517', '--cols', '301', '--k', '5', '--bins', '64'];

test('with WebGPU: the page uses the GPU, matches the CLI, and survives losing the device', async () => {
  const { page, problems, close } = await openLab(['--enable-unsafe-webgpu'], `${query}&backend=gpu`);
  try {
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'gpu', await page.textContent('#backend'));
    assert.match(await page.textContent('#backend'), /^Backend: GPU, .+ \(WebGPU\)$/);
    const ref = cli(cliArgs).stats;
    assertSameStats(await runCheck(page), ref, 'WebGPU');
    assert.equal(await page.isHidden('#notice'), true);

    // Lose the device: the next run finishes on the CPU, and the page says so.
    await page.click('.diagnostics summary');
    await page.click('#lose-device');
    await page.waitForFunction(() => /destroyed/.test(document.getElementById('status')?.textContent ?? ''));
    const after = await runCheck(page);
    assertSameStats(after, ref, 'after device loss');
    assert.match(await page.textContent('#notice'), /finished on the CPU/);
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'cpu');
    assert.match(await page.textContent('#backend'), /CPU \(WebAssembly, \d+ threads\), because the GPU failed/);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('without WebGPU: the page says why, runs on the CPU (its threads) and matches the CLI', async () => {
  const { page, problems, close } = await openLab([], query);
  try {
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'cpu');
    // The server makes the page cross-origin isolated: the threaded build, one thread per core.
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    assert.match(await page.textContent('#backend'), new RegExp(`^Backend: CPU \\(WebAssembly, ${Math.min(cores, 16)} threads\\), because .+`));
    const ref = cli([...cliArgs, '--backend', 'cpu']).stats;
    assertSameStats(await runCheck(page), ref, 'CPU');
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('served without cross-origin isolation: the single-threaded build gives the same numbers', async () => {
  // As a static host without the COOP/COEP headers would serve it: no SharedArrayBuffer.
  const plain = await serveSite({ isolated: false });
  const opened = await openPage(plain.base + query, []);
  const { page, problems, close } = opened;
  try {
    await page.waitForFunction(() => document.getElementById('backend')?.dataset.kind !== '', null, { timeout: 60_000 });
    assert.equal(await page.evaluate(() => self.crossOriginIsolated), false);
    assert.match(await page.textContent('#backend'), /^Backend: CPU \(WebAssembly\), because .+/);
    assertSameStats(await runCheck(page), cli([...cliArgs, '--backend', 'cpu']).stats, 'CPU, one thread');
    assert.deepEqual(problems, []);
  } finally {
    await close();
    plain.server.close();
  }
});

test('a bad request shows its error, a long run can be cancelled, and the page keeps working', async () => {
  const { page, problems, close } = await openLab([], '?backend=cpu&tab=compute');
  try {
    assert.match(await page.textContent('#backend'), /switched off/);
    await page.fill('#bins', '999');
    await page.click('#run');
    assert.match(await page.textContent('#error'), /bins must be a whole number from 1 to 256/);

    await page.fill('#bins', '64');
    await page.fill('#rows', '3000');
    await page.fill('#cols', '4096');
    await page.click('#run');
    await page.click('#cancel');
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'Cancelled.', null, { timeout: 60_000 });
    assert.equal(await page.isHidden('#error'), true);

    await page.fill('#rows', '100');
    await page.fill('#cols', '7');
    // The address follows the controls at once, before any run.
    const link = new URL(await address(page)).searchParams;
    assert.equal(link.get('v'), '2');
    assert.equal(link.get('lab'), 'compute');
    assert.equal(link.get('rows'), '100');
    assert.equal(link.get('cols'), '7');
    assert.equal(link.get('seed'), null, 'a link holds only what differs from the defaults');
    const small = await runCheck(page);
    assert.equal(small.count, 700);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('the page report reruns in the CLI to the same numbers, and the link reads as the same experiment', async () => {
  const { page, problems, close } = await openLab([], '?v=2&lab=compute&seed=3&rows=211&cols=97&bins=32&per_column=false&backend=cpu');
  const dir = mkdtempSync(join(tmpdir(), 'layerlab-compute-'));
  try {
    assert.equal(await page.inputValue('#rows'), '211');
    assert.equal(await page.isChecked('#per-column'), false);
    const stats = await runCheck(page);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-json')]);
    const report = JSON.parse(readFileSync(await download.path(), 'utf8'));
    assert.deepEqual(report.experiment, { version: 2, lab: 'compute', seed: 3, rows: 211, cols: 97, outlier_k: 5, bins: 32, per_column: false });
    const file = join(dir, 'report.json');
    writeFileSync(file, JSON.stringify(report));
    const rerun = JSON.parse(execFileSync(CLI, ['run', file, '--backend', 'cpu', '--json', '-'], { encoding: 'utf8' }));
    assert.deepEqual(rerun.experiment, report.experiment);
    assertSameStats(stats, rerun.stats, 'page report rerun by the CLI');
    assert.deepEqual(rerun.stats.histogram.counts, report.stats.histogram.counts);
    // The page's own link, read by the CLI, is the report's experiment.
    const read = JSON.parse(execFileSync(CLI, ['run', await address(page), '--dry-run'], { encoding: 'utf8' }));
    assert.deepEqual(read, report.experiment);
    assert.deepEqual(problems, []);
  } finally {
    await close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the planted outlier columns lead the list, counted as the CLI counts them, and the histogram has axes", async () => {
  const { page, problems, close } = await openLab([], '?v=2&lab=compute&backend=cpu');
  try {
    await runCheck(page);
    // The default matrix plants an outlier feature in every 97th column from 3: 3, 100, 197
    // and 294 (src/synth.rs). Counted against the matrix's threshold, they hold the most
    // outliers.
    const listed = await page.$$eval('#columns-table tbody tr', (trs) => trs.map((tr) => Number(tr.dataset.column)));
    assert.deepEqual(listed.slice(0, 4).sort((a, b) => a - b), [3, 100, 197, 294], `listed ${listed}`);
    const ref = cli(['--seed', '7', '--rows', '1000', '--cols', '333', '--k', '5', '--bins', '64', '--backend', 'cpu']).stats;
    const shown = await page.$$eval('#columns-table tbody tr', (trs) => trs.map((tr) => Number(tr.children[2].textContent)));
    listed.forEach((col, i) => {
      assert.ok(Math.abs(shown[i] - ref.columns.outlier_fraction[col]) < 1e-3, `column ${col}: page ${shown[i]} vs CLI ${ref.columns.outlier_fraction[col]}`);
    });
    // The histogram is a chart with both axes, every bin inside its x range.
    assert.equal(await page.$$eval('#histogram .u-axis', (a) => a.length), 2);
    const chart = await page.$eval('#histogram', (el) => JSON.parse(el.dataset.chart));
    assert.equal(chart.x.length, 64);
    // Bars are whole: the x axis reaches the outer edges of the first and last bin.
    const eps = 1e-6 * (ref.histogram.hi - ref.histogram.lo);
    assert.ok(chart.xRange[0] <= ref.histogram.lo + eps && chart.xRange[1] >= ref.histogram.hi - eps, `x range ${chart.xRange} vs [${ref.histogram.lo}, ${ref.histogram.hi}]`);
    assert.deepEqual(chart.series[0].y.map((c) => c ?? 0), ref.histogram.counts);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

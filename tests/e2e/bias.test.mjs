// Browser end-to-end test of the bias lab (Sebra), in Debian's Chromium: the tiny preset run
// in the page on the CPU (without WebGPU, and with it offered under auto, which leaves a
// software adapter alone) gives exactly the CLI's numbers (`layerlab run` of the page's own
// report, native Rust against the page's WebAssembly: every rank, the ranking's tau, every
// per-group accuracy and epoch loss); with ?backend=gpu (SwiftShader's WebGPU) the page trains
// ERM's, Stage 1's and the oracle's batches on the GPU and agrees with the CLI's CPU run
// within the stated tolerance, and a device lost mid-run restarts the phase on the CPU; the
// charts show the report's numbers; Cancel ends a long run and leaves the page usable; the
// link restores the experiment and reads in the CLI as the same experiment.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, SITE, address, openPage, serveSite } from './browser.mjs';

let server;
let base;
before(async () => {
  for (const f of [CLI, join(SITE, 'index.html')]) {
    assert.ok(existsSync(f), `${f} is missing: build the CLI and the page (scripts/test.sh)`);
  }
  ({ server, base } = await serveSite());
});
after(() => server?.close());

// The page's tiny preset, as the address bar writes it.
const TINY = 'v=2&lab=sebra&epochs=6&image=12&rank_epochs=10&test_per_class=50&train_per_class=150&val_per_class=16&width=8';

async function ready(page) {
  await page.waitForFunction(() => /^Ready/.test(document.getElementById('sebra-status')?.textContent ?? ''), null, { timeout: 120_000 });
}

async function settled(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById('sebra-status')?.textContent ?? '';
    return s.startsWith('Done') || s === 'Failed.' || s === 'Cancelled.';
  }, null, { timeout: 600_000, polling: 250 });
  return page.textContent('#sebra-status');
}

async function downloaded(page, selector) {
  const [d] = await Promise.all([page.waitForEvent('download'), page.click(selector)]);
  return { name: d.suggestedFilename(), bytes: readFileSync(await d.path()) };
}

/** `layerlab run` of a report file (the experiment inside it): its JSON report. */
function cliRun(reportBytes) {
  const dir = mkdtempSync(join(tmpdir(), 'layerlab-sebra-'));
  try {
    const file = join(dir, 'page-report.json');
    writeFileSync(file, reportBytes);
    return JSON.parse(execFileSync(CLI, ['run', file, '--json', '-'], { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'ignore'] }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Every number the two faces must share exactly (timings aside). */
function sameReport(page, cli, what) {
  assert.deepEqual(cli.experiment, page.experiment, `${what}: experiment`);
  assert.deepEqual(cli.options, page.options, `${what}: options`);
  assert.equal(cli.ranking.epochs, page.ranking.epochs, `${what}: ranking epochs`);
  assert.deepEqual(cli.ranking.per_epoch, page.ranking.per_epoch, `${what}: deselected per epoch`);
  assert.deepEqual(cli.ranking.samples, page.ranking.samples, `${what}: every rank`);
  assert.equal(cli.ranking.pairs_per_epoch, page.ranking.pairs_per_epoch);
  assert.deepEqual(cli.tau, page.tau, `${what}: tau`);
  assert.deepEqual(cli.accuracy, page.accuracy, `${what}: accuracies`);
  const noTime = (e) => e.map(({ seconds: _s, ...rest }) => rest);
  assert.deepEqual(noTime(cli.epochs), noTime(page.epochs), `${what}: epoch losses`);
}

/** The charts draw the report's numbers. */
async function chartsShow(page, r) {
  const rank = JSON.parse(await page.$eval('#sebra-rank-chart', (c) => c.dataset.chart));
  assert.equal(rank.cats.length, r.ranking.epochs);
  r.ranking.per_epoch.forEach((e, i) => {
    const byGroup = [0, 1, 2, 3].map((g) => e.deselected.reduce((a, c) => a + c[g], 0));
    assert.deepEqual(rank.values[i], byGroup, `rank epoch ${e.epoch}`);
  });
  const loss = JSON.parse(await page.$eval('#sebra-loss-chart', (c) => c.dataset.chart));
  assert.deepEqual(loss.series.map((x) => x.label), ['ERM', 'Stage 1 (ranking)', 'Stage 2 (Sebra)', 'Oracle']);
  assert.deepEqual(loss.series[1].y.slice(0, r.ranking.epochs), r.epochs.filter((e) => e.phase === 'rank').map((e) => e.loss));
  const acc = JSON.parse(await page.$eval('#sebra-acc-chart', (c) => c.dataset.chart));
  assert.deepEqual(acc.values[4], [r.accuracy.erm.worst_group, r.accuracy.sebra.worst_group, r.accuracy.oracle.worst_group]);
  const rows = await page.$$eval('#sebra-acc-table tbody tr', (t) => t.map((tr) => tr.dataset.model));
  assert.deepEqual(rows, ['erm', 'sebra', 'oracle']);
  const tau = await page.$$eval('#sebra-tau-table tbody tr', (t) => t.length);
  assert.equal(tau, 5);
  // First-ranked images: the lowest ranks of each class, as the report has them.
  const ranked = JSON.parse(await page.$eval('#sebra-ranked', (c) => c.dataset.chart));
  for (let k = 0; k < 4; k++) {
    const own = r.ranking.samples.filter((s) => s.class === k).map((s) => s.rank);
    assert.equal(ranked.ranks[k][0][0][1], Math.min(...own));
    assert.equal(ranked.ranks[k][1][0][1], Math.max(...own));
  }
  assert.ok(await page.$eval('#sebra-grid', (c) => c.width > 300 && c.height > 100));
}

/** Runs the form's experiment; its report (bytes and JSON) and the seconds it took. */
async function runTiny(page) {
  const started = Date.now();
  await page.click('#sebra-run');
  // The ranking is drawn as it forms, before the run ends.
  await page.waitForFunction(() => !document.getElementById('sebra-rank-figure')?.hidden, null, { timeout: 300_000 });
  assert.match(await settled(page), /^Done/, await page.textContent('#sebra-error'));
  const seconds = (Date.now() - started) / 1000;
  const report = await downloaded(page, '#sebra-report-json');
  const r = JSON.parse(report.bytes.toString('utf8'));
  assert.equal(r.experiment.lab, 'sebra');
  assert.equal(r.ranking.samples.length, 600);
  return { bytes: report.bytes, r, seconds };
}

for (const [name, flags, query] of [
  ['with WebGPU offered, auto (a software adapter: the CPU)', ['--enable-unsafe-webgpu'], `?${TINY}`],
  ['without WebGPU', [], `?${TINY}`],
]) {
  test(`${name}: the tiny preset in the page gives exactly the CLI's ranks, tau and accuracies`, async () => {
    const { page, problems, close } = await openPage(base + query, flags);
    try {
      await ready(page);
      assert.match(await page.textContent('#backend'), /; the bias lab trains on the CPU \(WebAssembly\)$/);
      assert.equal(await page.inputValue('#sebra-preset'), 'tiny');
      assert.equal(await page.inputValue('#sebra-image'), '12');
      const { bytes, r, seconds } = await runTiny(page);
      assert.ok(seconds < 60, `the tiny preset took ${seconds} s in the page`);
      assert.equal(r.backend, 'cpu');
      assert.match(await page.textContent('#backend'), /; the last bias run: cpu$/);
      sameReport(r, cliRun(bytes), name);
      // The link reads in the CLI as the report's experiment.
      assert.deepEqual(JSON.parse(execFileSync(CLI, ['run', await address(page), '--dry-run'], { encoding: 'utf8' })), r.experiment);
      await chartsShow(page, r);
      assert.deepEqual(problems, []);
    } finally {
      await close();
    }
  });
}

/** Each phase's epoch losses of the page's run against the CLI's: the largest relative
 *  difference per phase (logged). */
function lossDiffs(page, cli) {
  const out = {};
  for (const phase of ['erm', 'rank', 'mitigate', 'oracle']) {
    const a = page.epochs.filter((e) => e.phase === phase).map((e) => e.loss);
    const b = cli.epochs.filter((e) => e.phase === phase).map((e) => e.loss);
    assert.equal(a.length, b.length, `${phase}: epochs`);
    assert.ok(a.length > 0, `${phase}: no epochs`);
    out[phase] = Math.max(...a.map((x, i) => Math.abs(x - b[i]) / Math.abs(b[i])));
  }
  return out;
}

// ?backend=gpu on SwiftShader: ERM's, Stage 1's and the oracle's batches train on WebGPU, the
// rest on the CPU (WebAssembly); the reference is `layerlab run` of the page's report, on the
// CPU. Tolerances: each epoch loss within 1e-4 relative (the GPU's f32 sums in another order;
// tests/sebra_gpu.rs measures the native GPU within 1e-5 of the CPU); the ranks, deselections,
// tau and accuracies exactly. Why exactly: Stage 1 deselects a sample when its p_y (computed on
// the CPU from the weights the GPU trained, within ~1e-6 of the CPU's) exceeds p_critical, so
// a rank flips only for a sample with p_y within about 1e-6 of 0.75; the accuracies count
// argmaxes, which flip only for a test image whose two top logits are that close. Neither
// happens in this run; if one did on other hardware, this test would have to compare tau
// within a tolerance instead, and the failure message says which number moved.
test('?backend=gpu: the page trains on WebGPU within the stated tolerance of the CLI; a device lost mid-run restarts the phase on the CPU', async () => {
  const { page, problems, close } = await openPage(`${base}?${TINY}&backend=gpu`, ['--enable-unsafe-webgpu']);
  try {
    await ready(page);
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'gpu', await page.textContent('#backend'));
    assert.match(await page.textContent('#backend'), /the bias lab trains ERM's, Stage 1's and the oracle's batches on the GPU/);
    const { bytes, r, seconds } = await runTiny(page);
    assert.match(r.backend, /^erm, rank, oracle training: gpu \(.+\); rank's per-epoch scoring, mitigate, every test scoring: cpu$/);
    assert.ok((await page.textContent('#backend')).endsWith(`; the last bias run: ${r.backend}`), await page.textContent('#backend'));
    const cli = cliRun(bytes);
    const diffs = lossDiffs(r, cli);
    console.log(`the tiny preset on WebGPU: ${seconds.toFixed(1)} s; epoch losses, largest relative difference from the CLI's CPU run per phase: ${JSON.stringify(diffs)}`);
    for (const [phase, d] of Object.entries(diffs)) assert.ok(d <= 1e-4, `${phase}: ${d}`);
    assert.deepEqual(cli.experiment, r.experiment);
    assert.deepEqual(cli.ranking, r.ranking, 'the ranking');
    assert.deepEqual(cli.tau, r.tau, 'tau');
    assert.deepEqual(cli.accuracy, r.accuracy, 'the accuracies');
    await chartsShow(page, r);

    // Lose the device in Stage 1: it starts over on the CPU, and so every phase after ERM
    // computes exactly what the CLI's CPU run does; ERM (on the GPU) within the tolerance.
    await page.click('#sebra-run');
    await page.waitForFunction(() => /^Stage 1 \(ranking\): epoch [2-9]/.test(document.getElementById('sebra-status')?.textContent ?? ''), null, { timeout: 300_000 });
    await page.click('[data-tab="compute"]');
    await page.click('#compute .diagnostics summary');
    await page.click('#lose-device');
    await page.click('[data-tab="sebra"]');
    assert.match(await settled(page), /^Done/, await page.textContent('#sebra-error'));
    const notice = await page.textContent('#sebra-notice');
    console.log(`device lost: ${notice}`);
    const m = /^The GPU failed in (rank|mitigate|oracle)'s training \(.+\); (rank|oracle) started again on the CPU, and the run went on there\.$/.exec(notice);
    assert.ok(m, notice);
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'cpu');
    const lost = JSON.parse((await downloaded(page, '#sebra-report-json')).bytes.toString('utf8'));
    console.log(`its backend: ${lost.backend}`);
    assert.match(lost.backend, /^erm(, rank)? training: gpu \(.+\); then the GPU failed in (rank|oracle)'s training \(.+\): (rank|oracle) started again on the CPU/);
    // The phases the GPU trained before it failed: within the tolerance; the rest exactly.
    const onGpu = m[2] === 'rank' ? ['erm'] : ['erm', 'rank'];
    const noTime = (e) => e.map(({ seconds: _s, ...rest }) => rest);
    const after = (e) => noTime(e.filter((x) => !onGpu.includes(x.phase)));
    assert.deepEqual(after(lost.epochs), after(cli.epochs), `every epoch but ${onGpu}'s`);
    const d = lossDiffs(lost, cli);
    console.log(`after the loss: largest relative differences per phase ${JSON.stringify(d)}`);
    for (const phase of onGpu) assert.ok(d[phase] <= 1e-4, `${phase}: ${d[phase]}`);
    assert.deepEqual(cli.ranking, lost.ranking, 'the ranking after the loss');
    assert.deepEqual(cli.tau, lost.tau);
    assert.deepEqual(cli.accuracy, lost.accuracy);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('Cancel ends a long run and the page stays usable; the link restores the experiment', async () => {
  const { page, problems, close } = await openPage(`${base}?${TINY}`);
  try {
    await ready(page);
    // The training images show before any run.
    await page.click('#sebra-show-data');
    await page.waitForFunction(() => /^Shown/.test(document.getElementById('sebra-status')?.textContent ?? ''), null, { timeout: 60_000 });
    assert.ok(await page.$eval('#sebra-grid', (c) => c.width > 300 && c.height > 100));
    assert.match(await page.textContent('#sebra-grid-counts'), /both aligned 5\d\d/);
    await page.selectOption('#sebra-preset', 'default');
    assert.equal(await page.inputValue('#sebra-train-per-class'), '1000');
    await page.click('#sebra-run');
    await page.waitForFunction(() => /^ERM: epoch/.test(document.getElementById('sebra-status')?.textContent ?? ''), null, { timeout: 120_000 });
    await page.click('#sebra-cancel');
    assert.equal(await settled(page), 'Cancelled.');
    assert.equal(await page.isEnabled('#sebra-run'), true);

    // Usable again: the tiny preset with another seed and bias runs to the end.
    await page.selectOption('#sebra-preset', 'tiny');
    await page.fill('#sebra-seed', '3');
    await page.fill('#sebra-bias-colour', '0.9');
    await page.click('#sebra-run');
    assert.match(await settled(page), /^Done/, await page.textContent('#sebra-error'));
    const link = await address(page);
    assert.match(link, /seed=3/);
    assert.match(link, /bias=%5B0.9%2C0.95%5D/);
    const report = await downloaded(page, '#sebra-report-json');
    const r = JSON.parse(report.bytes.toString('utf8'));
    assert.deepEqual(r.experiment.bias, [0.9, 0.95]);
    assert.equal(r.experiment.seed, 3);

    // The link restores the experiment in a fresh page.
    const again = await openPage(link);
    try {
      await ready(again.page);
      assert.equal(await again.page.inputValue('#sebra-seed'), '3');
      assert.equal(await again.page.inputValue('#sebra-bias-colour'), '0.9');
      assert.equal(await again.page.inputValue('#sebra-preset'), 'tiny');
      assert.equal(await address(again.page), link);
      assert.deepEqual(JSON.parse(execFileSync(CLI, ['run', link, '--dry-run'], { encoding: 'utf8' })), r.experiment);
      assert.deepEqual(again.problems, []);
    } finally {
      await again.close();
    }
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

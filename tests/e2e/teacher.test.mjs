// Browser end-to-end tests of the page as a teacher uses it (issue 14), in Debian's
// Chromium: no console warnings on load; charts checked by their data and axis ranges (the
// `data-chart` state www/src/shell/charts.ts keeps on every chart), not by pixels; the busy
// run visible and cancellable from another tab; a link's banner and one-click run; one
// progress bar per pruning run, monotone, with the time left; a second run reusing the
// dense perplexity; the words a class needs; the software GPU said to be one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { address, SITE, openPage, serveSite } from './browser.mjs';

let server;
let base;
before(async () => {
  assert.ok(existsSync(join(SITE, 'models/SmolLM2-135M-Instruct.Q4_1.gguf')), 'build the test page first (scripts/test.sh)');
  ({ server, base } = await serveSite());
});
after(() => server?.close());

const started = (page) => page.waitForFunction(() => document.getElementById('backend')?.dataset.kind !== '', null, { timeout: 60_000 });
const chart = (page, id) => page.$eval(`#${id}`, (el) => JSON.parse(el.dataset.chart ?? 'null'));

async function layersSettled(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById('layers-status')?.textContent ?? '';
    return s === 'Done.' || s === 'Failed.' || s === 'Cancelled.';
  }, null, { timeout: 300_000 });
  return page.textContent('#layers-status');
}

async function pruneSettled(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById('prune-status')?.textContent ?? '';
    return s === 'Done.' || s === 'Failed.' || s === 'Cancelled.';
  }, null, { timeout: 900_000, polling: 250 });
  return page.textContent('#prune-status');
}

test('a page load logs no console warnings, threaded or not', async () => {
  const plain = await serveSite({ isolated: false });
  try {
    for (const url of [`${base}?v=2&lab=compute`, `${plain.base}?v=2&lab=compute`]) {
      const { page, problems, warnings, close } = await openPage(url);
      try {
        await started(page);
        // Let the thread pool's workers start and log, if they would.
        await page.click('#run');
        await page.waitForFunction(() => document.getElementById('status')?.textContent === 'Done.', null, { timeout: 120_000 });
        assert.deepEqual(warnings, [], url);
        assert.deepEqual(problems, [], url);
      } finally {
        await close();
      }
    }
  } finally {
    plain.server.close();
  }
});

test('layer charts: bars inside the plot, log axes labelled, colour bar labels inside the canvas, a heatmap click selects its tensor', async () => {
  const { page, problems, close } = await openPage(`${base}?view.stat=kurtosis`);
  try {
    assert.equal(await layersSettled(page), 'Done.', await page.textContent('#layers-error'));
    const blocks = await chart(page, 'block-chart');
    assert.deepEqual(blocks.x, [...Array(30).keys()]);
    // Half a bar's spacing beyond the first and last block: no bar is cut at an edge.
    assert.deepEqual(blocks.xRange, [-0.5, 29.5]);
    // The log kurtosis axis names more than the powers of ten (1, 2 and 5 of each decade).
    const labels = blocks.ticks[1];
    assert.ok(labels.length >= 3, `kurtosis axis labels: ${labels}`);
    assert.ok(labels.some((t) => /^[25]/.test(t)), `kurtosis axis labels: ${labels}`);
    const hist = await chart(page, 'hist-chart');
    const step = hist.x[1] - hist.x[0];
    assert.ok(hist.xRange[0] <= hist.x[0] - step / 2 + 1e-12 && hist.xRange[1] >= hist.x.at(-1) + step / 2 - 1e-12, `histogram x range ${hist.xRange}`);
    // The colour bar's labels end inside the canvas.
    const heat = await chart(page, 'heatmap');
    assert.ok(heat.labelsEnd < heat.width, `colour bar labels end at ${heat.labelsEnd} of ${heat.width}`);
    // Clicking the cell of block 3's up projection selects that tensor's histogram.
    const row = heat.rows.indexOf('up');
    assert.ok(row >= 0, `heatmap rows ${heat.rows}`);
    const box = await page.$eval('#heatmap', (c) => {
      const r = c.getBoundingClientRect();
      return { sx: r.width / c.width, sy: r.height / c.height };
    });
    const cw = Math.max(8, Math.min(28, Math.floor(900 / 30)));
    await page.click('#heatmap', { position: { x: (90 + 3 * cw + cw / 2) * box.sx, y: (8 + row * 22 + 11) * box.sy } });
    assert.equal(await page.inputValue('#tensor-pick'), 'blk.3.ffn_up.weight');
    assert.equal(new URL(await address(page)).searchParams.get('view.tensor'), 'blk.3.ffn_up.weight');
    assert.match(await page.textContent('#hist-caption'), /^blk\.3\.ffn_up\.weight/);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('another tab shows the busy run and cancels it; a link shows its experiment with one Run button', async () => {
  const { page, problems, close } = await openPage(`${base}?backend=cpu`);
  try {
    await started(page);
    // The Layers tab is computing SmolLM2's statistics; the compute check says so and can stop it.
    await page.waitForFunction(() => /^Tensor \d+ of/.test(document.getElementById('layers-status')?.textContent ?? ''), null, { timeout: 120_000 });
    await page.click('nav [data-tab="compute"]');
    await page.waitForFunction(() => /^Busy: the Layers tab is running/.test(document.getElementById('status')?.textContent ?? ''));
    assert.equal(await page.isEnabled('#cancel'), true);
    await page.click('#cancel');
    await page.waitForFunction(() => document.getElementById('layers-status')?.textContent === 'Cancelled.', null, { timeout: 60_000 });
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'Ready.');
    assert.equal(await page.isDisabled('#cancel'), true);
  } finally {
    await close();
  }
  assert.deepEqual(problems, []);

  const linked = await openPage(`${base}?v=2&lab=compute&rows=517&cols=301&seed=11&backend=cpu`);
  try {
    await started(linked.page);
    const banner = await linked.page.textContent('#compute-link-banner');
    assert.match(banner, /This link holds an experiment: the statistics of a seeded 517 × 301 synthetic matrix \(seed 11.*\)\. Reproducing it takes about/);
    assert.equal(await linked.page.$$eval('#compute-link-banner button', (b) => b.length), 1);
    await linked.page.click('#compute-link-banner button');
    await linked.page.waitForFunction(() => document.getElementById('status')?.textContent === 'Done.', null, { timeout: 120_000 });
    assert.equal(await linked.page.$('#compute-link-banner'), null, 'the banner goes once the run starts');
    assert.equal(await linked.page.$eval('#stats-table td[data-stat="count"]', (td) => Number(td.dataset.value)), 517 * 301);
    assert.deepEqual(linked.problems, []);
  } finally {
    await linked.close();
  }
  // A link without an experiment (only the tab) has no banner.
  const plain = await openPage(`${base}?v=2&lab=compute&backend=cpu`);
  try {
    await started(plain.page);
    assert.equal(await plain.page.$('#compute-link-banner'), null);
  } finally {
    await plain.close();
  }
});

test('a software GPU chosen by hand is called a CPU emulating a GPU, with an estimate', async () => {
  const { page, close } = await openPage(`${base}?v=2&lab=compute&backend=gpu`, ['--enable-unsafe-webgpu']);
  try {
    await started(page);
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'gpu');
    assert.equal(await page.getAttribute('#backend', 'data-software'), 'true', await page.textContent('#backend'));
    const notice = await page.textContent('#page-notice');
    assert.match(notice, /emulates a GPU on this computer's CPU/);
    assert.match(notice, /50 to 100 times longer/);
  } finally {
    await close();
  }
});

// Two runs at nearly equal sparsity (Wanda 50%: exactly 50%; OWL-Wanda 50%: 49.9…%), then a
// grid, on tiny settings a debug build runs in minutes.
const PRUNE = '?v=2&lab=prune&sparsity=0.5&nsamples=2&seqlen=32&eval.seqlen=32&eval.max_windows=2&backend=cpu';

test('pruning: words, one monotone progress bar with the time left, reused dense perplexity, comparison charts that read right', async () => {
  const { page, problems, close } = await openPage(base + PRUNE);
  try {
    await started(page);
    await page.waitForFunction(() => /^Model: /.test(document.getElementById('prune-model')?.textContent ?? ''), null, { timeout: 300_000 });
    // Words: the license texts said to be license texts, the smaller calibration said, the
    // terms explained where they appear.
    assert.match(await page.$eval('#prune-calib', (s) => s.selectedOptions[0].textContent), /^LGPL-2\.1 \(license text\)$/);
    assert.equal(await page.isVisible('#prune-scale-notice'), true);
    assert.match(await page.textContent('#prune-scale-notice'), /2 windows × 32 tokens = 64 tokens .* 128 × 2048 = 262,144 tokens of C4/);
    for (const key of ['wanda', 'hessian', 'lamda', 'outlier', 'windows', 'texts']) {
      const title = await page.getAttribute(`#prune [data-explain="${key}"]`, 'title');
      assert.ok(title && title.length > 80, `the explanation of ${key}`);
    }
    assert.match(await page.textContent('#prune-explain'), /Wanda score.*Hessian.*S ± λ.*Outlier ratio D/s);
    // The banner of this link, before anything runs.
    assert.match(await page.textContent('#prune-link-banner'), /This link holds an experiment: Wanda 50% on SmolLM2-135M-Instruct\.Q4_1\.gguf.*Reproducing it takes about/);
    // The address follows a control at once.
    await page.check('#prune-owl');
    assert.equal(new URL(await address(page)).searchParams.get('owl.hyper_m'), '5');
    await page.uncheck('#prune-owl');
    assert.equal(new URL(await address(page)).searchParams.get('owl.hyper_m'), null);

    // Run 1, Wanda 50% from the banner: record the bar and the status as it goes.
    await page.evaluate(() => {
      const seen = [];
      window.__progress = seen;
      const bar = document.getElementById('prune-progress');
      const status = document.getElementById('prune-status');
      new MutationObserver(() => seen.push({ f: bar.value / bar.max, text: status.textContent })).observe(status, { childList: true, characterData: true, subtree: true });
    });
    await page.click('#prune-link-banner button');
    assert.equal(await pruneSettled(page), 'Done.', await page.textContent('#prune-error'));
    const seen = await page.evaluate(() => window.__progress.filter((p) => /% done/.test(p.text)));
    assert.ok(seen.length > 10, `progress updates: ${seen.length}`);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i].f >= seen[i - 1].f, `the bar went back: ${seen[i - 1].text} -> ${seen[i].text}`);
    const stages = [...new Set(seen.map((p) => p.text.replace(/.*% done; ([a-z ()]+):.*/, '$1')))];
    assert.deepEqual(stages, ['dense pass', 'prune', 'perplexity (dense)', 'perplexity (pruned)']);
    assert.ok(seen.some((p) => /\(about .+ left\)$/.test(p.text)), 'an estimate of the time left');
    // "window N of 2" matches the 2 windows of the summary (not "of 32": 30 blocks + 2).
    assert.ok(seen.some((p) => /perplexity \(pruned\): window 2 of 2/.test(p.text)));
    assert.match(await page.textContent('#prune-summary [data-key="evaluated on"]'), /^2 windows of 32 tokens/);
    const dense1 = await page.textContent('#prune-summary [data-key="perplexity, dense"]');

    // Run 2, OWL-Wanda 50%: the dense perplexity is the first run's, not measured again.
    await page.check('#prune-owl');
    await page.click('#prune-run');
    assert.equal(await pruneSettled(page), 'Done.', await page.textContent('#prune-error'));
    assert.equal(await page.textContent('#prune-summary [data-key="perplexity, dense"]'), dense1);
    assert.match(await page.textContent('#prune-notices'), /dense perplexity .* reused/);
    assert.doesNotMatch(await page.textContent('#prune-summary [data-key="time"]'), /dense perplexity/);

    // The comparison charts: runs named as categories, bars inside the plot; nearly equal
    // sparsities well inside the pruning curve's x axis; no OWL grid without a grid run.
    const ppl = await chart(page, 'prune-ppl-chart');
    assert.deepEqual(ppl.categories, ['#1 Wanda 50%', '#2 OWL-Wanda 50% (M 5, λ 0.08)']);
    assert.deepEqual(ppl.x, [0, 1]);
    assert.deepEqual(ppl.xRange, [-0.5, 1.5]);
    assert.deepEqual(ppl.ticks[0], ppl.categories);
    const curve = await chart(page, 'prune-curve-chart');
    // 50% and 49.9…% (OWL's per-block counts round), or both 50%.
    assert.ok(curve.x.length >= 1 && curve.x.every((x) => Math.abs(x - 0.5) < 0.005), `curve x ${curve.x}`);
    const [lo, hi] = curve.xRange;
    const span = hi - lo;
    for (const x of curve.x) assert.ok(x - lo > 0.1 * span && hi - x > 0.1 * span, `x ${x} too near the edge of [${lo}, ${hi}]`);
    assert.ok(span >= 0.015, `x range ${curve.xRange} is padded to a readable width`);
    assert.equal(await page.isHidden('#prune-grid-figure'), true, 'no grid after a single OWL run');
    // OWL did better or worse than Wanda here; when worse, the page says so in plain words.
    const [wanda, owl] = ppl.series.find((s) => s.label === 'pruned').y;
    assert.equal(await page.isVisible('#prune-paper-note'), owl > wanda);
    if (owl > wanda) assert.match(await page.textContent('#prune-paper-note'), /Against the paper.*7 billion parameters.*either way/);

    // A grid of 1 λ × 2 M: now the grid is drawn, over exactly those cells.
    await page.fill('#prune-grid-lamda', '0.08');
    await page.fill('#prune-grid-m', '3, 5');
    await page.click('#prune-grid');
    assert.equal(await pruneSettled(page), 'Done.', await page.textContent('#prune-error'));
    assert.equal(await page.isVisible('#prune-grid-figure'), true);
    const grid = await chart(page, 'prune-grid-heatmap');
    assert.deepEqual(grid.rows, ['λ = 0.08']);
    assert.deepEqual(grid.cols, [3, 5]);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

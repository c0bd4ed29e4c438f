// Browser end-to-end test of the training lab, in Debian's Chromium: a tiny preset trained
// for 20 steps in the page (with WebGPU offered and without) gives exactly the losses,
// gradient norms, hidden RMS, validation losses, angular distances and layer removal of the
// CLI (`layerlab run` of the page's own report: native Rust against the page's WebAssembly,
// the same bits, since training is deterministic whatever the thread count and its
// transcendentals come from libm); Train all three keeps three runs; Stop keeps a partial
// run; Sample writes text; the model downloads with LLaMA names; the link restores the
// experiment.
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
  for (const f of [CLI, join(SITE, 'texts/GPL-3')]) {
    assert.ok(existsSync(f), `${f} is missing: build the CLI and the page (scripts/test.sh)`);
  }
  ({ server, base } = await serveSite());
});
after(() => server?.close());

// The tiny preset (4 x 32, ctx 32, batch 8) for 20 steps, evaluated every 10.
const TINY = 'v=2&lab=train&batch=8&ctx=32&eval_every=10&ffn=88&heads=2&kv_heads=2&layers=4&steps=20&width=32';

async function settled(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById('train-status')?.textContent ?? '';
    return s === 'Done.' || s === 'Failed.' || s === 'Cancelled.' || s.startsWith('Stopped');
  }, null, { timeout: 600_000, polling: 250 });
  return page.textContent('#train-status');
}

async function downloaded(page, selector, count = 1) {
  const downloads = [];
  const all = new Promise((resolve) => {
    page.on('download', (d) => {
      downloads.push(d);
      if (downloads.length === count) resolve();
    });
  });
  await page.click(selector);
  await all;
  page.removeAllListeners('download');
  return Promise.all(downloads.map(async (d) => ({ name: d.suggestedFilename(), bytes: readFileSync(await d.path()) })));
}

/** `layerlab run` of a report file (the experiment inside it), its JSON report. */
function cliRun(reportBytes) {
  const dir = mkdtempSync(join(tmpdir(), 'layerlab-train-'));
  try {
    const file = join(dir, 'page-report.json');
    writeFileSync(file, reportBytes);
    return JSON.parse(execFileSync(CLI, ['run', file, '--json', '-'], { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'ignore'] }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Every number of a run the two faces must share exactly (timings and tokens/s aside). */
function sameRun(page, cli, what) {
  assert.deepEqual(page.options, cli.options, `${what}: options`);
  assert.equal(page.vocab_size, cli.vocab_size);
  assert.equal(page.params, cli.params);
  assert.equal(page.steps.length, cli.steps.length, `${what}: steps`);
  page.steps.forEach((s, i) => assert.deepEqual(s, cli.steps[i], `${what}: step ${i} (loss, grad_norm, hidden_rms, val_loss)`));
  assert.deepEqual(page.angular_distance, cli.angular_distance, `${what}: angular distance`);
  assert.deepEqual(page.layer_removal, cli.layer_removal, `${what}: layer removal`);
  assert.equal(page.stopped, cli.stopped);
}

/** A number of the GPU run against the CLI's (the CPU): within `rel` of it, or `abs` near 0. */
const worst = { loss: 0, norm: 0, angular: 0 };
function near(page, cli, rel, what, abs = rel) {
  const kind = what.includes('angular') ? 'angular' : /grad_norm|hidden_rms/.test(what) ? 'norm' : 'loss';
  const d = kind === 'angular' ? Math.abs(page - cli) : Math.abs(page - cli) / Math.max(Math.abs(cli), 1e-30);
  worst[kind] = Math.max(worst[kind], d);
  assert.ok(Number.isFinite(page) && Math.abs(page - cli) <= Math.max(abs, rel * Math.abs(cli)), `${what}: page ${page}, CLI ${cli}`);
}

// The stated tolerance of WebGPU training against the CPU (the CLI): the same kernels in
// other summation orders and WGSL's exp/log, so losses and norms agree to about 1e-7
// relative after 30 steps (measured on SwiftShader; `train_cli gpu_backend` 7e-8 on
// lavapipe); the bounds leave room for other GPUs' arithmetic.
const GPU_TOL = { loss: 1e-4, norm: 1e-3, angular: 1e-3 };

/** A run trained (partly) on WebGPU against the CLI's run of the same experiment. */
function nearRun(page, cli, what) {
  assert.deepEqual(page.options, cli.options, `${what}: options`);
  assert.equal(page.vocab_size, cli.vocab_size);
  assert.equal(page.steps.length, cli.steps.length, `${what}: steps`);
  page.steps.forEach((s, i) => {
    const c = cli.steps[i];
    assert.equal(s.step, c.step);
    assert.equal(s.lr, c.lr, `${what}: step ${i} lr`);
    near(s.loss, c.loss, GPU_TOL.loss, `${what}: step ${i} loss`);
    assert.equal(s.val_loss === undefined, c.val_loss === undefined, `${what}: step ${i} evaluated`);
    if (c.val_loss !== undefined) near(s.val_loss, c.val_loss, GPU_TOL.loss, `${what}: step ${i} val_loss`);
    s.grad_norm.forEach((g, l) => near(g, c.grad_norm[l], GPU_TOL.norm, `${what}: step ${i} grad_norm[${l}]`));
    s.hidden_rms.forEach((h, l) => near(h, c.hidden_rms[l], GPU_TOL.norm, `${what}: step ${i} hidden_rms[${l}]`));
  });
  assert.equal(page.angular_distance.length, cli.angular_distance.length);
  page.angular_distance.forEach((a, e) => a.matrix.forEach((row, l) => row.forEach((v, n) => {
    const c = cli.angular_distance[e].matrix[l][n];
    if (c === null) assert.equal(v, null);
    else near(v, c, 0, `${what}: angular ${e} [${l}][${n}]`, GPU_TOL.angular);
  })));
  assert.equal(page.layer_removal.length, cli.layer_removal.length);
  page.layer_removal.forEach((r, l) => near(r.loss, cli.layer_removal[l].loss, GPU_TOL.loss, `${what}: removal ${l}`));
  // The measured differences, for the log (the tolerance above is what is asserted).
  console.log(`${what} against the CLI: largest relative difference of a loss ${worst.loss.toExponential(2)}, of a norm ${worst.norm.toExponential(2)}; largest angular difference ${worst.angular.toExponential(2)}`);
  Object.assign(worst, { loss: 0, norm: 0, angular: 0 });
}

for (const [name, flags, query] of [
  ['with WebGPU offered (auto: the CPU, since the adapter is software)', ['--enable-unsafe-webgpu'], `?${TINY}`],
  ['without WebGPU', [], `?${TINY}`],
]) {
  test(`${name}: 20 steps of the tiny preset in the page give exactly the CLI's numbers`, async () => {
    const { page, problems, close } = await openPage(base + query, flags);
    try {
      await page.waitForFunction(() => /^Ready/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
      assert.equal(await page.getAttribute('#backend', 'data-kind'), 'cpu', await page.textContent('#backend'));
      assert.equal(await page.inputValue('#train-preset'), 'custom', 'steps 20 is not the tiny preset');
      assert.equal(await page.inputValue('#train-layers'), '4');
      assert.equal(await page.inputValue('#train-norm'), 'mix');
      await page.click('#train-run');
      assert.equal(await settled(page), 'Done.', await page.textContent('#train-error'));
      assert.equal(await page.$$eval('#train-runs-table tbody tr', (r) => r.length), 1);
      for (const id of ['train-loss-chart', 'train-gradlines-chart', 'train-rms-chart', 'train-removal-chart']) {
        assert.equal(await page.$$eval(`#${id} canvas`, (c) => c.length), 1, id);
      }
      assert.ok(await page.$eval('#train-grad-heatmap', (c) => c.width > 200 && c.height > 80));
      assert.ok(await page.$eval('#train-angular-heatmap', (c) => c.width > 200 && c.height > 80));

      const [report] = await downloaded(page, '#train-report-json');
      const r = JSON.parse(report.bytes.toString('utf8'));
      assert.equal(r.experiment.lab, 'train');
      assert.deepEqual(r.experiment.text, { kind: 'builtin', name: 'GPL-3' });
      assert.equal(r.runs.length, 1);
      assert.equal(r.runs[0].steps.length, 20);
      assert.equal(r.runs[0].layer_removal.length, 4);
      assert.match(r.backend.name, /^CPU \(WebAssembly/);
      // The CLI reruns the page's report: the same experiment and every number the same.
      const cli = cliRun(report.bytes);
      assert.deepEqual(cli.experiment, r.experiment);
      assert.equal(cli.tokenizer, r.tokenizer);
      sameRun(r.runs[0], cli.runs[0], name);
      // The link reads in the CLI as the report's experiment.
      assert.deepEqual(JSON.parse(execFileSync(CLI, ['run', await address(page), '--dry-run'], { encoding: 'utf8' })), r.experiment);

      // Sample: the prompt and 50 characters of the text's alphabet, the same for the same seed.
      await page.fill('#train-sample-length', '50');
      await page.click('#train-sample');
      await page.waitForFunction(() => !/^Sampling/.test(document.getElementById('train-sample-out')?.textContent ?? 'Sampling'));
      const text = await page.textContent('#train-sample-out');
      assert.ok(text.startsWith('The ') && [...text].length === 54, text);
      await page.click('#train-sample');
      await page.waitForFunction((t) => document.getElementById('train-sample-out')?.textContent === t, text, { timeout: 60_000 });

      // The model: safetensors with LLaMA names and the config.json recording the placement.
      const files = await downloaded(page, '#train-download-model', 2);
      const model = files.find((f) => f.name.endsWith('.safetensors'));
      const config = JSON.parse(files.find((f) => f.name === 'config.json').bytes.toString('utf8'));
      assert.equal(model.name, 'layerlab-mix-4x32.safetensors');
      const n = Number(model.bytes.readBigUInt64LE(0));
      const header = JSON.parse(model.bytes.subarray(8, 8 + n).toString('utf8'));
      assert.deepEqual(header['model.layers.0.self_attn.q_proj.weight'].shape, [32, 32]);
      assert.deepEqual(header['model.layers.3.mlp.down_proj.weight'].shape, [32, 88]);
      assert.ok(header['lm_head.weight'] && header['model.norm.weight'] && header['model.layers.0.input_layernorm.weight']);
      assert.equal(config.layerlab.post_ln_blocks, 1);
      assert.equal(config.num_hidden_layers, 4);
      assert.equal(config.vocab_size, r.runs[0].vocab_size);
      assert.deepEqual(problems, []);
    } finally {
      await close();
    }
  });
}

test('Train all three keeps three runs; Stop keeps a partial run; the link restores the experiment', async () => {
  const { page, problems, close } = await openPage(`${base}?${TINY.replace('steps=20', 'steps=6')}`);
  try {
    await page.waitForFunction(() => /^Ready/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
    await page.click('#train-all');
    assert.equal(await settled(page), 'Done.', await page.textContent('#train-error'));
    const rows = await page.$$eval('#train-runs-table tbody tr', (r) => r.map((tr) => tr.dataset.norm));
    assert.deepEqual(rows, ['pre', 'post', 'mix']);
    const link = await address(page);
    assert.match(link, /runs=%5B%22pre%22%2C%22post%22%2C%22mix%22%5D/);
    const [report] = await downloaded(page, '#train-report-json');
    const r = JSON.parse(report.bytes.toString('utf8'));
    assert.deepEqual(r.runs.map((x) => x.options.norm), ['pre', 'post', 'mix']);
    const cli = cliRun(report.bytes);
    r.runs.forEach((run, i) => sameRun(run, cli.runs[i], `run ${run.options.norm}`));
    // Same seed, same init and batches: the three first losses differ only by the placement.
    assert.equal(new Set(r.runs.map((x) => x.steps[0].loss)).size, 3);

    // Stop: a long run stopped after a few steps is kept, marked stopped, without layer removal.
    await page.fill('#train-steps', '100000');
    await page.selectOption('#train-runs', 'one');
    await page.selectOption('#train-norm', 'pre');
    await page.click('#train-run');
    await page.waitForFunction(() => /step ([3-9]|\d\d+) of 100000/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
    await page.click('#train-stop');
    assert.match(await settled(page), /^Stopped/);
    const last = await page.$$eval('#train-runs-table tbody tr', (r) => [...r[r.length - 1].cells].map((c) => c.textContent));
    assert.equal(last[1], 'Pre-LN');
    assert.equal(last[6], 'stopped');
    const [stopped] = await downloaded(page, '#train-report-json');
    const s = JSON.parse(stopped.bytes.toString('utf8'));
    assert.equal(s.runs[0].stopped, true);
    assert.ok(s.runs[0].steps.length >= 3 && s.runs[0].steps.length < 100000, `${s.runs[0].steps.length} steps`);
    assert.deepEqual(s.runs[0].layer_removal, []);
    // Sample still works from the stopped model.
    await page.click('#train-sample');
    await page.waitForFunction(() => !/^Sampling/.test(document.getElementById('train-sample-out')?.textContent ?? 'Sampling'));
    assert.ok((await page.textContent('#train-sample-out')).startsWith('The '));

    // The link restores the experiment in a fresh page.
    const again = await openPage(link);
    try {
      await again.page.waitForFunction(() => /^Ready/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
      assert.equal(await again.page.inputValue('#train-runs'), 'all');
      assert.equal(await again.page.inputValue('#train-steps'), '6');
      assert.equal(await again.page.inputValue('#train-width'), '32');
      assert.equal(await address(again.page), link);
      assert.deepEqual(again.problems, []);
    } finally {
      await again.close();
    }
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('?backend=gpu: the page trains on WebGPU within the stated tolerance of the CLI; Pause, Sample and Resume change nothing; a device lost mid-run finishes on the CPU', async () => {
  const query = `?${TINY.replace('steps=20', 'steps=30')}&backend=gpu`;
  const { page, problems, close } = await openPage(base + query, ['--enable-unsafe-webgpu']);
  try {
    await page.waitForFunction(() => /^Ready/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'gpu', await page.textContent('#backend'));
    // A plain run on the GPU.
    await page.click('#train-run');
    assert.equal(await settled(page), 'Done.', await page.textContent('#train-error'));
    const [report] = await downloaded(page, '#train-report-json');
    const r = JSON.parse(report.bytes.toString('utf8'));
    assert.equal(r.backend.kind, 'gpu', JSON.stringify(r.backend));
    const cli = cliRun(report.bytes);
    assert.match(cli.backend.name, /^CPU/);
    nearRun(r.runs[0], cli.runs[0], 'WebGPU');
    const t0 = Date.now();

    // Pause as soon as it starts, Sample from the current weights, Resume: the same run.
    await page.click('#train-run');
    await page.click('#train-pause');
    await page.waitForFunction(() => /paused after step \d+ of 30/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
    assert.equal(await page.textContent('#train-pause'), 'Resume');
    await page.fill('#train-sample-length', '20');
    await page.click('#train-sample');
    await page.waitForFunction(() => !/^Sampling/.test(document.getElementById('train-sample-out')?.textContent ?? 'Sampling'), null, { timeout: 120_000 });
    const text = await page.textContent('#train-sample-out');
    assert.ok(text.startsWith('The ') && [...text].length === 24, text);
    await page.click('#train-pause');
    assert.equal(await settled(page), 'Done.', await page.textContent('#train-error'));
    const [again] = await downloaded(page, '#train-report-json');
    const a = JSON.parse(again.bytes.toString('utf8'));
    assert.equal(a.backend.kind, 'gpu');
    // The GPU's kernels sum in fixed orders (no atomics): a paused run is the same bits.
    a.runs[0].steps.forEach((s, i) => assert.deepEqual(s, r.runs[0].steps[i], `paused run, step ${i}`));
    const perRun = Date.now() - t0;

    // Lose the device after the first evaluation (step 10): the run goes back to it and
    // finishes on the CPU, and says so.
    await page.click('#train-run');
    await page.waitForFunction(() => /step (1[2-9]|2\d) of 30/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 + perRun });
    await page.click('[data-tab="compute"]');
    await page.click('#compute .diagnostics summary');
    await page.click('#lose-device');
    await page.click('[data-tab="train"]');
    assert.equal(await settled(page), 'Done.', await page.textContent('#train-error'));
    assert.match(await page.textContent('#train-notice'), /The GPU failed after step \d+ of 30 .*went on on the CPU.*saved at step (10|20)/);
    assert.equal(await page.getAttribute('#backend', 'data-kind'), 'cpu');
    const [lost] = await downloaded(page, '#train-report-json');
    const l = JSON.parse(lost.bytes.toString('utf8'));
    assert.equal(l.backend.kind, 'cpu');
    assert.match(l.backend.reason, /failed after step \d+ .*steps 1 to (10|20) were trained on it/);
    nearRun(l.runs[0], cli.runs[0], 'WebGPU, then the CPU');
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

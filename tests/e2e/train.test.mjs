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

for (const [name, flags, query] of [
  ['with WebGPU offered', ['--enable-unsafe-webgpu'], `?${TINY}&backend=gpu`],
  ['without WebGPU', [], `?${TINY}`],
]) {
  test(`${name}: 20 steps of the tiny preset in the page give exactly the CLI's numbers`, async () => {
    const { page, problems, close } = await openPage(base + query, flags);
    try {
      await page.waitForFunction(() => /^Ready/.test(document.getElementById('train-status')?.textContent ?? ''), null, { timeout: 120_000 });
      assert.match(await page.textContent('#backend'), /the training lab runs on the CPU \(WebAssembly\) for now$/);
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

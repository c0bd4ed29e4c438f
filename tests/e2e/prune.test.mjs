// Browser end-to-end test of the pruning lab, in Debian's Chromium: OWL-Wanda on the
// built-in SmolLM2 in the page gives the same report as `layerlab prune` on the same
// experiment (same texts, windows, M, lambda, sparsity), draws its charts, keeps the
// experiment in the URL, and the pruned model downloads as a safetensors file with Hugging
// Face names whose linear weights have exactly the reported zeros.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, address, SITE, openPage, serveSite } from './browser.mjs';

const SMOL = '.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf';

let server;
let base;
before(async () => {
  for (const f of [SMOL, join(SITE, 'texts/LGPL-2.1'), join(SITE, 'texts/GPL-3')]) {
    assert.ok(existsSync(f), `${f} is missing: run scripts/setup.sh's ensure_models and build the page`);
  }
  ({ server, base } = await serveSite());
});
after(() => server?.close());

const open = (query) => openPage(base + query);

async function settled(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById('prune-status')?.textContent ?? '';
    return s === 'Done.' || s === 'Failed.' || s === 'Cancelled.';
  }, null, { timeout: 900_000, polling: 500 });
  return page.textContent('#prune-status');
}

async function downloaded(page, selector) {
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 300_000 }), page.click(selector)]);
  return { name: download.suggestedFilename(), bytes: readFileSync(await download.path()) };
}

// The experiment, small enough for a debug wasm build on 2 cores: 2 calibration windows of
// 32 tokens, 2 evaluation windows of 32 tokens, OWL-Wanda at 70%.
const QUERY = '?tab=prune&method=wanda&sparsity=0.7&owl=1&m=5&lamda=0.08&nsamples=2&seqlen=32&eval_seqlen=32&eval_windows=2&dense=1&calib=LGPL-2.1&eval=GPL-3';

test('OWL-Wanda on SmolLM2 in the page gives the CLI report, its charts and the pruned model', async () => {
  const { page, problems, close } = await open(QUERY);
  try {
    await page.waitForFunction(() => /Model: SmolLM2-135M-Instruct\.Q4_1\.gguf/.test(document.getElementById('prune-model')?.textContent ?? ''), null, { timeout: 300_000 });
    assert.equal(await page.inputValue('#prune-method'), 'wanda');
    assert.equal(await page.isChecked('#prune-owl'), true);
    await page.click('#prune-run');
    assert.equal(await settled(page), 'Done.', await page.textContent('#prune-error'));

    // Charts: outliers, allocation, per-run perplexity and pruning curve (uPlot canvases),
    // the achieved-sparsity and outlier-sweep heatmaps, the before/after histogram.
    for (const id of ['prune-outlier-chart', 'prune-allocation-chart', 'prune-ppl-chart', 'prune-curve-chart']) {
      assert.equal(await page.$$eval(`#${id} canvas`, (c) => c.length), 1, id);
    }
    assert.ok(await page.$eval('#prune-heatmap', (c) => c.width > 400 && c.height > 150));
    assert.ok(await page.$eval('#prune-sweep-heatmap', (c) => c.width > 400 && c.height > 150));
    await page.waitForFunction(() => document.querySelectorAll('#prune-hist-chart canvas').length === 1);
    assert.match(await page.textContent('#prune-hist-caption'), /blk\.0\.attn_q\.weight: 331,776 weights/);
    assert.equal(await page.$$eval('#prune-runs-table tbody tr', (r) => r.length), 1);
    // The version-1 link became version 2: only what differs from the defaults.
    const url = new URL(await address(page)).searchParams;
    for (const [k, v] of Object.entries({ v: '2', lab: 'prune', method: null, sparsity: '0.7', nm: null, 'owl.hyper_m': '5', 'owl.lamda': '0.08', nsamples: '2', seqlen: '32', 'eval.seqlen': '32', 'eval.max_windows': '2', calib_text: null, 'calib_text.name': null })) {
      assert.equal(url.get(k), v, `URL parameter ${k}`);
    }

    const reportBytes = (await downloaded(page, '#prune-report-json')).bytes;
    const report = JSON.parse(reportBytes.toString('utf8'));
    assert.equal(report.experiment.version, 2);
    assert.equal(report.experiment.lab, 'prune');
    assert.deepEqual(report.experiment.calib_text, { kind: 'builtin', name: 'LGPL-2.1' });
    // The page's link reads in the CLI as the report's experiment.
    assert.deepEqual(JSON.parse(execFileSync(CLI, ['run', await address(page), '--dry-run'], { encoding: 'utf8' })), report.experiment);
    // The page's report, rerun by the CLI (`layerlab run REPORT`, the built-in texts from
    // /usr/share/common-licenses): the same report, up to the rounding discussed below.
    const dir = mkdtempSync(join(tmpdir(), 'layerlab-prune-'));
    const cliModel = join(dir, 'cli.safetensors');
    const reportFile = join(dir, 'page-report.json');
    writeFileSync(reportFile, reportBytes);
    const cli = JSON.parse(execFileSync(CLI, ['run', reportFile, '--model', SMOL, '--out', cliModel, '--json', '-'], { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'ignore'] }));
    assert.deepEqual(cli.experiment, { ...report.experiment, model: { kind: 'path', path: SMOL } });
    assert.deepEqual(cli.options, report.options);

    // Same tokens, windows, allocation and masks: the page (wasm) and the CLI (native) run
    // the same Rust in f32; sums may round differently (SIMD widths), so ratios and
    // perplexities agree to rounding, counts exactly.
    assert.equal(report.tokenizer, cli.tokenizer.split('/').pop());
    assert.deepEqual(report.calibration, cli.calibration);
    assert.equal(report.blocks.length, 30);
    assert.equal(report.linear_weights, cli.linear_weights);
    // Masks agree up to near-ties of f32 scores; the counts per row are fixed by S.
    assert.ok(Math.abs(report.pruned_weights - cli.pruned_weights) <= 1e-5 * cli.linear_weights, `${report.pruned_weights} vs ${cli.pruned_weights}`);
    const near = (a, b, tol, what) => assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${what}: page ${a} vs CLI ${b}`);
    report.blocks.forEach((b, i) => {
      const c = cli.blocks[i];
      near(b.outlier_ratio, c.outlier_ratio, 1e-3, `block ${i} outlier ratio`);
      near(b.sparsity, c.sparsity, 1e-4, `block ${i} sparsity`);
      near(b.achieved_sparsity, c.achieved_sparsity, 1e-4, `block ${i} achieved sparsity`);
    });
    // OWL's allocation keeps the mean at S (METHODS.md), and it is not uniform here.
    const mean = report.blocks.reduce((a, b) => a + b.sparsity, 0) / report.blocks.length;
    assert.ok(Math.abs(mean - 0.7) < 1e-9, `mean allocated sparsity ${mean}`);
    assert.ok(Math.max(...report.blocks.map((b) => b.sparsity)) - Math.min(...report.blocks.map((b) => b.sparsity)) > 0.1);
    assert.equal(report.perplexity.windows, 2);
    assert.equal(report.perplexity.text_tokens, cli.perplexity.text_tokens);
    near(report.perplexity.dense, cli.perplexity.dense, 1e-3, 'dense perplexity');
    // The pruned perplexity agrees less closely, and honestly so: wasm and native f32 sums
    // round differently (candle's dense matmul blocks by the CPU's SIMD width: AVX2, AVX-512
    // or wasm's 128 bits; libm's exp), and where two Wanda scores are that close the masks
    // part; later blocks calibrate on the already-pruned earlier ones, so the difference
    // grows block by block (the masks below: identical in blocks 0-3, ~2% of entries apart
    // over all blocks). On 62 predicted tokens at 70% sparsity that moves the pruned
    // perplexity a lot: page vs CLI measured 836/818, 892/896 and 794/730 on an AVX2 machine,
    // and 748/1022 on an AVX-512 one (AMD EPYC), where the page built from the commit before
    // also gives 748: the CLI's native rounding depends on the CPU. So the perplexities are
    // held only within 2x of each other (as tests/prune_gpu.rs holds the GPU's), and the
    // real agreement is checked on the masks below; pruning the wrong weights instead would
    // cost orders of magnitude.
    const ratio = report.perplexity.pruned / cli.perplexity.pruned;
    assert.ok(ratio > 0.5 && ratio < 2, `pruned perplexity: page ${report.perplexity.pruned} vs CLI ${cli.perplexity.pruned}`);
    assert.ok(report.perplexity.pruned > report.perplexity.dense, 'pruning 70% should cost perplexity');

    // The pruned model: safetensors with Hugging Face names, F32, the reported zeros.
    const model = await downloaded(page, '#prune-download-model');
    assert.match(model.name, /^SmolLM2-135M-Instruct\.Q4_1-owl-wanda-70pct\.safetensors$/);
    const n = Number(model.bytes.readBigUInt64LE(0));
    const header = JSON.parse(model.bytes.subarray(8, 8 + n).toString('utf8'));
    assert.equal(header.__metadata__.format, 'pt');
    const q = header['model.layers.0.self_attn.q_proj.weight'];
    assert.deepEqual(q.shape, [576, 576]);
    assert.equal(q.dtype, 'F32');
    assert.ok(header['model.embed_tokens.weight'] && header['model.norm.weight'] && !header['lm_head.weight']);
    const tensors = (bytes) => {
      const len = Number(bytes.readBigUInt64LE(0));
      const h = JSON.parse(bytes.subarray(8, 8 + len).toString('utf8'));
      const get = (name) => {
        const [a, b] = h[name].data_offsets;
        return new Float32Array(bytes.buffer.slice(bytes.byteOffset + 8 + len + a, bytes.byteOffset + 8 + len + b));
      };
      return { names: Object.keys(h).filter((k) => /^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$/.test(k)), get };
    };
    const ours = tensors(model.bytes);
    const theirs = tensors(readFileSync(cliModel));
    rmSync(dir, { recursive: true, force: true });
    let zeros = 0;
    let differ = 0;
    for (const name of ours.names) {
      const a = ours.get(name);
      const b = theirs.get(name);
      let d = 0;
      for (let i = 0; i < a.length; i++) {
        if (a[i] === 0) zeros += 1;
        if ((a[i] === 0) !== (b[i] === 0)) d += 1;
      }
      // The first blocks see nearly identical inputs on both sides: the masks part only at
      // near-ties (measured: none in blocks 0-2, 2 of 884,736 entries in block 3's up_proj).
      if (/^model\.layers\.[0-3]\./.test(name)) assert.ok(d <= 1e-5 * a.length, `${name}: ${d} mask entries differ from the CLI's`);
      differ += d;
    }
    assert.ok(differ < 0.05 * report.linear_weights, `${differ} mask entries differ from the CLI's`);
    // Pruned weights are zeros; a weight that was already exactly 0 may be kept and still count.
    assert.ok(zeros >= report.pruned_weights && zeros - report.pruned_weights < 1e-4 * report.linear_weights, `${zeros} zeros vs ${report.pruned_weights} pruned`);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('a bad option is explained and nothing runs; the page stays usable', async () => {
  const { page, problems, close } = await open('?tab=prune&sparsity=1.5');
  try {
    await page.waitForFunction(() => /Model: /.test(document.getElementById('prune-model')?.textContent ?? ''), null, { timeout: 300_000 });
    await page.click('#prune-run');
    await page.waitForFunction(() => !document.getElementById('prune-error')?.hidden);
    assert.match(await page.textContent('#prune-error'), /sparsity must be a number in \[0, 1\), not "1\.5"/);
    assert.equal(await page.isEnabled('#prune-run'), true);
    assert.equal(await page.isHidden('#prune-result'), true);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

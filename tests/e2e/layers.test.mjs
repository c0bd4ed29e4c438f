// Browser end-to-end tests of the layer view, in Debian's Chromium: the page opens on the
// built-in SmolLM2 and draws its charts; uploading MiniLM (safetensors + config.json) gives
// the same report as the CLI on the same file; a corrupt file shows its error while the
// previous model and its charts stay; a link reopens the same view.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, statSync, createReadStream } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, address, SITE, openPage, serveSite } from './browser.mjs';

const SMOL = '.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf';
const MINI = '.cache/models/all-minilm-l6-v2';

let server;
let base;
before(async () => {
  for (const f of [SMOL, join(MINI, 'model.safetensors'), join(SITE, 'models/SmolLM2-135M-Instruct.Q4_1.gguf')]) {
    assert.ok(existsSync(f), `${f} is missing: run scripts/setup.sh's ensure_models and build the page`);
  }
  ({ server, base } = await serveSite());
});
after(() => server?.close());

const open = (query) => openPage(base + query);

async function settled(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById('layers-status')?.textContent ?? '';
    return s === 'Done.' || s === 'Failed.' || s.startsWith('Kept') || s.startsWith('No model') || s === 'Cancelled.';
  }, null, { timeout: 300_000 });
  return page.textContent('#layers-status');
}

async function downloadedReport(page) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#report-json')]);
  return JSON.parse(readFileSync(await download.path(), 'utf8'));
}

function cliReport(path) {
  return JSON.parse(execFileSync(CLI, ['stats', path, '--backend', 'cpu', '--json', '-'], { encoding: 'utf8', maxBuffer: 1 << 28 }));
}

// Both sides run the same CPU twins (wasm and native) with f64 accumulation in the same
// order, so the numbers agree to rounding; allow 1e-9 relative for libm differences.
function assertSameReport(page, cli, { hyper = true } = {}) {
  assert.equal(page.tensors.length, cli.tensors.length);
  assert.equal(page.blocks.length, cli.blocks.length);
  const close = (a, b, what) => {
    if (a === null || b === null) return assert.equal(a, b, what);
    assert.ok(Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(b), 1e-30), `${what}: page ${a} vs CLI ${b}`);
  };
  const cmp = (p, c, what) => {
    assert.equal(p.params, c.params, `${what}: params`);
    assert.equal('mean_abs' in p, 'mean_abs' in c, `${what}: analysed on one side only`);
    if (!('mean_abs' in p)) return;
    for (const k of ['mean', 'std', 'mean_abs', 'max_abs', 'kurtosis', 'outlier_fraction']) close(p[k], c[k], `${what}.${k}`);
    assert.deepEqual(p.histogram.counts, c.histogram.counts, `${what}: histogram`);
  };
  page.tensors.forEach((t, i) => {
    const c = cli.tensors[i];
    assert.equal(t.name, c.name);
    assert.deepEqual(t.shape, c.shape, t.name);
    assert.equal(t.block, c.block, t.name);
    cmp(t, c, t.name);
  });
  page.blocks.forEach((b, i) => cmp(b, cli.blocks[i], `block ${b.index}`));
  if (hyper) assert.deepEqual(page.model.hyper, cli.model.hyper);
}

test('the page opens on SmolLM2, draws every chart, and a link keeps the view', async () => {
  const { page, problems, close } = await open('?k=3&bins=32&stat=outlier_fraction');
  try {
    assert.equal(await settled(page), 'Done.', await page.textContent('#layers-error'));
    const summary = await page.textContent('#model-summary');
    assert.match(summary, /SmolLM2-135M-Instruct\.Q4_1\.gguf: GGUF, llama .*30 blocks, 272 tensors, 134,515,008 parameters, hidden 576, 9 heads \(3 KV\)/);
    assert.equal(await page.$$eval('#block-chart canvas', (c) => c.length), 1);
    assert.equal(await page.$$eval('#hist-chart canvas', (c) => c.length), 1);
    assert.ok(await page.$eval('#heatmap', (c) => c.width > 400 && c.height > 150));
    assert.equal(await page.$$eval('#tensor-table tbody tr', (r) => r.length), 272);
    assert.equal(await page.inputValue('#layers-stat'), 'outlier_fraction');
    assert.match(await page.textContent('#heatmap-title'), /outlier fraction per block and linear layer/);
    // Hovering the heatmap names the cell and its value.
    await page.hover('#heatmap', { position: { x: 100, y: 15 } });
    assert.match(await page.textContent('#heatmap-tip'), /^block 0, q: outlier fraction = /);
    // Sorting the table by kurtosis, descending.
    await page.click('#tensor-table th[data-sort="kurtosis"]');
    await page.click('#tensor-table th[data-sort="kurtosis"]');
    const report = await downloadedReport(page);
    assert.equal(report.options.outlier_k, 3);
    assert.equal(report.options.bins, 32);
    assert.deepEqual(report.experiment.model, { kind: 'url', url: 'models/SmolLM2-135M-Instruct.Q4_1.gguf' });
    const top = await page.textContent('#tensor-table tbody tr:first-child td:first-child');
    const maxK = report.tensors.filter((t) => 'kurtosis' in t).sort((a, b) => b.kurtosis - a.kurtosis)[0];
    assert.equal(top, maxK.name);
    // Clicking a row draws that tensor's histogram and puts it in the link.
    await page.click('#tensor-table tbody tr:nth-child(2)');
    const link = new URL(await address(page)).searchParams;
    assert.equal(link.get('view.tensor'), await page.inputValue('#tensor-pick'));
    assert.equal(link.get('outlier_k'), '3');
    assert.equal(link.get('bins'), '32');
    assert.equal(link.get('view.stat'), 'outlier_fraction');
    assert.equal(link.get('model.url'), null, 'the built-in model is the default: not in the link');
    // The link reads in the CLI as the report's experiment...
    assert.deepEqual(JSON.parse(execFileSync(CLI, ['run', await address(page), '--dry-run'], { encoding: 'utf8' })), report.experiment);
    // ...and the report reruns in the CLI to the same numbers (`layerlab run REPORT`).
    const dir = mkdtempSync(join(tmpdir(), 'layerlab-layers-'));
    const file = join(dir, 'report.json');
    writeFileSync(file, JSON.stringify(report));
    const cli = JSON.parse(execFileSync(CLI, ['run', file, '--model', SMOL, '--backend', 'cpu', '--json', '-'], { encoding: 'utf8', maxBuffer: 1 << 28 }));
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(cli.experiment, { ...report.experiment, model: { kind: 'path', path: SMOL } });
    assertSameReport(report, cli);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('uploading MiniLM gives the CLI report; a corrupt file shows its error and keeps the model', async () => {
  const { page, problems, close } = await open('');
  const dir = mkdtempSync(join(tmpdir(), 'layerlab-bad-'));
  try {
    assert.equal(await settled(page), 'Done.');
    await page.setInputFiles('#model-files', [join(MINI, 'model.safetensors'), join(MINI, 'config.json')]);
    await page.waitForFunction(() => /model\.safetensors/.test(document.getElementById('model-summary')?.textContent ?? ''));
    assert.equal(await settled(page), 'Done.', await page.textContent('#layers-error'));
    assert.match(await page.textContent('#model-summary'), /model\.safetensors: safetensors, bert .*6 blocks, 104 tensors/);
    assert.match(await page.textContent('#model-summary'), /with config\.json/);
    const link = new URL(await address(page)).searchParams;
    assert.equal(link.get('model.kind'), 'file');
    assert.equal(link.get('model.name'), 'model.safetensors');
    assert.equal(link.get('model.size'), '90868376');
    const report = await downloadedReport(page);
    assertSameReport(report, cliReport(join(MINI, 'model.safetensors')));

    // A truncated copy: the page names the problem, keeps MiniLM and its charts.
    const bad = join(dir, 'broken.safetensors');
    writeFileSync(bad, readFileSync(join(MINI, 'model.safetensors')).subarray(0, 5000));
    await page.setInputFiles('#model-files', bad);
    await page.waitForFunction(() => !document.getElementById('layers-error')?.hidden);
    assert.match(await page.textContent('#layers-error'), /^Cannot open the model: broken\.safetensors: .+/);
    assert.equal(await page.textContent('#layers-status'), 'Kept the previous model.');
    assert.match(await page.textContent('#model-summary'), /model\.safetensors: safetensors, bert/);
    assert.equal(await page.$$eval('#tensor-table tbody tr', (r) => r.length), 104);
    // A text file is not a model.
    const text = join(dir, 'notes.gguf');
    writeFileSync(text, 'these are my notes, not a model');
    await page.setInputFiles('#model-files', text);
    await page.waitForFunction(() => /notes\.gguf/.test(document.getElementById('layers-error')?.textContent ?? ''));
    // The page still works: recompute MiniLM with another k.
    await page.fill('#layers-k', '4');
    await page.click('#layers-options button[type="submit"]');
    assert.equal(await settled(page), 'Done.');
    assert.equal(await page.isHidden('#layers-error'), true);
    assert.deepEqual(problems, []);
  } finally {
    await close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a link made with a dropped file asks for that file', async () => {
  const { page, problems, close } = await open('?file=model.safetensors&size=90868376');
  try {
    await page.waitForFunction(() => /drop it here/.test(document.getElementById('layers-status')?.textContent ?? ''));
    assert.match(await page.textContent('#layers-status'), /made with the file model\.safetensors \(90,868,376 bytes\)/);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('a URL whose server ignores range requests is downloaded once and analysed', async () => {
  // A second origin that always answers 200 with the whole file (CORS allowed), as some
  // static hosts do: the page must fall back to one full download.
  const file = join(MINI, 'model.safetensors');
  const size = statSync(file).size;
  let requests = 0;
  const plain = createServer((req, res) => {
    requests += 1;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size, 'access-control-allow-origin': '*', 'access-control-allow-headers': 'range' });
    if (req.method === 'OPTIONS' || req.method === 'HEAD') return res.end();
    createReadStream(file).pipe(res);
  });
  await new Promise((ok) => plain.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${plain.address().port}/minilm/model.safetensors`;
  const { page, problems, close } = await open(`?model=${encodeURIComponent(url)}`);
  try {
    const status = await settled(page);
    assert.equal(status, 'Done.', await page.textContent('#layers-error'));
    assert.match(await page.textContent('#model-summary'), /model\.safetensors: safetensors, bert .*6 blocks/);
    assert.ok(requests <= 3, `${requests} requests: the file should be fetched once, not per tensor`);
    const report = await downloadedReport(page);
    assert.deepEqual(report.experiment.model, { kind: 'url', url });
    // The CLI reads config.json beside the file, the URL has none: sizes from names only.
    assertSameReport(report, cliReport(file), { hyper: false });
    assert.equal(report.model.hyper.hidden, 384);
    assert.deepEqual(problems, []);
  } finally {
    await close();
    plain.close();
  }
});

test('a version-2 link made with a dropped file asks for that file', async () => {
  const { page, problems, close } = await open('?v=2&model.kind=file&model.name=model.safetensors&model.size=90868376&bins=16');
  try {
    await page.waitForFunction(() => /drop it here/.test(document.getElementById('layers-status')?.textContent ?? ''));
    assert.match(await page.textContent('#layers-status'), /made with the file model\.safetensors \(90,868,376 bytes\)/);
    assert.equal(await page.inputValue('#layers-bins'), '16');
    assert.equal(await page.inputValue('#layers-k'), '5', 'k from the Rust defaults');
    // Editing a control rewrites the address at once.
    await page.fill('#layers-k', '7');
    await page.waitForFunction(() => new URL(location.href).searchParams.get('outlier_k') === '7');
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test('a link that cannot be read says why, and the page opens on the defaults', async () => {
  const { page, problems, close } = await open('?v=3&lab=layers');
  try {
    await page.waitForFunction(() => !document.getElementById('page-notice')?.hidden);
    assert.match(await page.textContent('#page-notice'), /experiment version 3/);
    assert.equal(await page.inputValue('#layers-bins'), '64');
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

// Tests of the page's shell without a browser: the link encoder (www/src/shell/url-state.ts)
// against Rust's reader (`layerlab run LINK --dry-run`, the same reader the page's worker
// uses), the model-opened event, and the status line's time-left estimate. The TypeScript
// is bundled with esbuild in memory and imported as a data: module.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { build } from 'esbuild';
import { CLI } from './browser.mjs';

let shell;
before(async () => {
  const out = await build({
    stdin: {
      contents: `export { toQuery, encodeValue } from './shell/url-state';
                 export { Channel } from './shell/events';
                 export { RunStatus, duration } from './shell/status';`,
      resolveDir: 'www/src', loader: 'ts',
    },
    bundle: true, format: 'esm', write: false, platform: 'neutral', logLevel: 'silent',
  });
  shell = await import(`data:text/javascript;base64,${Buffer.from(out.outputFiles[0].text).toString('base64')}`);
});

const read = (link) => JSON.parse(execFileSync(CLI, ['run', link, '--dry-run'], { encoding: 'utf8' }));

/** Rust's defaults, as the worker hands them to the page. */
function defaults() {
  return { version: 2, experiments: ['layers', 'prune', 'compute', 'train'].map((lab) => read(`?v=2&lab=${lab}`)) };
}

test("the page's link encoder writes what Rust reads back, holding only what differs from the defaults", () => {
  const d = defaults();
  const [layers, prune, compute, train] = d.experiments;
  assert.equal(shell.toQuery(layers, d), 'v=2');
  assert.equal(shell.toQuery(prune, d), 'v=2&lab=prune');
  const cases = [
    { ...layers, outlier_k: 3.5, bins: 17, model: { kind: 'url', url: 'https://example.org/a b/m.safetensors?x=1&y=[2]' } },
    { ...layers, model: { kind: 'file', name: '0.5', size: 123 } },
    { ...prune, method: 'sparsegpt', nm: [2, 4], sparsity: 0.5, owl: { hyper_m: 7, lamda: 0.12 }, calib_seed: 42,
      eval: { ...prune.eval, max_windows: 3 }, dense_ppl: false, model: { kind: 'file', name: 'true', size: 9 },
      calib_text: { kind: 'file', name: 'my notes.txt', size: 12 }, eval_text: { kind: 'builtin', name: 'GPL-2' } },
    { ...prune, eval_text: null, outlier_sweep: [1, 5] },
    { ...compute, seed: 11, rows: 517, cols: 301, per_column: false, outlier_k: 0.1 },
    { ...train, layers: 4, width: 32, lr: 0.003, alpha: 0.5, clip: 1, runs: ['pre', 'post', 'mix'], text: { kind: 'file', name: 'notes.txt', size: 99 } },
    { ...train, norm: 'post', runs: [], steps: 0, tied_head: true },
  ];
  for (const e of cases) {
    const q = shell.toQuery(e, d);
    const back = read(`http://localhost/?${q}`);
    assert.deepEqual(back, e, q);
  }
  // Only changed leaves: the compute case names its four changes and nothing else.
  assert.deepEqual([...new URLSearchParams(shell.toQuery(cases[4], d)).keys()], ['v', 'lab', 'cols', 'outlier_k', 'per_column', 'rows', 'seed']);
  // A string that would read back as a number or a list is quoted.
  assert.equal(shell.encodeValue('0.5'), '"0.5"');
  assert.equal(shell.encodeValue('GPL-2'), 'GPL-2');
});

test('a model-opened event reaches every subscriber, late ones too', () => {
  const ch = new shell.Channel();
  const seen = [];
  ch.subscribe((v) => seen.push(['a', v]));
  ch.emit(1);
  const off = ch.subscribe((v) => seen.push(['b', v]));
  ch.emit(2);
  off();
  ch.emit(3);
  assert.deepEqual(seen, [['a', 1], ['b', 1], ['a', 2], ['b', 2], ['a', 3]]);
});

test('the status line estimates the time left from the pace of the stage, and streams metrics', async () => {
  const el = () => ({ textContent: '', hidden: true, disabled: true, max: 1, value: 0, addEventListener() {} });
  const elements = { progress: el(), status: el(), error: el(), cancel: el() };
  const status = new shell.RunStatus(elements, { cancel() {} });
  const metrics = [];
  status.metrics.subscribe((m) => metrics.push(m));
  const now = performance.now;
  let t = 0;
  performance.now = () => t;
  try {
    const track = status.tracker((stage, done, total) => `${stage} ${done} of ${total}`);
    track('block', 0, 10);
    t = 4000;
    track('block', 2, 10, { step: 2, values: { loss: 3.5, grad_norm: [0.1, 0.2] } });
    // 2 steps in 4 s: 8 steps left take 16 s.
    assert.equal(elements.status.textContent, 'block 2 of 10 (about 16 s left)');
    assert.equal(elements.progress.value, 2);
    assert.equal(elements.progress.max, 10);
    t = 5000;
    track('eval', 1, 4);
    assert.equal(elements.status.textContent, 'eval 1 of 4', 'a new stage starts its own estimate');
  } finally {
    performance.now = now;
  }
  assert.deepEqual(metrics, [{ stage: 'block', step: 2, values: { loss: 3.5, grad_norm: [0.1, 0.2] } }]);
  assert.equal(shell.duration(185), '3 min 5 s');
});

test('with a plan, the bar shows the whole run, never goes back, and estimates from the run\'s start', async () => {
  const el = () => ({ textContent: '', hidden: true, disabled: true, max: 1, value: 0, addEventListener() {} });
  const elements = { progress: el(), status: el(), error: el(), cancel: el() };
  const status = new shell.RunStatus(elements, { cancel() {} });
  const now = performance.now;
  let t = 0;
  performance.now = () => t;
  try {
    status.setBusy(true);
    // Two phases, the second three times as long as the first.
    const plan = [{ stage: 'a', weight: 1 }, { stage: 'b', weight: 3 }];
    const track = status.tracker((stage, done, total) => `${stage} ${done} of ${total}`, () => plan);
    const fractions = [];
    const step = (stage, done, total) => {
      track(stage, done, total);
      fractions.push(elements.progress.value / elements.progress.max);
    };
    step('a', 0, 10);
    t = 5000;
    step('a', 10, 10);
    assert.equal(elements.progress.value / elements.progress.max, 0.25);
    // 5 s for a quarter of the run: 15 s left.
    assert.equal(elements.status.textContent, 'a 10 of 10 (about 15 s left)');
    step('b', 0, 30);
    t = 10_000;
    step('b', 15, 30);
    assert.equal(fractions.at(-1), 0.625);
    // A stage outside the plan keeps the bar where it is.
    step('elsewhere', 1, 100);
    assert.equal(fractions.at(-1), 0.625);
    for (let i = 1; i < fractions.length; i++) assert.ok(fractions[i] >= fractions[i - 1], `${fractions}`);
    assert.equal(status.done, 0.625);
    status.setBusy(false);
  } finally {
    performance.now = now;
  }
});

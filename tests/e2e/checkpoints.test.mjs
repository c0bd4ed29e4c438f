// Browser end-to-end test of a checkpoint the pruning lab refuses (issue: real checkpoints
// computed right, or refused by name): a tiny LLaMA written here as safetensors, with a
// config.json whose rope_type LayerLab does not compute. The layer view still opens it and
// says, by name, why the pruning lab cannot run it; the CLI refuses it with the same words;
// the page stays usable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, SITE, openPage, serveSite } from './browser.mjs';

let server;
let base;
before(async () => {
  ({ server, base } = await serveSite());
});
after(() => server?.close());

// A LLaMA block's tensors (hidden C, FFN F, vocab V, one block), F32, all values 0.01: the
// statistics do not matter here, only what the config asks for.
function tinyLlama(path, { C = 8, F = 16, V = 32 } = {}) {
  const shapes = {
    'model.embed_tokens.weight': [V, C],
    'model.layers.0.input_layernorm.weight': [C],
    'model.layers.0.self_attn.q_proj.weight': [C, C],
    'model.layers.0.self_attn.k_proj.weight': [C, C],
    'model.layers.0.self_attn.v_proj.weight': [C, C],
    'model.layers.0.self_attn.o_proj.weight': [C, C],
    'model.layers.0.post_attention_layernorm.weight': [C],
    'model.layers.0.mlp.gate_proj.weight': [F, C],
    'model.layers.0.mlp.up_proj.weight': [F, C],
    'model.layers.0.mlp.down_proj.weight': [C, F],
    'model.norm.weight': [C],
  };
  const header = {};
  let offset = 0;
  for (const [name, shape] of Object.entries(shapes)) {
    const bytes = 4 * shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  while (json.length % 8 !== 0) json += ' ';
  const data = new Float32Array(offset / 4).fill(0.01);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), Buffer.from(data.buffer)]));
  return { hidden_size: C, intermediate_size: F, vocab_size: V };
}

test('a checkpoint with an unknown rope_type opens in the layer view with a notice, and the CLI refuses it by name', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'layerlab-ckpt-'));
  const { page, problems, close } = await openPage(base + '');
  try {
    const model = join(dir, 'model.safetensors');
    const sizes = tinyLlama(model);
    const config = {
      architectures: ['LlamaForCausalLM'], model_type: 'llama', ...sizes, num_hidden_layers: 1,
      num_attention_heads: 2, num_key_value_heads: 2, rms_norm_eps: 1e-6, max_position_embeddings: 64,
      tie_word_embeddings: true, hidden_act: 'silu',
      rope_parameters: { rope_type: 'longrope', rope_theta: 10000.0, factor: 4.0 },
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    await page.waitForFunction(() => (document.getElementById('layers-status')?.textContent ?? '') === 'Done.', null, { timeout: 300_000 });
    await page.setInputFiles('#model-files', [model, join(dir, 'config.json')]);
    await page.waitForFunction(() => /model\.safetensors/.test(document.getElementById('model-summary')?.textContent ?? ''));
    await page.waitForFunction(() => !document.getElementById('model-notice')?.hidden);
    const notice = await page.textContent('#model-notice');
    assert.match(notice, /the pruning lab cannot run this model/);
    assert.match(notice, /rope_type 'longrope' is not supported/);
    // The statistics still run: the layer view is for any model.
    await page.waitForFunction(() => (document.getElementById('layers-status')?.textContent ?? '') === 'Done.', null, { timeout: 300_000 });
    assert.equal(await page.$$eval('#tensor-table tbody tr', (r) => r.length), 11);

    // The CLI refuses the same checkpoint for perplexity with the same sentence.
    const text = join(dir, 'eval.txt');
    writeFileSync(text, 'some words to score '.repeat(40));
    const ppl = spawnSync(CLI, ['ppl', model, '--eval', text], { encoding: 'utf8' });
    assert.notEqual(ppl.status, 0, 'layerlab ppl ran a model it cannot compute');
    assert.match(ppl.stderr, /rope_type 'longrope' is not supported/);
    assert.doesNotMatch(ppl.stderr, /panicked/);
    assert.deepEqual(problems, []);
  } finally {
    await close();
    rmSync(dir, { recursive: true, force: true });
  }
});

// The layer view's requests in the worker: open a model (a URL, or the user's files with
// their config.json and tokenizer.json), and the statistics of every tensor and block.

import type { Lab } from '../../../pkg/layerlab.js';
import type { ModelReport, ModelSource, OpenRequest, Opened } from '../../protocol';
import { fileSource, urlSource, type JsSource } from '../../sources';
import type { Handlers, WorkerContext } from '../../worker-api';

const MODEL_EXT = /\.(gguf|safetensors)$/i;

/** The model file among the user's files, its config.json, and the names of the rest. */
function pickFiles(files: File[]): { model: File; config: File | null; tokenizer: File | null; companions: string[] } {
  const models = files.filter((f) => MODEL_EXT.test(f.name));
  if (models.length === 0) {
    if (files.length === 1) return { model: files[0], config: null, tokenizer: null, companions: [] };
    throw new Error(`none of ${files.map((f) => f.name).join(', ')} is a .gguf or .safetensors file`);
  }
  if (models.length > 1) {
    throw new Error(`several model files were given (${models.map((f) => f.name).join(', ')}); give one (sharded checkpoints are not supported yet)`);
  }
  const config = files.find((f) => f.name === 'config.json') ?? null;
  const tokenizer = files.find((f) => f.name === 'tokenizer.json') ?? null;
  const companions = files.filter((f) => f !== models[0]).map((f) => f.name);
  return { model: models[0], config, tokenizer, companions };
}

async function openModel(l: Lab, ctx: WorkerContext, request: OpenRequest): Promise<{ opened: Opened; source: ModelSource; companions: string[] }> {
  let source: JsSource;
  let described: ModelSource;
  let config: string | undefined;
  let tokenizer: string | undefined;
  let companions: string[] = [];
  if (request.kind === 'url') {
    source = await urlSource(request.url, (done, total) => ctx.progress('downloading', done, total));
    described = { kind: 'url', url: request.url };
  } else {
    const picked = pickFiles(request.files);
    source = fileSource(picked.model);
    config = picked.config ? new FileReaderSync().readAsText(picked.config) : undefined;
    tokenizer = picked.tokenizer ? new FileReaderSync().readAsText(picked.tokenizer) : undefined;
    companions = picked.companions;
    described = { kind: 'file', name: picked.model.name, size: picked.model.size };
  }
  const opened = l.open_model(source, config, tokenizer) as Opened;
  return { opened, source: described, companions };
}

export const handlers: Handlers = {
  'open-model': (ctx, { request }) => openModel(ctx.lab, ctx, request),
  'model-stats': async (ctx, { experiment }) => ({
    report: (await ctx.lab.model_stats(JSON.stringify(experiment), ctx.progress)) as ModelReport,
  }),
};

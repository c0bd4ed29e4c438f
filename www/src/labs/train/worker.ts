// The training lab's requests in the worker: a run of one placement (its steps and
// evaluations stream through the progress callback), text sampled from the last trained
// model, and that model's files.

import type { TrainReport } from '../../protocol';
import type { Handlers } from '../../worker-api';

export const handlers: Handlers = {
  train: async (ctx, { experiment, norm, text }) => ({
    report: (await ctx.lab.train(JSON.stringify(experiment), norm, text, ctx.progress)) as TrainReport,
  }),
  'train-sample': async (ctx, { prompt, length, temperature, seed }) => ({
    text: ctx.lab.train_sample(prompt, length, temperature, seed),
  }),
  'train-export': async (ctx) => {
    const out = ctx.lab.train_export() as { model: Uint8Array; config: string; name: string };
    return { model: new Blob([out.model as BlobPart], { type: 'application/octet-stream' }), config: out.config, name: out.name };
  },
};

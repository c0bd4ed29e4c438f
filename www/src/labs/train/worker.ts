// The training lab's requests in the worker: a run of one placement (its steps and
// evaluations stream through the progress callback), Pause/Resume of that run, text sampled
// from the model (during a run from its current weights, answered between its steps), and
// the last trained model's files.

import type { TrainReport } from '../../protocol';
import type { Handlers } from '../../worker-api';

export const handlers: Handlers = {
  train: async (ctx, { experiment, norm, text }) => ({
    report: (await ctx.lab.train(JSON.stringify(experiment), norm, text, ctx.progress)) as TrainReport,
  }),
  'train-pause': async (ctx, { paused }) => {
    ctx.lab.train_pause(paused);
    return { paused };
  },
  'train-sample': async (ctx, { prompt, length, temperature, seed }) => ({
    text: (await ctx.lab.train_sample(prompt, length, temperature, seed)) as string,
  }),
  'train-export': async (ctx) => {
    const out = ctx.lab.train_export() as { model: Uint8Array; config: string; name: string };
    return { model: new Blob([out.model as BlobPart], { type: 'application/octet-stream' }), config: out.config, name: out.name };
  },
};

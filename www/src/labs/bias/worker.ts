// The bias lab's requests in the worker: a Sebra run (its epochs and ranking epochs stream
// through the progress callback) and the pixels of generated training images.

import type { SebraImages, SebraReport } from '../../protocol';
import type { Handlers } from '../../worker-api';

export const handlers: Handlers = {
  sebra: async (ctx, { experiment }) => ({
    report: (await ctx.lab.sebra(JSON.stringify(experiment), ctx.progress)) as SebraReport,
  }),
  'sebra-images': async (ctx, { experiment, indices }) =>
    ctx.lab.sebra_images(JSON.stringify(experiment), new Uint32Array(indices)) as SebraImages,
};

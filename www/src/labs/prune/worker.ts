// The pruning lab's requests in the worker: a run, the pruned model's file, and one
// layer's weights before and after.

import type { Histogram, PruneReport } from '../../protocol';
import type { Handlers } from '../../worker-api';

export const handlers: Handlers = {
  prune: async (ctx, { experiment, calib, eval: evalText }) => ({
    report: (await ctx.lab.prune(JSON.stringify(experiment), calib, evalText, ctx.progress)) as PruneReport,
  }),
  'prune-export': async (ctx) => {
    // The file arrives in ~8 MB pieces; a Blob of them is handed over without a copy (and
    // Chromium may keep a large Blob on disk), so the whole file is never one buffer.
    const out = ctx.lab.pruned_model() as { parts: Uint8Array[]; config: string | null; name: string };
    const file = new Blob(out.parts as BlobPart[], { type: 'application/octet-stream' });
    return { file, config: out.config, name: out.name };
  },
  'prune-histograms': async (ctx, { tensor, bins }) => ctx.lab.prune_histograms(tensor, bins) as { before: Histogram; after: Histogram },
};

// The compute check's request in the worker: statistics of a seeded synthetic matrix.

import type { StatsRun } from '../../protocol';
import type { Handlers } from '../../worker-api';

export const handlers: Handlers = {
  reduce: async (ctx, { experiment }) => ({
    report: (await ctx.lab.reduce(JSON.stringify(experiment), ctx.progress)) as StatsRun,
  }),
};

// What every scenario shares: its context, the request shapes it sends, and
// how it ends — wait for the shards to hold nothing, note crashed processes,
// and turn the tally into a row and the goals it missed.
import { commonMisses, rowOf, type Miss, type Row, type Tally } from './report.js';
import type { StreamPlan } from './streams.js';
import type { System } from './system.js';

export interface Ctx {
  sys: System;
  quick: boolean;
  rand: () => number;
  progress: (line: string) => void;
}

export interface Outcome {
  row: Row;
  misses: Miss[];
}

export interface Scenario {
  name: string;
  run(ctx: Ctx): Promise<Outcome>;
}

const PROMPTS = [
  'The old man said',
  'Once upon a time there was a little house by the river, and in it lived',
  'In the morning the train left the station and',
  'She opened the letter slowly. It said',
];

/** A prompt of about `chars` characters. */
export function prompt(rand: () => number, chars = 0): string {
  let p = PROMPTS[Math.floor(rand() * PROMPTS.length)];
  while (p.length < chars) p += ' ' + PROMPTS[Math.floor(rand() * PROMPTS.length)].toLowerCase();
  return p;
}

/** A request that streams for a while: sampled, so streams differ. */
export function longRequest(ctx: Ctx, maxTokens: number, seed: number): StreamPlan {
  return { prompt: prompt(ctx.rand, 60), maxTokens, temperature: 0.8, seed };
}

/** Ends a scenario: leaks (after leases and frees), crashes, RSS, the row and its misses. */
export async function finish(
  ctx: Ctx,
  name: string,
  t: Tally,
  rssBefore: number,
  extra: Miss[] = [],
  measured: { rssGrowthMb?: number; leaks?: { sequences: number; bytes: number } } = {},
): Promise<Outcome> {
  const leaks = measured.leaks ?? (await ctx.sys.leaks());
  for (const p of ctx.sys.crashed()) t.flag(`${p} crashed`);
  const row = rowOf(name, t, leaks, measured.rssGrowthMb ?? ctx.sys.rssMb() - rssBefore);
  const misses = [...commonMisses(row), ...extra];
  for (const n of t.notes) ctx.progress(`  ${name}: unexpected: ${n}`);
  return { row, misses };
}

// The budget horizon (CacheSettings.horizon). With `now`, a plan made
// between prefill chunks must fit the next chunk at 16 bits within β of what
// it holds: late in a long prompt no plan can (every token held would need
// less than 2 bits), so those plans miss β and squeeze everything to 2 bits,
// for good in downgrade-only mode. With `prompt`, such a plan may hold up to
// β × the whole prompt plus the chunk ahead, which every one of them meets.
// Both meet β at the end, and `prompt` stays within the sequence's
// reservation: a second orchestrator runs it under a memory limit of exactly
// the reservation (the engine refuses any append past its limit). With
// `end`, no plan is made until the prompt is read: the prompt is held at
// 16 bits (the peak hot bytes say so), one plan meets β, the reservation
// covers the peak, and the plan gives the prompt's excess back.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { create } from '@bufbuild/protobuf';

import { BudgetHorizon, CacheSettingsSchema, CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { GenerateRequestSchema } from '../../gen/smartkv/v1/generation_pb.js';
import { defaultModelDir } from '../../services/orchestrator/model/paths.js';
import { Orchestrator } from '../../services/orchestrator/orchestrator.js';
import { DEFAULTS, generateSpec } from '../../services/orchestrator/settings.js';
import type { JobOutcome } from '../../services/orchestrator/job.js';

const dir = mkdtempSync(join(tmpdir(), 'smartkv-horizon-'));
const BETA = 0.25;
// ~1,700 byte tokens: 13 prefill chunks of 128, so the early plans bind hard.
const PROMPT = 'The old man said that the river had been high all spring, and the boats stayed in. '.repeat(20);

async function orchestrator(memoryLimitBytes: number): Promise<Orchestrator> {
  return Orchestrator.create({
    modelDir: defaultModelDir(),
    defaults: DEFAULTS,
    modelThreads: 1,
    local: { engine: { quant: 'symmetric', gamma: 0.9, mode: 'downgrade-only', masterDir: dir, rotateKv: true, threads: 1 }, memoryLimitBytes },
    log: () => {},
  });
}

interface Seen {
  reserved: number; // the shard's reservations at the first token (before the plan that ends the prefill)
  reservedLater: number; // and at the third (after it)
  earlyAbove2: number; // share of the prompt's first quarter (sinks aside) above 2 bits then, layer 0
}

async function run(orch: Orchestrator, horizon: BudgetHorizon, seen?: Seen): Promise<JobOutcome> {
  const c = orch.context;
  const cache = create(CacheSettingsSchema, { policy: CachePolicy.SMARTKV, budget: BETA, horizon });
  const spec = generateSpec(create(GenerateRequestSchema, { prompt: PROMPT, maxTokens: 4, temperature: 0, cache }), c.model.config, c.model.tokenizer, c.defaults);
  spec.stop = [];
  let tokens = 0;
  let looked: Promise<void> = Promise.resolve(), lookedLater: Promise<void> = Promise.resolve();
  const job = orch.scheduler.submit(spec, {
    token: () => {
      if (!seen) return;
      if (++tokens === 3) lookedLater = job.shard!.reservations().then((r) => void (seen.reservedLater = r.reservedBytes));
      if (tokens !== 1) return;
      looked = (async () => {
        seen.reserved = (await job.shard!.reservations()).reservedBytes;
        const r = await job.shard!.exportImportance(job.seq);
        const from = DEFAULTS.cache.sinks, to = Math.floor(r.tokens / 4);
        let above = 0;
        for (let i = from; i < to; i++) if (r.formats[i] < 3) above++; // layer 0; code 3 = int2
        seen.earlyAbove2 = above / (to - from);
      })();
    },
  });
  const out = await job.done;
  await looked;
  await lookedLater;
  return out;
}

const beta = (o: JobOutcome) => o.cache.bytes!.heldBytes / o.cache.bytes!.fp16Bytes;
let nowPeak = 0; // the `now` run's peak hot bytes (first test)

/** The request again under a memory limit of exactly `limit` bytes: it completes (the engine
 * refuses any append past its limit) with the same tokens as without one. */
async function sameUnderLimit(limit: number, horizon: BudgetHorizon, unlimited: JobOutcome): Promise<void> {
  const limited = await orchestrator(limit);
  try {
    assert.deepEqual((await run(limited, horizon)).generated, unlimited.generated);
  } finally {
    await limited.close(1000);
  }
}

describe('budget horizon', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('prompt spends more of β at the end than now, meets β, and stays within the reservation', async (t) => {
    const free = await orchestrator(0);
    let now: JobOutcome, prompt: JobOutcome;
    const seenNow: Seen = { reserved: 0, reservedLater: 0, earlyAbove2: -1 }, seenPrompt: Seen = { reserved: 0, reservedLater: 0, earlyAbove2: -1 };
    try {
      now = await run(free, BudgetHorizon.NOW, seenNow);
      prompt = await run(free, BudgetHorizon.PROMPT, seenPrompt);
    } finally {
      await free.close(1000);
    }
    t.diagnostic(`β at the end: now ${beta(now).toFixed(4)}, prompt ${beta(prompt).toFixed(4)}; first quarter above 2 bits: now ${seenNow.earlyAbove2.toFixed(3)}, prompt ${seenPrompt.earlyAbove2.toFixed(3)}; plans that missed β: now ${now.cache.budgetMissed}, prompt ${prompt.cache.budgetMissed}`);
    nowPeak = now.cache.peakHotBytes;
    for (const [name, o] of [['now', now], ['prompt', prompt]] as const) {
      assert.ok(beta(o) <= BETA, `${name}: ${beta(o)} over β at the end`);
      assert.equal(o.cache.budgetMissedBinding, 0, `${name}: a plan missed its β`);
    }
    assert.ok(Math.abs(beta(prompt) - beta(now)) < 0.02, `β at the end: prompt ${beta(prompt)}, now ${beta(now)}`);
    // Mid-prefill plans: `now` misses β on the late chunks, `prompt` never does.
    assert.ok(now.cache.budgetMissed >= 3, `now: only ${now.cache.budgetMissed} plans missed β`);
    assert.equal(prompt.cache.budgetMissed, 0, `prompt: ${prompt.cache.budgetMissed} plans missed their β`);

    assert.ok(seenPrompt.reserved > 0, 'the reservation was read while the request ran');
    await sameUnderLimit(seenPrompt.reserved, BudgetHorizon.PROMPT, prompt);
  });

  test('end holds the prompt at 16 bits until it is read, then one plan meets β within the reservation', async (t) => {
    const free = await orchestrator(0);
    let end: JobOutcome;
    const seen: Seen = { reserved: 0, reservedLater: 0, earlyAbove2: -1 };
    try {
      end = await run(free, BudgetHorizon.END, seen);
    } finally {
      await free.close(1000);
    }
    const fp16 = end.cache.bytes!.fp16Bytes;
    t.diagnostic(`end: ${end.cache.reallocations} plans, β at the end ${beta(end).toFixed(4)}, peak hot ${end.cache.peakHotBytes} B (FP16 ${fp16} B; now's peak ${nowPeak} B), reserved ${seen.reserved} B, then ${seen.reservedLater} B`);
    // 4 tokens generated with R = 16: the plan right after the prefill is the only one.
    assert.equal(end.cache.reallocations, 1, 'a plan was made between prefill chunks');
    assert.ok(beta(end) <= BETA, `${beta(end)} over β at the end`);
    assert.equal(end.cache.budgetMissed, 0, 'the plan after the prefill missed β');
    assert.ok(end.cache.peakHotBytes >= 0.95 * fp16, `peak ${end.cache.peakHotBytes} B: the prompt was not held at 16 bits`);
    assert.ok(nowPeak > 0 && nowPeak < 0.5 * end.cache.peakHotBytes, `now's peak ${nowPeak} B is not below end's ${end.cache.peakHotBytes} B`);
    assert.ok(seen.reserved >= end.cache.peakHotBytes, `reserved ${seen.reserved} B < the peak ${end.cache.peakHotBytes} B`);
    // After the plan, the prompt's peak goes back to the shard: what stays covers what it holds, near β.
    assert.ok(seen.reservedLater >= end.cache.bytes!.heldBytes && seen.reservedLater < 0.5 * seen.reserved, `reserved after the plan: ${seen.reservedLater} B (before ${seen.reserved} B, holds ${end.cache.bytes!.heldBytes} B)`);

    await sameUnderLimit(seen.reserved, BudgetHorizon.END, end);
  });
});

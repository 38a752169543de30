// The step loop's batched reallocation (issue 16): with several sequences
// due in the same step on each of two shards, every step makes exactly one
// export, one allocate and at most one apply call per shard that has any
// due (the step stats count them), never a single-sequence call; and every
// request generates exactly what it generates alone (batch invariance). The
// scheduler runs the real model over in-process caches that count calls.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { CacheCore } from '../../services/cache/cache-core.js';
import { LocalAllocator } from '../../services/orchestrator/allocator-client.js';
import { Model } from '../../services/orchestrator/model/model.js';
import { defaultModelDir } from '../../services/orchestrator/model/paths.js';
import { Scheduler, type ShardHandle, type StepRealloc } from '../../services/orchestrator/scheduler.js';
import { DEFAULTS, type GenerateJobSpec } from '../../services/orchestrator/settings.js';
import { FixedShards } from '../../services/orchestrator/shard-directory.js';

const dir = mkdtempSync(join(tmpdir(), 'smartkv-realloc-step-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const COUNTED = ['exportImportanceBatch', 'applyPlanBatch', 'exportImportance', 'applyPlan'] as const;
type Counts = Record<(typeof COUNTED)[number], number>;

/** An in-process shard that counts its reallocation calls. */
function countingShard(core: CacheCore): { shard: CacheCore; counts: Counts } {
  const counts = Object.fromEntries(COUNTED.map((k) => [k, 0])) as Counts;
  const shard = new Proxy(core, {
    get(target, key) {
      const v = Reflect.get(target, key);
      if (typeof v !== 'function') return v;
      const f = v.bind(target); // the core's own internal calls are not counted
      return (COUNTED as readonly (string | symbol)[]).includes(key)
        ? (...args: unknown[]) => {
            counts[key as keyof Counts]++;
            return f(...args);
          }
        : f;
    },
  });
  return { shard, counts };
}

test('several sequences due in a step: one call of each kind per shard, and each generates what it does alone', async () => {
  const model = Model.load(defaultModelDir(), { threads: 1 });
  const c = model.config;
  const newCore = () => new CacheCore({ quant: 'symmetric', gamma: 0.9, mode: 'downgrade-only', masterDir: dir, rotateKv: true, threads: 1, layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim }, 0);
  const cache = { ...DEFAULTS.cache, beta: 0.4, window: 16, reallocInterval: 8 };
  // Prompts of one length: their prefills, and so their plans, fall in the same steps.
  const prompts = Array.from({ length: 4 }, (_, i) => [256, ...Buffer.from(`Prompt ${i}: the old man said that`)]);
  const spec = (prompt: number[]): GenerateJobSpec => ({ kind: 'generate', prompt, maxTokens: 40, sampling: { temperature: 0, topK: 0, topP: 1, seed: 1 }, stop: [], cache });

  const run = async (which: number[][], shards: number) => {
    const cores = Array.from({ length: shards }, newCore);
    const counted = cores.map(countingShard);
    const handles: ShardHandle[] = counted.map(({ shard }, index) => ({ shard, address: `core-${index}`, index }));
    const allocator = new LocalAllocator();
    const scheduler = new Scheduler({ model, shards: new FixedShards(handles), allocator, defaults: DEFAULTS, blockTokens: (await cores[0].stats()).blockTokens, log: () => undefined });
    const steps: { realloc: StepRealloc; perShard: Counts[]; allocatorCalls: number }[] = [];
    let allocatorSeen = 0;
    scheduler.onStep = ({ realloc }) => {
      // What each shard was asked since the last step ended: this step's reallocations.
      steps.push({ realloc, perShard: counted.map(({ counts }) => ({ ...counts })), allocatorCalls: allocator.calls - allocatorSeen });
      allocatorSeen = allocator.calls;
      for (const { counts } of counted) for (const k of COUNTED) counts[k] = 0;
    };
    const outcomes = await Promise.all(which.map((p) => scheduler.submit(spec(p), {}).done));
    for (const core of cores) {
      assert.equal((await core.stats()).sequences, 0, 'every sequence freed');
      await core.close();
    }
    return { outcomes, steps };
  };

  const together = await run(prompts, 2);
  const withPlans = together.steps.filter((s) => s.realloc.sequences > 0);
  assert.ok(withPlans.length >= 4, `${withPlans.length} steps with reallocations`);
  assert.ok(withPlans.some((s) => s.realloc.sequences === 4 && s.realloc.shards === 2), `all four due in one step, on both shards: ${JSON.stringify(withPlans.map((s) => s.realloc))}`);
  for (const [i, s] of together.steps.entries()) {
    const busy = s.perShard.filter((k) => k.exportImportanceBatch > 0).length;
    assert.equal(busy, s.realloc.shards, `step ${i}: the shards with due sequences`);
    for (const k of s.perShard) {
      assert.ok(k.exportImportanceBatch <= 1 && k.applyPlanBatch <= k.exportImportanceBatch, `step ${i}: ${JSON.stringify(k)}`);
      assert.equal(k.exportImportance + k.applyPlan, 0, `step ${i}: no single-sequence call`);
    }
    assert.equal(s.allocatorCalls, s.realloc.shards, `step ${i}: one AllocateBatch per shard`);
    assert.deepEqual([s.realloc.exportCalls, s.realloc.allocateCalls], [s.realloc.shards, s.realloc.shards], `step ${i}: the step stats count the calls`);
    assert.equal(s.realloc.applyCalls, s.perShard.reduce((a, k) => a + k.applyPlanBatch, 0));
  }
  assert.ok(withPlans.some((s) => s.realloc.applyCalls === 2), 'plans that changed precision were applied');
  const reallocs = together.outcomes.map((o) => o.cache.reallocations);
  assert.ok(reallocs.every((n) => n >= 4), `reallocations per request ${reallocs}`);

  // Alone, one request at a time on one shard: the same tokens and the same bytes.
  for (const [i, p] of prompts.entries()) {
    const alone = await run([p], 1);
    const o = together.outcomes[i], a = alone.outcomes[0];
    assert.deepEqual(o.generated, a.generated, `request ${i}`);
    assert.equal(o.cache.tokensChanged, a.cache.tokensChanged, `request ${i}: the same plans`);
    assert.equal(o.cache.reallocations, a.cache.reallocations);
  }
});

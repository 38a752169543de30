// One reallocation against a real engine (CacheCore) and the local
// allocator: one Allocate call and at most one ApplyPlan; where β binds the
// plan meets it in the engine's own accounting — right after it and for every
// token that arrives before the next plan — within one block of the target;
// where it cannot, the cache is never made larger; shared plans give every
// layer the same formats, per-layer plans may differ by layer; normalised
// importance is the EMA over the weight it could have gathered.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CacheCore } from '../../services/cache/cache-core.js';
import type { ImportanceReport, LayerPlan } from '../../services/cache/cache-api.js';
import { EMPTY_BYTES } from '../../services/cache/cache-api.js';
import { LocalAllocator } from '../../services/orchestrator/allocator-client.js';
import { normaliseImportance, reallocate, type ReallocOptions, type SequenceLayout } from '../../services/orchestrator/reallocate.js';
import type { PrecisionMode } from '../../native/kv-engine.js';
import { rng } from '../helpers/random.js';

const L = 3, QH = 4, KV = 2, D = 64, FP16_TOKEN = 2 * KV * D * 2;
const g = (u: () => number, n: number) => Float32Array.from({ length: n }, () => (u() - 0.5) * 4);

async function filledSequence(core: CacheCore, n: number, seed: number, mode: PrecisionMode = 'downgrade-only'): Promise<number> {
  const { seq } = await core.createSequence('mixed', 0, undefined, '', mode);
  const u = rng(seed);
  for (let l = 0; l < L; l++) await core.engine.append(seq, l, g(u, n * KV * D), g(u, n * KV * D));
  // Decode-like queries give each layer its own attention pattern, hence importance.
  for (let s = 0; s < 8; s++)
    for (let l = 0; l < L; l++) await core.attend(l, [{ seq, rows: 1, q: g(u, QH * D), kNew: g(u, KV * D), vNew: g(u, KV * D) }]);
  return seq;
}

function layout(core: CacheCore): SequenceLayout {
  return { layers: L, fp16TokenBytes: FP16_TOKEN, tokenBytes: core.engine.tokenBytes(), blockTokens: 32 };
}

/** A shard that counts ApplyPlan calls. */
function counting(core: CacheCore): CacheCore & { applyCalls: number } {
  const c = Object.assign(Object.create(core) as CacheCore, { applyCalls: 0 });
  c.applyPlan = (seq: number, plans: readonly LayerPlan[]) => {
    c.applyCalls++;
    return core.applyPlan(seq, plans);
  };
  return c;
}

const options = (beta: number, perLayer: boolean, policy: ReallocOptions['policy'] = 'smartkv'): ReallocOptions => ({
  policy, beta, sinks: 4, window: 64, ahead: 16, seed: 1, gamma: 0.9, normalised: false, perLayer,
});

for (const perLayer of [false, true])
  for (const mode of ['downgrade-only', 'reversible'] as const)
    test(`${perLayer ? 'per-layer' : 'shared'}, ${mode}: one call each, β met exactly where it binds, never larger where it cannot`, async () => {
      const core = new CacheCore({ layers: L, qHeads: QH, kvHeads: KV, headDim: D, quant: 'symmetric', threads: 1 });
      const u = rng(perLayer ? 3 : 4);
      const int8Block = core.engine.tokenBytes()[1] * 32;
      for (const [n, beta] of [[90, 0.3], [260, 0.5], [400, 0.3], [700, 0.25], [1000, 0.33]] as const) {
        const seq = await filledSequence(core, n, n, mode);
        const before = (await core.stats(seq)).bytes;
        const shard = counting(core), allocator = new LocalAllocator();
        const r = await reallocate(shard, seq, allocator, layout(core), options(beta, perLayer), mode === 'reversible');
        assert.equal(allocator.calls, 1, 'one Allocate call per reallocation');
        assert.ok(shard.applyCalls <= 1, 'at most one ApplyPlan call for all layers');
        const after = (await core.stats(seq)).bytes;
        assert.ok(r.predictedHotBytes >= after.heldBytes && r.predictedHotBytes - after.heldBytes < 2048, `the allocator's price ${r.predictedHotBytes} vs the engine's ${after.heldBytes}`);
        const what = `${n} tokens, β ${beta}`;
        if (!r.fits) {
          assert.ok(r.bindsFrom > n, `${what}: missed although β binds from ${r.bindsFrom}`);
          assert.ok(after.heldBytes <= before.heldBytes, `${what}: a plan that cannot meet β must not grow the cache`);
          await core.freeSequence(seq);
          continue;
        }
        // β holds right after the plan and for each of the 16 tokens before the next one …
        let slack = Infinity;
        for (let k = 0; k <= 16; k++) {
          if (k > 0) for (let l = 0; l < L; l++) await core.engine.append(seq, l, g(u, KV * D), g(u, KV * D));
          const b = (await core.stats(seq)).bytes;
          assert.ok(b.heldBytes <= beta * b.fp16Bytes, `${what}, +${k}: β ${(b.heldBytes / b.fp16Bytes).toFixed(4)} above the target`);
          slack = Math.min(slack, beta * b.fp16Bytes - b.heldBytes);
        }
        // … and spends it: within one int8 block per layer of the target where it binds tightest.
        assert.ok(slack <= L * int8Block, `${what}: ${slack} bytes left under β, more than one int8 block per layer (${L * int8Block})`);
        await core.freeSequence(seq);
      }
      await core.close();
    });

test('uniform plans never make the cache larger than leaving it alone', async () => {
  const core = new CacheCore({ layers: L, qHeads: QH, kvHeads: KV, headDim: D, quant: 'symmetric', threads: 1 });
  for (const n of [70, 75, 100, 600]) {
    const seq = await filledSequence(core, n, n);
    const before = (await core.stats(seq)).bytes;
    await reallocate(core, seq, new LocalAllocator(), layout(core), options(0.5, false, 'uniform-8'), false);
    const after = (await core.stats(seq)).bytes;
    assert.ok(after.heldBytes <= before.heldBytes, `${n} tokens: ${before.heldBytes} → ${after.heldBytes}`);
    if (n === 600) assert.equal(after.tokensByFormat[1], L * (600 + 8 - 68), 'a long sequence does go to int8');
    await core.freeSequence(seq);
  }
  await core.close();
});

test('shared plans give every layer the same formats; per-layer plans may differ', async () => {
  for (const perLayer of [false, true]) {
    const core = new CacheCore({ layers: L, qHeads: QH, kvHeads: KV, headDim: D, quant: 'symmetric', threads: 1 });
    const seq = await filledSequence(core, 700, perLayer ? 2 : 1);
    await reallocate(core, seq, new LocalAllocator(), layout(core), options(0.35, perLayer), false);
    const after = await core.stats(seq);
    assert.equal(after.bytes.tokensByFormat[0], L * 68, 'sinks and window stay FP16 in every layer');
    const report = await core.exportImportance(seq);
    const layerFormats = (l: number) => report.formats.subarray(l * report.tokens, (l + 1) * report.tokens).join(',');
    const same = layerFormats(0) === layerFormats(1) && layerFormats(1) === layerFormats(2);
    assert.equal(same, !perLayer, perLayer ? 'layers get their own bit-widths' : 'one bit-width per token for all layers');
    await core.close();
  }
});

test('normalised importance divides by 1 − γ^k for the k queries that saw the token', () => {
  const r: ImportanceReport = { tokens: 3, layers: 1, importance: Float32Array.from([0.5, 0.5, 0.5]), formats: new Uint8Array(3), sqError: new Float32Array(9), bytes: EMPTY_BYTES };
  normaliseImportance(r, 0.9);
  // positions 0, 1, 2 of 3 were seen by 3, 2 and 1 queries
  assert.ok(Math.abs(r.importance[0] - 0.5 / (1 - 0.9 ** 3)) < 1e-6);
  assert.ok(Math.abs(r.importance[2] - 0.5 / 0.1) < 1e-5);
  assert.ok(r.importance[2] > r.importance[1] && r.importance[1] > r.importance[0]);
});

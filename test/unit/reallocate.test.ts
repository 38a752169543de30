// One reallocation against a real engine (CacheCore) and the local
// allocator: the budget holds in the engine's own accounting, shared plans
// give every layer the same formats, per-layer plans may differ by layer, and
// normalised importance is the EMA over the weight it could have gathered.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CacheCore } from '../../services/cache/cache-core.js';
import type { ImportanceReport } from '../../services/cache/cache-api.js';
import { LocalAllocator } from '../../services/orchestrator/allocator-client.js';
import { normaliseImportance, reallocate, type SequenceLayout } from '../../services/orchestrator/reallocate.js';
import { rng } from '../helpers/random.js';

const L = 3, QH = 4, KV = 2, D = 64, N = 700;

async function filledSequence(core: CacheCore, seed: number): Promise<number> {
  const { seq } = await core.createSequence('mixed', 0);
  const u = rng(seed);
  const g = (n: number) => Float32Array.from({ length: n }, () => (u() - 0.5) * 4);
  for (let l = 0; l < L; l++) await core.engine.append(seq, l, g(N * KV * D), g(N * KV * D));
  // Decode-like queries give each layer its own attention pattern, hence importance.
  for (let s = 0; s < 12; s++)
    for (let l = 0; l < L; l++) await core.attend(l, [{ seq, rows: 1, q: g(QH * D), kNew: g(KV * D), vNew: g(KV * D) }]);
  return seq;
}

function layout(core: CacheCore): SequenceLayout {
  return { layers: L, fp16TokenBytes: 2 * KV * D * 2, tokenBytes: core.engine.tokenBytes(), blockTokens: 32 };
}

for (const perLayer of [false, true]) {
  test(`${perLayer ? 'per-layer' : 'shared'} plans meet β in the engine's accounting`, async () => {
    const core = new CacheCore({ layers: L, qHeads: QH, kvHeads: KV, headDim: D, quant: 'symmetric', threads: 1 });
    const seq = await filledSequence(core, perLayer ? 2 : 1);
    const before = await core.stats(seq);
    const opt = { policy: 'smartkv' as const, beta: 0.35, sinks: 4, window: 64, ahead: 16, seed: 1, gamma: 0.9, normalised: false, perLayer };
    const r = await reallocate(core, seq, new LocalAllocator(), layout(core), opt, before.bytes.metadataBytes, false);
    const after = await core.stats(seq);
    const beta = after.bytes.heldBytes / after.bytes.fp16Bytes;
    assert.ok(r.fits, 'the budget is reachable at 700 tokens');
    assert.ok(beta <= 0.35 && beta > 0.3, `β ${beta}`);
    assert.equal(after.bytes.tokensByFormat[0], L * 68, 'sinks and window stay FP16 in every layer');
    const report = await core.exportImportance(seq);
    const layerFormats = (l: number) => report.formats.subarray(l * report.tokens, (l + 1) * report.tokens).join(',');
    const same = layerFormats(0) === layerFormats(1) && layerFormats(1) === layerFormats(2);
    assert.equal(same, !perLayer, perLayer ? 'layers get their own bit-widths' : 'one bit-width per token for all layers');
    await core.close();
  });
}

test('normalised importance divides by 1 − γ^k for the k queries that saw the token', () => {
  const r: ImportanceReport = { tokens: 3, layers: 1, importance: Float32Array.from([0.5, 0.5, 0.5]), formats: new Uint8Array(3), sqError: new Float32Array(9) };
  normaliseImportance(r, 0.9);
  // positions 0, 1, 2 of 3 were seen by 3, 2 and 1 queries
  assert.ok(Math.abs(r.importance[0] - 0.5 / (1 - 0.9 ** 3)) < 1e-6);
  assert.ok(Math.abs(r.importance[2] - 0.5 / 0.1) < 1e-5);
  assert.ok(r.importance[2] > r.importance[1] && r.importance[1] > r.importance[0]);
});

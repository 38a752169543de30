// Accounting: the engine's byte counts add up, match the block layout that
// native/formats.ts mirrors, and β drops below 1 once tokens are quantised.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { blockBytes, formatBlockTokens, FORMATS, TOKEN_META_BYTES } from '../../native/formats.js';
import { KvEngine, type KvEngineConfig, type KvStats } from '../../native/kv-engine.js';
import { gaussian } from '../helpers/random.js';

const CONFIG: KvEngineConfig = { layers: 2, qHeads: 8, kvHeads: 2, headDim: 128, quant: 'symmetric', threads: 2 };
const KV = 2 * 128;

/** Block bytes the engine must hold for these per-format token counts (one layer's worth summed). */
function blockTotal(st: KvStats, cfg: KvEngineConfig, perLayerCounts: number[][]): number {
  const shape = { headDim: cfg.headDim, kvHeads: cfg.kvHeads, blockTokens: 32, quant: cfg.quant };
  let total = 0;
  for (const counts of perLayerCounts) counts.forEach((c, f) => (total += Math.ceil(c / formatBlockTokens(f, 32)) * blockBytes(f, shape)));
  return total;
}

describe('accounting', () => {
  it('held = payload + params + metadata; counts add up over layers and formats', async () => {
    const eng = new KvEngine(CONFIG);
    const seq = await eng.createSequence();
    await eng.append(seq, 0, gaussian(300 * KV, 1), gaussian(300 * KV, 2));
    await eng.append(seq, 1, gaussian(77 * KV, 3), gaussian(77 * KV, 4));
    const positions = Uint32Array.from({ length: 200 }, (_, i) => i + 10);
    const formats = Uint8Array.from({ length: 200 }, (_, i) => 1 + (i % 3));
    const moved = await eng.applyPlan(seq, 0, positions, formats);
    assert.equal(moved.tokensChanged, 200);
    const st = await eng.stats(seq);
    assert.equal(st.heldBytes, st.payloadBytes + st.paramBytes + st.metadataBytes);
    assert.equal(st.tokens, 377);
    assert.equal(Object.values(st.tokensByFormat).reduce((a, b) => a + b, 0), 377);
    assert.deepEqual(st.tokensByFormat, { fp16: 100 + 77, int8: 67, int4: 67, int2: 66 });
    assert.equal(st.fp16Bytes, 377 * 2 * KV * 2);
    assert.equal(st.beta, st.heldBytes / st.fp16Bytes);
    assert.equal(st.masterBytes, 0);
    // Whole blocks per bucket, as block-layout.h lays them out; positions in
    // blocks count as metadata, so compare payload+params+block metadata.
    const want = blockTotal(st, CONFIG, [
      [100, 67, 67, 66],
      [77, 0, 0, 0],
    ]);
    // Positions: 4 bytes per slot of every block (int4 blocks hold 64 slots, int2 blocks 128).
    const slots = 32 * (Math.ceil(100 / 32) + Math.ceil(67 / 32) + Math.ceil(77 / 32)) + 64 * Math.ceil(67 / 64) + 128 * Math.ceil(66 / 128);
    assert.equal(st.payloadBytes + st.paramBytes + slots * 4, want);
    assert.ok(st.metadataBytes >= 377 * TOKEN_META_BYTES);
    await eng.close();
  });

  it('bookkeeping grows with the tokens held: under 2 KiB for one token, ~12.75 bytes a token beyond', async () => {
    // One layer of the reference model, whose β budgets the fixed overhead used to break.
    const eng = new KvEngine({ layers: 1, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1 });
    const kv = 2 * 64;
    for (const n of [1, 100, 1000, 4097, 5000]) {
      const seq = await eng.createSequence();
      await eng.append(seq, 0, gaussian(n * kv, 1), gaussian(n * kv, 2));
      const st = await eng.stats(seq);
      // Per token: a position in its block (4 bytes) and the slot map and importance.
      const perToken = 4 + TOKEN_META_BYTES;
      assert.ok(st.metadataBytes >= n * perToken, `${n} tokens: ${st.metadataBytes}`);
      // Tables (block and page, up to 0.75 bytes a token as they double) and
      // partly used pages and blocks (1.2 KiB) on top.
      assert.ok(st.metadataBytes <= n * (perToken + 0.75) + 1200, `${n} tokens: ${st.metadataBytes}`);
      if (n === 1) assert.ok(st.metadataBytes <= 2048, `1 token: ${st.metadataBytes}`);
      await eng.freeSequence(seq);
    }
    await eng.close();
  });

  it('β < 1 after quantising, and it falls with the bit-width', async () => {
    const eng = new KvEngine(CONFIG);
    const betas: number[] = [];
    for (const f of ['int8', 'int4', 'int2'] as const) {
      const seq = await eng.createSequence();
      await eng.append(seq, 0, gaussian(4096 * KV, 1), gaussian(4096 * KV, 2));
      assert.ok((await eng.stats(seq)).beta > 1, 'fp16 plus metadata is above 1');
      const positions = Uint32Array.from({ length: 4096 }, (_, i) => i);
      await eng.applyPlan(seq, 0, positions, new Array(4096).fill(f));
      const st = await eng.stats(seq);
      assert.equal(st.tokensByFormat[f], 4096);
      betas.push(st.beta);
      await eng.freeSequence(seq);
    }
    assert.ok(betas[0] < 0.6 && betas[1] < 0.35 && betas[2] < 0.2, `betas ${betas}`);
    assert.ok(betas[0] > betas[1] && betas[1] > betas[2]);
    await eng.close();
  });

  it('a reversible sequence reports its master copy apart from β and raises precision from it', async () => {
    const eng = new KvEngine({ ...CONFIG, mode: 'reversible' });
    const seq = await eng.createSequence();
    await eng.append(seq, 0, gaussian(64 * KV, 1), gaussian(64 * KV, 2));
    await eng.applyPlan(seq, 0, Uint32Array.of(1, 2), ['int2', 'int2']);
    const before = (await eng.readKv(seq, 0)).k;
    await eng.applyPlan(seq, 0, Uint32Array.of(1), ['int8']);
    const st = await eng.stats(seq);
    assert.ok(st.masterBytes >= 64 * KV * 2 * 2);
    assert.equal(st.heldBytes, st.payloadBytes + st.paramBytes + st.metadataBytes);
    const after = (await eng.readKv(seq, 0)).k;
    const orig = gaussian(64 * KV, 1);
    // Token 1's mean absolute error over all its elements: int8 from the master vs int2.
    const err = (x: Float32Array) => x.subarray(KV, 2 * KV).reduce((a, v, i) => a + Math.abs(v - orig[KV + i]), 0) / KV;
    assert.ok(err(after) < err(before) / 4, `int8 from the master ${err(after)}, int2 ${err(before)}`);
    await eng.close();
  });

  it('tokenBytes() gives the per-token cost of a full block in each format', async () => {
    const eng = new KvEngine({ ...CONFIG, layers: 1 });
    const costs = eng.tokenBytes();
    assert.equal(costs.length, FORMATS.length);
    // 128 tokens fill whole blocks in every format: 4 of fp16 or int8, 2 of int4, 1 of int2.
    for (const [code, f] of FORMATS.entries()) {
      const seq = await eng.createSequence();
      await eng.append(seq, 0, gaussian(128 * KV, 1), gaussian(128 * KV, 2));
      if (code > 0) await eng.applyPlan(seq, 0, Uint32Array.from({ length: 128 }, (_, i) => i), new Array(128).fill(f));
      const st = await eng.stats(seq);
      assert.equal(st.tokensByFormat[f], 128);
      assert.equal(st.payloadBytes + st.paramBytes + 128 * 4, 128 * costs[code], f); // the blocks' positions, 4 bytes a slot
      await eng.freeSequence(seq);
    }
    await eng.close();
  });
});

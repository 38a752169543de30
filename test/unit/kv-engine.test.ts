// Attention through the addon against a float64 reference computed on the
// engine's own dequantised K/V (readKv): MHA and GQA, decode and prefill,
// random plans, lengths that are not multiples of 32, int8 queries, KIVI,
// batches, and the fast path against the scalar reference.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { KvEngine, type KvEngineConfig, type StorageKind } from '../../native/kv-engine.js';
import { gaussian, maxRelError, rng } from '../helpers/random.js';
import { int8Query, referenceAttention } from '../helpers/reference.js';

interface Scenario {
  qHeads: number;
  kvHeads: number;
  headDim: number;
  prefix: number; // tokens appended (and planned) before the call
  rows: number; // query rows in the attend call (1: decode, more: prefill chunk)
  storage?: StorageKind;
  queryInt8?: boolean;
  fastPath?: boolean;
}

const TOL = 1e-4;

function engineFor(s: Scenario, extra: Partial<KvEngineConfig> = {}): KvEngine {
  return new KvEngine({
    layers: 2,
    qHeads: s.qHeads,
    kvHeads: s.kvHeads,
    headDim: s.headDim,
    quant: 'symmetric',
    queryInt8: s.queryInt8 ?? false,
    fastPath: s.fastPath ?? true,
    threads: 2,
    ...extra,
  });
}

/** Random formats for tokens 4 .. n-9 (sinks and the last 8 stay fp16). */
function randomPlan(n: number, seed: number): { positions: Uint32Array; formats: Uint8Array } {
  const u = rng(seed);
  const positions: number[] = [], formats: number[] = [];
  for (let i = 4; i + 8 < n; i++) {
    positions.push(i);
    formats.push(1 + Math.floor(u() * 3));
  }
  return { positions: Uint32Array.from(positions), formats: Uint8Array.from(formats) };
}

/** Fills layer 1, applies a random plan, attends `rows` new rows and compares
 * out and probs with the reference on what the engine actually holds. */
async function checkAttention(s: Scenario, seed: number): Promise<{ out: Float32Array; probs: Float32Array }> {
  const eng = engineFor(s);
  try {
    const kind = s.storage ?? 'mixed';
    const seq = await eng.createSequence({ storage: kind });
    const kv = s.kvHeads * s.headDim;
    const k0 = gaussian(s.prefix * kv, seed), v0 = gaussian(s.prefix * kv, seed + 1);
    for (let i = 0; i < k0.length; i += 3) k0[i] += 2; // an outlier-channel pattern
    if (s.prefix > 0) await eng.append(seq, 1, k0, v0);
    if (kind === 'mixed' && s.prefix > 0) {
      const plan = randomPlan(s.prefix, seed + 2);
      await eng.applyPlan(seq, 1, plan.positions, plan.formats);
    }
    const before = await eng.exportImportance(seq, 1); // formats as attention sees them
    const q = gaussian(s.rows * s.qHeads * s.headDim, seed + 3);
    const kNew = gaussian(s.rows * kv, seed + 4), vNew = gaussian(s.rows * kv, seed + 5);
    const nCtx = s.prefix + s.rows;
    const probs = new Float32Array(s.rows * nCtx);
    const [out] = await eng.attend([{ seq, layer: 1, q, kNew, vNew, probs }]);
    const { k, v } = await eng.readKv(seq, 1);
    const keyUsesInt8 = new Uint8Array(nCtx);
    if (s.queryInt8 && kind === 'mixed') for (let t = 0; t < s.prefix; t++) keyUsesInt8[t] = before.format[t] === 0 ? 0 : 1;
    const want = referenceAttention({
      rows: s.rows,
      qHeads: s.qHeads,
      kvHeads: s.kvHeads,
      headDim: s.headDim,
      nCtx,
      q,
      k,
      v,
      ...(s.queryInt8 ? { q8: int8Query(q, s.headDim), keyUsesInt8 } : {}),
    });
    const label = JSON.stringify(s);
    assert.ok(maxRelError(out, want.out) <= TOL, `out ${label}: ${maxRelError(out, want.out)}`);
    assert.ok(maxRelError(probs, want.probs) <= TOL, `probs ${label}: ${maxRelError(probs, want.probs)}`);
    return { out, probs };
  } finally {
    await eng.close();
  }
}

describe('attention matches the float64 reference', () => {
  const grid: Scenario[] = [
    { qHeads: 4, kvHeads: 4, headDim: 64, prefix: 100, rows: 1 }, // MHA decode
    { qHeads: 8, kvHeads: 2, headDim: 64, prefix: 77, rows: 1 }, // GQA decode, odd length
    { qHeads: 4, kvHeads: 2, headDim: 128, prefix: 300, rows: 1 },
    { qHeads: 8, kvHeads: 8, headDim: 128, prefix: 45, rows: 17 }, // MHA prefill chunk
    { qHeads: 8, kvHeads: 2, headDim: 64, prefix: 130, rows: 33 }, // GQA prefill chunk
    { qHeads: 4, kvHeads: 1, headDim: 32, prefix: 61, rows: 5 },
    { qHeads: 32, kvHeads: 8, headDim: 128, prefix: 200, rows: 1 }, // the bench's GQA shape
    { qHeads: 4, kvHeads: 2, headDim: 64, prefix: 0, rows: 9 }, // empty cache, prefill only
  ];
  let seed = 10;
  for (const s of grid)
    for (const fastPath of [true, false]) {
      const sc = { ...s, fastPath, queryInt8: false };
      const at = seed++ * 10;
      it(`${s.qHeads}/${s.kvHeads} D=${s.headDim} n=${s.prefix} rows=${s.rows} fast=${fastPath}`, () =>
        checkAttention(sc, at).then(() => undefined));
    }

  it('int8 queries match the reference that uses the same int8 query for quantised keys', async () => {
    await checkAttention({ qHeads: 8, kvHeads: 2, headDim: 128, prefix: 150, rows: 1, queryInt8: true }, 501);
    await checkAttention({ qHeads: 4, kvHeads: 4, headDim: 64, prefix: 90, rows: 7, queryInt8: true }, 502);
  });

  it('KIVI storage: grouped tokens as stored, residual at fp16', async () => {
    for (const storage of ['kivi-2', 'kivi-4'] as const)
      for (const fastPath of [true, false])
        await checkAttention({ qHeads: 4, kvHeads: 2, headDim: 64, prefix: 400, rows: 1, storage, fastPath }, 77);
  });
});

describe('fast path and scalar reference agree', () => {
  for (const [qHeads, kvHeads] of [
    [4, 4],
    [8, 2],
  ])
    it(`${qHeads}/${kvHeads}: three decode steps over a random plan, outputs and importance`, async () => {
      const runs: { out: number[]; imp: Float32Array }[] = [];
      for (const fastPath of [false, true]) {
        const eng = engineFor({ qHeads, kvHeads, headDim: 128, prefix: 0, rows: 1, fastPath });
        const seq = await eng.createSequence();
        const n = 1000, kv = kvHeads * 128;
        await eng.append(seq, 0, gaussian(n * kv, 5), gaussian(n * kv, 6));
        const plan = randomPlan(n, 9);
        await eng.applyPlan(seq, 0, plan.positions, plan.formats);
        const out: number[] = [];
        for (let step = 0; step < 3; step++) {
          const [o] = await eng.attend([
            { seq, layer: 0, q: gaussian(qHeads * 128, 20 + step), kNew: gaussian(kv, 30 + step), vNew: gaussian(kv, 40 + step) },
          ]);
          out.push(...o);
        }
        runs.push({ out, imp: (await eng.exportImportance(seq, 0)).importance });
        await eng.close();
      }
      assert.ok(maxRelError(runs[1].out, runs[0].out) <= TOL, 'outputs differ');
      assert.ok(maxRelError(runs[1].imp, runs[0].imp) <= TOL, 'importance differs');
    });
});

describe('batched attention', () => {
  it('one call over three sequences and two layers equals the calls one by one', async () => {
    const s: Scenario = { qHeads: 8, kvHeads: 2, headDim: 64, prefix: 0, rows: 1 };
    const kv = 2 * 64;
    const outs: Float32Array[][] = [];
    for (const batched of [false, true]) {
      const eng = engineFor(s);
      const seqs = [await eng.createSequence(), await eng.createSequence(), await eng.createSequence()];
      for (const [i, seq] of seqs.entries()) {
        await eng.append(seq, 0, gaussian((50 + i * 13) * kv, i), gaussian((50 + i * 13) * kv, i + 7));
        await eng.append(seq, 1, gaussian((40 + i) * kv, i + 3), gaussian((40 + i) * kv, i + 9));
      }
      const reqs = seqs.flatMap((seq, i) =>
        [0, 1].map((layer) => ({
          seq,
          layer,
          q: gaussian(8 * 64, 100 + i * 2 + layer),
          kNew: gaussian(kv, 200 + i * 2 + layer),
          vNew: gaussian(kv, 300 + i * 2 + layer),
        })),
      );
      outs.push(batched ? await eng.attend(reqs) : (await Promise.all(reqs.map((r) => eng.attend([r])))).flat());
      await eng.close();
    }
    for (let i = 0; i < outs[0].length; i++) assert.ok(maxRelError(outs[1][i], outs[0][i]) <= TOL, `request ${i}`);
  });

  it('operations queued without awaiting run in call order', async () => {
    const eng = engineFor({ qHeads: 4, kvHeads: 2, headDim: 32, prefix: 0, rows: 1 });
    const seq = await eng.createSequence();
    const kv = 2 * 32;
    const pending = [
      eng.append(seq, 0, gaussian(10 * kv, 1), gaussian(10 * kv, 2)),
      eng.attend([{ seq, layer: 0, q: gaussian(4 * 32, 3), kNew: gaussian(kv, 4), vNew: gaussian(kv, 5), probs: new Float32Array(11) }]),
      eng.applyPlan(seq, 0, Uint32Array.of(3, 4, 10), ['int4', 'int2', 'int8']),
    ];
    const stats = eng.stats(seq);
    await Promise.all(pending);
    const st = await stats;
    assert.equal(st.tokens, 11);
    assert.deepEqual(st.tokensByFormat, { fp16: 8, int8: 1, int4: 1, int2: 1 });
    await eng.close();
  });
});

describe('buffers and plans', () => {
  it('typed arrays are used in place: subarray views, caller-owned out', async () => {
    const eng = engineFor({ qHeads: 4, kvHeads: 2, headDim: 32, prefix: 0, rows: 1 });
    const kv = 2 * 32;
    const big = gaussian(30 * kv, 1), bigV = gaussian(30 * kv, 2);
    const a = await eng.createSequence(), b = await eng.createSequence();
    await eng.append(a, 0, big.subarray(10 * kv, 20 * kv), bigV.subarray(10 * kv, 20 * kv)); // views at an offset
    await eng.append(b, 0, big.slice(10 * kv, 20 * kv), bigV.slice(10 * kv, 20 * kv)); // copies
    assert.deepEqual(await eng.readKv(a, 0), await eng.readKv(b, 0));
    const out = new Float32Array(4 * 32);
    const [got] = await eng.attend([{ seq: a, layer: 0, q: gaussian(4 * 32, 3), kNew: gaussian(kv, 4), vNew: gaussian(kv, 5), out }]);
    assert.equal(got, out);
    assert.ok(out.some((x) => x !== 0));
    await eng.close();
  });

  it("a plan for 'all' layers moves the tokens of every layer", async () => {
    const eng = engineFor({ qHeads: 4, kvHeads: 2, headDim: 64, prefix: 0, rows: 1 });
    const seq = await eng.createSequence();
    const kv = 2 * 64;
    await eng.append(seq, 0, gaussian(40 * kv, 1), gaussian(40 * kv, 2));
    await eng.append(seq, 1, gaussian(50 * kv, 3), gaussian(50 * kv, 4));
    const r = await eng.applyPlan(seq, 'all', Uint32Array.of(0, 1, 39), ['int8', 'int4', 'int2']);
    assert.equal(r.tokensChanged, 6);
    const st = await eng.stats(seq);
    assert.deepEqual(st.tokensByFormat, { fp16: 84, int8: 2, int4: 2, int2: 2 });
    for (const layer of [0, 1]) assert.deepEqual([...(await eng.exportImportance(seq, layer)).format.slice(0, 2)], [1, 2]);
    await eng.close();
  });
});

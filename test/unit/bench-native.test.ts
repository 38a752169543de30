// The benchmark's native helpers: dense attention against the reference,
// the seeded Gaussian fill, and the bandwidth probe.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { denseAttention, fillGaussian, memoryBandwidth } from '../../native/bench-native.js';
import { KvEngineError } from '../../native/kv-engine.js';
import { gaussian, maxRelError } from '../helpers/random.js';
import { referenceAttention } from '../helpers/reference.js';

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** [H][n][D] → [n][H][D], the layout the reference takes. */
function tokenMajor(x: ArrayLike<number>, H: number, n: number, D: number, conv = (v: number) => v): Float32Array {
  const out = new Float32Array(H * n * D);
  for (let h = 0; h < H; h++)
    for (let t = 0; t < n; t++) for (let d = 0; d < D; d++) out[(t * H + h) * D + d] = conv(x[(h * n + t) * D + d]);
  return out;
}

describe('bench natives', () => {
  for (const dtype of ['f32', 'f16'] as const)
    for (const [qHeads, kvHeads] of [
      [8, 8],
      [8, 2],
    ])
      it(`dense ${dtype} attention ${qHeads}/${kvHeads} matches the reference`, async (t) => {
        const D = 64, n = 700;
        const k = dtype === 'f32' ? new Float32Array(kvHeads * n * D) : new Uint16Array(kvHeads * n * D);
        const v = dtype === 'f32' ? new Float32Array(kvHeads * n * D) : new Uint16Array(kvHeads * n * D);
        await fillGaussian(k, 1);
        await fillGaussian(v, 2);
        const q = gaussian(qHeads * D, 3), out = new Float32Array(qHeads * D);
        try {
          await denseAttention(dtype, [{ qHeads, kvHeads, headDim: D, nCtx: n, q, k, v, out }]);
        } catch (err) {
          if (err instanceof KvEngineError && err.code === 'FAILED_PRECONDITION') return t.skip(err.message);
          throw err;
        }
        const conv = dtype === 'f16' ? halfToFloat : undefined;
        const want = referenceAttention({
          rows: 1, qHeads, kvHeads, headDim: D, nCtx: n, q,
          k: tokenMajor(k, kvHeads, n, D, conv),
          v: tokenMajor(v, kvHeads, n, D, conv),
        });
        assert.ok(maxRelError(out, want.out) <= 1e-4, `${maxRelError(out, want.out)}`);
      });

  it('fillGaussian is seeded, independent of threads, and N(0, σ²)', async () => {
    const a = new Float32Array(300_001), b = new Float32Array(300_001), c = new Float32Array(300_001);
    await fillGaussian(a, 42, 2, 1);
    await fillGaussian(b, 42, 2, 2);
    await fillGaussian(c, 43, 2);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    const mean = a.reduce((s, x) => s + x, 0) / a.length;
    const sd = Math.sqrt(a.reduce((s, x) => s + (x - mean) ** 2, 0) / a.length);
    assert.ok(Math.abs(mean) < 0.02 && Math.abs(sd - 2) < 0.02, `mean ${mean} sd ${sd}`);
    const h = new Uint16Array(1000);
    await fillGaussian(h, 42, 2);
    for (let i = 0; i < 1000; i++) assert.ok(Math.abs(halfToFloat(h[i]) - a[i]) <= Math.abs(a[i]) * 1e-3 + 1e-7);
  });

  it('the bandwidth probe returns a plausible GB/s', async () => {
    const gbs = await memoryBandwidth(64 * 2 ** 20, 0, 2);
    assert.ok(gbs > 0.5 && gbs < 10_000, `${gbs}`);
  });

  it('checks its arguments', async () => {
    const bad = { qHeads: 8, kvHeads: 2, headDim: 64, nCtx: 10, q: new Float32Array(512), k: new Float32Array(10), v: new Float32Array(1280), out: new Float32Array(512) };
    await assert.rejects(denseAttention('f32', [bad]), (e: unknown) => e instanceof KvEngineError && e.code === 'INVALID_ARGUMENT' && /k has 10 elements/.test(e.message));
    await assert.rejects(memoryBandwidth(1000), (e: unknown) => e instanceof KvEngineError && e.code === 'INVALID_ARGUMENT');
    await assert.rejects(fillGaussian(new Float64Array(4) as unknown as Float32Array, 1), (e: unknown) => e instanceof KvEngineError);
  });
});

// rotateKv through the addon: the option reaches the native engine, K and V
// read back in the caller's coordinates, and 2-bit keys with outlier channels
// (and 2-bit values) lose far less attention accuracy than without it
// (kernels/src/rotation).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { KvEngine, type StorageKind } from '../../native/kv-engine.js';
import { gaussian } from '../helpers/random.js';

const H = 2, D = 64, QH = 4;

/** Keys [n][H][D] with channels 3 and 40 of every head scaled ×12. */
function outlierKeys(n: number, seed: number): Float32Array {
  const k = gaussian(n * H * D, seed);
  for (let t = 0; t < n * H; t++) {
    k[t * D + 3] *= 12;
    k[t * D + 40] *= 12;
  }
  return k;
}

/** Probabilities of one decode row over n tokens stored as `format` (0 fp16, 3 int2). */
async function decodeProbs(rotateKv: boolean, format: number, storage: StorageKind = 'mixed'): Promise<{ probs: Float32Array; out: Float32Array; k: Float32Array; v: Float32Array }> {
  const eng = new KvEngine({ layers: 1, qHeads: QH, kvHeads: H, headDim: D, quant: 'symmetric', threads: 2, rotateKv });
  try {
    const n = 256;
    const seq = await eng.createSequence({ storage });
    await eng.append(seq, 0, outlierKeys(n, 7), gaussian(n * H * D, 8));
    if (format !== 0) await eng.applyPlan(seq, 0, Uint32Array.from({ length: n }, (_, i) => i), new Uint8Array(n).fill(format));
    const probs = new Float32Array(n + 1);
    const q = gaussian(QH * D, 9).map((x) => x * 0.3);
    const [out] = await eng.attend([{ seq, layer: 0, q, kNew: outlierKeys(1, 10), vNew: gaussian(H * D, 11), probs }]);
    const { k, v } = await eng.readKv(seq, 0);
    return { probs, out, k, v };
  } finally {
    await eng.close();
  }
}

function rms(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s / a.length);
}

describe('KvEngine rotateKv', () => {
  it('attends like plain K and V at fp16 and reads them back unrotated', async () => {
    const plain = await decodeProbs(false, 0), rotated = await decodeProbs(true, 0);
    assert.ok(rms(plain.probs, rotated.probs) < 1e-4, `fp16 probs differ: ${rms(plain.probs, rotated.probs)}`);
    assert.ok(rms(plain.out, rotated.out) < 1e-3, `fp16 outputs differ: ${rms(plain.out, rotated.out)}`);
    const worst = (a: Float32Array, b: Float32Array) => a.reduce((w, x, i) => Math.max(w, Math.abs(x - b[i])), 0);
    assert.ok(worst(plain.k, rotated.k) < 2e-2, `keys read back differ by ${worst(plain.k, rotated.k)}`);
    assert.ok(worst(plain.v, rotated.v) < 2e-2, `values read back differ by ${worst(plain.v, rotated.v)}`);
  });

  it('cuts the error of 2-bit keys with outlier channels, and of 2-bit values', async () => {
    const truth = await decodeProbs(false, 0), plain = await decodeProbs(false, 3), rotated = await decodeProbs(true, 3);
    const [pPlain, pRot] = [rms(plain.probs, truth.probs), rms(rotated.probs, truth.probs)];
    assert.ok(pRot < 0.5 * pPlain, `2-bit probs error: rotated ${pRot} vs plain ${pPlain}`);
    const [oPlain, oRot] = [rms(plain.out, truth.out), rms(rotated.out, truth.out)];
    assert.ok(oRot < 0.8 * oPlain, `2-bit output error: rotated ${oRot} vs plain ${oPlain}`);
  });

  it('rotates KIVI only for the kivi-N-rot storage kinds', async () => {
    const truth = await decodeProbs(false, 0);
    for (const bits of [2, 4]) {
      const published = await decodeProbs(true, 0, `kivi-${bits}` as StorageKind);
      const rotated = await decodeProbs(true, 0, `kivi-${bits}-rot` as StorageKind);
      const optionOff = await decodeProbs(false, 0, `kivi-${bits}-rot` as StorageKind);
      assert.deepEqual(optionOff.probs, published.probs, `kivi-${bits}-rot without rotateKv is KIVI as published`);
      assert.notDeepEqual(rotated.probs, published.probs, `kivi-${bits}-rot with rotateKv attended like KIVI as published`);
      const [ePub, eRot] = [rms(published.probs, truth.probs), rms(rotated.probs, truth.probs)];
      assert.ok(eRot < 3 * ePub + 1e-4, `kivi-${bits}: rotated probs error ${eRot} vs published ${ePub}`);
    }
  });

  it('rejects a non-boolean rotateKv', () => {
    assert.throws(() => new KvEngine({ layers: 1, qHeads: QH, kvHeads: H, headDim: D, quant: 'symmetric', rotateKv: 'yes' as unknown as boolean }), /rotateKv must be a boolean/);
  });
});

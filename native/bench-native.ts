// Benchmark-only native helpers, checked: dense fp32/fp16 decode attention
// over plain arrays, a memory-read-bandwidth probe and a seeded Gaussian fill.
// Not part of the engine API; the cache service never calls these.
import { loadAddon } from './binding.js';
import { KvEngineError, invalid } from './errors.js';
import { checkArray, checkInt } from './validate.js';

export interface DenseProblem {
  qHeads: number;
  kvHeads: number;
  headDim: number;
  nCtx: number;
  q: Float32Array; // [qHeads][headDim] f32, one decode row
  k: Float32Array | Uint16Array; // [kvHeads][nCtx][headDim] f32, or fp16 bits (u16) for the f16 kernel
  v: Float32Array | Uint16Array; // [kvHeads][nCtx][headDim], same type as k
  out: Float32Array; // [qHeads][headDim] f32, written
}

/** Runs each problem's decode attention (one after another) with the dense kernel. */
export async function denseAttention(dtype: 'f32' | 'f16', problems: DenseProblem[], threads = 0): Promise<void> {
  const ctor = dtype === 'f16' ? Uint16Array : Float32Array;
  problems.forEach((p, i) => {
    const at = `denseAttention: problem ${i}`;
    checkInt(`${at}: kvHeads`, p.kvHeads, 1);
    checkInt(`${at}: qHeads`, p.qHeads, p.kvHeads);
    if (p.qHeads % p.kvHeads !== 0) throw invalid(`${at}: qHeads must be a multiple of kvHeads`);
    if (p.qHeads / p.kvHeads > 16) throw invalid(`${at}: at most 16 q-heads per kv-head`);
    checkInt(`${at}: headDim`, p.headDim, 16);
    if (p.headDim % 16 !== 0) throw invalid(`${at}: headDim must be a multiple of 16`);
    checkInt(`${at}: nCtx`, p.nCtx, 1);
    checkArray(`${at}: q`, p.q, Float32Array, p.qHeads * p.headDim);
    checkArray(`${at}: out`, p.out, Float32Array, p.qHeads * p.headDim);
    checkArray(`${at}: k`, p.k, ctor, p.kvHeads * p.nCtx * p.headDim);
    checkArray(`${at}: v`, p.v, ctor, p.kvHeads * p.nCtx * p.headDim);
  });
  await wrap('denseAttention', loadAddon().denseAttention(dtype === 'f16', threads, problems));
}

/** Best-of-`reps` read bandwidth in GB/s over a fresh buffer of `bytes` (≥ 1 GiB by default). */
export async function memoryBandwidth(bytes = 2 ** 30, threads = 0, reps = 5): Promise<number> {
  checkInt('bytes', bytes, 2 ** 20);
  checkInt('reps', reps, 1);
  return wrap('memoryBandwidth', loadAddon().memoryBandwidth(bytes, threads, reps));
}

/** Fills with N(0, sigma²) from a seeded stream (same values for any thread
 * count); a Uint16Array receives fp16 bits. */
export async function fillGaussian(array: Float32Array | Uint16Array, seed: number, sigma = 1, threads = 0): Promise<void> {
  if (!(array instanceof Float32Array) && !(array instanceof Uint16Array))
    throw invalid('fillGaussian: array must be a Float32Array or a Uint16Array (fp16 bits)');
  checkInt('seed', seed, 0);
  await wrap('fillGaussian', loadAddon().fillGaussian(array, seed, sigma, threads));
}

async function wrap<T>(op: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    throw KvEngineError.fromNative(err, op);
  }
}

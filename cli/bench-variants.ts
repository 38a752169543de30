// The variants `smartkv bench attention` times: dense fp32/fp16 over plain
// arrays (native loops) and the engine with uniform, KIVI and SmartKV-mixed
// storage. Every engine call is a real decode step: one query row per
// sequence, appending one token.
import { denseAttention, fillGaussian, type DenseProblem } from '../native/bench-native.js';
import { TOKEN_META_BYTES } from '../native/formats.js';
import { KvEngine, type AttendRequest, type KvFormat, type StorageKind } from '../native/kv-engine.js';
import { budgetForBeta, greedyAllocate } from '../services/allocator/greedy.js';
import { timeCalls, timePairedCalls } from './bench-stats.js';

export interface Shape {
  name: 'mha' | 'gqa';
  qHeads: number;
  kvHeads: number;
  headDim: number;
}

export interface BenchCase {
  shape: Shape;
  n: number; // cached tokens per sequence
  batch: number; // sequences per call
}

export interface Timing {
  warmup: number;
  reps: number;
}

export interface Measured {
  us: number;
  bytes: number;
  achievedBeta: number;
  pairedSpeedup?: number; // median over alternating calls of partner µs / this µs (runEngine with a partner)
}

export type EngineVariant =
  | { name: string; kind: 'uniform'; format: KvFormat }
  | { name: string; kind: 'kivi'; storage: StorageKind }
  | { name: string; kind: 'smartkv'; beta: number };

export const SINKS = 4;
export const WINDOW = 64;
const FILL_CHUNK = 1024; // tokens appended per call while filling

const fp16Bytes = (c: BenchCase) => c.batch * c.n * 2 * c.shape.kvHeads * c.shape.headDim * 2;

/** Dense decode attention over [kvHeads][n][headDim] arrays, one problem per
 * sequence, ready to call (the arrays stay held while the call is kept). */
export async function prepareDense(c: BenchCase, dtype: 'f32' | 'f16'): Promise<{ call: () => Promise<void>; bytes: number }> {
  const { qHeads, kvHeads, headDim } = c.shape;
  const size = kvHeads * c.n * headDim;
  const problems: DenseProblem[] = [];
  for (let b = 0; b < c.batch; b++) {
    const k = dtype === 'f32' ? new Float32Array(size) : new Uint16Array(size); // [kvHeads][n][headDim]
    const v = dtype === 'f32' ? new Float32Array(size) : new Uint16Array(size);
    const q = new Float32Array(qHeads * headDim); // [qHeads][headDim]
    await fillGaussian(k, 1000 + 3 * b);
    await fillGaussian(v, 1001 + 3 * b);
    await fillGaussian(q, 1002 + 3 * b);
    problems.push({ qHeads, kvHeads, headDim, nCtx: c.n, q, k, v, out: new Float32Array(qHeads * headDim) });
  }
  return { call: () => denseAttention(dtype, problems), bytes: fp16Bytes(c) * (dtype === 'f32' ? 2 : 1) };
}

/** Times a prepared dense problem. */
export async function runDense(c: BenchCase, dense: { call: () => Promise<void>; bytes: number }, t: Timing): Promise<Measured> {
  const us = await timeCalls(dense.call, t.warmup, t.reps);
  return { us, bytes: dense.bytes, achievedBeta: dense.bytes / fp16Bytes(c) };
}

/** A few chunks of Gaussian K/V, made once per shape and appended in turn:
 * attention speed does not depend on the values, and generating 32K tokens
 * × 32 heads afresh for every variant would dominate the run. */
let chunkCache: { kv: number; k: Float32Array[]; v: Float32Array[] } | null = null;
const N_CHUNKS = 4;

async function sourceChunks(kv: number): Promise<{ k: Float32Array[]; v: Float32Array[] }> {
  if (chunkCache?.kv !== kv) {
    chunkCache = null; // let the previous shape's chunks go first
    const k: Float32Array[] = [], v: Float32Array[] = [];
    for (let i = 0; i < N_CHUNKS; i++) {
      k.push(new Float32Array(FILL_CHUNK * kv)); // [chunk][kvHeads][headDim]
      v.push(new Float32Array(FILL_CHUNK * kv));
      await fillGaussian(k[i], 5000 + 2 * i);
      await fillGaussian(v[i], 5001 + 2 * i);
    }
    chunkCache = { kv, k, v };
  }
  return chunkCache;
}

/** Appends n tokens to layer 0 of seq, a chunk at a time, starting at chunk `first`. */
async function fillSequence(eng: KvEngine, seq: number, n: number, first: number): Promise<void> {
  const kv = eng.config.kvHeads * eng.config.headDim;
  const { k, v } = await sourceChunks(kv);
  for (let at = 0, i = first; at < n; at += FILL_CHUNK, i++) {
    const rows = Math.min(FILL_CHUNK, n - at);
    await eng.append(seq, 0, k[i % N_CHUNKS].subarray(0, rows * kv), v[i % N_CHUNKS].subarray(0, rows * kv));
  }
}

/** Zipf importance (weight 1/rank) over a seeded random order of the tokens. */
export function zipfImportance(n: number, seed: number): Float32Array {
  const order = Uint32Array.from({ length: n }, (_, i) => i);
  let s = seed >>> 0;
  for (let i = n - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const imp = new Float32Array(n);
  order.forEach((tok, rank) => (imp[tok] = 1 / (rank + 1)));
  return imp;
}

/** The plan for one sequence: every token in one format, or the greedy mix for β. */
async function planFor(eng: KvEngine, seq: number, n: number, v: EngineVariant): Promise<Uint8Array | null> {
  if (v.kind === 'kivi') return null;
  if (v.kind === 'uniform') return new Uint8Array(n).fill(['fp16', 'int8', 'int4', 'int2'].indexOf(v.format));
  const report = await eng.exportImportance(seq, 0);
  const { kvHeads, headDim, blockTokens } = eng.config;
  const budgetBytes = Math.max(0, budgetForBeta({
    beta: v.beta,
    n,
    fp16TokenBytes: 2 * kvHeads * headDim * 2,
    tokenBytes: eng.tokenBytes(),
    metaBytesPerToken: TOKEN_META_BYTES,
    blockTokens,
    // bookkeeping beyond 8 bytes a token: positions in the blocks (4), page
    // tables and rounding (docs/engine.md: ≤ 12.75 bytes a token + 1.2 KiB)
    extraBytes: 1280 + 5 * n,
    sinks: SINKS,
    window: WINDOW,
  }));
  const importance = zipfImportance(n, seq * 7919);
  return greedyAllocate({ importance, sqError: report.sqError, tokenBytes: eng.tokenBytes(), budgetBytes, sinks: SINKS, window: WINDOW })
    .formats;
}

async function heldAndBeta(eng: KvEngine, seqs: number[]): Promise<{ held: number; beta: number }> {
  let held = 0, fp16 = 0;
  for (const s of seqs) {
    const st = await eng.stats(s);
    held += st.heldBytes;
    fp16 += st.fp16Bytes;
  }
  return { held, beta: held / fp16 };
}

/** Fills `batch` sequences, applies the variant's plan, times decode steps, frees them.
 * With a partner (the fp16-dense call of the same case) the two are called
 * alternately and the paired ratio comes back as pairedSpeedup. */
export async function runEngine(eng: KvEngine, c: BenchCase, v: EngineVariant, t: Timing, partner?: () => Promise<unknown>): Promise<Measured> {
  const { qHeads, kvHeads, headDim } = c.shape;
  const storage = v.kind === 'kivi' ? v.storage : 'mixed';
  const seqs: number[] = [];
  try {
    for (let b = 0; b < c.batch; b++) {
      const seq = await eng.createSequence({ storage });
      seqs.push(seq);
      await fillSequence(eng, seq, c.n, b);
      const formats = await planFor(eng, seq, c.n, v);
      if (formats) await eng.applyPlan(seq, 0, Uint32Array.from({ length: c.n }, (_, i) => i), formats);
    }
    const before = await heldAndBeta(eng, seqs);
    const reqs: AttendRequest[] = [];
    for (const [b, seq] of seqs.entries()) {
      const q = new Float32Array(qHeads * headDim); // [1][qHeads][headDim]
      const kNew = new Float32Array(kvHeads * headDim); // [1][kvHeads][headDim]
      const vNew = new Float32Array(kvHeads * headDim);
      await fillGaussian(q, 9000 + 3 * b);
      await fillGaussian(kNew, 9001 + 3 * b);
      await fillGaussian(vNew, 9002 + 3 * b);
      reqs.push({ seq, layer: 0, q, kNew, vNew, out: new Float32Array(qHeads * headDim) });
    }
    const step = () => eng.attend(reqs);
    const paired = partner ? await timePairedCalls(partner, step, t.warmup, t.reps) : null;
    const us = paired ? paired.us : await timeCalls(step, t.warmup, t.reps);
    const after = await heldAndBeta(eng, seqs);
    // The cache grows by a token a call; count what the middle call read.
    return { us, bytes: (before.held + after.held) / 2, achievedBeta: before.beta, pairedSpeedup: paired?.ratio };
  } finally {
    for (const s of seqs) await eng.freeSequence(s);
  }
}

// Loads smartkv_native.node (built by `npm run build:native` into
// native/build/Release) and types its raw surface. Everything here trusts its
// input; KvEngine and bench-native.ts are the checked API.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Engine config as the addon reads it: numbers and booleans only. */
export interface NativeConfig {
  layers: number;
  qHeads: number;
  kvHeads: number;
  headDim: number;
  blockTokens?: number;
  quant: number; // 0 symmetric, 1 asymmetric
  gamma?: number;
  masterCopy?: boolean; // the default mode: true = reversible
  masterDir?: string;
  queryInt8?: boolean;
  fastPath?: boolean;
  memoryLimitBytes?: number;
  threads?: number;
  kiviResidual?: number;
  rotateKv?: boolean;
  device: number; // 0 cpu, 1 cuda, 2 auto
}

export interface NativeAttendRequest {
  seq: number;
  layer: number;
  rows: number;
  q: Float32Array; // [rows][qHeads][headDim] f32
  kNew: Float32Array; // [rows][kvHeads][headDim] f32
  vNew: Float32Array; // [rows][kvHeads][headDim] f32
  out: Float32Array; // [rows][qHeads][headDim] f32, written
  probs: Float32Array | null; // [rows][nAfter] f32, written
}

export interface NativeStats {
  payload: number;
  params: number;
  metadata: number;
  fp16Equivalent: number;
  master: number;
  tokens: number;
  kiviTokens: number;
  tokensByFormat: number[]; // [4] by kv_format code
}

export interface NativeEngine {
  backendName(): string;
  createSequence(kind: number, gamma?: number, mode?: number): Promise<number>; // mode: 0 downgrade-only, 1 reversible
  freeSequence(seq: number): Promise<void>;
  append(seq: number, layer: number, rows: number, k: Float32Array, v: Float32Array): Promise<void>;
  attend(requests: NativeAttendRequest[]): Promise<void>;
  attendSync(requests: NativeAttendRequest[]): void; // on the calling thread (small requests)
  applyPlan(
    seq: number,
    layer: number,
    positions: Uint32Array,
    formats: Uint8Array,
  ): Promise<{ tokensChanged: number; bytesMoved: number }>;
  report(
    seq: number,
    layer: number,
    importance: Float32Array | null, // [n] f32
    format: Uint8Array | null, // [n] u8 kv_format
    sqError: Float32Array | null, // [n][3] f32
  ): Promise<void>;
  stats(seq: number): Promise<NativeStats>;
  readKv(seq: number, layer: number, k: Float32Array, v: Float32Array): Promise<void>;
  close(): Promise<void>;
}

/** A tensor in a memory-mapped safetensors file (services/orchestrator/model/weights.ts checks it). */
export interface NativeTensorRef {
  file: number; // index into NativeModelSpec.files
  offset: number; // absolute byte offset of the data
  dtype: number; // 0 f32, 1 f16, 2 bf16
  rows: number;
  cols: number;
}

export interface NativeModelSpec {
  config: {
    layers: number; dModel: number; heads: number; kvHeads: number; headDim: number;
    dFf: number; vocab: number; rmsEps: number;
    ropeInvFreq: Float32Array; // [headDim/2]
  };
  files: string[];
  weights: {
    embed: NativeTensorRef; finalNorm: NativeTensorRef; lmHead: NativeTensorRef;
    layers: Record<string, NativeTensorRef | null>[];
  };
  threads?: number;
}

/** The dense forward; every method runs on a worker thread. */
export interface NativeModel {
  embed(tokens: Uint32Array, x: Float32Array): Promise<void>; // x: [n][dModel]
  preAttention(layer: number, x: Float32Array, positions: Uint32Array, q: Float32Array, k: Float32Array, v: Float32Array): Promise<void>;
  postAttention(layer: number, attn: Float32Array, n: number, x: Float32Array): Promise<void>;
  logits(x: Float32Array, n: number, out: Float32Array): Promise<void>;
  /** In-process step: tokens [sum rows], positions [sum rows]; logits [b][vocab] or [sum rows][vocab] with allRows. */
  step(engine: NativeEngine, seqs: Uint32Array, rows: Uint32Array, tokens: Uint32Array, positions: Uint32Array, logits: Float32Array, allRows: boolean): Promise<void>;
}

export interface NativeDenseProblem {
  qHeads: number;
  kvHeads: number;
  headDim: number;
  nCtx: number;
  q: Float32Array; // [qHeads][headDim] f32
  k: Float32Array | Uint16Array; // [kvHeads][nCtx][headDim] f32 or fp16 bits
  v: Float32Array | Uint16Array; // [kvHeads][nCtx][headDim] f32 or fp16 bits
  out: Float32Array; // [qHeads][headDim] f32, written
}

/** A data-plane region (native/src/shm-region.h): shared memory plus a futex doorbell. */
export interface NativeShmRegion {
  buffer(): ArrayBuffer; // [bytes] u8, the mapping (services/cache/data-plane-layout.ts)
  path(): string | null; // /proc/<pid>/fd/<fd> of the region this process created; null when opened
  /** Publishes request n (descriptor and tensors written before). */
  post(n: number): void;
  /** Blocks this thread up to ms for request n's answer: 0 answered, 1 torn down, 2 not yet. */
  waitSync(n: number, ms: number): 0 | 1 | 2;
  /** Waits on a worker thread: 0 answered, 1 torn down, 2 timed out. */
  wait(n: number, timeoutMs: number): Promise<0 | 1 | 2>;
  /** Calls back on this thread with every new request number the peer rings. */
  watch(onRing: (n: number) => void): void;
  /** Request n is answered. */
  complete(n: number): void;
  /** Tears the region down for both sides (waiters return 1). */
  close(): void;
}

export interface NativeAddon {
  NativeEngine: new (config: NativeConfig) => NativeEngine;
  ShmRegion: { new (how: 'create', bytes: number): NativeShmRegion; new (how: 'open', path: string, bytes: number): NativeShmRegion };
  NativeModel: new (spec: NativeModelSpec) => NativeModel;
  cudaCompiled: boolean; // the build has the CUDA backend
  cudaDevicePresent(): boolean; // ... and a device is visible now
  denseAttention(f16: boolean, threads: number, problems: NativeDenseProblem[]): Promise<void>;
  memoryBandwidth(bytes: number, threads: number, reps: number): Promise<number>;
  fillGaussian(array: Float32Array | Uint16Array, seed: number, sigma: number, threads: number): Promise<void>;
}

const ADDON = join('native', 'build', 'Release', 'smartkv_native.node');

/** The addon path: $SMARTKV_NATIVE, else the first native/build/Release/…
 * above this file (works from native/ and from dist/native/). */
function locateAddon(): string {
  if (process.env.SMARTKV_NATIVE) return resolve(process.env.SMARTKV_NATIVE);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, ADDON);
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`${ADDON} not found; run \`npm run build:native\``);
    dir = parent;
  }
}

let addon: NativeAddon | undefined;

export function loadAddon(): NativeAddon {
  addon ??= createRequire(import.meta.url)(locateAddon()) as NativeAddon;
  return addon;
}

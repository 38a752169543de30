// `smartkv bench attention`: decode attention, side by side, for the dense
// baselines, uniform quantisation, KIVI and SmartKV mixes at several budgets,
// over MHA and GQA layer shapes. Rows stream out as they are measured.
import { memoryBandwidth } from '../native/bench-native.js';
import { DEFAULT_BLOCK_TOKENS, KvEngine, KvEngineError } from '../native/kv-engine.js';
import { tableHeader, tableRow, type BenchRow } from './bench-table.js';
import { prepareDense, runDense, runEngine, type BenchCase, type EngineVariant, type Measured, type Shape, type Timing } from './bench-variants.js';

export interface BenchAttentionOptions {
  json: boolean; // one JSON object per line instead of the table
  quick: boolean; // small n, few reps: a smoke test
  blockTokens?: number; // the engines' storage block (default 32, the cache service's default)
}


export interface BenchIo {
  out: (line: string) => void; // results
  progress: (line: string) => void; // stderr
}

const SHAPES: Shape[] = [
  { name: 'mha', qHeads: 32, kvHeads: 32, headDim: 128 },
  { name: 'gqa', qHeads: 32, kvHeads: 8, headDim: 128 },
];

const ENGINE_VARIANTS: EngineVariant[] = [
  { name: 'int8', kind: 'uniform', format: 'int8' },
  { name: 'int4', kind: 'uniform', format: 'int4' },
  { name: 'int2', kind: 'uniform', format: 'int2' },
  { name: 'kivi-2', kind: 'kivi', storage: 'kivi-2' },
  { name: 'kivi-4', kind: 'kivi', storage: 'kivi-4' },
  { name: 'smartkv-0.25', kind: 'smartkv', beta: 0.25 },
  { name: 'smartkv-0.33', kind: 'smartkv', beta: 0.33 },
  { name: 'smartkv-0.5', kind: 'smartkv', beta: 0.5 },
];

interface Plan {
  sizes: { n: number; batch: number }[];
  timing: Timing;
  probeBytes: number;
}

const FULL: Plan = {
  sizes: [
    { n: 4096, batch: 1 },
    { n: 16384, batch: 1 },
    { n: 32768, batch: 1 },
    { n: 4096, batch: 8 },
  ],
  timing: { warmup: 3, reps: 21 },
  probeBytes: 2 ** 30,
};

// Quick: the same shapes and variants on short caches (the window and sinks
// still fit), and a smaller bandwidth buffer, so `npm test` can run it.
const QUICK: Plan = {
  sizes: [
    { n: 384, batch: 1 },
    { n: 256, batch: 2 },
  ],
  timing: { warmup: 1, reps: 3 },
  probeBytes: 2 ** 26,
};

export async function benchAttention(opts: BenchAttentionOptions, io: BenchIo): Promise<BenchRow[]> {
  const plan = opts.quick ? QUICK : FULL;
  const blockTokens = opts.blockTokens ?? DEFAULT_BLOCK_TOKENS;
  io.progress(`probing memory read bandwidth over ${(plan.probeBytes / 2 ** 20).toFixed(0)} MiB…`);
  const bandwidth = await memoryBandwidth(plan.probeBytes, 0, opts.quick ? 2 : 5);
  if (!opts.json) {
    io.out(`memory read bandwidth (probe): ${bandwidth.toFixed(1)} GB/s`);
    io.out(`median of ${plan.timing.reps} decode calls after ${plan.timing.warmup} warm-up; head_dim 128; engine blocks of ${blockTokens} tokens; engine rows alternate their calls with fp16-dense, and their speedup is the median of those pairs`);
    io.out(tableHeader());
  }
  const rows: BenchRow[] = [];
  const total = SHAPES.length * plan.sizes.length * (2 + ENGINE_VARIANTS.length);
  let done = 0;
  for (const shape of SHAPES) {
    const eng = new KvEngine({ layers: 1, qHeads: shape.qHeads, kvHeads: shape.kvHeads, headDim: shape.headDim, quant: 'symmetric', blockTokens });
    try {
      for (const size of plan.sizes) {
        const c: BenchCase = { shape, ...size };
        let fp16Us: number | null = null;
        const emit = (variant: string, targetBeta: number | null, m: Measured | null) => {
          done++;
          if (!m) return;
          if (variant === 'fp16-dense') fp16Us = m.us;
          const row = toRow(c, variant, targetBeta, m, bandwidth, fp16Us, plan.timing.reps, variant.endsWith('-dense') ? null : blockTokens);
          rows.push(row);
          io.out(opts.json ? JSON.stringify(row) : tableRow(row));
        };
        const at = (v: string) => io.progress(`[${done + 1}/${total}] ${shape.name} n=${c.n} batch=${c.batch} ${v}`);
        // The fp16-dense problem stays held: every engine row alternates its calls
        // with it, and its "× fp16-dense" is the median of those paired ratios.
        let fp16Call: (() => Promise<void>) | undefined;
        for (const dtype of ['f16', 'f32'] as const) {
          const name = dtype === 'f16' ? 'fp16-dense' : 'fp32-dense';
          at(name);
          const dense = await prepareDense(c, dtype);
          const m = await denseOrSkip(c, dense, plan.timing, io);
          if (m && dtype === 'f16') fp16Call = dense.call;
          emit(name, null, m);
        }
        for (const v of ENGINE_VARIANTS) {
          at(v.name);
          emit(v.name, v.kind === 'smartkv' ? v.beta : null, await runEngine(eng, c, v, plan.timing, fp16Call));
        }
      }
    } finally {
      await eng.close();
    }
  }
  return rows;
}

/** Dense rows need AVX-512 or AVX2+FMA+F16C (dense-dispatch.cc); without either they are skipped. */
async function denseOrSkip(c: BenchCase, dense: Awaited<ReturnType<typeof prepareDense>>, t: Timing, io: BenchIo): Promise<Measured | null> {
  try {
    return await runDense(c, dense, t);
  } catch (err) {
    if (err instanceof KvEngineError && err.code === 'FAILED_PRECONDITION') {
      io.progress(`skipping dense: ${err.message}`);
      return null;
    }
    throw err;
  }
}

function toRow(c: BenchCase, variant: string, targetBeta: number | null, m: Measured, bandwidth: number, fp16Us: number | null, reps: number, blockTokens: number | null): BenchRow {
  const gbps = m.bytes / (m.us * 1e3);
  return {
    shape: c.shape.name,
    q_heads: c.shape.qHeads,
    kv_heads: c.shape.kvHeads,
    head_dim: c.shape.headDim,
    n: c.n,
    batch: c.batch,
    variant,
    block_tokens: blockTokens,
    target_beta: targetBeta,
    achieved_beta: m.achievedBeta,
    hot_bytes: m.bytes,
    master_bytes: 0, // the benchmark's sequences are downgrade-only
    fp16_bytes: Math.round(m.bytes / m.achievedBeta),
    mode: 'downgrade-only',
    budget_met: targetBeta === null || m.achievedBeta <= targetBeta,
    us: m.us,
    reps,
    bytes: m.bytes,
    gbps,
    bandwidth_gbps: bandwidth,
    pct_bandwidth: (100 * gbps) / bandwidth,
    speedup_vs_fp16: m.pairedSpeedup ?? (fp16Us === null ? Number.NaN : fp16Us / m.us),
    speedup_paired: m.pairedSpeedup !== undefined,
  };
}

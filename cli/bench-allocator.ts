// `smartkv bench allocator`: plan time of every allocator policy for 4K, 32K
// and 128K tokens, p50 and p99 over repeated calls after a warm-up. Inputs are
// realistic in shape: Zipf importance over a random ranking, squared errors
// from a gaussian model (int8 : int4 : int2 ≈ 1/256 : 1/16 : 1 times a
// lognormal per-token scale), the engine's byte costs for 8 KV heads of 128,
// and the budget for β = 0.25.
import { TOKEN_META_BYTES, tokenBytes } from '../native/formats.js';
import { budgetForBeta } from '../services/allocator/greedy.js';
import { allocate, PLAN_POLICIES, type AllocationInput, type PlanPolicy } from '../services/allocator/policies.js';
import { mulberry32 as uniform } from '../services/common/random.js';

export interface BenchAllocatorOptions {
  json: boolean;
  quick: boolean;
  sizes?: readonly number[]; // tokens per plan; default 4K, 32K, 128K
}

export interface AllocatorBenchRow {
  policy: PlanPolicy;
  n: number; // tokens in the plan
  p50_ms: number;
  p99_ms: number;
  reps: number; // timed calls
  beta: number; // the target the budget is set for
  fits: boolean;
}

interface Io {
  out: (line: string) => void;
  progress: (line: string) => void;
}

const BETA = 0.25;
const LAYOUT = { headDim: 128, kvHeads: 8, blockTokens: 32, quant: 'symmetric' as const };
const SINKS = 4;
const WINDOW = 64;

export async function benchAllocator(opts: BenchAllocatorOptions, io: Io): Promise<void> {
  const rows = runAllocatorBench(opts, io.progress);
  if (opts.json) for (const r of rows) io.out(JSON.stringify(r));
  else {
    io.out(`allocator plan time, β = ${BETA}, ${SINKS} sinks + ${WINDOW} window, after warm-up (node ${process.version})`);
    io.out(`${'policy'.padEnd(10)} ${'n'.padStart(7)} ${'p50 ms'.padStart(9)} ${'p99 ms'.padStart(9)} ${'reps'.padStart(5)}`);
    for (const r of rows)
      io.out(`${r.policy.padEnd(10)} ${String(r.n).padStart(7)} ${r.p50_ms.toFixed(3).padStart(9)} ${r.p99_ms.toFixed(3).padStart(9)} ${String(r.reps).padStart(5)}`);
  }
}

/** One row per (n, policy); synchronous, so the timings see no event loop. */
export function runAllocatorBench(opts: BenchAllocatorOptions, progress: (line: string) => void = () => {}): AllocatorBenchRow[] {
  const rows: AllocatorBenchRow[] = [];
  for (const n of opts.sizes ?? [4096, 32768, 131072]) {
    const input = benchInput(n, 1);
    // 500 at 4K, 200 at 32K, 50 at 128K: a p99 of 200 samples is their 2nd largest
    const reps = opts.quick ? 5 : n <= 4096 ? 500 : n <= 32768 ? 200 : 50;
    const warmup = opts.quick ? 2 : Math.max(20, reps >> 2);
    for (const policy of PLAN_POLICIES) {
      let fits = false;
      for (let i = 0; i < warmup; i++) fits = allocate(policy, input).fits;
      const ms = new Float64Array(reps);
      for (let i = 0; i < reps; i++) {
        const t0 = process.hrtime.bigint();
        allocate(policy, input);
        ms[i] = Number(process.hrtime.bigint() - t0) / 1e6;
      }
      ms.sort();
      const row = { policy, n, p50_ms: quantile(ms, 0.5), p99_ms: quantile(ms, 0.99), reps, beta: BETA, fits };
      rows.push(row);
      progress(`${policy} n=${n}: p50 ${row.p50_ms.toFixed(3)} ms`);
    }
  }
  return rows;
}

/** The nearest-rank quantile of sorted samples. */
function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** A plan input of n tokens shaped like the engine's (see the file comment). */
export function benchInput(n: number, seed: number): AllocationInput {
  const u = uniform(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  const importance = new Float32Array(n); // [n] f32, 1/rank over a random ranking
  const rank = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(u() * (i + 1));
    [rank[i], rank[j]] = [rank[j], rank[i]];
  }
  for (let i = 0; i < n; i++) importance[i] = 1 / (1 + rank[i]);
  const sqError = new Float32Array(3 * n); // [n][3] f32 at int8, int4, int2
  for (let i = 0; i < n; i++) {
    const scale = Math.exp(0.5 * normal());
    sqError[3 * i] = (scale / 256) * (1 + 0.05 * normal()) ** 2;
    sqError[3 * i + 1] = (scale / 16) * (1 + 0.05 * normal()) ** 2;
    sqError[3 * i + 2] = scale;
  }
  const bytes = tokenBytes(LAYOUT);
  const budgetBytes = Math.max(0, budgetForBeta({
    beta: BETA,
    n,
    fp16TokenBytes: 2 * LAYOUT.kvHeads * LAYOUT.headDim * 2,
    tokenBytes: bytes,
    metaBytesPerToken: TOKEN_META_BYTES,
    blockTokens: LAYOUT.blockTokens,
    extraBytes: 2 * 4096 * 4 + 4096,
    sinks: SINKS,
    window: WINDOW,
  })); // 0 below ~1K tokens, where the fixed costs alone exceed β
  return { importance, sqError, upperBounds: null, tokenBytes: bytes, budgetBytes, sinks: SINKS, window: WINDOW, seed };
}

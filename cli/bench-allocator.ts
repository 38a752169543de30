// `smartkv bench allocator`: plan time of every allocator policy for 4K, 32K
// and 128K tokens, p50 and p99 over repeated calls after a warm-up. Inputs are
// realistic in shape: Zipf importance over a random ranking, squared errors
// from a gaussian model (int8 : int4 : int2 ≈ 1/256 : 1/16 : 1 times a
// lognormal per-token scale), the engine's byte costs for 8 KV heads of 128,
// and the budget for β = 0.25.
import { formatBlockTokens, TOKEN_META_BYTES, tokenBytes } from '../native/formats.js';
import { budgetForBeta } from '../services/allocator/greedy.js';
import { allocate, PLAN_POLICIES, type AllocationInput, type PlanPolicy } from '../services/allocator/policies.js';
import { planExactly } from '../services/allocator/exact-plan.js';
import type { PlanLayout } from '../services/allocator/plan-cost.js';
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
  exact: boolean; // true: the one-call exact plan (planExactly: search + block pricing + fill), as a reallocation runs it
  target_beta: number;
  achieved_beta: number | null; // exact rows: the plan's worst β until the next plan, in the engine's bytes
  hot_bytes: number | null; // exact rows: the plan's hot bytes
  master_bytes: number; // the allocator holds no KV; 0
  fp16_bytes: number; // the tokens in FP16
  mode: string; // 'reversible' (no upper bounds) for these inputs
  budget_met: boolean | null; // exact rows: the plan meets β
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
    io.out(`allocator plan time, β = ${BETA}, ${SINKS} sinks + ${WINDOW} window, after warm-up (node ${process.version}); exact: the one-call plan priced in blocks`);
    io.out(`${'policy'.padEnd(16)} ${'n'.padStart(7)} ${'p50 ms'.padStart(9)} ${'p99 ms'.padStart(9)} ${'reps'.padStart(5)}  β achieved`);
    for (const r of rows)
      io.out(
        `${(r.policy + (r.exact ? ' exact' : '')).padEnd(16)} ${String(r.n).padStart(7)} ${r.p50_ms.toFixed(3).padStart(9)} ${r.p99_ms.toFixed(3).padStart(9)} ${String(r.reps).padStart(5)}  ${r.achieved_beta === null ? '—' : r.achieved_beta.toFixed(4)}`,
      );
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
      const row: AllocatorBenchRow = {
        policy, n, p50_ms: quantile(ms, 0.5), p99_ms: quantile(ms, 0.99), reps, beta: BETA, fits, exact: false,
        target_beta: BETA, achieved_beta: null, hot_bytes: null, master_bytes: 0, fp16_bytes: n * FP16_TOKEN, mode: 'reversible', budget_met: null,
      };
      rows.push(row);
      progress(`${policy} n=${n}: p50 ${row.p50_ms.toFixed(3)} ms`);
    }
    rows.push(exactRow(n, input, opts.quick ? 5 : Math.max(10, reps >> 2), progress));
  }
  return rows;
}

const FP16_TOKEN = 2 * LAYOUT.kvHeads * LAYOUT.headDim * 2;

/** smartkv's plan as a reallocation asks for it: one layer holding every
 * token at int2 (the steady state), 16 tokens due before the next plan. */
function exactRow(n: number, input: AllocationInput, reps: number, progress: (line: string) => void): AllocatorBenchRow {
  const T = LAYOUT.blockTokens, block = tokenBytes(LAYOUT).map((b, code) => b * formatBlockTokens(code, T));
  const current = new Uint8Array(n).fill(3);
  for (let i = 0; i < n; i++) if (i < SINKS || i >= n - WINDOW) current[i] = 0;
  const prot = Math.min(n, SINKS + WINDOW);
  const held = Math.ceil(prot / T) * block[0] + Math.ceil((n - prot) / formatBlockTokens(3, T)) * block[3] + Math.ceil(n / 128) * 128 * TOKEN_META_BYTES;
  const lay: PlanLayout = {
    targetBeta: BETA, blockTokens: T, blockBytes: block, tokenMetaBytes: TOKEN_META_BYTES, metaPageTokens: 128, tableEntryBytes: 8,
    fp16TokenBytes: FP16_TOKEN, layers: 1, groups: 1, tokens: n, outsideFp16Tokens: 0, aheadTokens: 16, heldBytes: held, protectedTokens: SINKS + WINDOW,
  };
  let plan = planExactly('smartkv', input, lay, current);
  const ms = new Float64Array(reps);
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    plan = planExactly('smartkv', input, lay, current);
    ms[i] = Number(process.hrtime.bigint() - t0) / 1e6;
  }
  ms.sort();
  progress(`smartkv exact n=${n}: p50 ${quantile(ms, 0.5).toFixed(3)} ms, ${plan.policyRuns} policy runs, β ${plan.achievedBeta.toFixed(4)}`);
  return {
    policy: 'smartkv', n, p50_ms: quantile(ms, 0.5), p99_ms: quantile(ms, 0.99), reps, beta: BETA, fits: plan.fits, exact: true,
    target_beta: BETA, achieved_beta: plan.achievedBeta, hot_bytes: plan.hotBytes, master_bytes: 0, fp16_bytes: n * FP16_TOKEN, mode: 'reversible', budget_met: plan.fits,
  };
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

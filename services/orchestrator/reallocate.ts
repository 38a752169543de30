// Reallocation: importance (and the bytes held) from the cache → a plan from
// the allocator → one ApplyPlan for all layers. reallocateBatch does it for
// every sequence due on one shard in a step with one call of each kind
// (ExportImportanceBatch, AllocateBatch, ApplyPlanBatch); reallocate does it
// for one sequence with the single-sequence calls. Both build each plan from
// the same importance and the same allocator inputs, so a plan never depends
// on which sequences shared its batch.
//
// What a plan costs is the allocator's business (services/allocator/
// plan-cost.ts): this sends it the engine's layout — block size and bytes,
// bookkeeping per token, the bytes held now, the protected tokens, the tokens
// that arrive at 16 bits before the next plan — and the plan that comes back
// meets β in the engine's exact bytes right after it and until the next one,
// or is the best effort with fits = false.
import type { AllocationInput, PlanPolicy } from '../allocator/policies.js';
import type { PlanLayout } from '../allocator/plan-cost.js';
import type { BatchResult, Bytes, CacheShard, ImportanceReport, LayerPlan, SequencePlan } from '../cache/cache-api.js';
import { formatBlockTokens, META_PAGE_TOKENS, TABLE_ENTRY_BYTES, TOKEN_META_BYTES } from '../../native/formats.js';
import type { Allocator, AllocatorResult, PlanProblem } from './allocator-client.js';

export interface SequenceLayout {
  layers: number;
  fp16TokenBytes: number; // FP16 K+V of one token in one layer (what β divides by)
  tokenBytes: readonly number[]; // [4] engine bytes per token and layer by format, full blocks
  blockTokens: number;
}

export interface ReallocOptions {
  policy: PlanPolicy;
  beta: number;
  sinks: number;
  window: number;
  ahead: number; // tokens that will arrive at 16 bits before the next plan
  seed: number;
  gamma: number; // the engine's EMA factor (for normalised importance)
  normalised: boolean; // importance / (1 − γ^k), k = queries that saw the token
  perLayer: boolean; // one bit-width per (token, layer) instead of per token
}

export interface ReallocOutcome {
  allocateUs: number;
  applyUs: number;
  tokensChanged: number;
  bytesMoved: number;
  bytes: Bytes; // after the plan (the bytes before when nothing changed)
  bytesBefore: Bytes; // right before the plan (what the export saw)
  fits: boolean; // the plan's exact bytes are within β now and until the next plan
  achievedBeta: number; // the allocator's exact worst β until the next plan
  predictedHotBytes: number; // the allocator's price of the plan (≥ what the engine holds after it)
  bindsFrom: number; // the shortest length from which β can bind
  allocateCalls: number; // Allocate calls this reallocation made (1)
  applyCalls: number; // ApplyPlan calls (0 or 1)
  formats: Uint8Array; // the plan: [n] shared, or [layers][unprotected tokens] per layer
}

/** Importance averaged over layers; errors weighted by each layer's importance,
 * so that importance × error is Σ over layers (one bit-width per token, all layers). */
export function combineLayers(r: ImportanceReport): { importance: Float32Array; sqError: Float32Array; current: Uint8Array } {
  const { tokens: n, layers: L } = r;
  const importance = new Float32Array(n); // [n]
  const sqError = new Float32Array(n * 3); // [n][3]
  const current = new Uint8Array(n); // [n] lowest precision over layers (largest code)
  for (let i = 0; i < n; i++) {
    let isum = 0;
    const e = [0, 0, 0], eu = [0, 0, 0];
    let cur = 0;
    for (let l = 0; l < L; l++) {
      const I = r.importance[l * n + i];
      isum += I;
      for (let f = 0; f < 3; f++) {
        const err = r.sqError[(l * n + i) * 3 + f];
        e[f] += I * err;
        eu[f] += err;
      }
      cur = Math.max(cur, r.formats[l * n + i]);
    }
    importance[i] = isum / L;
    for (let f = 0; f < 3; f++) sqError[i * 3 + f] = isum > 0 ? e[f] / isum : eu[f] / L;
    current[i] = cur;
  }
  return { importance, sqError, current };
}

/** Divides each token's EMA by the weight it could have gathered: a token
 * seen by k queries has had k updates, so its EMA carries 1 − γ^k of the
 * weight an old token's does. Position p of n is seen by n − p queries. */
export function normaliseImportance(r: ImportanceReport, gamma: number): void {
  const n = r.tokens;
  for (let l = 0; l < r.layers; l++)
    for (let p = 0; p < n; p++) {
      const w = 1 - Math.pow(gamma, n - p);
      if (w > 0) r.importance[l * n + p] /= w;
    }
}

/** One allocation problem: a set of (token, layer) slots, where plans apply. */
interface Problem {
  importance: Float32Array; // [m]
  sqError: Float32Array; // [m][3]
  current: Uint8Array; // [m] current format (upper bound without a master copy)
  sinks: number;
  window: number;
  groups: number; // 1 (shared) or layers (per layer)
  outsideFp16: number; // per group: protected tokens that are not slots
  /** The plan's changes as (layer, positions, formats); layer -1 = all layers. */
  changes(plan: Uint8Array): LayerPlan[];
}

/** Shared: one bit-width per token; importance averaged over layers. */
function sharedProblem(r: ImportanceReport, opt: ReallocOptions): Problem {
  const { importance, sqError, current } = combineLayers(r);
  const n = r.tokens;
  return {
    importance, sqError, current, sinks: opt.sinks, window: opt.window, groups: 1, outsideFp16: 0,
    changes: (plan) => {
      const changed: number[] = [];
      for (let i = 0; i < n; i++) if (plan[i] !== current[i]) changed.push(i);
      return changed.length ? [{ layer: -1, positions: Uint32Array.from(changed), formats: Uint8Array.from(changed, (i) => plan[i]) }] : [];
    },
  };
}

/** Per layer: every unprotected (token, layer) pair is a slot of one joint
 * problem under the whole budget, so layers that attend more get more bits.
 * Protected tokens stay out of it (FP16 in every layer). */
function perLayerProblem(r: ImportanceReport, opt: ReallocOptions): Problem {
  const n = r.tokens, L = r.layers;
  const isProtected = (p: number) => p < opt.sinks || p >= n - opt.window;
  const free: number[] = [];
  for (let p = 0; p < n; p++) if (!isProtected(p)) free.push(p);
  const m = free.length * L;
  const importance = new Float32Array(m), sqError = new Float32Array(m * 3), current = new Uint8Array(m);
  for (let l = 0, k = 0; l < L; l++)
    for (const p of free) {
      importance[k] = r.importance[l * n + p];
      sqError.set(r.sqError.subarray((l * n + p) * 3, (l * n + p) * 3 + 3), k * 3);
      current[k++] = r.formats[l * n + p];
    }
  const protectedCount = n - free.length;
  return {
    importance, sqError, current, sinks: 0, window: 0, groups: L, outsideFp16: protectedCount,
    changes: (plan) => {
      const out: LayerPlan[] = [];
      for (let l = 0; l < L; l++) {
        const pos: number[] = [], fmt: number[] = [];
        free.forEach((p, j) => {
          const k = l * free.length + j;
          if (plan[k] !== current[k]) {
            pos.push(p);
            fmt.push(plan[k]);
          }
        });
        if (pos.length) out.push({ layer: l, positions: Uint32Array.from(pos), formats: Uint8Array.from(fmt) });
      }
      return out;
    },
  };
}

/** The allocator's problem for one sequence's report, and how its plan becomes changes. */
function problemOf(report: ImportanceReport, lay: SequenceLayout, opt: ReallocOptions, reversible: boolean): { prob: Problem; problem: PlanProblem } {
  if (opt.normalised) normaliseImportance(report, opt.gamma);
  const prob = opt.perLayer ? perLayerProblem(report, opt) : sharedProblem(report, opt);
  const input: AllocationInput = {
    importance: prob.importance,
    sqError: prob.sqError,
    upperBounds: reversible ? null : prob.current,
    tokenBytes: lay.tokenBytes, // the layout's block bytes decide; kept for the wire's checks
    budgetBytes: 0,
    sinks: prob.sinks,
    window: prob.window,
    seed: opt.seed,
  };
  return { prob, problem: { policy: opt.policy, input, layout: planLayout(lay, opt, report, prob), current: prob.current } };
}

/** The outcome before the plan is applied (as it stays when nothing changes). */
function planned(report: ImportanceReport, r: AllocatorResult): ReallocOutcome {
  return {
    allocateUs: r.allocateUs, applyUs: 0, tokensChanged: 0, bytesMoved: 0, bytes: report.bytes, bytesBefore: report.bytes, fits: r.fits,
    achievedBeta: r.achievedBeta, predictedHotBytes: r.hotBytes, bindsFrom: r.bindsFrom, allocateCalls: 1, applyCalls: 0, formats: r.formats,
  };
}

export async function reallocate(
  shard: CacheShard,
  seq: number,
  allocator: Allocator,
  lay: SequenceLayout,
  opt: ReallocOptions,
  reversible: boolean, // the sequence keeps a master copy: plans may raise precision
): Promise<ReallocOutcome> {
  const report = await shard.exportImportance(seq);
  const { prob, problem } = problemOf(report, lay, opt, reversible);
  const r = await allocator.plan(problem.policy, problem.input, problem.layout, problem.current);
  const out = planned(report, r);
  const changes = prob.changes(r.formats);
  if (changes.length === 0) return out;
  const a = await shard.applyPlan(seq, changes);
  Object.assign(out, { applyUs: a.applyUs, tokensChanged: a.tokensChanged, bytesMoved: a.bytesMoved, bytes: a.bytes, applyCalls: 1 });
  return out;
}

/** One sequence due for reallocation in a step. */
export interface BatchEntry {
  seq: number;
  tokens: number; // tokens per layer it holds (to keep a call within one context's worth)
  layout: SequenceLayout;
  options: ReallocOptions;
  reversible: boolean;
}

/** One stage of a batched reallocation: its calls, their round trips, and the
 * part of those the services spent computing; the rest is transport. */
export interface StageCost {
  calls: number;
  us: number; // round trips, summed over the calls
  computeUs: number; // what the service reported spending (export, plans, applies)
}

/** What one shard's batched reallocation cost in a step. */
export interface BatchCost {
  sequences: number;
  export: StageCost;
  allocate: StageCost;
  apply: StageCost;
}

const stage = (): StageCost => ({ calls: 0, us: 0, computeUs: 0 });

/**
 * Every entry's reallocation on one shard: one ExportImportanceBatch, one
 * AllocateBatch and one ApplyPlanBatch (none when no plan changes anything).
 * A batch holds at most batchTokens tokens per layer in all (the model's
 * context: what one message is sized for); more go in further calls.
 * Each entry gets its outcome or the error it alone met (a sequence freed
 * meanwhile: NOT_FOUND); a call that fails as a whole fails its entries.
 */
export async function reallocateBatch(
  shard: CacheShard,
  allocator: Allocator,
  entries: readonly BatchEntry[],
  batchTokens = Infinity,
): Promise<{ outcomes: BatchResult<ReallocOutcome>[]; cost: BatchCost }> {
  const cost: BatchCost = { sequences: entries.length, export: stage(), allocate: stage(), apply: stage() };
  const outcomes: BatchResult<ReallocOutcome>[] = [];
  for (const group of chunks(entries, batchTokens)) {
    try {
      outcomes.push(...(await reallocateGroup(shard, allocator, group, cost)));
    } catch (e) {
      for (let i = 0; i < group.length; i++) outcomes.push(e as Error);
    }
  }
  return { outcomes, cost };
}

/** Consecutive entries whose tokens add up to at most batchTokens (one alone may exceed it). */
function chunks(entries: readonly BatchEntry[], batchTokens: number): BatchEntry[][] {
  const out: BatchEntry[][] = [];
  let cur: BatchEntry[] = [], sum = 0;
  for (const e of entries) {
    if (cur.length && sum + e.tokens > batchTokens) (out.push(cur), (cur = []), (sum = 0));
    cur.push(e);
    sum += e.tokens;
  }
  if (cur.length) out.push(cur);
  return out;
}

async function timed<T>(s: StageCost, call: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await call();
  } finally {
    s.calls++;
    s.us += Math.round((performance.now() - t0) * 1000);
  }
}

async function reallocateGroup(shard: CacheShard, allocator: Allocator, group: readonly BatchEntry[], cost: BatchCost): Promise<BatchResult<ReallocOutcome>[]> {
  const exported = await timed(cost.export, () => shard.exportImportanceBatch(group.map((e) => e.seq)));
  cost.export.computeUs += exported.exportUs;
  const out: BatchResult<ReallocOutcome>[] = [...exported.results] as BatchResult<ReallocOutcome>[];
  // The allocator's problems of the sequences that exported.
  const asked: { i: number; report: ImportanceReport; prob: Problem; problem: PlanProblem }[] = [];
  exported.results.forEach((report, i) => {
    if (report instanceof Error) return;
    const e = group[i];
    asked.push({ i, report, ...problemOf(report, e.layout, e.options, e.reversible) });
  });
  if (asked.length === 0) return out;
  const plans = await timed(cost.allocate, () => allocator.planBatch(asked.map((a) => a.problem)));
  // The plans that change something, applied in one call.
  const applying: { i: number; plan: SequencePlan }[] = [];
  asked.forEach((a, k) => {
    const r = plans[k];
    if (r instanceof Error) return void (out[a.i] = r);
    cost.allocate.computeUs += r.allocateUs;
    out[a.i] = planned(a.report, r);
    const changes = a.prob.changes(r.formats);
    if (changes.length) applying.push({ i: a.i, plan: { seq: group[a.i].seq, plans: changes } });
  });
  if (applying.length === 0) return out;
  const applied = await timed(cost.apply, () => shard.applyPlanBatch(applying.map((x) => x.plan)));
  applying.forEach(({ i }, k) => {
    const a = applied[k];
    if (a instanceof Error) return void (out[i] = a);
    cost.apply.computeUs += a.applyUs;
    Object.assign(out[i] as ReallocOutcome, { applyUs: a.applyUs, tokensChanged: a.tokensChanged, bytesMoved: a.bytesMoved, bytes: a.bytes, applyCalls: 1 });
  });
  return out;
}

/** What the allocator needs to price a plan in this engine's bytes. */
function planLayout(lay: SequenceLayout, opt: ReallocOptions, r: ImportanceReport, prob: Problem): PlanLayout {
  return {
    targetBeta: opt.beta,
    blockTokens: lay.blockTokens,
    blockBytes: lay.tokenBytes.map((t, code) => Math.round(t * formatBlockTokens(code, lay.blockTokens))),
    tokenMetaBytes: TOKEN_META_BYTES,
    metaPageTokens: META_PAGE_TOKENS,
    tableEntryBytes: TABLE_ENTRY_BYTES,
    fp16TokenBytes: lay.fp16TokenBytes,
    layers: lay.layers,
    groups: prob.groups,
    tokens: r.tokens,
    outsideFp16Tokens: prob.outsideFp16,
    aheadTokens: opt.ahead,
    heldBytes: r.bytes.heldBytes,
    protectedTokens: opt.sinks + opt.window,
  };
}

/** The smallest β any sequence can reach: every token at 2 bits, with its
 * scales and bookkeeping (long sequences approach it; protected tokens and
 * partly filled blocks keep short ones above it). */
export function minimumBeta(lay: SequenceLayout): number {
  return (lay.tokenBytes[3] + TOKEN_META_BYTES) / lay.fp16TokenBytes;
}

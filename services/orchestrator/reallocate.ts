// One reallocation for one sequence: importance (and the bytes held) from
// the cache → one plan from the allocator → one ApplyPlan for all layers.
//
// What a plan costs is the allocator's business (services/allocator/
// plan-cost.ts): this sends it the engine's layout — block size and bytes,
// bookkeeping per token, the bytes held now, the protected tokens, the tokens
// that arrive at 16 bits before the next plan — and the plan that comes back
// meets β in the engine's exact bytes right after it and until the next one,
// or is the best effort with fits = false.
import type { AllocationInput, PlanPolicy } from '../allocator/policies.js';
import type { PlanLayout } from '../allocator/plan-cost.js';
import type { Bytes, CacheShard, ImportanceReport, LayerPlan } from '../cache/cache-api.js';
import { META_PAGE_TOKENS, TABLE_ENTRY_BYTES, TOKEN_META_BYTES } from '../../native/formats.js';
import type { Allocator } from './allocator-client.js';

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

export async function reallocate(
  shard: CacheShard,
  seq: number,
  allocator: Allocator,
  lay: SequenceLayout,
  opt: ReallocOptions,
  reversible: boolean, // the sequence keeps a master copy: plans may raise precision
): Promise<ReallocOutcome> {
  const report = await shard.exportImportance(seq);
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
  const r = await allocator.plan(opt.policy, input, planLayout(lay, opt, report, prob), prob.current);
  const out: ReallocOutcome = {
    allocateUs: r.allocateUs, applyUs: 0, tokensChanged: 0, bytesMoved: 0, bytes: report.bytes, fits: r.fits,
    achievedBeta: r.achievedBeta, predictedHotBytes: r.hotBytes, bindsFrom: r.bindsFrom, allocateCalls: 1, applyCalls: 0, formats: r.formats,
  };
  const changes = prob.changes(r.formats);
  if (changes.length === 0) return out;
  const a = await shard.applyPlan(seq, changes);
  Object.assign(out, { applyUs: a.applyUs, tokensChanged: a.tokensChanged, bytesMoved: a.bytesMoved, bytes: a.bytes, applyCalls: 1 });
  return out;
}

/** What the allocator needs to price a plan in this engine's bytes. */
function planLayout(lay: SequenceLayout, opt: ReallocOptions, r: ImportanceReport, prob: Problem): PlanLayout {
  return {
    targetBeta: opt.beta,
    blockTokens: lay.blockTokens,
    blockBytes: lay.tokenBytes.map((t) => Math.round(t * lay.blockTokens)),
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

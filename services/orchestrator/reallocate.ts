// One reallocation for one sequence: importance from the cache → a plan from
// the allocator under the byte budget → the plan applied in the cache.
//
// The budget is for the bytes the engine really holds, so it is computed from
// the engine's own numbers: β × the FP16 bytes of the tokens there will be
// when the *next* plan runs (the `ahead` tokens that arrive meanwhile come in
// at 16 bits), minus bookkeeping, minus the protected tokens. Storage blocks
// round each format up to whole blocks; the plan is checked against that
// exact count and the budget shrunk by any excess (one or two rounds).
import type { AllocationInput, PlanPolicy } from '../allocator/policies.js';
import type { Bytes, CacheShard, ImportanceReport } from '../cache/cache-api.js';
import { TOKEN_META_BYTES } from '../../native/formats.js';
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
  bytes: Bytes | null; // after the plan (null: nothing changed, not applied)
  fits: boolean; // the plan's exact bytes (protected tokens, blocks, bookkeeping) are within β
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

/** Exact engine bytes of one layer holding `counts` tokens per format. */
export function layoutBytes(counts: readonly number[], lay: SequenceLayout): number {
  let b = 0;
  for (let f = 0; f < 4; f++) b += Math.ceil(counts[f] / lay.blockTokens) * lay.blockTokens * lay.tokenBytes[f];
  return b;
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
  /** Per layer: format counts of a plan (protected tokens included). */
  counts(plan: Uint8Array): number[][];
  /** The plan's changes as (layer, positions, formats); layer -1 = all layers. */
  changes(plan: Uint8Array): { layer: number; positions: Uint32Array; formats: Uint8Array }[];
}

/** Shared: one bit-width per token; importance averaged over layers. */
function sharedProblem(r: ImportanceReport, opt: ReallocOptions): Problem {
  const { importance, sqError, current } = combineLayers(r);
  const n = r.tokens;
  return {
    importance, sqError, current, sinks: opt.sinks, window: opt.window,
    counts: (plan) => {
      const c = [0, 0, 0, 0];
      for (const f of plan) c[f]++;
      return Array.from({ length: r.layers }, () => c);
    },
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
    importance, sqError, current, sinks: 0, window: 0,
    counts: (plan) =>
      Array.from({ length: L }, (_, l) => {
        const c = [protectedCount, 0, 0, 0];
        for (let k = l * free.length; k < (l + 1) * free.length; k++) c[plan[k]]++;
        return c;
      }),
    changes: (plan) => {
      const out = [];
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
  metadataBytes: number, // all layers, as last reported by the engine
  upgrades: boolean, // the cache keeps a master copy
): Promise<ReallocOutcome> {
  const report = await shard.exportImportance(seq);
  const n = report.tokens, L = lay.layers;
  if (opt.normalised) normaliseImportance(report, opt.gamma);
  const prob = opt.perLayer ? perLayerProblem(report, opt) : sharedProblem(report, opt);
  // β must hold right after the plan (n tokens) and just before the next one
  // (n + ahead): blocks round up, so the ahead tokens may cost nothing yet.
  // All in bytes over every layer.
  const allowedNow = opt.beta * n * lay.fp16TokenBytes * L;
  const allowed = opt.beta * (n + opt.ahead) * lay.fp16TokenBytes * L;
  const metaNow = metadataBytes;
  const meta = metaNow + opt.ahead * TOKEN_META_BYTES * L;
  const protectedNow = Math.min(n, opt.sinks + opt.window);
  const unprotectedLayers = opt.perLayer ? L : 1; // the shared problem's budget is per layer
  let budget = (allowed - meta - (protectedNow + opt.ahead) * lay.tokenBytes[0] * L) / (L / unprotectedLayers);
  const input: AllocationInput = {
    importance: prob.importance,
    sqError: prob.sqError,
    upperBounds: upgrades ? null : prob.current,
    tokenBytes: lay.tokenBytes,
    budgetBytes: Math.max(0, budget),
    sinks: prob.sinks,
    window: prob.window,
    seed: opt.seed,
  };
  let allocateUs = 0;
  let plan;
  let within = false;
  for (let round = 0; ; round++) {
    const r = await allocator.allocate(opt.policy, input);
    allocateUs += r.allocateUs;
    plan = r.allocation;
    let now = metaNow, later = meta;
    for (const c of prob.counts(plan.formats)) {
      now += layoutBytes(c, lay);
      later += layoutBytes([c[0] + opt.ahead, c[1], c[2], c[3]], lay);
    }
    const excess = Math.max(now - allowedNow, later - allowed);
    within = excess <= 0;
    // Stop when it fits, or when a smaller budget cannot change the plan.
    if (within || !plan.fits || input.budgetBytes === 0 || round === 5 || opt.policy.startsWith('uniform')) break;
    // Shrink by the excess; from the second round on also by a block of the
    // dearest quantised format per round: block rounding means fewer upgrades
    // can free less than they cost (a format's last block stays partly full).
    const margin = round * lay.blockTokens * lay.tokenBytes[1] * (opt.perLayer ? L : 1);
    budget -= (opt.perLayer ? excess : excess / L) + margin;
    input.budgetBytes = Math.max(0, budget);
  }
  const out: ReallocOutcome = { allocateUs, fits: within, formats: plan.formats, applyUs: 0, tokensChanged: 0, bytesMoved: 0, bytes: null };
  for (const c of prob.changes(plan.formats)) {
    const a = await shard.applyPlan(seq, c.layer, c.positions, c.formats);
    out.applyUs += a.applyUs;
    out.tokensChanged += a.tokensChanged;
    out.bytesMoved += a.bytesMoved;
    out.bytes = a.bytes;
  }
  return out;
}

/** The smallest β any sequence can reach: every token at 2 bits, with its
 * scales and bookkeeping (long sequences approach it; protected tokens and
 * partly filled blocks keep short ones above it). */
export function minimumBeta(lay: SequenceLayout): number {
  return (lay.tokenBytes[3] + TOKEN_META_BYTES) / lay.fp16TokenBytes;
}

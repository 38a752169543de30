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
}

export interface ReallocOutcome {
  allocateUs: number;
  applyUs: number;
  tokensChanged: number;
  bytesMoved: number;
  bytes: Bytes | null; // after the plan (null: nothing changed, not applied)
  fits: boolean; // the plan's exact bytes (protected tokens, blocks, bookkeeping) are within β
  formats: Uint8Array; // [n] the plan
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
  const n = report.tokens;
  const { importance, sqError, current } = combineLayers(report);
  const later = n + opt.ahead;
  // β must hold right after the plan (n tokens) and just before the next one
  // (n + ahead): blocks round up, so the ahead tokens may cost nothing yet.
  const allowedNow = opt.beta * n * lay.fp16TokenBytes; // per layer
  const allowed = opt.beta * later * lay.fp16TokenBytes;
  const metaNow = metadataBytes / lay.layers;
  const meta = metaNow + opt.ahead * TOKEN_META_BYTES;
  const protectedNow = Math.min(n, opt.sinks + opt.window);
  let budget = allowed - meta - (protectedNow + opt.ahead) * lay.tokenBytes[0];
  const input: AllocationInput = {
    importance,
    sqError,
    upperBounds: upgrades ? null : current,
    tokenBytes: lay.tokenBytes,
    budgetBytes: Math.max(0, budget),
    sinks: opt.sinks,
    window: opt.window,
    seed: opt.seed,
  };
  let allocateUs = 0;
  let plan;
  let within = false;
  for (let round = 0; ; round++) {
    const r = await allocator.allocate(opt.policy, input);
    allocateUs += r.allocateUs;
    plan = r.allocation;
    const counts = [0, 0, 0, 0];
    for (const f of plan.formats) counts[f]++;
    const countsLater = [counts[0] + opt.ahead, counts[1], counts[2], counts[3]];
    const excess = Math.max(layoutBytes(counts, lay) + metaNow - allowedNow, layoutBytes(countsLater, lay) + meta - allowed);
    within = excess <= 0;
    // Stop when it fits, or when a smaller budget cannot change the plan.
    if (within || !plan.fits || input.budgetBytes === 0 || round === 3 || opt.policy.startsWith('uniform')) break;
    budget -= excess;
    input.budgetBytes = Math.max(0, budget);
  }
  // Send only the tokens whose format changes.
  const changed: number[] = [];
  for (let i = 0; i < n; i++) if (plan.formats[i] !== current[i]) changed.push(i);
  const base = { allocateUs, fits: within, formats: plan.formats };
  if (changed.length === 0) return { ...base, applyUs: 0, tokensChanged: 0, bytesMoved: 0, bytes: null };
  const positions = Uint32Array.from(changed);
  const formats = Uint8Array.from(changed, (i) => plan.formats[i]);
  const a = await shard.applyPlan(seq, -1, positions, formats);
  return { ...base, applyUs: a.applyUs, tokensChanged: a.tokensChanged, bytesMoved: a.bytesMoved, bytes: a.bytes };
}

/** The smallest β any sequence can reach: every token at 2 bits, with its
 * scales and bookkeeping (long sequences approach it; protected tokens and
 * partly filled blocks keep short ones above it). */
export function minimumBeta(lay: SequenceLayout): number {
  return (lay.tokenBytes[3] + TOKEN_META_BYTES) / lay.fp16TokenBytes;
}

// The allocator's precision policies behind one call (DESIGN.md §5): SmartKV's
// greedy and the baselines it is measured against. Every policy protects the
// same tokens (sinks and window at fp16, or their bound) and respects the
// same bounds; they differ in how they spend the budget on the rest.
//
//   smartkv     greedy on importance × Δerror per byte (greedy.ts)
//   uniform-b   every unprotected token at b bits; the budget is not consulted
//   random      smartkv's bit histogram on a seeded random choice of tokens:
//               what is left when attention tracking is taken away
//   tiered      fixed importance percentiles (10% int8, 20% int4, 40% "3-bit"
//               = int4, 30% int2), then cut to the budget
import { invalid } from '../../native/errors.js';
import { checkInt } from '../../native/validate.js';
import {
  checkGreedyInput,
  checkTokenValues,
  planGreedy,
  startPlan,
  unprotectedBytes,
  unprotectedRange,
} from './greedy.js';

export const PLAN_POLICIES = ['smartkv', 'uniform-8', 'uniform-4', 'uniform-2', 'random', 'tiered'] as const;
export type PlanPolicy = (typeof PLAN_POLICIES)[number];

export interface AllocationInput {
  importance: Float32Array; // [n] f32, importance per token (EMA of attention)
  sqError: Float32Array; // [n][3] f32, modelled squared error at int8, int4, int2 (format codes 1,2,3)
  upperBounds: Uint8Array | null; // [n] u8, highest precision allowed per token (a format code; a token gets a code >= it). null: no bound
  tokenBytes: readonly number[]; // [4] bytes per token by format code (fp16, int8, int4, int2)
  budgetBytes: number; // bytes the unprotected tokens may take in all
  sinks: number; // first `sinks` tokens protected (fp16, or their bound)
  window: number; // last `window` tokens protected
  seed: number; // for 'random': an integer in [0, 2^32)
}

export interface Allocation {
  formats: Uint8Array; // [n] format code per token
  usedBytes: number; // bytes the unprotected tokens take under the plan
  fits: boolean; // false: even the cheapest allowed plan (all 2-bit) exceeds budgetBytes; formats is then that plan
}

const INT8 = 1;
const INT4 = 2;
const INT2 = 3;
const UNIFORM: Readonly<Record<string, number>> = { 'uniform-8': INT8, 'uniform-4': INT4, 'uniform-2': INT2 };

export function isPlanPolicy(name: string): name is PlanPolicy {
  return (PLAN_POLICIES as readonly string[]).includes(name);
}

export function allocate(policy: PlanPolicy, input: AllocationInput): Allocation {
  if (typeof policy !== 'string' || !isPlanPolicy(policy))
    throw invalid(`policy must be one of ${PLAN_POLICIES.join(', ')}, got ${String(policy)}`);
  checkGreedyInput(input);
  if (input.upperBounds === undefined) throw invalid('upperBounds must be a Uint8Array or null, got undefined');
  checkInt('seed', input.seed, 0, 0xffffffff);
  switch (policy) {
    case 'smartkv':
      return planGreedy(input);
    case 'random':
      return planRandom(input);
    case 'tiered':
      return planTiered(input);
    default:
      return planUniform(input, UNIFORM[policy]);
  }
}

function planUniform(input: AllocationInput, code: number): Allocation {
  const { lo, hi } = unprotectedRange(input.importance.length, input.sinks, input.window);
  checkTokenValues(input, lo, hi);
  const formats = startPlan(input), bounds = input.upperBounds;
  for (let i = lo; i < hi; i++) formats[i] = bounds === null ? code : Math.max(code, bounds[i]);
  return { formats, usedBytes: unprotectedBytes(formats, lo, hi, input.tokenBytes), fits: true };
}

/** smartkv's counts of int8 and int4 tokens, dealt to the unprotected tokens
 * in a seeded random order. The order is a hash of (seed, token index), not a
 * fresh shuffle, so a sequence's later plans (same seed) favour the same
 * tokens: without a master copy precision only goes down, and a fresh draw
 * each time would shrink the histogram plan after plan. Tokens whose bound
 * forbids a precision are passed over for it, so the histogram is kept as far
 * as the bounds allow. */
function planRandom(input: AllocationInput): Allocation {
  const smart = planGreedy(input);
  const { lo, hi } = unprotectedRange(input.importance.length, input.sinks, input.window);
  let n8 = 0, n4 = 0;
  for (let i = lo; i < hi; i++) {
    if (smart.formats[i] === INT8) n8++;
    else if (smart.formats[i] === INT4) n4++;
  }
  const formats = startPlan(input), bounds = input.upperBounds;
  const priority = new Uint32Array(hi - lo); // [hi - lo] random rank key of each unprotected token
  for (let k = 0; k < priority.length; k++) priority[k] = tokenHash(input.seed, lo + k);
  const order = Array.from({ length: hi - lo }, (_, k) => lo + k).sort((a, b) => priority[b - lo] - priority[a - lo] || a - b);
  for (const t of order) {
    const bound = bounds === null ? INT8 : bounds[t];
    if (n8 > 0 && bound <= INT8) {
      formats[t] = INT8;
      n8--;
    } else if (n4 > 0 && bound <= INT4) {
      formats[t] = INT4;
      n4--;
    }
  }
  // Bounds only take bits away from smartkv's plan, so it still fits.
  return { formats, usedBytes: unprotectedBytes(formats, lo, hi, input.tokenBytes), fits: smart.fits };
}

/** A 32-bit hash of (seed, token index): the random policy's stable order. */
function tokenHash(seed: number, i: number): number {
  let z = (seed ^ Math.imul(i + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** Importance percentiles (ties: the earlier token ranks higher) → format,
 * then the least important upgraded tokens step down until the plan fits. */
function planTiered(input: AllocationInput): Allocation {
  const { lo, hi } = unprotectedRange(input.importance.length, input.sinks, input.window);
  checkTokenValues(input, lo, hi);
  const formats = startPlan(input), bounds = input.upperBounds, tb = input.tokenBytes;
  const ascending = byImportanceAscending(input.importance, lo, hi);
  const u = hi - lo, top8 = Math.round(0.1 * u), top4 = Math.round(0.7 * u);
  for (let r = 0; r < u; r++) {
    const t = ascending[u - 1 - r], code = r < top8 ? INT8 : r < top4 ? INT4 : INT2; // 30–70%: int4 stands in for 3-bit
    formats[t] = bounds === null ? code : Math.max(code, bounds[t]);
  }
  let used = unprotectedBytes(formats, lo, hi, tb);
  for (let r = 0; r < u && used > input.budgetBytes; r++) {
    const t = ascending[r];
    while (formats[t] < INT2 && used > input.budgetBytes) {
      used -= tb[formats[t]] - tb[formats[t] + 1];
      formats[t]++;
    }
  }
  // All int2 by now when it does not fit: the cheapest plan.
  return { formats, usedBytes: unprotectedBytes(formats, lo, hi, tb), fits: used <= input.budgetBytes };
}

/** Token ids [lo, hi) by importance ascending (ties: later token first), with
 * one native sort: a float32 widened to float64 has 29 zero low bits, which
 * carry the (reversed) index so that equal importances stay distinct. */
function byImportanceAscending(importance: Float32Array, lo: number, hi: number): Int32Array {
  const n = hi - lo;
  if (n >= 2 ** 29) throw invalid(`too many unprotected tokens for one plan: ${n}`);
  const keys = new Float64Array(n), words = new Uint32Array(keys.buffer), low = LITTLE_ENDIAN ? 0 : 1;
  for (let k = 0; k < n; k++) {
    keys[k] = importance[lo + k] + 0; // -0 → +0: the sign bit would reverse the order of the index bits
    words[2 * k + low] |= n - 1 - k;
  }
  keys.sort();
  const ids = new Int32Array(n);
  for (let k = 0; k < n; k++) ids[k] = lo + n - 1 - (words[2 * k + low] & (2 ** 29 - 1));
  return ids;
}

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

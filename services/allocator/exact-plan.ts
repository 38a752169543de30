// A plan that meets β in the engine's exact bytes, in one call (DESIGN.md §5).
//
// The policies spend a continuous byte budget over per-token costs; the
// engine holds whole blocks. So: price the policy's plan exactly
// (plan-cost.ts), and search the continuous budget for the largest one whose
// plan fits β — right after the plan and for every token before the next
// one — then fill the slots already paid for in partly used int8 and int4
// blocks with the next best upgrades (free: they add no block). The search
// starts from the continuous estimate and bisects to a quarter of an int2 block per
// layer, so the plan ends within about one block of β.
//
// A plan never makes the cache larger than leaving it alone, except that in
// reversible mode a plan that meets β may spend it on raising precision; when
// even the cheapest plan misses β, the result is the cheaper of that and
// leaving it alone, with fits = false (best effort), and bindsFrom says from
// which length β can bind.
import { formatBlockTokens } from '../../native/formats.js';
import { allocate, type AllocationInput, type PlanPolicy } from './policies.js';
import { bindsFrom, PlanPricer, type PlanLayout, type Price } from './plan-cost.js';

export interface ExactPlan {
  formats: Uint8Array; // [slots] format code per slot
  usedBytes: number; // the policy's own count of the slots' bytes
  fits: boolean; // the plan meets β (uniform policies: always true, they take no budget)
  hotBytes: number; // exact hot bytes right after the plan, all layers
  achievedBeta: number; // the largest hot / FP16 until the next plan
  bindsFrom: number; // the shortest length from which β can bind
  unchanged: boolean; // the plan is the current formats
  policyRuns: number;
}

const INT8 = 1;
const INT4 = 2;
const BUDGETED = new Set<PlanPolicy>(['smartkv', 'random', 'tiered']);
const FILLED = new Set<PlanPolicy>(['smartkv', 'tiered']); // random keeps smartkv's histogram, by its own order

/** input.tokenBytes and budgetBytes are replaced; the rest (importance,
 * errors, bounds, sinks, window, seed) is the policy's as usual. */
export function planExactly(policy: PlanPolicy, input: AllocationInput, lay: PlanLayout, current: Uint8Array): ExactPlan {
  const pricer = new PlanPricer(lay, current);
  const m = pricer.perGroup;
  const slotBytes = lay.blockBytes.map((b, code) => (b / formatBlockTokens(code, lay.blockTokens)) * m); // one slot, all the layers it stands for
  const run = (budget: number) => {
    runs++;
    const a = allocate(policy, { ...input, tokenBytes: slotBytes, budgetBytes: Math.max(0, budget) });
    return { a, price: pricer.price(a.formats) };
  };
  let runs = 0;
  let best: { a: ReturnType<typeof allocate>; price: Price };
  if (!BUDGETED.has(policy)) best = run(0);
  else best = search(run, estimate(lay, input, slotBytes), lay, slotBytes, input.importance.length);
  let formats = best.a.formats, price = best.price;
  if (FILLED.has(policy) && price.fits) {
    formats = fillPaidBlocks(formats, input, pricer);
    price = pricer.price(formats);
  }
  // Never larger than leaving the cache alone, unless the plan spends a β
  // that binds on raising precision (reversible mode). A plan that meets β
  // is kept, except in downgrade-only mode (bounds: it can only lower
  // precision) when leaving the cache alone also meets β with fewer bytes. A
  // best-effort plan is kept only when it holds fewer bytes now, or leaving
  // the cache alone holds as many and is worse before the next plan.
  const leave = pricer.price(current);
  const unchanged = !BUDGETED.has(policy)
    ? leave.hotBytes < price.hotBytes // no budget to meet: only size decides
    : price.fits
      ? input.upperBounds !== null && leave.fits && leave.hotBytes < price.hotBytes
      : leave.fits || leave.hotBytes < price.hotBytes || (leave.hotBytes === price.hotBytes && leave.worstBeta <= price.worstBeta);
  if (unchanged) {
    formats = current;
    price = leave;
  }
  return {
    formats,
    usedBytes: best.a.usedBytes,
    // (unchanged is also true when the policy's own plan is the current formats)
    fits: BUDGETED.has(policy) ? price.fits : true,
    hotBytes: price.hotBytes,
    achievedBeta: price.worstBeta,
    bindsFrom: BUDGETED.has(policy) ? bindsFrom(bindsKey(lay)) : 0,
    unchanged: unchanged || sameFormats(formats, current),
    policyRuns: runs,
  };
}

function bindsKey(lay: PlanLayout) {
  const { heldBytes: _h, tokens: _t, groups: _g, outsideFp16Tokens: _o, ...rest } = lay;
  return rest;
}

/** The continuous budget: β over the tokens there will be, less what is not
 * a slot (bookkeeping, protected tokens outside the slots, arriving tokens). */
function estimate(lay: PlanLayout, input: AllocationInput, slotBytes: number[]): number {
  const n = lay.tokens, L = lay.layers;
  const allowed = lay.targetBeta * (n + lay.aheadTokens) * lay.fp16TokenBytes * L;
  const meta = (n + lay.aheadTokens) * lay.tokenMetaBytes * L;
  const protectedSlots = Math.min(input.importance.length, input.sinks + input.window);
  const fp16Token = lay.blockBytes[0] / formatBlockTokens(0, lay.blockTokens); // per token and layer
  const outside = lay.outsideFp16Tokens * L * fp16Token; // per group × groups × layers per group = per layer × L
  return allowed - meta - outside - lay.aheadTokens * fp16Token * L - protectedSlots * slotBytes[0];
}

type Run = (budget: number) => { a: ReturnType<typeof allocate>; price: Price };

/** The largest budget (to a quarter of an int2 block per layer) whose plan
 * fits: bracket it from the estimate outwards, then bisect. */
function search(run: Run, guess: number, lay: PlanLayout, slotBytes: number[], slots: number) {
  // Resolution: a quarter of an int2 block (T tokens' worth: int2 blocks hold
  // 4T) in every layer. Finer buys nothing the fill step does not: block
  // rounding decides the last block's worth anyway.
  const step = Math.max(1, (lay.blockBytes[3] / 4) * lay.layers);
  const span = lay.blockBytes.reduce((s, b) => s + b, 0) * lay.layers; // every format's last block, every layer
  const most = slots * slotBytes[1]; // every slot at int8: no policy spends more
  let lo: number, hi: number, fit = run(guess);
  if (fit.price.fits) {
    lo = guess;
    for (hi = guess + span; ; hi = hi + 2 * (hi - guess)) {
      const r = run(hi);
      if (!r.price.fits) break;
      if (hi >= most) return r; // β does not bind: the policy is saturated
      lo = hi;
      fit = r;
    }
  } else {
    for (hi = guess, lo = guess - span; ; hi = lo, lo = lo - 2 * (guess - lo)) {
      lo = Math.max(0, lo);
      fit = run(lo);
      if (fit.price.fits) break;
      if (lo === 0) return fit; // even the cheapest plan misses β
    }
  }
  while (hi - lo > step) {
    const mid = (lo + hi) / 2, r = run(mid);
    if (r.price.fits) {
      lo = mid;
      fit = r;
    } else hi = mid;
  }
  return fit;
}

/** Upgrades into slots the partly used int8 and int4 blocks already pay for:
 * the best gains first, within bounds, never touching protected tokens. */
function fillPaidBlocks(plan: Uint8Array, input: AllocationInput, pricer: PlanPricer): Uint8Array {
  const out = plan.slice();
  const G = pricer.lay.groups, per = out.length / G;
  const n = input.importance.length, lo = Math.min(input.sinks, n), hi = Math.max(lo, n - input.window);
  const bounds = input.upperBounds;
  for (let g = 0; g < G; g++) {
    for (const f of [INT8, INT4]) {
      let count = 0;
      for (let i = g * per; i < (g + 1) * per; i++) if (out[i] === f) count++;
      const T = formatBlockTokens(f, pricer.lay.blockTokens);
      const free = count === 0 ? 0 : Math.ceil(count / T) * T - count;
      if (free === 0) continue;
      // The `free` best gains (free < one block): a small sorted list, O(n · free) at worst.
      const top: number[] = [], topGain: number[] = []; // descending by gain
      for (let i = Math.max(g * per, lo); i < Math.min((g + 1) * per, hi); i++) {
        if (out[i] <= f || (bounds !== null && bounds[i] > f)) continue;
        const gi = input.importance[i] * (input.sqError[i * 3 + out[i] - 1] - input.sqError[i * 3 + f - 1]);
        if (!(gi > 0) || (top.length === free && gi <= topGain[free - 1])) continue;
        let k = Math.min(top.length, free - 1);
        if (top.length < free) top.push(0), topGain.push(0);
        for (; k > 0 && topGain[k - 1] < gi; k--) (top[k] = top[k - 1]), (topGain[k] = topGain[k - 1]);
        top[k] = i;
        topGain[k] = gi;
      }
      for (const i of top) out[i] = f;
    }
  }
  return out;
}

function sameFormats(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

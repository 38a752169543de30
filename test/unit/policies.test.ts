// The allocator's precision policies (services/allocator/policies.ts):
// invariants every policy keeps (protection, bounds, budget, byte count),
// each policy's own rule, the fast greedy against two straightforward
// reference greedies, argument errors, and a smoke run of the benchmark.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { benchAllocator, runAllocatorBench } from '../../cli/bench-allocator.js';
import { KvEngineError } from '../../native/errors.js';
import { tokenBytes as layoutTokenBytes } from '../../native/formats.js';
import { allocate, isPlanPolicy, PLAN_POLICIES, type Allocation, type AllocationInput, type PlanPolicy } from '../../services/allocator/policies.js';
import { rng } from '../helpers/random.js';

const COSTS = [512, 264, 136, 72]; // fp16, int8, int4, int2 bytes per token

interface Shape {
  n: number;
  seed: number;
  fill: number; // the budget between all-int2 (0) and all-int8 (1) of the unprotected tokens
  sinks?: number;
  window?: number;
  bounds?: boolean; // random upper bounds
  nonConcave?: number; // share of tokens whose 4→8 gains more per byte than their 2→4
  negative?: number; // share of tokens whose errors grow with the bits (every upgrade a loss)
  tokenBytes?: number[];
  zipf?: boolean; // importance 1/(1 + rank) with many equal values, else continuous
}

function makeInput(s: Shape): AllocationInput {
  const u = rng(s.seed), n = s.n, tb = s.tokenBytes ?? COSTS;
  const sinks = s.sinks ?? 4, window = s.window ?? 16;
  const importance = new Float32Array(n), sqError = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    importance[i] = s.zipf ? 1 / (1 + Math.floor(u() * n)) : Math.exp(-8 * u());
    const scale = Math.exp(2 * u() - 1), r = u();
    let e4 = (scale / 16) * (0.5 + u()), e8 = (scale / 256) * (0.5 + u());
    if (r < (s.nonConcave ?? 0)) (e4 = scale * (0.8 + 0.15 * u())), (e8 = (scale / 256) * u());
    if (r >= (s.nonConcave ?? 0) && r < (s.nonConcave ?? 0) + (s.negative ?? 0)) {
      sqError.set([scale * (1 + u()), e4, e8], 3 * i); // int8 worst, int2 best: negative keys
      continue;
    }
    sqError.set([e8, e4, scale], 3 * i);
  }
  let upperBounds: Uint8Array | null = null;
  if (s.bounds) {
    upperBounds = new Uint8Array(n);
    for (let i = 0; i < n; i++) upperBounds[i] = u() < 0.6 ? 0 : 1 + Math.floor(u() * 3);
  }
  const unprotected = Math.max(0, n - sinks - window);
  const budgetBytes = unprotected * (tb[3] + s.fill * (tb[1] - tb[3]));
  return { importance, sqError, upperBounds, tokenBytes: tb, budgetBytes, sinks, window, seed: s.seed };
}

const isProt = (inp: AllocationInput, i: number) => i < inp.sinks || i >= inp.importance.length - inp.window;
const bound = (inp: AllocationInput, i: number) => (inp.upperBounds ? inp.upperBounds[i] : 0);

function recomputeBytes(inp: AllocationInput, formats: Uint8Array): number {
  let used = 0;
  formats.forEach((f, i) => (used += isProt(inp, i) ? 0 : inp.tokenBytes[f]));
  return used;
}

function histogram(inp: AllocationInput, formats: Uint8Array): number[] {
  const h = [0, 0, 0, 0];
  formats.forEach((f, i) => (h[f] += isProt(inp, i) ? 0 : 1));
  return h;
}

/** Σ importance × squared error over the unprotected tokens. */
function objective(inp: AllocationInput, formats: Uint8Array): number {
  let sum = 0;
  formats.forEach((f, i) => (sum += isProt(inp, i) || f === 0 ? 0 : inp.importance[i] * inp.sqError[3 * i + f - 1]));
  return sum;
}

interface Step {
  to: number; // the format code it reaches
  key: number; // importance × Δerror per extra byte
  bytes: number;
}

/** A token's upgrades on the lower convex hull of its (bytes, error) points. */
function hullSteps(inp: AllocationInput, i: number): Step[] {
  const tb = inp.tokenBytes, w = inp.importance[i];
  const [e8, e4, e2] = inp.sqError.subarray(3 * i, 3 * i + 3);
  const c24 = tb[2] - tb[3], c48 = tb[1] - tb[2], c28 = tb[1] - tb[3];
  const b = bound(inp, i);
  if (b === 3) return [];
  const g24 = (w * (e2 - e4)) / c24;
  if (b === 2) return [{ to: 2, key: g24, bytes: c24 }];
  const g48 = (w * (e4 - e8)) / c48;
  if (g48 <= g24) return [{ to: 2, key: g24, bytes: c24 }, { to: 1, key: g48, bytes: c48 }];
  return [{ to: 1, key: (w * (e2 - e8)) / c28, bytes: c28 }];
}

function protectedStart(inp: AllocationInput): Uint8Array {
  return Uint8Array.from(inp.importance, (_, i) => (isProt(inp, i) ? bound(inp, i) : 3));
}

/** Reference 1: "take the best upgrade that fits, until none does", by scans. */
function referenceGreedy(inp: AllocationInput): Allocation {
  const n = inp.importance.length, formats = protectedStart(inp);
  const allInt2 = recomputeBytes(inp, formats);
  if (allInt2 > inp.budgetBytes) return { formats, usedBytes: allInt2, fits: false };
  const steps = Array.from({ length: n }, (_, i) => (isProt(inp, i) ? [] : hullSteps(inp, i)));
  const next = new Int32Array(n);
  let left = inp.budgetBytes - allInt2;
  for (;;) {
    let best = -1, bestKey = -Infinity;
    for (let i = 0; i < n; i++) {
      const st = steps[i][next[i]];
      if (st && st.bytes <= left && st.key > bestKey) (best = i), (bestKey = st.key);
    }
    if (best < 0) break;
    const st = steps[best][next[best]++];
    formats[best] = st.to;
    left -= st.bytes;
  }
  return { formats, usedBytes: recomputeBytes(inp, formats), fits: true };
}

/** Reference 2: every hull step sorted by key, taken in order when it fits. */
function sortedGreedy(inp: AllocationInput): Allocation {
  const formats = protectedStart(inp);
  const allInt2 = recomputeBytes(inp, formats);
  if (allInt2 > inp.budgetBytes) return { formats, usedBytes: allInt2, fits: false };
  const steps: Step[] = [], token: number[] = [], first: boolean[] = [];
  formats.forEach((_, i) =>
    (isProt(inp, i) ? [] : hullSteps(inp, i)).forEach((st, k) => {
      steps.push(st);
      token.push(i);
      first.push(k === 0);
    }),
  );
  const order = [...steps.keys()].sort((a, b) => steps[b].key - steps[a].key || Number(first[b]) - Number(first[a]));
  let left = inp.budgetBytes - allInt2;
  for (const j of order)
    if (steps[j].bytes <= left && formats[token[j]] === (first[j] ? 3 : 2)) {
      formats[token[j]] = steps[j].to;
      left -= steps[j].bytes;
    }
  return { formats, usedBytes: recomputeBytes(inp, formats), fits: true };
}

/** The invariants every policy keeps. */
function checkPlan(policy: PlanPolicy, inp: AllocationInput, plan: Allocation): void {
  const n = inp.importance.length;
  assert.equal(plan.formats.length, n);
  for (let i = 0; i < n; i++) {
    const f = plan.formats[i], b = bound(inp, i);
    if (isProt(inp, i)) assert.equal(f, b, `${policy}: protected token ${i}`);
    else assert.ok(f >= Math.max(1, b) && f <= 3, `${policy}: token ${i} at ${f}, bound ${b}`);
  }
  assert.equal(plan.usedBytes, recomputeBytes(inp, plan.formats), `${policy}: usedBytes`);
  if (policy.startsWith('uniform')) assert.equal(plan.fits, true);
  else if (plan.fits) assert.ok(plan.usedBytes <= inp.budgetBytes, `${policy}: ${plan.usedBytes} > ${inp.budgetBytes}`);
  else assert.deepEqual(histogram(inp, plan.formats).slice(0, 3), [0, 0, 0], `${policy}: a plan that does not fit is all int2`);
}

describe('allocator policies', () => {
  it('names the six policies', () => {
    assert.deepEqual([...PLAN_POLICIES], ['smartkv', 'uniform-8', 'uniform-4', 'uniform-2', 'random', 'tiered']);
    for (const p of PLAN_POLICIES) assert.ok(isPlanPolicy(p));
    for (const p of ['kivi', 'uniform-3', '', 'SmartKV']) assert.ok(!isPlanPolicy(p));
  });

  it('every policy protects sinks and window, respects bounds and counts its bytes', () => {
    for (const bounds of [false, true])
      for (const fill of [-0.1, 0, 0.3, 0.7, 1.2])
        for (const policy of PLAN_POLICIES) {
          const inp = makeInput({ n: 300, seed: 7, fill, bounds, nonConcave: 0.1 });
          const plan = allocate(policy, inp);
          checkPlan(policy, inp, plan);
          if (fill < 0 && !policy.startsWith('uniform')) assert.equal(plan.fits, false, policy);
        }
  });

  it('protected tokens are fp16 unless bounded lower; sinks and window may cover everything', () => {
    const inp = makeInput({ n: 40, seed: 2, fill: 0.5, bounds: true, sinks: 30, window: 30 });
    for (const policy of PLAN_POLICIES) {
      const plan = allocate(policy, inp);
      assert.deepEqual([...plan.formats], [...inp.upperBounds!], policy);
      assert.equal(plan.usedBytes, 0);
      assert.equal(plan.fits, true);
    }
  });

  it('uniform policies put every unprotected token at their format (or its bound) whatever the budget', () => {
    for (const [policy, code] of [['uniform-8', 1], ['uniform-4', 2], ['uniform-2', 3]] as const) {
      const inp = { ...makeInput({ n: 200, seed: 3, fill: 0, bounds: true }), budgetBytes: 0 };
      const plan = allocate(policy, inp);
      plan.formats.forEach((f, i) => assert.equal(f, isProt(inp, i) ? bound(inp, i) : Math.max(code, bound(inp, i))));
      assert.equal(plan.fits, true);
      checkPlan(policy, inp, plan);
    }
  });

  it('smartkv equals the reference greedy on random inputs (bounds, merged 2→8 steps, negative gains)', () => {
    let cases = 0;
    for (let seed = 1; seed <= 60; seed++) {
      const u = rng(1000 + seed);
      const shape: Shape = {
        n: 20 + Math.floor(u() * 400),
        seed,
        fill: u() * 1.1 - 0.05,
        bounds: seed % 3 === 0,
        nonConcave: seed % 2 ? 0.3 * u() : 0,
        negative: seed % 5 === 0 ? 0.2 : 0,
        sinks: Math.floor(u() * 8),
        window: Math.floor(u() * 32),
        tokenBytes: seed % 4 === 0 ? [400, 300, 101, 100] : seed % 4 === 1 ? layoutTokenBytes({ headDim: 128, kvHeads: 8, blockTokens: 32, quant: 'symmetric' }) : COSTS,
      };
      const inp = makeInput(shape);
      if (seed % 7 === 0) inp.budgetBytes += 0.5; // a fractional budget
      const got = allocate('smartkv', inp), want = referenceGreedy(inp);
      checkPlan('smartkv', inp, got);
      assert.deepEqual(got, want, `seed ${seed}: ${JSON.stringify(shape)}`);
      cases += got.fits ? 1 : 0;
    }
    assert.ok(cases > 40);
  });

  it('smartkv equals the sorted reference at 40K tokens', () => {
    for (const [seed, fill] of [[1, 0.2], [2, 0.55], [3, 0.9], [4, 0.95]]) {
      const inp = makeInput({ n: 40_000, seed, fill, bounds: seed === 2, nonConcave: 0.05, negative: seed === 4 ? 0.2 : 0, window: 64 });
      assert.deepEqual(allocate('smartkv', inp), sortedGreedy(inp), `seed ${seed}`);
    }
  });

  it('smartkv orders keys that differ only in their low bits (radix levels 1 and 2), positive and negative', () => {
    // Errors equal for all tokens: tokens differ by importance alone, and a
    // plan is right when each format holds the reference's importances (equal
    // importances may swap tokens).
    const byFormat = (inp: AllocationInput, formats: Uint8Array) =>
      [1, 2, 3].map((f) => [...inp.importance.filter((_, i) => !isProt(inp, i) && formats[i] === f)].sort((x, y) => x - y));
    const n = 3000, u = rng(21);
    const cases: [number, (u: () => number) => number][] = [
      [1, () => 1 + Math.floor(u() * 2 ** 12) * 2 ** -20], // keys within 0.4%: a few level-1 bins
      [-1, () => 1 + Math.floor(u() * 2 ** 12) * 2 ** -20],
      [1, () => 1 + Math.floor(u() * 8) * 2 ** -23], // keys equal but in their low word: one level-2 prefix
      [-1, () => 1 + Math.floor(u() * 8) * 2 ** -23],
    ];
    for (const [sign, w] of cases)
      for (const fill of [0.1, 0.2]) {
        const inp = makeInput({ n, seed: 1, fill });
        for (let i = 0; i < n; i++) {
          inp.importance[i] = w(u);
          // keys w × 2^-7 (2→4) and w × 2^-9 (4→8), or minus w × 2^-7 and 2^-6
          inp.sqError.set(sign > 0 ? [0.25, 0.5, 1] : [3, 1, 0.5], 3 * i);
        }
        const got = allocate('smartkv', inp), want = referenceGreedy(inp);
        assert.equal(got.usedBytes, want.usedBytes);
        assert.deepEqual(byFormat(inp, got.formats), byFormat(inp, want.formats), `sign ${sign}, fill ${fill}`);
      }
  });

  it('smartkv leaves no upgrade that would still fit', () => {
    for (const tokenBytes of [COSTS, [400, 300, 101, 100]]) {
      const inp = makeInput({ n: 2000, seed: 9, fill: 0.4, nonConcave: 0.2, tokenBytes });
      const plan = allocate('smartkv', inp);
      const left = inp.budgetBytes - plan.usedBytes;
      plan.formats.forEach((f, i) => {
        if (isProt(inp, i)) return;
        const open = hullSteps(inp, i).find((st) => st.to < f);
        if (open) assert.ok(open.bytes > left, `token ${i} could still move ${f} → ${open.to}`);
      });
    }
  });

  it('smartkv with equal keys everywhere spends the budget like the reference', () => {
    const inp = makeInput({ n: 3000, seed: 4, fill: 0.37 });
    inp.importance.fill(1);
    for (let i = 0; i < 3000; i++) inp.sqError.set([1 / 256, 1 / 16, 1], 3 * i);
    const got = allocate('smartkv', inp), want = referenceGreedy(inp);
    assert.equal(got.usedBytes, want.usedBytes);
    assert.deepEqual(histogram(inp, got.formats), histogram(inp, want.formats));
    assert.ok(Math.abs(objective(inp, got.formats) - objective(inp, want.formats)) < 1e-9 * objective(inp, want.formats));
  });

  it('smartkv beats uniform int4 and random at the same budget', () => {
    const inp = makeInput({ n: 4000, seed: 11, fill: (COSTS[2] - COSTS[3]) / (COSTS[1] - COSTS[3]), zipf: true });
    const smart = objective(inp, allocate('smartkv', inp).formats);
    assert.ok(smart < objective(inp, allocate('uniform-4', inp).formats));
    assert.ok(smart < objective(inp, allocate('random', inp).formats));
  });

  it("random deals smartkv's histogram to seeded random tokens", () => {
    const inp = makeInput({ n: 1000, seed: 5, fill: 0.35 });
    const smart = allocate('smartkv', inp), a = allocate('random', inp);
    checkPlan('random', inp, a);
    assert.deepEqual(histogram(inp, a.formats), histogram(inp, smart.formats));
    assert.equal(a.usedBytes, smart.usedBytes);
    assert.deepEqual(allocate('random', inp), a, 'same seed, same plan');
    const b = allocate('random', { ...inp, seed: 6 });
    assert.deepEqual(histogram(inp, b.formats), histogram(inp, smart.formats));
    assert.notDeepEqual(b.formats, a.formats, 'another seed, another plan');
    assert.notDeepEqual(a.formats, smart.formats);
  });

  it('random keeps its histogram across re-plans when its own plan becomes the bounds', () => {
    // Without a master copy a plan's formats bound the next plan. With the
    // same seed the random order is the same, so nothing is lost plan to plan.
    const inp = makeInput({ n: 1000, seed: 9, fill: 0.4 });
    const first = allocate('random', inp);
    const again = allocate('random', { ...inp, upperBounds: first.formats.slice() });
    assert.deepEqual(histogram(inp, again.formats), histogram(inp, first.formats));
    assert.deepEqual(again.formats, first.formats);
  });

  it('random under bounds gives a token the next precision allowed and still fits', () => {
    const inp = makeInput({ n: 1000, seed: 8, fill: 0.5, bounds: true });
    const smart = allocate('smartkv', inp), plan = allocate('random', inp);
    checkPlan('random', inp, plan);
    assert.equal(plan.fits, smart.fits);
    assert.ok(plan.usedBytes <= smart.usedBytes);
    // unbounded tokens take the histogram's formats: no more int8 or int4 than smartkv chose
    const h = histogram(inp, plan.formats), hs = histogram(inp, smart.formats);
    assert.ok(h[1] <= hs[1] && h[1] + h[2] <= hs[1] + hs[2]);
  });

  it('tiered assigns importance percentiles 10% int8, 60% int4, 30% int2 when the budget allows', () => {
    const inp = makeInput({ n: 1020, seed: 12, fill: 2 });
    const plan = allocate('tiered', inp);
    checkPlan('tiered', inp, plan);
    const ids = [...Array(1020).keys()].filter((i) => !isProt(inp, i)).sort((a, b) => inp.importance[b] - inp.importance[a]);
    assert.equal(ids.length, 1000);
    ids.forEach((i, rank) => assert.equal(plan.formats[i], rank < 100 ? 1 : rank < 700 ? 2 : 3, `rank ${rank}`));
  });

  it('tiered repairs to the budget by stepping down the least important upgraded tokens', () => {
    let repaired = 0;
    for (const fill of [0.05, 0.15, 0.3, 0.6]) {
      const inp = makeInput({ n: 1000, seed: 13, fill, bounds: true });
      const plan = allocate('tiered', inp);
      checkPlan('tiered', inp, plan);
      assert.ok(plan.fits);
      // The reference: tiers, then one step at a time from the least important up.
      const ids = [...Array(1000).keys()].filter((i) => !isProt(inp, i)).sort((a, b) => inp.importance[b] - inp.importance[a] || a - b);
      const want = protectedStart(inp);
      ids.forEach((i, r) => (want[i] = Math.max(r < Math.round(0.1 * ids.length) ? 1 : r < Math.round(0.7 * ids.length) ? 2 : 3, bound(inp, i))));
      let used = recomputeBytes(inp, want);
      const over = used > inp.budgetBytes;
      for (const i of ids.reverse())
        while (want[i] < 3 && used > inp.budgetBytes) used -= inp.tokenBytes[want[i]] - inp.tokenBytes[++want[i]];
      assert.deepEqual(plan.formats, want, `fill ${fill}`);
      // repaired: one step less would not have fitted
      if (over) assert.ok(inp.budgetBytes - plan.usedBytes < COSTS[1] - COSTS[2], `fill ${fill}`);
      repaired += over ? 1 : 0;
    }
    assert.ok(repaired >= 2);
  });

  it('reports a budget below all-int2 as fits=false with the all-int2 plan', () => {
    const inp = makeInput({ n: 200, seed: 1, fill: 0.5 });
    inp.budgetBytes = 180 * COSTS[3] - 1;
    for (const policy of ['smartkv', 'random', 'tiered'] as const) {
      const plan = allocate(policy, inp);
      assert.equal(plan.fits, false, policy);
      assert.equal(plan.usedBytes, 180 * COSTS[3]);
      checkPlan(policy, inp, plan);
    }
    inp.budgetBytes += 1;
    assert.equal(allocate('smartkv', inp).fits, true);
  });

  it('rejects bad arguments with INVALID_ARGUMENT naming the field', () => {
    const good = makeInput({ n: 50, seed: 1, fill: 0.5 });
    const bad = (field: string, patch: Partial<Record<keyof AllocationInput, unknown>>, policy: string = 'smartkv') =>
      assert.throws(
        () => allocate(policy as PlanPolicy, { ...good, ...patch } as AllocationInput),
        (e: unknown) => e instanceof KvEngineError && e.code === 'INVALID_ARGUMENT' && e.message.includes(field),
        `${field}: ${JSON.stringify(Object.keys(patch))}`,
      );
    bad('policy', {}, 'greedy');
    bad('importance', { importance: new Float64Array(50) });
    bad('sqError', { sqError: new Float32Array(149) });
    bad('upperBounds', { upperBounds: new Uint8Array(49) });
    bad('upperBounds', { upperBounds: new Uint8Array(50).fill(4) });
    bad('upperBounds', { upperBounds: undefined });
    bad('tokenBytes', { tokenBytes: [512, 264, 136] });
    bad('tokenBytes', { tokenBytes: [512, 136, 264, 72] });
    bad('tokenBytes', { tokenBytes: [512, 264, 136, 0] });
    bad('budgetBytes', { budgetBytes: -1 });
    bad('budgetBytes', { budgetBytes: NaN });
    bad('sinks', { sinks: -1 });
    bad('window', { window: 1.5 });
    bad('seed', { seed: -3 });
    const nan = good.importance.slice();
    nan[20] = NaN;
    const neg = good.sqError.slice();
    neg[3 * 20 + 1] = -1;
    for (const policy of PLAN_POLICIES) {
      bad('importance[20]', { importance: nan }, policy);
      bad('sqError[61]', { sqError: neg }, policy);
    }
    // values of protected tokens are never read
    const protNaN = good.importance.slice();
    protNaN[0] = NaN;
    assert.equal(allocate('smartkv', { ...good, importance: protNaN }).fits, true);
  });
});

describe('bench allocator', () => {
  it('--quick --json: one row per policy and size with p50 and p99, and the exact plan meeting β', async () => {
    const lines: string[] = [];
    await benchAllocator({ json: true, quick: true }, { out: (l) => lines.push(l), progress: () => {} });
    const rows = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(rows.length, 3 * (PLAN_POLICIES.length + 1)); // + smartkv exact per size
    for (const r of rows.filter((x) => x.exact)) {
      // The one-call plan, priced in blocks: β met and nearly spent.
      assert.equal(r.budget_met, true);
      assert.ok((r.achieved_beta as number) <= 0.25 && (r.achieved_beta as number) > 0.24, `β ${String(r.achieved_beta)} at n = ${String(r.n)}`);
      assert.equal(r.mode, 'reversible');
      assert.equal(r.master_bytes, 0);
    }
    assert.deepEqual([...new Set(rows.map((r) => r.n))], [4096, 32768, 131072]);
    for (const r of rows) {
      assert.ok(isPlanPolicy(r.policy as string));
      for (const k of ['p50_ms', 'p99_ms']) assert.ok(typeof r[k] === 'number' && (r[k] as number) >= 0, `${k} = ${String(r[k])}`);
      assert.ok((r.p99_ms as number) >= (r.p50_ms as number));
      assert.equal(r.fits, true, `${String(r.policy)} at β = 0.25 fits`);
    }
  });

  it('prints a table without --json', async () => {
    const lines: string[] = [];
    await benchAllocator({ json: false, quick: true, sizes: [2048] }, { out: (l) => lines.push(l), progress: () => {} });
    assert.match(lines[1], /policy\s+n\s+p50 ms\s+p99 ms/);
    assert.equal(lines.length, 2 + PLAN_POLICIES.length + 1);
    assert.equal(runAllocatorBench({ json: true, quick: true, sizes: [1024] }).length, PLAN_POLICIES.length + 1);
  });
});

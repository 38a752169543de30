// The greedy allocator on its own (budget, protection, ordering, bounds) and
// with the engine (the plan it makes keeps the achieved β within target).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { KvEngineError } from '../../native/errors.js';
import { TOKEN_META_BYTES } from '../../native/formats.js';
import { KvEngine } from '../../native/kv-engine.js';
import { budgetForBeta, greedyAllocate, type GreedyInput } from '../../services/allocator/greedy.js';
import { gaussian, rng } from '../helpers/random.js';

const COSTS = [512, 264, 136, 72]; // fp16, int8, int4, int2 bytes per token (any convex-ish costs)

function instance(n: number, seed: number, budgetBytes: number): GreedyInput {
  const u = rng(seed);
  const importance = new Float32Array(n), sqError = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    importance[i] = 1 / (1 + Math.floor(u() * n)); // Zipf-like
    const range = 1 + u();
    // step²/12 per element with 255, 15, 3 levels
    [255, 15, 3].forEach((levels, j) => (sqError[3 * i + j] = (128 * (range / levels) ** 2) / 12));
  }
  return { importance, sqError, tokenBytes: COSTS, budgetBytes, sinks: 4, window: 16 };
}

const objective = (inp: GreedyInput, formats: Uint8Array) =>
  formats.reduce((acc, f, i) => acc + (f === 0 ? 0 : inp.importance[i] * inp.sqError[3 * i + f - 1]), 0);

describe('greedy allocator', () => {
  it('protects sinks and the window, starts everyone else at 2 bits and stays within budget', () => {
    const n = 1000, unprotected = n - 20;
    for (const budget of [unprotected * 72, unprotected * 120, unprotected * 200, unprotected * 264, 1e12]) {
      const inp = instance(n, 3, budget);
      const plan = greedyAllocate(inp);
      assert.ok(plan.fits && plan.usedBytes <= budget);
      let used = 0;
      plan.formats.forEach((f, i) => {
        const prot = i < 4 || i >= n - 16;
        assert.equal(f === 0, prot, `token ${i}`);
        if (!prot) used += COSTS[f];
      });
      assert.equal(used, plan.usedBytes);
      if (budget === 1e12) assert.ok(plan.formats.every((f, i) => f === 1 || i < 4 || i >= n - 16), 'all int8 when money is no object');
      if (budget === unprotected * 72) assert.ok(plan.formats.slice(4, n - 16).every((f) => f === 3));
      // what is left is less than the cheapest upgrade still open
      if (budget < 1e12) assert.ok(budget - used < 264 - 72);
    }
  });

  it('reports a budget too small for all-2-bit', () => {
    const plan = greedyAllocate(instance(100, 1, 10));
    assert.equal(plan.fits, false);
  });

  it('gives more bits to more important tokens (equal errors)', () => {
    const n = 500;
    const inp = instance(n, 5, (n - 20) * 140);
    inp.sqError.fill(0).forEach((_, j, a) => (a[j] = [0.01, 1, 16][j % 3]));
    const plan = greedyAllocate(inp);
    for (let i = 4; i < n - 16; i++)
      for (let j = 4; j < n - 16; j += 37)
        if (inp.importance[i] > inp.importance[j]) assert.ok(plan.formats[i] <= plan.formats[j], `${i} vs ${j}`);
  });

  it('beats uniform int4 at the same byte budget', () => {
    const n = 4000, unprotected = n - 20;
    const inp = instance(n, 11, unprotected * COSTS[2]);
    const uniform = new Uint8Array(n).fill(2).fill(0, 0, 4).fill(0, n - 16);
    assert.ok(objective(inp, greedyAllocate(inp).formats) < objective(inp, uniform));
  });

  it('respects upper bounds: a token never gets more precision than its bound', () => {
    const n = 1000;
    const inp = instance(n, 13, (n - 20) * 200);
    const upperBounds = Uint8Array.from({ length: n }, (_, i) => i % 4);
    const plan = greedyAllocate({ ...inp, upperBounds });
    plan.formats.forEach((f, i) => assert.ok(f >= upperBounds[i] && (i < 4 || i >= n - 16 ? f === upperBounds[i] : f >= 1), `token ${i}: ${f}`));
    assert.ok(plan.fits && plan.usedBytes <= inp.budgetBytes);
    assert.ok(plan.formats.some((f, i) => f === 1 && upperBounds[i] <= 1), 'the budget buys int8 where allowed');
  });

  it('throws INVALID_ARGUMENT for inconsistent arrays (speed is measured by `smartkv bench allocator`)', () => {
    const inp = instance(100, 1, 1e6);
    assert.throws(() => greedyAllocate({ ...inp, sqError: new Float32Array(299) }), (e: unknown) => e instanceof KvEngineError && e.code === 'INVALID_ARGUMENT' && /sqError/.test(e.message));
  });

  it("applied through the engine, the achieved β stays within the target", async () => {
    const cfg = { layers: 1, qHeads: 8, kvHeads: 2, headDim: 128, quant: 'symmetric' as const, threads: 2 };
    const eng = new KvEngine(cfg);
    const n = 3000, kv = 2 * 128;
    for (const beta of [0.25, 0.33, 0.5]) {
      const seq = await eng.createSequence();
      await eng.append(seq, 0, gaussian(n * kv, 1), gaussian(n * kv, 2));
      const report = await eng.exportImportance(seq, 0);
      const u = rng(4);
      report.importance.forEach((_, i, a) => (a[i] = 1 / (1 + Math.floor(u() * n))));
      const budgetBytes = budgetForBeta({
        beta,
        n,
        fp16TokenBytes: 2 * kv * 2,
        tokenBytes: eng.tokenBytes(),
        metaBytesPerToken: TOKEN_META_BYTES,
        blockTokens: 32,
        extraBytes: 2 * 4096 * 4 + 4096,
        sinks: 4,
        window: 64,
      });
      const plan = greedyAllocate({ ...report, tokenBytes: eng.tokenBytes(), budgetBytes, sinks: 4, window: 64 });
      await eng.applyPlan(seq, 0, Uint32Array.from({ length: n }, (_, i) => i), plan.formats);
      const st = await eng.stats(seq);
      assert.ok(st.beta <= beta && st.beta > beta - 0.05, `β ${st.beta} for target ${beta}`);
      assert.equal(st.tokensByFormat.fp16, 68);
      await eng.freeSequence(seq);
    }
    await eng.close();
  });
});

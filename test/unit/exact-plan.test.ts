// The allocator's one-call exact plan, on the engine's layout for 8 KV heads
// of 128: where β binds the plan's priced bytes meet it within one block and
// never above, for every policy that takes a budget; a downgrade-only plan
// that cannot do better than leaving the cache alone leaves it alone; where β
// cannot bind the result says so and from which length it can; and the
// service refuses a bad layout naming the field, and an unmeetable β with
// FAILED_PRECONDITION unless best effort.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';

import { AllocateRequestSchema, PlanLayoutSchema, type AllocateResponse } from '../../gen/smartkv/v1/allocator_pb.js';
import { CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { blockBytes, formatBlockTokens } from '../../native/formats.js';
import { allocatorHandlers } from '../../services/allocator/allocator-server.js';
import { planExactly } from '../../services/allocator/exact-plan.js';
import { allocate } from '../../services/allocator/policies.js';
import { PlanPricer, type PlanLayout } from '../../services/allocator/plan-cost.js';
import { benchInput } from '../../cli/bench-allocator.js';

const T = 32, SHAPE = { headDim: 128, kvHeads: 8, blockTokens: T, quant: 'symmetric' as const };
const SLOTS = [0, 1, 2, 3].map((f) => formatBlockTokens(f, T)); // T, T, 2T, 4T
const BLOCK = SLOTS.map((_, f) => blockBytes(f, SHAPE));

/** One layer of n tokens: sinks and window at FP16, the rest at `rest`. */
function state(n: number, beta: number, rest: number): { lay: PlanLayout; current: Uint8Array } {
  const current = new Uint8Array(n).fill(rest);
  for (let i = 0; i < n; i++) if (i < 4 || i >= n - 64) current[i] = 0;
  const counts = [0, 0, 0, 0];
  for (const f of current) counts[f]++;
  const held = counts.reduce((a, c, f) => a + Math.ceil(c / SLOTS[f]) * BLOCK[f], 0) + Math.ceil(n / 128) * 128 * 8;
  const lay: PlanLayout = {
    targetBeta: beta, blockTokens: T, blockBytes: BLOCK, tokenMetaBytes: 8, metaPageTokens: 128, tableEntryBytes: 8,
    fp16TokenBytes: 2 * 8 * 128 * 2, layers: 1, groups: 1, tokens: n, outsideFp16Tokens: 0, aheadTokens: 16, heldBytes: held, protectedTokens: 68,
  };
  return { lay, current };
}

describe('exact plans', () => {
  for (const policy of ['smartkv', 'random', 'tiered'] as const)
    for (const [n, beta] of [[4096, 0.25], [2000, 0.33], [9000, 0.5]] as const)
      it(`${policy}, ${n} tokens, β ${beta}: meets β within one block, never above`, () => {
        const { lay, current } = state(n, beta, 3);
        const input = benchInput(n, 3);
        const p = planExactly(policy, input, lay, current);
        assert.ok(p.fits && !p.unchanged);
        // Re-price the plan independently: β at every length until the next plan.
        const price = new PlanPricer(lay, current).price(p.formats);
        assert.equal(price.hotBytes, p.hotBytes);
        assert.ok(price.worstBeta <= beta, `β ${price.worstBeta}`);
        // … and spends it, unless the policy itself stops short (tiered's
        // percentiles cap what it buys): then β does not bind on it.
        const unlimited = allocate(policy, { ...input, tokenBytes: BLOCK.map((b, f) => b / SLOTS[f]), budgetBytes: 1e18 }).formats;
        if (new PlanPricer(lay, current).price(unlimited).fits) return assert.equal(policy, 'tiered');
        const fp16 = (n + 16) * lay.fp16TokenBytes;
        assert.ok((beta - price.worstBeta) * fp16 <= BLOCK[1], `${((beta - price.worstBeta) * fp16).toFixed(0)} bytes under β, more than an int8 block`);
      });

  it('downgrade-only: tokens at their bounds that already meet β stay as they are', () => {
    const { lay, current } = state(4096, 0.25, 3);
    const input = { ...benchInput(4096, 4), upperBounds: current };
    const p = planExactly('smartkv', input, lay, current);
    assert.ok(p.fits);
    assert.deepEqual([...p.formats], [...current]);
  });

  it('where β cannot bind: best effort, never larger than leaving the cache alone, and from which length it binds', () => {
    const { lay, current } = state(200, 0.25, 0); // a short sequence still at FP16
    const p = planExactly('smartkv', benchInput(200, 5), lay, current);
    assert.equal(p.fits, false);
    assert.ok(p.hotBytes <= lay.heldBytes);
    assert.ok(p.bindsFrom > 200, `binds from ${p.bindsFrom}`);
    // At that length the cheapest plan does fit.
    const at = state(p.bindsFrom, 0.25, 3);
    assert.ok(new PlanPricer(at.lay, at.current).price(at.current).fits);
  });
});

describe('Allocate with a layout', () => {
  const call = (req: ReturnType<typeof create<typeof AllocateRequestSchema>>) =>
    new Promise<AllocateResponse>((resolve, reject) =>
      (allocatorHandlers().allocate as grpc.handleUnaryCall<unknown, AllocateResponse>)({ request: req } as grpc.ServerUnaryCall<unknown, AllocateResponse>, (e, r) => (e ? reject(e) : resolve(r!))),
    );
  const request = (n: number, beta: number, rest: number, patch: Partial<PlanLayout> = {}, bestEffort = true) => {
    const { lay, current } = state(n, beta, rest);
    const input = benchInput(n, 6);
    return create(AllocateRequestSchema, {
      policy: CachePolicy.SMARTKV,
      importance: new Uint8Array(input.importance.buffer),
      sqError: new Uint8Array(input.sqError.buffer),
      tokenBytes: [...input.tokenBytes],
      sinks: 4, window: 64, seed: 1n, bestEffort,
      layout: create(PlanLayoutSchema, { ...lay, blockBytes: [...lay.blockBytes], ...patch } as Parameters<typeof create<typeof PlanLayoutSchema>>[1]),
      currentFormats: current,
    });
  };

  it('answers the exact plan in one call', async () => {
    const r = await call(request(4096, 0.25, 3));
    assert.ok(r.fits && r.achievedBeta <= 0.25 && r.achievedBeta > 0.24, `β ${r.achievedBeta}`);
    assert.ok(r.policyRuns >= 1 && r.policyRuns <= 12, `${r.policyRuns} policy runs`);
  });

  it('FAILED_PRECONDITION for an unmeetable β unless best effort, naming the length it binds from', async () => {
    await assert.rejects(call(request(200, 0.25, 0, {}, false)), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION && /binds from \d+ tokens/.test(e.details));
    assert.equal((await call(request(200, 0.25, 0))).fits, false);
  });

  it('INVALID_ARGUMENT naming the layout field', async () => {
    const invalid = (field: RegExp) => (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && field.test(e.details);
    await assert.rejects(call(request(4096, 0.25, 3, { targetBeta: 1.5 })), invalid(/layout\.target_beta/));
    await assert.rejects(call(request(4096, 0.25, 3, { blockBytes: [1, 2] })), invalid(/layout\.block_bytes/));
    await assert.rejects(call(request(4096, 0.25, 3, { groups: 3 })), invalid(/layout\.groups/));
  });
});

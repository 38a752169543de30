// The orchestrator's view of the allocator: in this process (LocalAllocator)
// or the allocator service over gRPC (GrpcAllocator). One call per
// reallocation: the cache's layout goes with the request, and the plan that
// comes back meets β in the engine's exact bytes, or says it cannot.
import type * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { AllocateRequestSchema, AllocatorService, PlanLayoutSchema, type AllocateResponse } from '../../gen/smartkv/v1/allocator_pb.js';
import { planExactly, type ExactPlan } from '../allocator/exact-plan.js';
import type { PlanLayout } from '../allocator/plan-cost.js';
import type { AllocationInput, PlanPolicy } from '../allocator/policies.js';
import { policyToPb } from '../common/policy.js';
import { bytesOf, callUnary, makeClient } from '../common/rpc.js';

export interface AllocatorResult extends ExactPlan {
  allocateUs: number; // time in the allocator
}

export interface Allocator {
  /** Never fails for an unmeetable budget: returns the best-effort plan with fits = false.
   * input.budgetBytes and input.tokenBytes are ignored: the layout decides. */
  plan(policy: PlanPolicy, input: AllocationInput, layout: PlanLayout, current: Uint8Array): Promise<AllocatorResult>;
  close(): void;
}

export class LocalAllocator implements Allocator {
  calls = 0;
  async plan(policy: PlanPolicy, input: AllocationInput, layout: PlanLayout, current: Uint8Array): Promise<AllocatorResult> {
    this.calls++;
    const t0 = performance.now();
    const p = planExactly(policy, input, layout, current);
    return { ...p, allocateUs: Math.round((performance.now() - t0) * 1000) };
  }
  close(): void {}
}

export class GrpcAllocator implements Allocator {
  private readonly client: grpc.Client;

  constructor(readonly address: string) {
    this.client = makeClient(AllocatorService, address);
  }

  async plan(policy: PlanPolicy, input: AllocationInput, layout: PlanLayout, current: Uint8Array): Promise<AllocatorResult> {
    const req = create(AllocateRequestSchema, {
      policy: policyToPb(policy),
      importance: bytesOf(input.importance),
      sqError: bytesOf(input.sqError),
      upperBounds: input.upperBounds ?? new Uint8Array(0),
      tokenBytes: [...input.tokenBytes],
      budgetBytes: 0,
      sinks: input.sinks,
      window: input.window,
      seed: BigInt(input.seed >>> 0),
      bestEffort: true,
      layout: create(PlanLayoutSchema, { ...layout, blockBytes: [...layout.blockBytes] }),
      currentFormats: current,
    });
    const r = await callUnary<AllocateResponse>(this.client, 'allocate', req, { deadlineMs: 30_000 });
    return {
      formats: r.formats,
      usedBytes: r.usedBytes,
      fits: r.fits,
      hotBytes: r.hotBytes,
      achievedBeta: r.achievedBeta,
      bindsFrom: r.bindsFromTokens,
      unchanged: r.unchanged,
      policyRuns: r.policyRuns,
      allocateUs: Number(r.allocateUs),
    };
  }

  close(): void {
    this.client.close();
  }
}

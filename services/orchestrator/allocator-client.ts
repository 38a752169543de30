// The orchestrator's view of the allocator: in this process (LocalAllocator)
// or the allocator service over gRPC (GrpcAllocator). One call per shard per
// step (planBatch: every reallocation due on that shard), or one per
// reallocation (plan): the cache's layout goes with each problem, and each
// plan that comes back meets β in the engine's exact bytes, or says it cannot.
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import {
  AllocateBatchRequestSchema,
  AllocateBatchResponseSchema,
  AllocateRequestSchema,
  AllocateStreamRequestSchema,
  AllocatorService,
  PlanLayoutSchema,
  type AllocateStreamRequest,
  type AllocateStreamResponse,
  type AllocateResponse,
} from '../../gen/smartkv/v1/allocator_pb.js';
import type { BatchResult } from '../cache/cache-api.js';
import { planExactly, type ExactPlan } from '../allocator/exact-plan.js';
import type { PlanLayout } from '../allocator/plan-cost.js';
import type { AllocationInput, PlanPolicy } from '../allocator/policies.js';
import { policyToPb } from '../common/policy.js';
import { bytesOf, callUnary, makeClient, RpcError } from '../common/rpc.js';
import { CallStream } from '../common/call-stream.js';
import { activeChild, traceparentOf } from '../telemetry/spans.js';

export interface AllocatorResult extends ExactPlan {
  allocateUs: number; // time in the allocator
}

/** One allocation problem of a batch: what plan() takes. */
export interface PlanProblem {
  policy: PlanPolicy;
  input: AllocationInput;
  layout: PlanLayout;
  current: Uint8Array; // [slots] current format codes
}

export interface Allocator {
  /** Never fails for an unmeetable budget: returns the best-effort plan with fits = false.
   * input.budgetBytes and input.tokenBytes are ignored: the layout decides. */
  plan(policy: PlanPolicy, input: AllocationInput, layout: PlanLayout, current: Uint8Array): Promise<AllocatorResult>;
  /** Several problems in one call (AllocateBatch), each planned exactly as
   * plan() plans it alone; a problem that fails gets its Error in its place. */
  planBatch(problems: readonly PlanProblem[]): Promise<BatchResult<AllocatorResult>[]>;
  close(): void;
}

export class LocalAllocator implements Allocator {
  calls = 0; // plan and planBatch calls: what would have been RPCs
  async plan(policy: PlanPolicy, input: AllocationInput, layout: PlanLayout, current: Uint8Array): Promise<AllocatorResult> {
    this.calls++;
    return planTimed({ policy, input, layout, current });
  }
  async planBatch(problems: readonly PlanProblem[]): Promise<BatchResult<AllocatorResult>[]> {
    this.calls++;
    return problems.map((p) => {
      try {
        return planTimed(p);
      } catch (e) {
        return e as Error;
      }
    });
  }
  close(): void {}
}

function planTimed(p: PlanProblem): AllocatorResult {
  const t0 = performance.now();
  const plan = planExactly(p.policy, p.input, p.layout, p.current);
  return { ...plan, allocateUs: Math.round((performance.now() - t0) * 1000) };
}

/** The AllocateRequest of one problem: best effort, priced by its layout. */
export function allocateRequest({ policy, input, layout, current }: PlanProblem) {
  return create(AllocateRequestSchema, {
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
}

export function resultFromPb(r: AllocateResponse): AllocatorResult {
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

export class GrpcAllocator implements Allocator {
  private readonly client: grpc.Client;
  // planBatch's calls: messages on one stream (call-stream.ts says why).
  private readonly batches: CallStream<AllocateStreamRequest, AllocateStreamResponse>;

  constructor(readonly address: string) {
    this.client = makeClient(AllocatorService, address);
    this.batches = new CallStream(this.client, 'allocateStream', () => new grpc.Metadata(), `allocator ${address}`);
  }

  async plan(policy: PlanPolicy, input: AllocationInput, layout: PlanLayout, current: Uint8Array): Promise<AllocatorResult> {
    const r = await callUnary<AllocateResponse>(this.client, 'allocate', allocateRequest({ policy, input, layout, current }), { deadlineMs: 30_000 });
    return resultFromPb(r);
  }

  async planBatch(problems: readonly PlanProblem[]): Promise<BatchResult<AllocatorResult>[]> {
    const batch = create(AllocateBatchRequestSchema, { requests: problems.map(allocateRequest) });
    // The round trip's span (the allocator's span for its work hangs under it).
    const span = activeChild('allocate_batch', { 'smartkv.batch_size': problems.length });
    const traceparent = traceparentOf(span);
    let res: AllocateStreamResponse;
    try {
      res = await this.batches.call((id) => create(AllocateStreamRequestSchema, { id, traceparent, batch }), 30_000, 'AllocateBatch');
    } catch (e) {
      span?.recordException(e as Error);
      throw e;
    } finally {
      span?.end();
    }
    const r = res.batch ?? create(AllocateBatchResponseSchema);
    return r.results.map((x) => (x.errorCode ? new RpcError(x.errorCode, `allocator ${this.address}: ${x.errorMessage}`) : resultFromPb(x.plan!)));
  }

  close(): void {
    this.batches.close();
    this.client.close();
  }
}

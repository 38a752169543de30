// The orchestrator's view of the allocator: in this process (LocalAllocator)
// or the allocator service over gRPC (GrpcAllocator).
import type * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { AllocateRequestSchema, AllocatorService, type AllocateResponse } from '../../gen/smartkv/v1/allocator_pb.js';
import { allocate, type Allocation, type AllocationInput, type PlanPolicy } from '../allocator/policies.js';
import { policyToPb } from '../common/policy.js';
import { bytesOf, callUnary, makeClient } from '../common/rpc.js';

export interface AllocatorResult {
  allocation: Allocation;
  allocateUs: number; // time in the policy
}

export interface Allocator {
  /** Never fails for an unmeetable budget: returns the cheapest plan with fits = false. */
  allocate(policy: PlanPolicy, input: AllocationInput): Promise<AllocatorResult>;
  close(): void;
}

export class LocalAllocator implements Allocator {
  async allocate(policy: PlanPolicy, input: AllocationInput): Promise<AllocatorResult> {
    const t0 = performance.now();
    const allocation = allocate(policy, input);
    return { allocation, allocateUs: Math.round((performance.now() - t0) * 1000) };
  }
  close(): void {}
}

export class GrpcAllocator implements Allocator {
  private readonly client: grpc.Client;

  constructor(readonly address: string) {
    this.client = makeClient(AllocatorService, address);
  }

  async allocate(policy: PlanPolicy, input: AllocationInput): Promise<AllocatorResult> {
    const req = create(AllocateRequestSchema, {
      policy: policyToPb(policy),
      importance: bytesOf(input.importance),
      sqError: bytesOf(input.sqError),
      upperBounds: input.upperBounds ?? new Uint8Array(0),
      tokenBytes: [...input.tokenBytes],
      budgetBytes: input.budgetBytes,
      sinks: input.sinks,
      window: input.window,
      seed: BigInt(input.seed >>> 0),
      bestEffort: true,
    });
    const res = await callUnary<AllocateResponse>(this.client, 'allocate', req, { deadlineMs: 30_000 });
    return {
      allocation: { formats: res.formats, usedBytes: res.usedBytes, fits: res.fits },
      allocateUs: Number(res.allocateUs),
    };
  }

  close(): void {
    this.client.close();
  }
}

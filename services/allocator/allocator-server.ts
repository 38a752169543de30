// The allocator service's gRPC handler: decodes a request, runs the policy,
// returns the plan. Pure computation; no state between calls.
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { AllocateResponseSchema, type AllocateRequest, type AllocateResponse } from '../../gen/smartkv/v1/allocator_pb.js';
import { CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { f32, invalidArgument, RpcError, toServiceError } from '../common/rpc.js';
import { policyFromPb } from '../common/policy.js';
import { allocate, isPlanPolicy, type AllocationInput } from './policies.js';
import { trace } from '@opentelemetry/api';
import { instruments } from '../telemetry/spans.js';


/** Decodes and checks an AllocateRequest; INVALID_ARGUMENT names the field. */
export function allocationInput(req: AllocateRequest): AllocationInput {
  if (req.importance.byteLength % 4 !== 0) throw invalidArgument(`importance has ${req.importance.byteLength} bytes, not a multiple of 4`);
  const importance = f32(req.importance);
  const n = importance.length;
  if (req.sqError.byteLength !== n * 12) throw invalidArgument(`sq_error has ${req.sqError.byteLength} bytes, expected ${n} tokens × 3 × 4`);
  if (req.upperBounds.byteLength !== 0 && req.upperBounds.byteLength !== n)
    throw invalidArgument(`upper_bounds has ${req.upperBounds.byteLength} entries, expected 0 or ${n}`);
  if (req.tokenBytes.length !== 4) throw invalidArgument(`token_bytes has ${req.tokenBytes.length} entries, expected 4 (fp16, int8, int4, int2)`);
  return {
    importance,
    sqError: f32(req.sqError),
    upperBounds: req.upperBounds.byteLength ? req.upperBounds : null,
    tokenBytes: req.tokenBytes,
    budgetBytes: req.budgetBytes,
    sinks: req.sinks,
    window: req.window,
    seed: Number(req.seed & 0xffffffffn),
  };
}

export function allocatorHandlers(): grpc.UntypedServiceImplementation {
  return {
    allocate: (call: grpc.ServerUnaryCall<AllocateRequest, AllocateResponse>, cb: grpc.sendUnaryData<AllocateResponse>) => {
      try {
        const req = call.request;
        const policy = policyFromPb(req.policy);
        if (!policy || !isPlanPolicy(policy))
          throw invalidArgument(`policy: ${CachePolicy[req.policy] ?? req.policy} is not a precision plan (fp16 and KIVI are storage kinds)`);
        const input = allocationInput(req);
        const t0 = performance.now();
        const plan = allocate(policy, input);
        const us = Math.round((performance.now() - t0) * 1000);
        if (!plan.fits && !req.bestEffort)
          throw new RpcError(
            grpc.status.FAILED_PRECONDITION,
            `budget: ${req.budgetBytes} bytes cannot hold ${countUnprotected(input)} unprotected tokens even at 2 bits (${plan.usedBytes} bytes)`,
          );
        const histogram = [0, 0, 0, 0];
        for (const f of plan.formats) histogram[f]++;
        instruments().allocateDuration.record(us, { policy });
        trace.getActiveSpan()?.setAttributes({ 'smartkv.policy': policy, 'smartkv.tokens': input.importance.length, 'smartkv.allocate_us': us, 'smartkv.fits': plan.fits });
        cb(null, create(AllocateResponseSchema, { formats: plan.formats, usedBytes: plan.usedBytes, allocateUs: BigInt(us), histogram, fits: plan.fits }));
      } catch (err) {
        cb(toServiceError(err));
      }
    },
  };
}

function countUnprotected(i: AllocationInput): number {
  return Math.max(0, i.importance.length - i.sinks - i.window);
}



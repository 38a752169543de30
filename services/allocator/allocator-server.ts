// The allocator service's gRPC handler: decodes a request, runs the policy,
// returns the plan. Pure computation; no state between calls.
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import {
  AllocateBatchRequestSchema,
  AllocateBatchResponseSchema,
  AllocateResponseSchema,
  AllocateStreamResponseSchema,
  type AllocateStreamRequest,
  type AllocateBatchRequest,
  type AllocateBatchResponse,
  type AllocateRequest,
  type AllocateResponse,
} from '../../gen/smartkv/v1/allocator_pb.js';
import { MAX_BATCH_SEQUENCES } from '../common/limits.js';
import { CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { f32, invalidArgument, RpcError, toServiceError } from '../common/rpc.js';
import { policyFromPb } from '../common/policy.js';
import { allocate, isPlanPolicy, type AllocationInput } from './policies.js';
import { planExactly, type ExactPlan } from './exact-plan.js';
import type { PlanLayout } from './plan-cost.js';
import type { PlanLayout as PlanLayoutPb } from '../../gen/smartkv/v1/allocator_pb.js';
import { context, trace } from '@opentelemetry/api';
import { answerCalls } from '../common/answer-calls.js';
import { childOf, contextFrom, instruments } from '../telemetry/spans.js';


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

/** Decodes and checks a PlanLayout against the request's slots; INVALID_ARGUMENT names the field. */
export function planLayout(l: PlanLayoutPb, slots: number, current: Uint8Array): PlanLayout {
  const need = (ok: boolean, msg: string) => {
    if (!ok) throw invalidArgument(msg);
  };
  need(l.targetBeta > 0 && l.targetBeta <= 1, `layout.target_beta must be in (0, 1], got ${l.targetBeta}`);
  need(l.blockTokens >= 1, `layout.block_tokens must be ≥ 1, got ${l.blockTokens}`);
  need(l.blockBytes.length === 4 && l.blockBytes.every((b) => b > 0 && Number.isFinite(b)), `layout.block_bytes must be 4 positive sizes (fp16, int8, int4, int2), got [${l.blockBytes.join(', ')}]`);
  need(l.layers >= 1, `layout.layers must be ≥ 1, got ${l.layers}`);
  need(l.groups === 1 || l.groups === l.layers, `layout.groups must be 1 or layout.layers (${l.layers}), got ${l.groups}`);
  need(slots % l.groups === 0, `importance has ${slots} slots, not a multiple of layout.groups (${l.groups})`);
  need(l.fp16TokenBytes > 0, `layout.fp16_token_bytes must be positive, got ${l.fp16TokenBytes}`);
  need(l.metaPageTokens >= 1, `layout.meta_page_tokens must be ≥ 1, got ${l.metaPageTokens}`);
  need(l.tokenMetaBytes >= 0 && l.tableEntryBytes >= 0, 'layout.token_meta_bytes and layout.table_entry_bytes must not be negative');
  need(l.heldBytes >= 0 && Number.isFinite(l.heldBytes), `layout.held_bytes must be a byte count, got ${l.heldBytes}`);
  need(current.length === slots, `current_formats has ${current.length} entries, expected ${slots}`);
  for (let i = 0; i < current.length; i++) need(current[i] <= 3, `current_formats[${i}] must be a format code in [0, 3], got ${current[i]}`);
  return {
    targetBeta: l.targetBeta, blockTokens: l.blockTokens, blockBytes: l.blockBytes, tokenMetaBytes: l.tokenMetaBytes,
    metaPageTokens: l.metaPageTokens, tableEntryBytes: l.tableEntryBytes, fp16TokenBytes: l.fp16TokenBytes, layers: l.layers,
    groups: l.groups, tokens: l.tokens, outsideFp16Tokens: l.outsideFp16Tokens, aheadTokens: l.aheadTokens,
    heldBytes: l.heldBytes, protectedTokens: l.protectedTokens,
  };
}

function exactResponse(p: ExactPlan, us: number): AllocateResponse {
  const histogram = [0, 0, 0, 0];
  for (const f of p.formats) histogram[f]++;
  return create(AllocateResponseSchema, {
    formats: p.formats, usedBytes: p.usedBytes, allocateUs: BigInt(us), histogram, fits: p.fits, hotBytes: p.hotBytes,
    achievedBeta: p.achievedBeta, bindsFromTokens: p.bindsFrom, unchanged: p.unchanged, policyRuns: p.policyRuns,
  });
}

/** One request's plan, as Allocate answers it; throws what Allocate would fail with. */
function allocateOne(req: AllocateRequest): AllocateResponse {
  const policy = policyFromPb(req.policy);
  if (!policy || !isPlanPolicy(policy))
    throw invalidArgument(`policy: ${CachePolicy[req.policy] ?? req.policy} is not a precision plan (fp16 and KIVI are storage kinds)`);
  const input = allocationInput(req);
  if (req.layout) {
    const lay = planLayout(req.layout, input.importance.length, req.currentFormats);
    const t0 = performance.now();
    const p = planExactly(policy, input, lay, req.currentFormats);
    const us = Math.round((performance.now() - t0) * 1000);
    if (!p.fits && !req.bestEffort)
      throw new RpcError(
        grpc.status.FAILED_PRECONDITION,
        `layout.target_beta: β ${lay.targetBeta} cannot be met at ${lay.tokens} tokens (best β ${p.achievedBeta.toFixed(3)}); it binds from ${p.bindsFrom || 'no length below 65536'} tokens`,
      );
    instruments().allocateDuration.record(us, { policy });
    trace.getActiveSpan()?.setAttributes({ 'smartkv.policy': policy, 'smartkv.tokens': lay.tokens, 'smartkv.allocate_us': us, 'smartkv.fits': p.fits, 'smartkv.policy_runs': p.policyRuns, 'smartkv.achieved_beta': p.achievedBeta });
    return exactResponse(p, us);
  }
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
  return create(AllocateResponseSchema, { formats: plan.formats, usedBytes: plan.usedBytes, allocateUs: BigInt(us), histogram, fits: plan.fits });
}

export function allocatorHandlers(): grpc.UntypedServiceImplementation {
  return {
    allocate: (call: grpc.ServerUnaryCall<AllocateRequest, AllocateResponse>, cb: grpc.sendUnaryData<AllocateResponse>) => {
      try {
        cb(null, allocateOne(call.request));
      } catch (err) {
        cb(toServiceError(err));
      }
    },
    // Each request planned as Allocate plans it alone (no state is shared
    // between them), so a plan never depends on which others shared its batch.
    allocateBatch: (call: grpc.ServerUnaryCall<AllocateBatchRequest, AllocateBatchResponse>, cb: grpc.sendUnaryData<AllocateBatchResponse>) => {
      try {
        cb(null, allocateBatch(call.request));
      } catch (err) {
        cb(toServiceError(err));
      }
    },
    // AllocateBatch per message on one stream (the orchestrator's step loop), answered by id.
    allocateStream: answerCalls(
      async (req: AllocateStreamRequest) => {
        const span = req.traceparent ? childOf(contextFrom(req.traceparent), 'allocator.allocate_batch') : undefined;
        try {
          return create(AllocateStreamResponseSchema, { id: req.id, batch: context.with(span ? trace.setSpan(context.active(), span) : context.active(), () => allocateBatch(req.batch ?? create(AllocateBatchRequestSchema))) });
        } finally {
          span?.end();
        }
      },
      (id, code, message) => create(AllocateStreamResponseSchema, { id, errorCode: code, errorMessage: message }),
      (line) => process.stderr.write(line + '\n'),
    ),
  };
}

/** Each request planned as Allocate plans it alone (no state is shared
 * between them), so a plan never depends on which others shared its batch. */
function allocateBatch(batch: AllocateBatchRequest): AllocateBatchResponse {
  const reqs = batch.requests;
  if (reqs.length === 0) throw invalidArgument('requests: the batch is empty');
  if (reqs.length > MAX_BATCH_SEQUENCES)
    throw new RpcError(grpc.status.RESOURCE_EXHAUSTED, `requests: ${reqs.length} in one batch, more than the ${MAX_BATCH_SEQUENCES} allowed; split it`);
  const results = reqs.map((req, i) => {
    try {
      return { errorCode: 0, errorMessage: '', plan: allocateOne(req) };
    } catch (err) {
      const e = toServiceError(err);
      return { errorCode: e.code ?? grpc.status.INTERNAL, errorMessage: `requests[${i}].${e.details ?? ''}` };
    }
  });
  trace.getActiveSpan()?.setAttribute('smartkv.batch_size', reqs.length);
  return create(AllocateBatchResponseSchema, { results });
}

function countUnprotected(i: AllocationInput): number {
  return Math.max(0, i.importance.length - i.sinks - i.window);
}



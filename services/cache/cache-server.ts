// The cache service's gRPC handlers over a CacheCore. Sequences belong to the
// owner token sent in the `smartkv-owner` header and only that owner may act
// on them; they live under the owner's lease (owners.ts): freed when the
// owner's last attend stream closes, or when an owner without a stream has
// not been heard from for the lease time.
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import {
  ApplyPlanBatchResponseSchema,
  ApplyPlanResponseSchema,
  CreateSequenceResponseSchema,
  ExportImportanceBatchResponseSchema,
  ExportImportanceResponseSchema,
  FreeSequenceResponseSchema,
  RegisterRegionResponseSchema,
  ShrinkReservationResponseSchema,
  StatsResponseSchema,
  UnregisterRegionResponseSchema,
  type ApplyPlanBatchRequest,
  type ApplyPlanBatchResponse,
  type ExportImportanceBatchResponse,
  type ReallocStreamRequest,
  type ReallocStreamResponse,
  ReallocStreamResponseSchema,
  type ApplyPlanRequest,
  type ApplyPlanResponse,
  type CreateSequenceRequest,
  type ExportImportanceBatchRequest,
  type ExportImportanceRequest,
  type ExportImportanceResponse,
  type FreeSequenceRequest,
  type RegisterRegionRequest,
  type ShrinkReservationRequest,
  type StatsRequest,
  type UnregisterRegionRequest,
} from '../../gen/smartkv/v1/cache_pb.js';
import { answerCalls } from '../common/answer-calls.js';
import { bytesOf, invalidArgument, MalformedMessage, malformedStatus, RpcError, statusOf, toServiceError, u32 } from '../common/rpc.js';
import type { CacheLimits } from '../common/limits.js';
import type { AttendRequestWire as AttendRequest, AttendResponseWire as AttendResponse } from './attend-codec.js';
import type { ImportanceReport, LayerPlan, PlanApplied, SequencePlan, ShardAttendItem } from './cache-api.js';
import { PrecisionMode } from '../../gen/smartkv/v1/common_pb.js';
import { modeFromPb, modeToPb } from '../common/policy.js';
import { childOf, contextFrom, instruments } from '../telemetry/spans.js';
import { checkBatch, type CacheCore } from './cache-core.js';
import { bytesToPb, OWNER_HEADER, storageFromPb } from './cache-proto.js';
import { MIN_OWNER_CHARS, ownerTag, validOwner, type OwnerLeases } from './owners.js';
import { RegionTable } from './region-table.js';

/** Query rows up to which a doorbell attend runs on the service's JS thread
 * (a decode step of a large batch); bigger ones (prefill chunks) go to a
 * worker thread so the service keeps answering other calls meanwhile. */
const SYNC_ATTEND_ROWS = 64;

type Unary<I, O> = (call: grpc.ServerUnaryCall<I, O>, cb: grpc.sendUnaryData<O>) => void;

function unary<I, O>(fn: (req: I, call: grpc.ServerUnaryCall<I, O>) => Promise<O>): Unary<I, O> {
  return (call, cb) => {
    fn(call.request, call).then(
      (res) => cb(null, res),
      (err) => cb(toServiceError(err)),
    );
  };
}

function ownerOf(call: { metadata: grpc.Metadata }): string {
  return String(call.metadata.get(OWNER_HEADER)[0] ?? '');
}

export interface CacheLog {
  (line: string): void;
}

/** regions: the data plane's shared-memory regions (closed by the caller on shutdown). */
export function cacheHandlers(
  core: CacheCore,
  log: CacheLog,
  limits: CacheLimits,
  leases: OwnerLeases,
  regions = new RegionTable(core.engine.config, log),
): grpc.UntypedServiceImplementation {
  const { qHeads, kvHeads, headDim } = core.engine.config;

  const freeOwner = (owner: string, why: string) =>
    core.freeOwner(owner).then(
      (n) => n > 0 && log(`${ownerTag(owner)} ${why}: freed ${n} sequence(s)`),
      (e) => log(`freeing ${ownerTag(owner)}'s sequences failed: ${(e as Error).message}`),
    );
  leases.start((owner) => freeOwner(owner, `not heard from for ${leases.leaseMs} ms (lease expired)`));

  /** Someone else's sequence is as unknown as one that does not exist. */
  function mine(seq: number, owner: string, field = 'sequence_id'): number {
    if (core.ownerOf(seq) !== owner || !validOwner(owner)) throw new RpcError(grpc.status.NOT_FOUND, `${field}: no sequence ${seq} of this caller (smartkv-owner)`);
    return seq;
  }

  function items(req: AttendRequest, owner: string): ShardAttendItem[] {
    if (req.items.length === 0) throw invalidArgument('items: the batch is empty');
    // Bounded before the engine runs: an 8,192-row Attend held an engine for 3.1 s.
    const rows = req.items.reduce((a, it) => a + it.rows, 0);
    if (rows > limits.attendRows)
      throw new RpcError(grpc.status.RESOURCE_EXHAUSTED, `items: ${rows} query rows in one Attend exceed the limit of ${limits.attendRows} (max_attend_rows, --max-attend-rows)`);
    if (req.regionId) return regions.items(req, owner, (seq, field) => mine(seq, owner, field));
    return req.items.map((it, i) => {
      const rows = it.rows;
      const want = (name: string, b: Float32Array, heads: number) => {
        if (b.byteLength !== rows * heads * headDim * 4)
          throw invalidArgument(`items[${i}].${name} has ${b.byteLength} bytes, expected rows ${rows} × ${heads} heads × ${headDim} × 4`);
        return b;
      };
      if (rows < 1) throw invalidArgument(`items[${i}].rows must be ≥ 1`);
      return { seq: mine(it.sequenceId, owner, `items[${i}].sequence_id`), rows, q: want('q', it.q, qHeads), kNew: want('k_new', it.kNew, kvHeads), vNew: want('v_new', it.vNew, kvHeads) };
    });
  }

  /** now: a doorbell request, run on this thread when it is small and the engine idle (region-table.ts). */
  async function attend(req: AttendRequest, owner: string, now = false): Promise<AttendResponse> {
    // Spans only for traced callers: the stream carries the context per message.
    const span = req.traceparent ? childOf(contextFrom(req.traceparent), 'cache.attend', { 'smartkv.layer': req.layer, 'smartkv.sequences': req.items.length }) : undefined;
    try {
      const its = items(req, owner);
      const small = now && its.reduce((a, it) => a + it.rows, 0) <= SYNC_ATTEND_ROWS;
      const r = (small && core.attendNow(req.layer, its)) || (await core.attend(req.layer, its));
      span?.setAttribute('smartkv.engine_us', r.engineUs);
      instruments().attendDuration.record(r.engineUs, { side: 'cache' });
      // A region's outputs are already in it, at the items' out_offset.
      return { id: req.id, out: req.regionId ? [] : r.out, engineUs: r.engineUs, errorCode: 0, errorMessage: '' };
    } catch (e) {
      span?.recordException(e as Error);
      throw e;
    } finally {
      span?.end();
    }
  }

  /** The caller's owner token; its call renews its lease. */
  function touched(call: { metadata: grpc.Metadata }): string {
    const owner = ownerOf(call);
    leases.touch(owner);
    return owner;
  }

  /** ExportImportanceBatch for owner (the unary call and the stream's message). */
  async function exportBatch(req: ExportImportanceBatchRequest, owner: string): Promise<ExportImportanceBatchResponse> {
    const ids = req.sequenceIds;
    checkBatch('sequence_ids', ids);
    // Checked before anything is exported: a bad region or arena fails the call.
    const arena = req.regionId ? regions.arena(owner, req.regionId, Number(req.arenaOffset), Number(req.arenaBytes)) : null;
    // Someone else's sequence answers NOT_FOUND in its place, like a freed one.
    // Decided once, before the export: one freed meanwhile gets the engine's NOT_FOUND.
    const isMine = ids.map((s) => core.ownerOf(s) === owner && validOwner(owner));
    const owned = ids.filter((_, i) => isMine[i]);
    const { results: reports, exportUs } = owned.length ? await core.exportImportanceBatch(owned, limits.batchTokens) : { results: [], exportUs: 0 };
    let k = 0;
    const results = ids.map((seq, i) => {
      const r = isMine[i] ? reports[k++] : new RpcError(grpc.status.NOT_FOUND, `sequence_ids[${i}]: no sequence ${seq} of this caller (smartkv-owner)`);
      if (r instanceof Error) return batchError(seq, r, log);
      const at = arena?.place(r.importance, r.sqError);
      return {
        sequenceId: seq, errorCode: 0, errorMessage: '',
        report: importanceToPb(r, at !== undefined && at !== null),
        importanceOffset: BigInt(at?.importance ?? 0), sqErrorOffset: BigInt(at?.sqError ?? 0),
      };
    });
    return create(ExportImportanceBatchResponseSchema, { results, exportUs: BigInt(exportUs) });
  }

  /** ApplyPlanBatch for owner (the unary call and the stream's message). */
  async function applyBatch(req: ApplyPlanBatchRequest, owner: string): Promise<ApplyPlanBatchResponse> {
    checkBatch('plans', req.plans.map((p) => p.sequenceId));
    // Each plan on its own, as applyPlan would take it: a malformed plan or a
    // freed sequence answers in its place and the other plans still apply.
    const parsed = req.plans.map((p, k): SequencePlan | Error => {
      try {
        return { seq: mine(p.sequenceId, owner, `plans[${k}].sequence_id`), plans: wirePlans(p, `plans[${k}].`) };
      } catch (e) {
        return e as Error;
      }
    });
    const ok = parsed.filter((p): p is SequencePlan => !(p instanceof Error));
    const applied = ok.length ? await core.applyPlanBatch(ok) : [];
    let k = 0;
    const results = parsed.map((p, i) => {
      const a = p instanceof Error ? p : applied[k++];
      const seq = req.plans[i].sequenceId;
      if (a instanceof Error) return batchError(seq, a, log);
      return { sequenceId: seq, errorCode: 0, errorMessage: '', applied: appliedToPb(a) };
    });
    return create(ApplyPlanBatchResponseSchema, { results });
  }

  /** One ReallocStream message: its call, traced under the caller's span when it sends one. */
  async function reallocCall(req: ReallocStreamRequest, owner: string): Promise<ReallocStreamResponse> {
    const c = req.call;
    if (c.case === undefined) throw invalidArgument('call: the message names no call (export_importance_batch or apply_plan_batch)');
    const span = req.traceparent ? childOf(contextFrom(req.traceparent), `cache.${c.case === 'exportImportanceBatch' ? 'export_importance_batch' : 'apply_plan_batch'}`) : undefined;
    try {
      if (c.case === 'exportImportanceBatch')
        return create(ReallocStreamResponseSchema, { id: req.id, result: { case: c.case, value: await exportBatch(c.value, owner) } });
      return create(ReallocStreamResponseSchema, { id: req.id, result: { case: c.case, value: await applyBatch(c.value, owner) } });
    } catch (e) {
      span?.recordException(e as Error);
      throw e;
    } finally {
      span?.end();
    }
  }

  return {
    createSequence: unary(async (req: CreateSequenceRequest, call) => {
      const owner = ownerOf(call);
      if (!validOwner(owner))
        throw new RpcError(grpc.status.UNAUTHENTICATED, `${OWNER_HEADER} header: give a secret token of at least ${MIN_OWNER_CHARS} characters (128 random bits in hex) to own sequences; got ${owner.length} characters`);
      leases.touch(owner);
      const held = core.sequencesOf(owner);
      if (held >= limits.sequencesPerOwner)
        throw new RpcError(grpc.status.RESOURCE_EXHAUSTED, `this caller holds ${held} sequences, the limit per caller (max_sequences_per_owner, --max-sequences-per-owner); free some first`);
      const storage = storageFromPb(req.storage);
      if (!storage) throw invalidArgument(`storage: unknown storage kind ${req.storage}`);
      const mode = req.mode === PrecisionMode.UNSPECIFIED ? undefined : modeFromPb(req.mode);
      if (req.mode !== PrecisionMode.UNSPECIFIED && !mode) throw invalidArgument(`mode: unknown precision mode ${req.mode}`);
      const r = await core.createSequence(storage, Number(req.reserveBytes), req.gamma, owner, mode);
      return create(CreateSequenceResponseSchema, { sequenceId: r.seq, tokenBytes: r.tokenBytes });
    }),
    freeSequence: unary(async (req: FreeSequenceRequest, call) => {
      await core.freeSequence(mine(req.sequenceId, touched(call)));
      return create(FreeSequenceResponseSchema, {});
    }),
    shrinkReservation: unary(async (req: ShrinkReservationRequest, call) => {
      const seq = mine(req.sequenceId, touched(call));
      return create(ShrinkReservationResponseSchema, { reservedBytes: BigInt(await core.shrinkReservation(seq, Number(req.reserveBytes))) });
    }),
    attend: unary((req: AttendRequest, call) => attend(req, touched(call))),
    attendStream: (call: grpc.ServerDuplexStream<AttendRequest, AttendResponse>) => {
      const owner = ownerOf(call);
      leases.openStream(owner); // an open stream holds the owner's lease
      let closed = false;
      const close = () => {
        if (closed) return;
        closed = true;
        // The owner's last stream closed: the orchestrator stopped or died.
        if (leases.closeStream(owner)) {
          regions.dropOwner(owner);
          freeOwner(owner, 'went away (its last attend stream closed)');
        }
      };
      call.on('data', (req: AttendRequest | MalformedMessage) => {
        // No id to answer a malformed message with: the stream ends with INVALID_ARGUMENT.
        if (req instanceof MalformedMessage) return void (!call.destroyed && call.emit('error', malformedStatus(req)));
        leases.touch(owner);
        attend(req, owner).then(
          (res) => !call.destroyed && call.write(res),
          (err) => {
            const code = statusOf(err);
            if (code === grpc.status.INTERNAL) log(`internal error: ${(err as Error)?.stack ?? err}`);
            const msg = err instanceof Error ? err.message : String(err);
            if (!call.destroyed) call.write({ id: req.id, out: [], engineUs: 0, errorCode: code, errorMessage: msg });
          },
        );
      });
      call.on('end', () => {
        call.end();
        close();
      });
      call.on('cancelled', close);
      call.on('error', close);
      call.on('close', close);
    },
    registerRegion: unary(async (req: RegisterRegionRequest, call) => {
      const owner = touched(call);
      if (!validOwner(owner))
        throw new RpcError(grpc.status.UNAUTHENTICATED, `${OWNER_HEADER} header: a region belongs to an owner token of at least ${MIN_OWNER_CHARS} characters`);
      // Served by the futex doorbell as well as by AttendRequests naming it; a
      // doorbell request renews the owner's lease like any call.
      const id = regions.register(owner, req.path, Number(req.byteSize), req.nonce, (r, o) => {
        leases.touch(o);
        return attend(r, o, true);
      });
      log(`${ownerTag(owner)} registered data-plane region ${id} (${req.byteSize} bytes)`);
      return create(RegisterRegionResponseSchema, { regionId: id });
    }),
    unregisterRegion: unary(async (req: UnregisterRegionRequest, call) => {
      regions.unregister(touched(call), req.regionId);
      return create(UnregisterRegionResponseSchema, {});
    }),
    exportImportance: unary(async (req: ExportImportanceRequest, call) => {
      return importanceToPb(await core.exportImportance(mine(req.sequenceId, touched(call))));
    }),
    exportImportanceBatch: unary((req: ExportImportanceBatchRequest, call) => exportBatch(req, touched(call))),
    applyPlanBatch: unary((req: ApplyPlanBatchRequest, call) => applyBatch(req, touched(call))),
    // The reallocation calls on one stream: each message as its unary twin, answered by id.
    reallocStream: (call: grpc.ServerDuplexStream<ReallocStreamRequest, ReallocStreamResponse>) => {
      const owner = ownerOf(call);
      answerCalls(
        (req: ReallocStreamRequest) => reallocCall(req, owner),
        (id, code, message) => create(ReallocStreamResponseSchema, { id, errorCode: code, errorMessage: message }),
        log,
        () => leases.touch(owner),
      )(call);
    },
    applyPlan: unary(async (req, call) => {
      const r = req as ApplyPlanRequest;
      const seq = mine(r.sequenceId, touched(call));
      return appliedToPb(await core.applyPlan(seq, wirePlans(r, '')));
    }),
    // The whole service's totals are anyone's; one sequence's only its owner's.
    // With the header it is the owner's heartbeat.
    stats: unary(async (req: StatsRequest, call) => {
      const owner = touched(call);
      if (req.reservationsOnly && req.sequenceId === undefined) {
        const r = core.reservationsOf(owner);
        return create(StatsResponseSchema, {
          sequences: r.sequences,
          reservedBytes: BigInt(r.reservedBytes),
          memoryLimitBytes: BigInt(r.memoryLimitBytes),
          maxRequestBytes: BigInt(limits.receiveBytes),
          maxAttendRows: limits.attendRows,
          maxSequencesPerOwner: limits.sequencesPerOwner,
          maxReservedBytesPerOwner: BigInt(core.maxReservedPerOwner),
          callerReservedBytes: BigInt(r.callerReservedBytes ?? 0),
        });
      }
      const s = await core.stats(req.sequenceId === undefined ? undefined : mine(req.sequenceId, owner));
      return create(StatsResponseSchema, {
        bytes: bytesToPb(s.bytes),
        sequences: s.sequences,
        reservedBytes: BigInt(s.reservedBytes),
        memoryLimitBytes: BigInt(s.memoryLimitBytes),
        backend: s.backend,
        gamma: s.gamma,
        masterCopy: s.mode === 'reversible',
        rotateKv: s.rotateKv,
        mode: modeToPb(s.mode),
        masterDir: s.masterDir,
        blockTokens: s.blockTokens,
        maxRequestBytes: BigInt(limits.receiveBytes),
        maxAttendRows: limits.attendRows,
        maxSequencesPerOwner: limits.sequencesPerOwner,
        maxReservedBytesPerOwner: BigInt(core.maxReservedPerOwner),
        callerReservedBytes: BigInt(core.reservedBy(owner)),
      });
    }),
  };
}

/** A request's plans: the single plan (layer, positions, formats) first, then layer_plans. */
function wirePlans(r: ApplyPlanRequest, prefix: string): LayerPlan[] {
  const plans: LayerPlan[] = [];
  if (r.positions.byteLength > 0 || r.formats.byteLength > 0 || r.layerPlans.length === 0)
    plans.push(layerPlan(prefix, r.layer, r.positions, r.formats));
  r.layerPlans.forEach((p, k) => plans.push(layerPlan(`${prefix}layer_plans[${k}].`, p.layer, p.positions, p.formats)));
  return plans;
}

/** inRegion: the float arrays went into the caller's region; the report leaves them empty. */
function importanceToPb(r: ImportanceReport, inRegion = false): ExportImportanceResponse {
  const none = new Uint8Array(0);
  return create(ExportImportanceResponseSchema, {
    tokens: r.tokens,
    layers: r.layers,
    importance: inRegion ? none : bytesOf(r.importance),
    formats: r.formats,
    sqError: inRegion ? none : bytesOf(r.sqError),
    bytes: bytesToPb(r.bytes),
  });
}

function appliedToPb(a: PlanApplied): ApplyPlanResponse {
  return create(ApplyPlanResponseSchema, {
    tokensChanged: BigInt(a.tokensChanged),
    bytesMoved: BigInt(a.bytesMoved),
    applyUs: BigInt(a.applyUs),
    bytes: bytesToPb(a.bytes),
  });
}

/** A batch item's error, answered in its place (the others go on). */
function batchError(seq: number, e: Error, log: CacheLog): { sequenceId: number; errorCode: number; errorMessage: string } {
  const code = statusOf(e);
  if (code === grpc.status.INTERNAL) log(`internal error: ${e.stack ?? e}`);
  return { sequenceId: seq, errorCode: code, errorMessage: e.message };
}

/** One layer's plan from the wire; INVALID_ARGUMENT names the field. */
function layerPlan(prefix: string, layer: number, positionBytes: Uint8Array, formats: Uint8Array): LayerPlan {
  if (positionBytes.byteLength % 4 !== 0) throw invalidArgument(`${prefix}positions has ${positionBytes.byteLength} bytes, not a multiple of 4`);
  const positions = u32(positionBytes);
  if (positions.length !== formats.length)
    throw invalidArgument(`${prefix}positions names ${positions.length} tokens but ${prefix}formats has ${formats.length}`);
  return { layer, positions, formats: new Uint8Array(formats) };
}

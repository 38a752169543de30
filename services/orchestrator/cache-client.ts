// A cache service seen through gRPC, as a CacheShard. Attention goes over one
// long-lived bidirectional stream per shard (AttendStream), requests matched
// to responses by id; everything else is unary. When the service goes away,
// pending and later calls fail with UNAVAILABLE and the next call reconnects.
//
// With a data plane (region-client.ts), the first attend registers a
// shared-memory region with the shard; attends then put their tensors there
// and ring its futex doorbell (or send offsets over the stream). A shard on
// another host cannot map the region: its registration fails and attends
// carry bytes as before. A region torn down mid-request fails that request
// (UNAVAILABLE) and the next attend registers a new one.
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import {
  ApplyPlanBatchRequestSchema,
  ApplyPlanRequestSchema,
  CacheService,
  CreateSequenceRequestSchema,
  ExportImportanceBatchRequestSchema,
  ExportImportanceRequestSchema,
  FreeSequenceRequestSchema,
  ReallocStreamRequestSchema,
  RegisterRegionRequestSchema,
  ShrinkReservationRequestSchema,
  StatsRequestSchema,
  UnregisterRegionRequestSchema,
  type ApplyPlanBatchRequest,
  type ApplyPlanBatchResponse,
  type ApplyPlanResponse,
  type ExportImportanceBatchRequest,
  type ReallocStreamRequest,
  type ReallocStreamResponse,
  type CreateSequenceResponse,
  type ExportImportanceBatchResponse,
  type ExportImportanceResponse,
  type RegisterRegionResponse,
  type ShrinkReservationResponse,
  type StatsResponse,
} from '../../gen/smartkv/v1/cache_pb.js';
import type { PrecisionMode, StorageKind } from '../../native/kv-engine.js';
import { modeFromPb, modeToPb } from '../common/policy.js';
import type { ShardReservations } from '../cache/cache-api.js';
import type { BatchResult, CacheShard, ImportanceBatch, CreatedSequence, ImportanceReport, LayerPlan, PlanApplied, SequencePlan, ShardAttendItem, ShardAttendResult, ShardStats } from '../cache/cache-api.js';
import { CONTROL_BYTES } from '../cache/data-plane-layout.js';
import { ATTEND_CODECS, bytesFromPb, OWNER_HEADER, storageToPb } from '../cache/cache-proto.js';
import type { AttendRequestWire as AttendRequest, AttendResponseWire as AttendResponse } from '../cache/attend-codec.js';
import { bytesOf, callUnary, f32, makeClient, RpcError } from '../common/rpc.js';
import { ShardDeadline } from './shard-deadline.js';
import { CallStream } from '../common/call-stream.js';
import { activeChild, traceparentOf } from '../telemetry/spans.js';
import { grpcPing, ShardWatch, type Ping } from './shard-watch.js';
import { RegionClient, regionBytes, type DataPlaneMode } from './region-client.js';

export interface CacheClientOptions {
  deadlineFloorMs?: number; // the least deadline of a call (shard-deadline.ts); default 2000
  dataPlane?: DataPlaneMode; // default 'off'
  log?: (line: string) => void;
  ping?: Ping; // is the shard there (shard-watch.ts); default: a grpc.health.v1 Check
  hangMs?: number; // a shard that leaves a call this long without answering a health check is hung (shard-watch.ts); default 1000
}

/** After a region could not be set up, attends carry bytes for this long before the next try. */
const REGION_RETRY_MS = 30_000;

interface Pending {
  resolve: (r: AttendResponse) => void;
  reject: (e: Error) => void;
}

function importanceFromPb(r: ExportImportanceResponse, importance?: Float32Array | null, sqError?: Float32Array | null): ImportanceReport {
  return {
    tokens: r.tokens,
    layers: r.layers,
    importance: importance ?? f32(r.importance),
    formats: r.formats,
    sqError: sqError ?? f32(r.sqError),
    bytes: bytesFromPb(r.bytes),
  };
}

function appliedFromPb(r: ApplyPlanResponse): PlanApplied {
  return { tokensChanged: Number(r.tokensChanged), bytesMoved: Number(r.bytesMoved), applyUs: Number(r.applyUs), bytes: bytesFromPb(r.bytes) };
}

/** A shared plan rides in the top-level fields; per-layer plans in layer_plans. */
function applyPlanRequest(seq: number, plans: readonly LayerPlan[]) {
  const one = plans.length === 1 ? plans[0] : null;
  return create(ApplyPlanRequestSchema, {
    sequenceId: seq,
    layer: one ? one.layer : 0,
    positions: one ? bytesOf(one.positions) : new Uint8Array(0),
    formats: one ? one.formats : new Uint8Array(0),
    layerPlans: one ? [] : plans.map((p) => ({ layer: p.layer, positions: bytesOf(p.positions), formats: p.formats })),
  });
}

export class GrpcCacheShard implements CacheShard {
  private readonly client: grpc.Client;
  private stream: grpc.ClientDuplexStream<AttendRequest, AttendResponse> | null = null;
  private readonly pending = new Map<bigint, Pending>();
  private nextId = 1n;
  // Per method: an attend takes microseconds to milliseconds, a plan for a
  // long context much longer, and neither should set the other's deadline.
  private readonly deadlines = new Map<string, ShardDeadline>();

  readonly dataPlane: DataPlaneMode;
  private readonly log: (line: string) => void;
  private region: RegionClient | null = null;
  private regionSetup: Promise<RegionClient | null> | null = null;
  private regionRetryAt = 0; // ms: no new region before then (the last setup failed)
  private readonly watch: ShardWatch;
  private readonly closePing: () => void;
  // ExportImportanceBatch and ApplyPlanBatch: messages on one stream (call-stream.ts says why).
  private readonly realloc: CallStream<ReallocStreamRequest, ReallocStreamResponse>;

  /** options: a number is the deadline floor (ms), as before. */
  constructor(
    readonly address: string,
    private readonly owner: string,
    options: number | CacheClientOptions = {},
  ) {
    const o = typeof options === 'number' ? { deadlineFloorMs: options } : options;
    this.deadlineFloorMs = o.deadlineFloorMs ?? 2000;
    this.dataPlane = o.dataPlane ?? 'off';
    this.log = o.log ?? (() => undefined);
    this.client = makeClient(CacheService, address, { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 1000 }, ATTEND_CODECS);
    const ping = o.ping ?? grpcPing(address);
    this.closePing = 'close' in ping ? (ping as { close(): void }).close : () => undefined;
    this.watch = ShardWatch.within(address, ping, o.hangMs ?? 1000, this.log);
    // What the shard may still answer or write is dropped: stream answers
    // find no pending entry, and the region (which it could still write) goes.
    this.realloc = new CallStream(this.client, 'reallocStream', () => this.metadata(), `cache shard ${address}`);
    this.watch.onHung = (e) => {
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
      this.realloc.failAll(e);
      this.dropRegion();
    };
  }

  /** Why calls to this shard fail at once now (it did not answer a health check while a call waited), or null. */
  get hung(): RpcError | null {
    return this.watch.hung;
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set(OWNER_HEADER, this.owner);
    return md;
  }

  private readonly deadlineFloorMs: number;

  /** The deadline tracker of one method. */
  deadline(method: string): ShardDeadline {
    let d = this.deadlines.get(method);
    if (!d) this.deadlines.set(method, (d = new ShardDeadline(this.deadlineFloorMs)));
    return d;
  }

  private unary<O>(method: string, req: unknown, deadlineMs?: number, waitForReady = false): Promise<O> {
    const t0 = performance.now(), tracker = this.deadline(method);
    deadlineMs ??= tracker.ms;
    return this.watch.run(() => callUnary<O>(this.client, method, req, { deadlineMs, metadata: this.metadata(), waitForReady })).then(
      (r) => {
        tracker.record(performance.now() - t0);
        return r;
      },
      (e) => {
        if (e instanceof RpcError) throw e; // given up as hung (shard-watch.ts): not an answer, nothing to record
        if ((e as grpc.ServiceError)?.code !== grpc.status.DEADLINE_EXCEEDED) tracker.record(performance.now() - t0);
        throw this.wrap(e);
      },
    );
  }

  /** A reallocation call on the ReallocStream, with its unary twin's deadline tracker and the hang watch. */
  private reallocCall<K extends 'exportImportanceBatch' | 'applyPlanBatch'>(
    kind: K,
    value: K extends 'exportImportanceBatch' ? ExportImportanceBatchRequest : ApplyPlanBatchRequest,
  ): Promise<K extends 'exportImportanceBatch' ? ExportImportanceBatchResponse : ApplyPlanBatchResponse> {
    type Out = K extends 'exportImportanceBatch' ? ExportImportanceBatchResponse : ApplyPlanBatchResponse;
    const t0 = performance.now(), tracker = this.deadline(kind);
    // The round trip's span (the service's span for its work hangs under it).
    const span = activeChild(kind === 'exportImportanceBatch' ? 'export_importance_batch' : 'apply_plan_batch', { 'smartkv.shard': this.address });
    const traceparent = traceparentOf(span);
    const call = { case: kind, value } as ReallocStreamRequest['call'];
    return this.watch.run(() => this.realloc.call((id) => create(ReallocStreamRequestSchema, { id, traceparent, call }), tracker.ms, kind)).then(
      (res) => {
        tracker.record(performance.now() - t0);
        span?.end();
        if (res.result.case !== kind) throw new RpcError(grpc.status.INTERNAL, `cache shard ${this.address}: ${kind} answered with ${res.result.case ?? 'nothing'}`);
        return res.result.value as Out;
      },
      (e) => {
        if ((e as RpcError).code !== grpc.status.DEADLINE_EXCEEDED) tracker.record(performance.now() - t0);
        span?.recordException(e as Error);
        span?.end();
        throw e;
      },
    );
  }

  /** Errors from this shard name it, and keep their gRPC code. */
  private wrap(e: unknown): RpcError {
    const se = e as grpc.ServiceError;
    const code = typeof se?.code === 'number' ? se.code : grpc.status.UNAVAILABLE;
    return new RpcError(code, `cache shard ${this.address}: ${se?.details ?? se?.message ?? String(e)}`);
  }

  private openStream(): grpc.ClientDuplexStream<AttendRequest, AttendResponse> {
    if (this.stream) return this.stream;
    const fn = (this.client as unknown as Record<string, (md: grpc.Metadata) => grpc.ClientDuplexStream<AttendRequest, AttendResponse>>).attendStream;
    const s = fn.call(this.client, this.metadata());
    this.stream = s;
    const fail = (e: Error) => {
      if (this.stream === s) this.stream = null;
      // The service let go of our regions with the stream; a doorbell waiter returns now.
      this.dropRegion();
      const err = this.wrap(e);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    s.on('data', (res: AttendResponse) => {
      const p = this.pending.get(res.id);
      if (!p) return;
      this.pending.delete(res.id);
      if (res.errorCode !== 0) p.reject(new RpcError(res.errorCode, `cache shard ${this.address}: ${res.errorMessage}`));
      else p.resolve(res);
    });
    s.on('error', fail);
    s.on('end', () => fail(Object.assign(new Error('attend stream ended'), { code: grpc.status.UNAVAILABLE })));
    return s;
  }

  async createSequence(storage: StorageKind, reserveBytes: number, gamma?: number, mode?: PrecisionMode): Promise<CreatedSequence> {
    const req = create(CreateSequenceRequestSchema, { storage: storageToPb(storage), reserveBytes: BigInt(reserveBytes), gamma, mode: mode ? modeToPb(mode) : 0 });
    this.openStream(); // the owner's stream must exist for the service to tie the sequence to it
    const r = await this.unary<CreateSequenceResponse>('createSequence', req);
    return { seq: r.sequenceId, tokenBytes: r.tokenBytes };
  }

  async freeSequence(seq: number): Promise<void> {
    await this.unary('freeSequence', create(FreeSequenceRequestSchema, { sequenceId: seq }));
  }

  async shrinkReservation(seq: number, reserveBytes: number): Promise<number> {
    const r = await this.unary<ShrinkReservationResponse>('shrinkReservation', create(ShrinkReservationRequestSchema, { sequenceId: seq, reserveBytes: BigInt(reserveBytes) }));
    return Number(r.reservedBytes);
  }

  attend(layer: number, items: ShardAttendItem[], traceparent = ''): Promise<ShardAttendResult> {
    return this.watch.run(() => this.attendNow(layer, items, traceparent));
  }

  private async attendNow(layer: number, items: ShardAttendItem[], traceparent: string): Promise<ShardAttendResult> {
    const region = this.dataPlane === 'off' ? null : this.region ?? (await this.setUpRegion(items));
    if (region) {
      const r = await region.exclusive(() => this.attendInRegion(region, layer, items, traceparent));
      if (r) return r;
    }
    const res = await this.streamAttend(
      { id: this.nextId++, layer, items: items.map((it) => ({ sequenceId: it.seq, rows: it.rows, q: it.q, kNew: it.kNew, vNew: it.vNew })), traceparent },
      layer,
    );
    const out = res.out.map((o, i) => {
      const want = items[i]?.out;
      if (!want || want.length !== o.length) return o;
      want.set(o);
      return want;
    });
    return { out, engineUs: res.engineUs };
  }

  /** One attend through the region; null when the items do not fit its arena (they go as bytes). */
  private async attendInRegion(region: RegionClient, layer: number, items: ShardAttendItem[], traceparent: string): Promise<ShardAttendResult | null> {
    if (region.torn) return null; // dropped while this call waited its turn
    if (!region.place(items)) return null;
    if (this.dataPlane === 'grpc') {
      let res: AttendResponse;
      try {
        res = await this.streamAttend({ id: this.nextId++, layer, items: region.wireItems(items), traceparent, regionId: region.id }, layer);
      } catch (e) {
        const code = (e as RpcError).code;
        // A late answer could still write into the arena: the region is not reused.
        if (code === grpc.status.DEADLINE_EXCEEDED) this.dropRegion();
        // The service no longer knows the region: it was torn down there.
        if (code === grpc.status.NOT_FOUND && /region_id/.test((e as Error).message)) {
          this.dropRegion();
          throw new RpcError(grpc.status.UNAVAILABLE, `cache shard ${this.address}: the data-plane region was torn down (${(e as Error).message}); the next attend sets up a new one`);
        }
        throw e;
      }
      return { out: region.outputs(items), engineUs: res.engineUs };
    }
    const tracker = this.deadline('attend'), ms = tracker.ms, t0 = performance.now();
    const r = await region.ring(layer, items, traceparent, ms);
    if (r === 'timed out') {
      // The service may still be writing into the arena: this region is not reused.
      this.dropRegion();
      throw new RpcError(grpc.status.DEADLINE_EXCEEDED, `cache shard ${this.address}: no answer to attend (layer ${layer}) within ${ms} ms (data plane)`);
    }
    tracker.record(performance.now() - t0);
    if (r === 'torn down') {
      this.dropRegion();
      if (this.watch.hung) throw this.watch.hung;
      throw new RpcError(grpc.status.UNAVAILABLE, `cache shard ${this.address}: the data-plane region was torn down while attend (layer ${layer}) waited; the next attend sets up a new one`);
    }
    if (r.code !== 0) throw new RpcError(r.code, `cache shard ${this.address}: ${r.message}`);
    return { out: region.outputs(items), engineUs: r.engineUs };
  }

  /** One AttendRequest over the stream, answered by id. */
  private async streamAttend(req: AttendRequest, layer: number): Promise<AttendResponse> {
    const id = req.id;
    const s = this.openStream();
    const tracker = this.deadline('attend'), ms = tracker.ms, t0 = performance.now();
    return new Promise<AttendResponse>((resolve, reject) => {
      // The stream has no per-message deadline: a timer gives up on this one
      // (a late answer finds no pending entry and is dropped).
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new RpcError(grpc.status.DEADLINE_EXCEEDED, `cache shard ${this.address}: no answer to attend (layer ${layer}) within ${ms} ms`));
      }, ms);
      const done = (f: () => void) => {
        clearTimeout(timer);
        tracker.record(performance.now() - t0);
        f();
      };
      this.pending.set(id, { resolve: (r) => done(() => resolve(r)), reject: (e) => done(() => reject(e)) });
      s.write(req);
    });
  }

  /** Creates and registers this shard's region (once; concurrent callers share it); null: bytes for now. */
  private setUpRegion(items: readonly ShardAttendItem[]): Promise<RegionClient | null> {
    if (this.regionSetup) return this.regionSetup;
    if (Date.now() < this.regionRetryAt || items.length === 0) return Promise.resolve(null);
    const rows = items.reduce((a, it) => a + it.rows, 0);
    const rowBytes = items.reduce((a, it) => a + 2 * it.q.byteLength + it.kNew.byteLength + it.vNew.byteLength, 0) / rows;
    this.regionSetup = (async () => {
      let region: RegionClient | null = null;
      try {
        this.openStream(); // the region lives as long as the owner's stream
        const limits = await this.unary<StatsResponse>('stats', create(StatsRequestSchema, { reservationsOnly: true }));
        region = new RegionClient(regionBytes(Math.max(1, limits.maxAttendRows), rowBytes));
        const res = await this.unary<RegisterRegionResponse>('registerRegion', create(RegisterRegionRequestSchema, { ...region.registration(), byteSize: BigInt(region.bytes) }));
        region.id = res.regionId;
        this.region = region;
        return region;
      } catch (e) {
        region?.close();
        this.regionRetryAt = Date.now() + REGION_RETRY_MS;
        this.log(`cache shard ${this.address}: no shared-memory data plane (${(e as Error).message}); attends carry bytes, next try in ${REGION_RETRY_MS / 1000} s`);
        return null;
      } finally {
        this.regionSetup = null;
      }
    })();
    return this.regionSetup;
  }

  /** Forgets this shard's region and tears it down for both sides. */
  private dropRegion(): void {
    const r = this.region;
    if (!r) return;
    this.region = null;
    r.close();
    // The service may already have let go of it (its teardown, or the stream's end).
    if (this.stream) this.unary('unregisterRegion', create(UnregisterRegionRequestSchema, { regionId: r.id })).catch(() => undefined);
  }

  /** Tears this shard's region down, as a peer's teardown would (tests, and a shard being drained). */
  tearDownRegion(): void {
    this.dropRegion();
  }

  async exportImportance(seq: number): Promise<ImportanceReport> {
    const r = await this.unary<ExportImportanceResponse>('exportImportance', create(ExportImportanceRequestSchema, { sequenceId: seq }));
    return importanceFromPb(r);
  }

  async applyPlan(seq: number, plans: readonly LayerPlan[]): Promise<PlanApplied> {
    return appliedFromPb(await this.unary<ApplyPlanResponse>('applyPlan', applyPlanRequest(seq, plans)));
  }

  /**
   * One ExportImportanceBatch. With a region, the float arrays come back
   * through it (written by the service at offsets it checked, read here
   * while no attend may use the arena); results that did not fit, and all of
   * them without a region, come as bytes.
   */
  async exportImportanceBatch(seqs: readonly number[]): Promise<ImportanceBatch> {
    const region = this.region;
    if (region && !region.torn) {
      const viaRegion = await region.exclusive(async () => {
        if (region.torn) return null;
        const arenaBytes = region.bytes - CONTROL_BYTES;
        const req = create(ExportImportanceBatchRequestSchema, { sequenceIds: [...seqs], regionId: region.id, arenaOffset: BigInt(CONTROL_BYTES), arenaBytes: BigInt(arenaBytes) });
        let res: ExportImportanceBatchResponse;
        try {
          res = await this.reallocCall('exportImportanceBatch', req);
        } catch (e) {
          // The service no longer knows the region (torn down there): bytes this time.
          if ((e as RpcError).code === grpc.status.NOT_FOUND && /region/.test((e as Error).message)) return null;
          throw e;
        }
        // Torn down meanwhile (a hung shard): nothing in it can be trusted; bytes this time.
        if (region.torn) return null;
        // Copied out before the region is released: the next attend overwrites the arena.
        const results = res.results.map((r) => (r.errorCode ? this.batchError(r) : importanceFromPb(r.report!, region.copyF32(r.importanceOffset, r.report!), region.copyF32(r.sqErrorOffset, r.report!, 3))));
        return { results, exportUs: Number(res.exportUs) };
      });
      if (viaRegion) return viaRegion;
    }
    const res = await this.reallocCall('exportImportanceBatch', create(ExportImportanceBatchRequestSchema, { sequenceIds: [...seqs] }));
    return { results: res.results.map((r) => (r.errorCode ? this.batchError(r) : importanceFromPb(r.report!))), exportUs: Number(res.exportUs) };
  }

  /** One ApplyPlanBatch; each plan's outcome, or the error it alone met. */
  async applyPlanBatch(plans: readonly SequencePlan[]): Promise<BatchResult<PlanApplied>[]> {
    const req = create(ApplyPlanBatchRequestSchema, { plans: plans.map((p) => applyPlanRequest(p.seq, p.plans)) });
    const res = await this.reallocCall('applyPlanBatch', req);
    return res.results.map((r) => (r.errorCode ? this.batchError(r) : appliedFromPb(r.applied!)));
  }

  /** A batch item's error, named after this shard like the others. */
  private batchError(r: { sequenceId: number; errorCode: number; errorMessage: string }): RpcError {
    return new RpcError(r.errorCode, `cache shard ${this.address}: sequence ${r.sequenceId}: ${r.errorMessage}`);
  }

  /** Asked when placing a sequence on a shard the health checks call serving.
   * It waits for this client's connection: after a shard restarts, that one
   * can still be backing off (up to 1 s) while the health checks' own
   * connection already answers, and failing at once left the shard out of
   * placement (RESOURCE_EXHAUSTED when the others were full). A shard that
   * is really gone is given up by the hang watch within --shard-hang-ms. */
  async reservations(deadlineMs?: number): Promise<ShardReservations> {
    const r = await this.unary<StatsResponse>('stats', create(StatsRequestSchema, { reservationsOnly: true }), deadlineMs, true);
    return {
      sequences: r.sequences,
      reservedBytes: Number(r.reservedBytes),
      memoryLimitBytes: Number(r.memoryLimitBytes),
      maxReservedPerOwner: Number(r.maxReservedBytesPerOwner),
      callerReservedBytes: Number(r.callerReservedBytes),
    };
  }

  async stats(seq?: number, deadlineMs?: number): Promise<ShardStats> {
    const r = await this.unary<StatsResponse>('stats', create(StatsRequestSchema, { sequenceId: seq }), deadlineMs);
    return {
      bytes: bytesFromPb(r.bytes),
      sequences: r.sequences,
      reservedBytes: Number(r.reservedBytes),
      memoryLimitBytes: Number(r.memoryLimitBytes),
      backend: r.backend,
      gamma: r.gamma,
      mode: modeFromPb(r.mode) ?? (r.masterCopy ? 'reversible' : 'downgrade-only'),
      masterDir: r.masterDir,
      rotateKv: r.rotateKv,
      blockTokens: r.blockTokens,
    };
  }

  close(): void {
    this.watch.close();
    this.closePing();
    this.region?.close();
    this.region = null;
    this.stream?.end();
    this.stream = null;
    this.realloc.close();
    this.client.close();
  }
}

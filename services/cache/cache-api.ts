// What the orchestrator needs from a cache shard, whether it lives in this
// process (CacheCore) or in a cache service (GrpcCacheShard). Plain numbers
// and typed arrays; the gRPC layer converts to and from protobuf.
import type { PrecisionMode, StorageKind } from '../../native/kv-engine.js';

export interface ShardAttendItem {
  seq: number;
  rows: number;
  q: Float32Array; // [rows][qHeads][headDim] f32, RoPE applied
  kNew: Float32Array; // [rows][kvHeads][headDim] f32
  vNew: Float32Array; // [rows][kvHeads][headDim] f32
  out?: Float32Array; // [rows][qHeads][headDim] f32: where to write the output (absent: a new array)
}

export interface ShardAttendResult {
  out: Float32Array[]; // per item [rows][qHeads][headDim] f32
  engineUs: number;
}

export interface ImportanceReport {
  tokens: number; // per layer
  layers: number;
  importance: Float32Array; // [layers][tokens] f32
  formats: Uint8Array; // [layers][tokens] u8 format code
  sqError: Float32Array; // [layers][tokens][3] f32 at int8, int4, int2
  bytes: Bytes; // the sequence's bytes now: what a plan is priced against
}

/** One layer's part of a plan (layer -1: every layer). */
export interface LayerPlan {
  layer: number;
  positions: Uint32Array; // [n] u32
  formats: Uint8Array; // [n] u8 format codes
}

/** One sequence's whole plan, as a batch carries it (ApplyPlanBatch). */
export interface SequencePlan {
  seq: number;
  plans: readonly LayerPlan[]; // as applyPlan takes them
}

/** One sequence's part of a batched call: its result, or the error it alone
 * met (NOT_FOUND: freed or unknown), which fails none of the others. */
export type BatchResult<T> = T | Error;

/** What an exportImportanceBatch answers. */
export interface ImportanceBatch {
  results: BatchResult<ImportanceReport>[]; // in the order asked
  exportUs: number; // the shard's time exporting them all (the rest of the call is transport)
}

export interface Bytes {
  payloadBytes: number;
  paramBytes: number;
  metadataBytes: number;
  heldBytes: number;
  fp16Bytes: number;
  masterBytes: number;
  tokens: number;
  tokensByFormat: number[]; // [4] fp16, int8, int4, int2
  kiviTokens: number;
}

export interface PlanApplied {
  tokensChanged: number;
  bytesMoved: number;
  applyUs: number;
  bytes: Bytes;
}

export interface ShardStats {
  bytes: Bytes;
  sequences: number;
  reservedBytes: number;
  memoryLimitBytes: number;
  backend: string;
  gamma: number;
  mode: PrecisionMode; // the sequence's, or the shard's default (--mode)
  masterDir: string; // where the CPU engine's master tier files go (unlinked at once)
  rotateKv: boolean;
  blockTokens: number;
}

export interface ShardReservations {
  sequences: number;
  reservedBytes: number;
  memoryLimitBytes: number;
  maxReservedPerOwner?: number; // bytes one owner may hold reserved (0 or absent: no cap below the limit)
  callerReservedBytes?: number; // of reservedBytes, the asking owner's
}

export interface CreatedSequence {
  seq: number;
  tokenBytes: number[]; // [4] bytes per token and layer by format code
}

export interface CacheShard {
  /** Refused with RESOURCE_EXHAUSTED when reserveBytes does not fit the shard's memory limit. */
  /** gamma, mode: the sequence's importance EMA factor and precision mode (default: the service's). */
  createSequence(storage: StorageKind, reserveBytes: number, gamma?: number, mode?: PrecisionMode): Promise<CreatedSequence>;
  freeSequence(seq: number): Promise<void>;
  /** Lowers seq's reservation to reserveBytes (INVALID_ARGUMENT above its
   * reservation or below its hot bytes now); returns the shard's reserved bytes. */
  shrinkReservation(seq: number, reserveBytes: number): Promise<number>;
  /** traceparent: the caller's attend span, for the service's own span ('' = none). */
  attend(layer: number, items: ShardAttendItem[], traceparent?: string): Promise<ShardAttendResult>;
  exportImportance(seq: number): Promise<ImportanceReport>;
  /** A whole reallocation in one call: every plan is checked before the first
   * move; layer -1 gives every layer the same plan. */
  applyPlan(seq: number, plans: readonly LayerPlan[]): Promise<PlanApplied>;
  /** exportImportance of several sequences in one call (a step's due
   * reallocations), results in their order. Throws for the whole batch only
   * when it is malformed (empty, a sequence named twice, too large). */
  exportImportanceBatch(seqs: readonly number[]): Promise<ImportanceBatch>;
  /** applyPlan for several sequences in one call, each applied or refused on its own. */
  applyPlanBatch(plans: readonly SequencePlan[]): Promise<BatchResult<PlanApplied>[]>;
  /** seq undefined: the whole shard. */
  stats(seq?: number): Promise<ShardStats>;
  /** Sequences, reservations and the memory limit: kept as they change, O(1)
   * (stats() walks every sequence for its bytes); what admission needs. */
  reservations(deadlineMs?: number): Promise<ShardReservations>;
}

export const EMPTY_BYTES: Bytes = {
  payloadBytes: 0, paramBytes: 0, metadataBytes: 0, heldBytes: 0, fp16Bytes: 0, masterBytes: 0,
  tokens: 0, tokensByFormat: [0, 0, 0, 0], kiviTokens: 0,
};

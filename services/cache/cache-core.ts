// The cache service's state: one KvEngine (the native buckets) plus the
// admission bookkeeping around it — reservations against the memory limit and
// which owner (orchestrator connection) holds each sequence, so that a
// vanished owner's sequences can be freed. In-process mode uses it directly.
//
// The memory limit counts the hot tier only (the engine's held bytes): the
// master copies of reversible sequences live in the master tier (files under
// masterDir, paged by the OS), reported as masterBytes but not limited here.
import { KvEngine, KvEngineError, type KvEngineConfig, type KvStats, type PrecisionMode, type StorageKind } from '../../native/kv-engine.js';
import { FORMATS } from '../../native/formats.js';
import { checkInt } from '../../native/validate.js';
import type { ShardReservations } from './cache-api.js';
import type { BatchResult, Bytes, ImportanceBatch, CacheShard, CreatedSequence, ImportanceReport, LayerPlan, PlanApplied, SequencePlan, ShardAttendItem, ShardAttendResult, ShardStats } from './cache-api.js';
import { MAX_BATCH_SEQUENCES } from '../common/limits.js';
import { EMPTY_BYTES } from './cache-api.js';

interface Held {
  reserveBytes: number;
  owner: string;
  mode: PrecisionMode;
}

export class CacheCore implements CacheShard {
  readonly engine: KvEngine;
  private readonly held = new Map<number, Held>();
  private readonly perOwner = new Map<string, number>(); // sequences held by each owner
  private readonly reservedByOwner = new Map<string, number>(); // bytes each owner holds reserved
  private reserved = 0;

  /** maxReservedPerOwner: bytes one owner may hold reserved (0: no cap
   * below the limit), so that one caller cannot take a whole shard. */
  constructor(
    config: KvEngineConfig,
    readonly memoryLimitBytes = 0,
    readonly maxReservedPerOwner = 0,
  ) {
    // The engine enforces the same limit on every append: reservations gate
    // admission, the engine guarantees no allocation past the limit.
    this.engine = new KvEngine({ ...config, memoryLimitBytes });
  }

  /** The owner token `seq` was created with (undefined: no such sequence). */
  ownerOf(seq: number): string | undefined {
    return this.held.get(seq)?.owner;
  }

  /** Bytes `owner` holds reserved now. */
  reservedBy(owner: string): number {
    return this.reservedByOwner.get(owner) ?? 0;
  }

  /** Sequences `owner` holds now. */
  sequencesOf(owner: string): number {
    return this.perOwner.get(owner) ?? 0;
  }

  get sequenceIds(): number[] {
    return [...this.held.keys()];
  }

  async createSequence(storage: StorageKind, reserveBytes: number, gamma?: number, owner = '', mode?: PrecisionMode): Promise<CreatedSequence> {
    checkInt('reserve_bytes', reserveBytes, 0);
    if (this.memoryLimitBytes > 0 && this.reserved + reserveBytes > this.memoryLimitBytes) {
      throw new KvEngineError(
        'RESOURCE_EXHAUSTED',
        `cache memory limit: ${this.reserved} of ${this.memoryLimitBytes} bytes reserved, the sequence needs ${reserveBytes} more`,
      );
    }
    const mine = this.reservedBy(owner);
    if (this.maxReservedPerOwner > 0 && mine + reserveBytes > this.maxReservedPerOwner) {
      throw new KvEngineError(
        'RESOURCE_EXHAUSTED',
        `this caller has ${mine} bytes reserved and the sequence needs ${reserveBytes} more; one caller may reserve at most ${this.maxReservedPerOwner} (max_reserved_bytes_per_owner, --max-reserved-per-owner)`,
      );
    }
    const m = mode ?? this.engine.config.mode;
    const seq = await this.engine.createSequence({ storage, gamma, mode: m });
    this.held.set(seq, { reserveBytes, owner, mode: m });
    this.perOwner.set(owner, this.sequencesOf(owner) + 1);
    this.reservedByOwner.set(owner, this.reservedBy(owner) + reserveBytes);
    this.reserved += reserveBytes;
    return { seq, tokenBytes: this.engine.tokenBytes() };
  }

  async freeSequence(seq: number): Promise<void> {
    await this.engine.freeSequence(seq); // NOT_FOUND for an unknown id, before any change here
    const h = this.held.get(seq);
    if (h) {
      this.reserved -= h.reserveBytes;
      const n = this.sequencesOf(h.owner) - 1;
      if (n > 0) this.perOwner.set(h.owner, n);
      else this.perOwner.delete(h.owner);
      const b = this.reservedBy(h.owner) - h.reserveBytes;
      if (n > 0) this.reservedByOwner.set(h.owner, b);
      else this.reservedByOwner.delete(h.owner);
    }
    this.held.delete(seq);
  }

  async shrinkReservation(seq: number, reserveBytes: number): Promise<number> {
    checkInt('reserve_bytes', reserveBytes, 0);
    const h = this.held.get(seq);
    if (!h) throw new KvEngineError('NOT_FOUND', `unknown sequence ${seq}`);
    if (reserveBytes > h.reserveBytes)
      throw new KvEngineError('INVALID_ARGUMENT', `reserve_bytes ${reserveBytes} is above sequence ${seq}'s reservation ${h.reserveBytes}: a reservation only shrinks (a larger one needs a new sequence)`);
    // Below what it holds, the freed room would be promised twice.
    const holds = (await this.engine.stats(seq)).heldBytes;
    if (reserveBytes < holds) throw new KvEngineError('INVALID_ARGUMENT', `reserve_bytes ${reserveBytes} is below the ${holds} hot bytes sequence ${seq} holds now`);
    const drop = h.reserveBytes - reserveBytes;
    h.reserveBytes = reserveBytes;
    this.reserved -= drop;
    this.reservedByOwner.set(h.owner, this.reservedBy(h.owner) - drop);
    return this.reserved;
  }

  /** Frees every sequence `owner` holds; returns how many. */
  async freeOwner(owner: string): Promise<number> {
    const mine = [...this.held].filter(([, h]) => h.owner === owner).map(([s]) => s);
    for (const s of mine) await this.freeSequence(s);
    return mine.length;
  }

  async attend(layer: number, items: ShardAttendItem[]): Promise<ShardAttendResult> {
    const t0 = performance.now();
    const out = await this.engine.attend(items.map((it) => ({ seq: it.seq, layer, rows: it.rows, q: it.q, kNew: it.kNew, vNew: it.vNew, out: it.out })));
    return { out, engineUs: Math.round((performance.now() - t0) * 1000) };
  }

  /** attend() on this thread when the engine is idle, else null (cache-server.ts: the data plane's small requests). */
  attendNow(layer: number, items: ShardAttendItem[]): ShardAttendResult | null {
    const t0 = performance.now();
    const out = this.engine.attendNow(items.map((it) => ({ seq: it.seq, layer, rows: it.rows, q: it.q, kNew: it.kNew, vNew: it.vNew, out: it.out })));
    return out && { out, engineUs: Math.round((performance.now() - t0) * 1000) };
  }

  /** Tokens per layer. A client can attend a step on some layers only (a
   * unary Attend, or a stream that broke mid-step); every layer then holds a
   * different count and no per-token report or plan fits them all — that is
   * the caller's state, not a bug, so it is FAILED_PRECONDITION, not INTERNAL. */
  private tokensPerLayer(seq: number): number {
    const n = this.engine.length(seq, 0); // NOT_FOUND before anything else
    for (let l = 1; l < this.engine.config.layers; l++) {
      const m = this.engine.length(seq, l);
      if (m !== n)
        throw new KvEngineError('FAILED_PRECONDITION', `sequence ${seq}: layer ${l} holds ${m} tokens but layer 0 holds ${n}; attend the same rows on every layer before exporting importance or applying a plan`);
    }
    return n;
  }

  async exportImportance(seq: number): Promise<ImportanceReport> {
    const L = this.engine.config.layers;
    const n = this.tokensPerLayer(seq);
    const importance = new Float32Array(L * n); // [layers][n]
    const formats = new Uint8Array(L * n); // [layers][n]
    const sqError = new Float32Array(L * n * 3); // [layers][n][3]
    for (let l = 0; l < L; l++) {
      const r = await this.engine.exportImportance(seq, l);
      if (r.importance.length !== n) throw new KvEngineError('INTERNAL', `layer ${l} holds ${r.importance.length} tokens, layer 0 ${n}`);
      importance.set(r.importance, l * n);
      formats.set(r.format, l * n);
      sqError.set(r.sqError, l * n * 3);
    }
    return { tokens: n, layers: L, importance, formats, sqError, bytes: toBytes(await this.engine.stats(seq)) };
  }

  async applyPlan(seq: number, plans: readonly LayerPlan[]): Promise<PlanApplied> {
    const n = this.tokensPerLayer(seq);
    // Every layer's positions and formats are checked here before the first
    // move, so a malformed plan changes nothing; the engine then checks each
    // layer's upgrades (a downgrade-only sequence refuses them) before that
    // layer's moves. The allocator's plans respect the bounds it was given.
    plans.forEach((p, k) => {
      checkInt(`layer_plans[${k}].layer`, p.layer, -1, this.engine.config.layers - 1);
      if (p.positions.length !== p.formats.length)
        throw new KvEngineError('INVALID_ARGUMENT', `layer_plans[${k}]: positions names ${p.positions.length} tokens but formats has ${p.formats.length}`);
      for (let i = 0; i < p.formats.length; i++) {
        checkInt(`layer_plans[${k}].formats[${i}]`, p.formats[i], 0, FORMATS.length - 1);
        if (p.positions[i] >= n) throw new KvEngineError('INVALID_ARGUMENT', `layer_plans[${k}].positions[${i}] is ${p.positions[i]}, but the sequence holds ${n} tokens`);
      }
    });
    const t0 = performance.now();
    let tokensChanged = 0, bytesMoved = 0;
    for (const p of plans) {
      const r = await this.engine.applyPlan(seq, p.layer === -1 ? 'all' : p.layer, p.positions, p.formats);
      tokensChanged += r.tokensChanged;
      bytesMoved += r.bytesMoved;
    }
    const applyUs = Math.round((performance.now() - t0) * 1000);
    return { tokensChanged, bytesMoved, applyUs, bytes: toBytes(await this.engine.stats(seq)) };
  }

  /** Each sequence's report, or the error it alone met. batchTokens: the most
   * tokens per layer the batch may hold in all (a response's size), checked
   * before anything is exported. */
  async exportImportanceBatch(seqs: readonly number[], batchTokens = Infinity): Promise<ImportanceBatch> {
    checkBatch('sequence_ids', seqs);
    const t0 = performance.now();
    const lengths = seqs.map((s) => {
      try {
        return this.tokensPerLayer(s);
      } catch (e) {
        return e as Error;
      }
    });
    const total = lengths.reduce<number>((a, n) => a + (typeof n === 'number' ? n : 0), 0);
    if (total > batchTokens)
      throw new KvEngineError('RESOURCE_EXHAUSTED', `sequence_ids: the batch holds ${total} tokens per layer in all, more than the ${batchTokens} one response carries (the model's context); split it`);
    const out: BatchResult<ImportanceReport>[] = [];
    for (const [i, s] of seqs.entries()) {
      const n = lengths[i];
      out.push(n instanceof Error ? n : await this.exportImportance(s).catch((e: Error) => e));
    }
    return { results: out, exportUs: Math.round((performance.now() - t0) * 1000) };
  }

  /** Each plan applied as applyPlan would apply it alone, or the error it alone met. */
  async applyPlanBatch(plans: readonly SequencePlan[]): Promise<BatchResult<PlanApplied>[]> {
    checkBatch('plans', plans.map((p) => p.seq));
    const out: BatchResult<PlanApplied>[] = [];
    for (const p of plans) out.push(await this.applyPlan(p.seq, p.plans).catch((e: Error) => e));
    return out;
  }

  /** In-process: the one owner is ''. */
  async reservations(): Promise<ShardReservations> {
    return this.reservationsOf('');
  }

  /** The totals, with `owner`'s own reservations as callerReservedBytes. */
  reservationsOf(owner: string): ShardReservations {
    return { sequences: this.held.size, reservedBytes: this.reserved, memoryLimitBytes: this.memoryLimitBytes, maxReservedPerOwner: this.maxReservedPerOwner, callerReservedBytes: this.reservedBy(owner) };
  }

  async stats(seq?: number): Promise<ShardStats> {
    const c = this.engine.config;
    const base = {
      sequences: this.held.size,
      reservedBytes: this.reserved,
      memoryLimitBytes: this.memoryLimitBytes,
      backend: this.engine.backendName,
      gamma: c.gamma,
      mode: (seq !== undefined ? this.held.get(seq)?.mode : undefined) ?? c.mode,
      masterDir: c.masterDir,
      rotateKv: c.rotateKv ?? false,
      blockTokens: c.blockTokens,
    };
    if (seq !== undefined) return { ...base, bytes: toBytes(await this.engine.stats(seq)) };
    let total: Bytes = { ...EMPTY_BYTES, tokensByFormat: [0, 0, 0, 0] };
    for (const s of [...this.held.keys()]) {
      let bytes: Bytes;
      try {
        bytes = toBytes(await this.engine.stats(s));
      } catch (e) {
        // Freed while this walk awaited (a client cancelled): not held any more.
        if (e instanceof KvEngineError && e.code === 'NOT_FOUND') continue;
        throw e;
      }
      total = addBytes(total, bytes);
    }
    return { ...base, sequences: this.held.size, reservedBytes: this.reserved, bytes: total };
  }

  async close(): Promise<void> {
    this.held.clear();
    this.perOwner.clear();
    this.reserved = 0;
    await this.engine.close();
  }
}

/** A batch names 1 to MAX_BATCH_SEQUENCES sequences, each once. */
export function checkBatch(field: string, seqs: readonly number[]): void {
  if (seqs.length === 0) throw new KvEngineError('INVALID_ARGUMENT', `${field}: the batch is empty`);
  if (seqs.length > MAX_BATCH_SEQUENCES)
    throw new KvEngineError('RESOURCE_EXHAUSTED', `${field}: ${seqs.length} sequences in one batch, more than the ${MAX_BATCH_SEQUENCES} allowed; split it`);
  const seen = new Map<number, number>();
  seqs.forEach((s, i) => {
    const j = seen.get(s);
    if (j !== undefined) throw new KvEngineError('INVALID_ARGUMENT', `${field}[${i}]: sequence ${s} is already ${field}[${j}]; name each sequence once per batch`);
    seen.set(s, i);
  });
}

export function toBytes(s: KvStats): Bytes {
  return {
    payloadBytes: s.payloadBytes,
    paramBytes: s.paramBytes,
    metadataBytes: s.metadataBytes,
    heldBytes: s.heldBytes,
    fp16Bytes: s.fp16Bytes,
    masterBytes: s.masterBytes,
    tokens: s.tokens,
    tokensByFormat: FORMATS.map((f) => s.tokensByFormat[f]),
    kiviTokens: s.kiviTokens,
  };
}

function addBytes(a: Bytes, b: Bytes): Bytes {
  return {
    payloadBytes: a.payloadBytes + b.payloadBytes,
    paramBytes: a.paramBytes + b.paramBytes,
    metadataBytes: a.metadataBytes + b.metadataBytes,
    heldBytes: a.heldBytes + b.heldBytes,
    fp16Bytes: a.fp16Bytes + b.fp16Bytes,
    masterBytes: a.masterBytes + b.masterBytes,
    tokens: a.tokens + b.tokens,
    tokensByFormat: a.tokensByFormat.map((x, i) => x + b.tokensByFormat[i]),
    kiviTokens: a.kiviTokens + b.kiviTokens,
  };
}

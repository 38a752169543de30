// KvEngine: the checked TypeScript API over the native KV engine.
//
// Every argument is validated here, before anything is queued, so bad input
// rejects with a KvEngineError naming the problem and changes nothing; the
// addon trusts what it gets. Operations run on a worker thread and are
// serialised per engine in call order (the engine holds one lock anyway), so
// a caller may queue append → attend → applyPlan without awaiting each.
//
// The engine tracks sequence ids and per-layer lengths itself, so it can
// check plans and buffer sizes without a round trip; the model is updated at
// call time and rolled back if the native call fails.
import { loadAddon, type NativeConfig, type NativeEngine, type NativeStats } from './binding.js';
import { KvEngineError, invalid } from './errors.js';
import { blockTokensProblem, DEFAULT_BLOCK_TOKENS, FORMATS, FORMAT_CODE, tokenBytes, type KvFormat, type QuantMode } from './formats.js';

export { blockTokensProblem, DEFAULT_BLOCK_TOKENS } from './formats.js';
import { checkArray, checkBool, checkInt, checkNumber, checkOneOf, rowsOf } from './validate.js';

function checkString(name: string, v: unknown): string {
  if (typeof v !== 'string') throw invalid(`${name} must be a string, got ${typeof v}`);
  return v;
}

export { KvEngineError } from './errors.js';
export type { KvErrorCode } from './errors.js';
export { FORMATS, type KvFormat, type QuantMode } from './formats.js';

export type Device = 'cpu' | 'cuda' | 'auto';
// kivi-2-rot / kivi-4-rot: KIVI over K and V rotated like mixed sequences' when
// rotateKv is set (the ablation "KIVI with SmartKV's rotation"); plain KIVI otherwise.
export type StorageKind = 'mixed' | 'kivi-2' | 'kivi-4' | 'kivi-2-rot' | 'kivi-4-rot';
/** downgrade-only: no master copy, precision only goes down. reversible: an
 * FP16 master copy in a separate tier (a memory-mapped file under masterDir
 * for the CPU engine, host memory for CUDA), reported as masterBytes. */
export type PrecisionMode = 'downgrade-only' | 'reversible';
export const PRECISION_MODES: readonly PrecisionMode[] = ['downgrade-only', 'reversible'];
const STORAGE_KINDS: readonly StorageKind[] = ['mixed', 'kivi-2', 'kivi-4', 'kivi-2-rot', 'kivi-4-rot']; // index = native storage_kind
const DEVICES: readonly Device[] = ['cpu', 'cuda', 'auto'];

export interface KvEngineConfig {
  layers: number;
  qHeads: number;
  kvHeads: number; // qHeads % kvHeads === 0 (grouped-query attention)
  headDim: number; // multiple of 32, ≤ 512
  blockTokens?: number; // token slots per storage block (default 32)
  quant: QuantMode;
  gamma?: number; // importance EMA, [0, 1), default 0.9
  mode?: PrecisionMode; // of sequences created without one (default downgrade-only)
  masterDir?: string; // CPU: directory of the master tier's files (default: $TMPDIR or /tmp)
  queryInt8?: boolean; // int8 queries against quantised keys (default true)
  fastPath?: boolean; // false: the portable scalar reference
  memoryLimitBytes?: number; // 0: no limit
  threads?: number; // 0: all hardware threads
  kiviResidual?: number; // KIVI: newest tokens kept at 16-bit (default 128)
  rotateKv?: boolean; // store SmartKV-format K and V rotated (randomised Hadamard, clipped 2-bit scales; KIVI untouched)
  device?: Device; // default 'cpu'
}

export interface AttendRequest {
  seq: number;
  layer: number;
  rows?: number; // optional; implied by q's length
  q: Float32Array; // [rows][qHeads][headDim] f32
  kNew: Float32Array; // [rows][kvHeads][headDim] f32, appended before attending
  vNew: Float32Array; // [rows][kvHeads][headDim] f32
  out?: Float32Array; // [rows][qHeads][headDim] f32, written (allocated when absent)
  probs?: Float32Array; // [rows][nAfter] f32, written: attention by position, averaged over q-heads
}

export interface TokenReport {
  importance: Float32Array; // [n] f32, EMA of attention received
  format: Uint8Array; // [n] u8, FORMATS index
  sqError: Float32Array; // [n][3] f32, modelled squared error at int8, int4, int2
}

export interface KvStats {
  payloadBytes: number;
  paramBytes: number;
  metadataBytes: number;
  heldBytes: number; // payload + params + metadata (what β counts)
  fp16Bytes: number; // the same tokens as FP16 K and V
  beta: number; // heldBytes / fp16Bytes
  tokens: number; // summed over layers
  tokensByFormat: Record<KvFormat, number>; // summed over layers
  kiviTokens: number; // tokens inside KIVI groups
  masterBytes: number; // FP16 master copy (reversible sequences), in its own tier: outside β and the memory limit
}

export interface PlanResult {
  tokensChanged: number;
  bytesMoved: number;
}

interface SeqState {
  kind: StorageKind;
  lengths: number[]; // [layers] tokens held, as of the last queued operation
}

export class KvEngine {
  readonly config: Readonly<Required<KvEngineConfig>>;
  private native: NativeEngine | null;
  private readonly seqs = new Map<number, SeqState>();
  private tail: Promise<unknown> = Promise.resolve();
  private queued = 0; // operations queued or running (attendNow runs only when none is)

  constructor(config: KvEngineConfig) {
    this.config = normaliseConfig(config);
    const c = this.config;
    const { mode, ...rest } = c;
    const native: NativeConfig = {
      ...rest,
      masterCopy: mode === 'reversible',
      quant: c.quant === 'asymmetric' ? 1 : 0,
      device: DEVICES.indexOf(c.device),
    };
    try {
      this.native = new (loadAddon().NativeEngine)(native);
    } catch (err) {
      throw KvEngineError.fromNative(err, 'KvEngine');
    }
  }

  /** 'cpu' or 'cuda': which backend `device` resolved to. */
  get backendName(): string {
    return this.open().backendName();
  }

  /** Bytes per token in each format ([4] by FORMATS index), per layer. */
  tokenBytes(): number[] {
    return tokenBytes(this.config);
  }

  /** gamma: this sequence's importance EMA factor in [0, 1); mode: its
   * precision mode (both default to the engine's). */
  async createSequence(opts: { storage?: StorageKind; gamma?: number; mode?: PrecisionMode } = {}): Promise<number> {
    const kind = checkOneOf('storage', opts.storage ?? 'mixed', STORAGE_KINDS);
    const gamma = checkNumber('gamma', opts.gamma ?? this.config.gamma, (x) => x >= 0 && x < 1, 'in [0, 1)');
    const mode = checkOneOf('mode', opts.mode ?? this.config.mode, PRECISION_MODES);
    const native = this.open();
    const id = await this.queue('createSequence', () => native.createSequence(STORAGE_KINDS.indexOf(kind), gamma, PRECISION_MODES.indexOf(mode)));
    this.seqs.set(id, { kind, lengths: new Array<number>(this.config.layers).fill(0) });
    return id;
  }

  async freeSequence(seq: number): Promise<void> {
    this.sequence(seq);
    const native = this.open();
    this.seqs.delete(seq);
    await this.queue('freeSequence', () => native.freeSequence(seq));
  }

  /** Appends tokens to one layer without attending (e.g. to load a cache). */
  async append(seq: number, layer: number, k: Float32Array, v: Float32Array, rows?: number): Promise<void> {
    const s = this.sequence(seq);
    this.checkLayer(layer);
    const kv = this.config.kvHeads * this.config.headDim;
    const n = rowsOf('k', checkArray('k', k, Float32Array), kv, rows);
    checkArray('v', v, Float32Array, n * kv);
    const native = this.open();
    await this.grow(s, [layer], n, 'append', () => native.append(seq, layer, n, k, v));
  }

  /**
   * One batched attention call: for each request, appends its new tokens and
   * attends every query row to all tokens up to its own position. Returns the
   * outputs ([rows][qHeads][headDim] f32 each), in request order.
   */
  async attend(batch: readonly AttendRequest[]): Promise<Float32Array[]> {
    if (!Array.isArray(batch) || batch.length === 0) throw invalid('attend: batch must be a non-empty array');
    const seen = new Set<string>();
    const reqs = batch.map((r, i) => this.checkAttend(r, i, seen));
    const native = this.open();
    const layersBySeq = reqs.map((r) => ({ s: this.sequence(r.seq), layer: r.layer, rows: r.rows }));
    for (const g of layersBySeq) g.s.lengths[g.layer] += g.rows;
    try {
      await this.queue('attend', () => native.attend(reqs));
    } catch (err) {
      for (const g of layersBySeq) g.s.lengths[g.layer] -= g.rows;
      throw err;
    }
    return reqs.map((r) => r.out);
  }

  /**
   * attend() on this thread, when nothing is queued before it (else null: use
   * attend()). For the data plane's small requests, whose attention takes
   * less than handing it to a worker thread and back.
   */
  attendNow(batch: readonly AttendRequest[]): Float32Array[] | null {
    if (this.queued > 0) return null;
    if (!Array.isArray(batch) || batch.length === 0) throw invalid('attend: batch must be a non-empty array');
    const seen = new Set<string>();
    const reqs = batch.map((r, i) => this.checkAttend(r, i, seen));
    const native = this.open();
    const layersBySeq = reqs.map((r) => ({ s: this.sequence(r.seq), layer: r.layer, rows: r.rows }));
    for (const g of layersBySeq) g.s.lengths[g.layer] += g.rows;
    try {
      native.attendSync(reqs);
    } catch (err) {
      for (const g of layersBySeq) g.s.lengths[g.layer] -= g.rows;
      throw KvEngineError.fromNative(err, 'attend');
    }
    return reqs.map((r) => r.out);
  }

  /** Importance, current format and modelled errors of every token of one layer. */
  async exportImportance(seq: number, layer: number): Promise<TokenReport> {
    const s = this.sequence(seq);
    this.checkLayer(layer);
    const native = this.open();
    return this.queue('exportImportance', async () => {
      const n = s.lengths[layer]; // exact here: every earlier operation has settled
      const r: TokenReport = {
        importance: new Float32Array(n),
        format: new Uint8Array(n),
        sqError: new Float32Array(n * 3),
      };
      await native.report(seq, layer, r.importance, r.format, r.sqError);
      return r;
    });
  }

  /**
   * Moves tokens between formats. layer 'all' gives every layer the same plan.
   * positions: [n] u32 token positions (each at most once); formats: [n]
   * FORMATS indices (u8) or names. The engine checks the whole plan before
   * the first move; raising precision needs a reversible sequence.
   */
  async applyPlan(
    seq: number,
    layer: number | 'all',
    positions: Uint32Array,
    formats: Uint8Array | readonly KvFormat[],
  ): Promise<PlanResult> {
    const s = this.sequence(seq);
    if (s.kind !== 'mixed')
      throw new KvEngineError('FAILED_PRECONDITION', `applyPlan: sequence ${seq} uses ${s.kind} storage; plans do not apply`);
    if (layer !== 'all') this.checkLayer(layer);
    checkArray('positions', positions, Uint32Array);
    const codes = formatCodes(formats, positions.length);
    const held = layer === 'all' ? Math.min(...s.lengths) : s.lengths[layer];
    const seen = new Uint8Array(held);
    for (let i = 0; i < positions.length; i++) {
      const p = positions[i];
      if (p >= held) throw invalid(`applyPlan: positions[${i}] names token ${p} but ${layerName(layer)} holds ${held}`);
      if (seen[p]) throw invalid(`applyPlan: token ${p} appears twice in the plan`);
      seen[p] = 1;
    }
    const native = this.open();
    return this.queue('applyPlan', () => native.applyPlan(seq, layer === 'all' ? -1 : layer, positions, codes));
  }

  /** Exact bytes held for one sequence (all layers), from the engine. */
  async stats(seq: number): Promise<KvStats> {
    this.sequence(seq);
    const native = this.open();
    return toStats(await this.queue('stats', () => native.stats(seq)));
  }

  /** Dequantised K and V by position: [n][kvHeads][headDim] f32 each. */
  async readKv(seq: number, layer: number): Promise<{ k: Float32Array; v: Float32Array }> {
    const s = this.sequence(seq);
    this.checkLayer(layer);
    const native = this.open();
    return this.queue('readKv', async () => {
      const n = s.lengths[layer] * this.config.kvHeads * this.config.headDim;
      const k = new Float32Array(n), v = new Float32Array(n);
      await native.readKv(seq, layer, k, v);
      return { k, v };
    });
  }

  /** Tokens of one layer of a sequence, as of the last queued operation. */
  length(seq: number, layer: number): number {
    const s = this.sequence(seq);
    this.checkLayer(layer);
    return s.lengths[layer];
  }

  /** Frees every sequence; later calls reject with FAILED_PRECONDITION. */
  async close(): Promise<void> {
    const native = this.native;
    if (!native) return;
    this.native = null;
    this.seqs.clear();
    await this.queue('close', () => native.close());
  }

  /**
   * Runs a native operation that appends `rows` tokens to every layer of each
   * listed sequence (an in-process model step: NativeModel.step). The lengths
   * KvEngine tracks grow with it and are rolled back if it fails.
   */
  async runModelStep(batch: readonly { seq: number; rows: number }[], fn: (native: NativeEngine) => Promise<void>): Promise<void> {
    const states = batch.map((b) => ({ s: this.sequence(b.seq), rows: b.rows }));
    if (new Set(batch.map((b) => b.seq)).size !== batch.length) throw invalid('model step: a sequence appears twice in one batch');
    const native = this.open();
    for (const { s, rows } of states) for (let l = 0; l < s.lengths.length; l++) s.lengths[l] += rows;
    try {
      await this.queue('modelStep', () => fn(native));
    } catch (err) {
      for (const { s, rows } of states) for (let l = 0; l < s.lengths.length; l++) s.lengths[l] -= rows;
      throw err;
    }
  }

  // -------------------------------------------------------------------------

  /** Runs fn after every earlier operation has settled; native errors become KvEngineErrors. */
  private async queue<T>(op: string, fn: () => Promise<T>): Promise<T> {
    this.queued++;
    const run = this.tail.then(fn);
    this.tail = run.catch(() => undefined);
    try {
      return await run;
    } catch (err) {
      // Made here, inside async functions, so the stack shows the caller.
      throw KvEngineError.fromNative(err, op);
    } finally {
      this.queued--;
    }
  }

  private async grow(s: SeqState, layers: number[], rows: number, op: string, fn: () => Promise<void>): Promise<void> {
    for (const l of layers) s.lengths[l] += rows;
    try {
      await this.queue(op, fn);
    } catch (err) {
      for (const l of layers) s.lengths[l] -= rows;
      throw err;
    }
  }

  private open(): NativeEngine {
    if (!this.native) throw new KvEngineError('FAILED_PRECONDITION', 'the engine is closed');
    return this.native;
  }

  private sequence(seq: number): SeqState {
    const s = typeof seq === 'number' ? this.seqs.get(seq) : undefined;
    if (!s) throw new KvEngineError('NOT_FOUND', `unknown sequence ${String(seq)}`);
    return s;
  }

  private checkLayer(layer: number): void {
    checkInt('layer', layer, 0, this.config.layers - 1);
  }

  private checkAttend(r: AttendRequest, i: number, seen: Set<string>) {
    const at = `attend: request ${i}`;
    if (typeof r !== 'object' || r === null) throw invalid(`${at} must be an object`);
    const s = this.sequence(r.seq);
    checkInt(`${at}: layer`, r.layer, 0, this.config.layers - 1);
    const key = `${r.seq}/${r.layer}`;
    if (seen.has(key)) throw invalid(`${at}: sequence ${r.seq} layer ${r.layer} appears twice in one batch`);
    seen.add(key);
    const { qHeads, kvHeads, headDim } = this.config;
    const rows = rowsOf(`${at}: q`, checkArray(`${at}: q`, r.q, Float32Array), qHeads * headDim, r.rows);
    checkArray(`${at}: kNew`, r.kNew, Float32Array, rows * kvHeads * headDim);
    checkArray(`${at}: vNew`, r.vNew, Float32Array, rows * kvHeads * headDim);
    const out = r.out === undefined ? new Float32Array(rows * qHeads * headDim) : r.out;
    checkArray(`${at}: out`, out, Float32Array, rows * qHeads * headDim);
    const nAfter = s.lengths[r.layer] + rows;
    const probs = r.probs === undefined ? null : checkArray(`${at}: probs`, r.probs, Float32Array, rows * nAfter);
    return { seq: r.seq, layer: r.layer, rows, q: r.q, kNew: r.kNew, vNew: r.vNew, out, probs };
  }
}

function layerName(layer: number | 'all'): string {
  return layer === 'all' ? 'every layer' : `layer ${layer}`;
}

/** Plan formats as kv_format codes; names or u8 codes, one per position. */
function formatCodes(formats: Uint8Array | readonly KvFormat[], n: number): Uint8Array {
  if (formats instanceof Uint8Array) {
    if (formats.length !== n) throw invalid(`formats has ${formats.length} elements, expected ${n} (one per position)`);
    for (let i = 0; i < n; i++)
      if (formats[i] >= FORMATS.length) throw invalid(`formats[${i}] is ${formats[i]}, not a format code (0..3)`);
    return formats;
  }
  if (!Array.isArray(formats)) throw invalid('formats must be a Uint8Array or an array of format names');
  if (formats.length !== n) throw invalid(`formats has ${formats.length} elements, expected ${n} (one per position)`);
  const codes = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const name: unknown = formats[i];
    if (typeof name !== 'string' || !Object.hasOwn(FORMAT_CODE, name))
      throw invalid(`formats[${i}] is '${String(name)}', not one of ${FORMATS.join(', ')}`);
    codes[i] = FORMAT_CODE[name as KvFormat];
  }
  return codes;
}

function normaliseConfig(c: KvEngineConfig): Required<KvEngineConfig> {
  if (typeof c !== 'object' || c === null) throw invalid('config must be an object');
  const layers = checkInt('layers', c.layers, 1, 4096);
  const kvHeads = checkInt('kvHeads', c.kvHeads, 1, 1024);
  const qHeads = checkInt('qHeads', c.qHeads, 1, 4096);
  if (qHeads % kvHeads !== 0) throw invalid(`qHeads (${qHeads}) must be a multiple of kvHeads (${kvHeads})`);
  const headDim = checkInt('headDim', c.headDim, 32, 512);
  if (headDim % 32 !== 0) throw invalid(`headDim must be a multiple of 32, got ${headDim}`);
  const blockTokens = c.blockTokens ?? DEFAULT_BLOCK_TOKENS;
  const wrongBlock = blockTokensProblem(blockTokens);
  if (wrongBlock) throw invalid(`blockTokens ${wrongBlock}`);
  return {
    layers,
    qHeads,
    kvHeads,
    headDim,
    blockTokens,
    quant: checkOneOf('quant', c.quant, ['symmetric', 'asymmetric'] as const),
    gamma: checkNumber('gamma', c.gamma ?? 0.9, (x) => x >= 0 && x < 1, 'in [0, 1)'),
    mode: checkOneOf('mode', c.mode ?? 'downgrade-only', PRECISION_MODES),
    masterDir: checkString('masterDir', c.masterDir ?? ''),
    queryInt8: checkBool('queryInt8', c.queryInt8) ?? true,
    fastPath: checkBool('fastPath', c.fastPath) ?? true,
    memoryLimitBytes: checkInt('memoryLimitBytes', c.memoryLimitBytes ?? 0, 0),
    threads: checkInt('threads', c.threads ?? 0, 0, 1024),
    kiviResidual: checkInt('kiviResidual', c.kiviResidual ?? 128, 0),
    rotateKv: checkBool('rotateKv', c.rotateKv) ?? false,
    device: checkOneOf('device', c.device ?? 'cpu', DEVICES),
  };
}

function toStats(m: NativeStats): KvStats {
  const held = m.payload + m.params + m.metadata;
  const byFormat = Object.fromEntries(FORMATS.map((f, i) => [f, m.tokensByFormat[i]])) as Record<KvFormat, number>;
  return {
    payloadBytes: m.payload,
    paramBytes: m.params,
    metadataBytes: m.metadata,
    heldBytes: held,
    fp16Bytes: m.fp16Equivalent,
    beta: m.fp16Equivalent > 0 ? held / m.fp16Equivalent : 0,
    tokens: m.tokens,
    tokensByFormat: byFormat,
    kiviTokens: m.kiviTokens,
    masterBytes: m.master,
  };
}

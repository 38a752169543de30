// The orchestrator's side of the data plane (services/cache/data-plane-layout.ts):
// one shared-memory region per cache shard on this host, created here as a
// sealed memfd and registered with the shard. An attend writes its tensors
// into the region's arena and either rings the futex doorbell (the
// descriptor in the control block) or sends an AttendRequest that carries
// offsets (the gRPC doorbell); the outputs come back in the arena. One
// request at a time: the region has one arena and one descriptor slot.
import { randomBytes } from 'node:crypto';

import { loadAddon, type NativeShmRegion } from '../../native/binding.js';
import type { AttendItemWire } from '../cache/attend-codec.js';
import type { ShardAttendItem } from '../cache/cache-api.js';
import {
  CONTROL_BYTES, ITEM_WORDS, ITEMS_AT, MAX_DOORBELL_ITEMS, MAX_REGION_BYTES, MESSAGE_AT, MESSAGE_MAX, NONCE_AT, NONCE_BYTES,
  REGION_MAGIC, REGION_VERSION, REQUEST_AT, RESPONSE_AT, TRACEPARENT_AT, TRACEPARENT_MAX,
} from '../cache/data-plane-layout.js';

/** off: bytes in every Attend; futex / grpc: tensors in a shared region, rung by a futex or an Attend with offsets. */
export type DataPlaneMode = 'off' | 'futex' | 'grpc';
export const DATA_PLANE_MODES: readonly DataPlaneMode[] = ['off', 'futex', 'grpc'];
/** The faster doorbell as measured (docs/services.md, "Data plane"). */
export const DEFAULT_DATA_PLANE: DataPlaneMode = 'futex';

/** Where one item's tensors sit in the arena (byte offsets). */
interface Placed {
  q: number;
  k: number;
  v: number;
  out: number;
}

export type RingResult = { code: number; message: string; engineUs: number } | 'torn down' | 'timed out';

const ALIGN = 64; // each tensor on its own cache line
/** How long an attend may block this thread for its answer before the wait moves
 * to a worker thread: a decode step's attend is answered well within it, and a
 * thread handoff each way costs more than that wait on a loaded host. */
const SYNC_WAIT_MS = 3;
const align = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

/** Bytes of a region that holds `rows` attend rows of `rowBytes` in up to `rows` items. */
export function regionBytes(rows: number, rowBytes: number): number {
  return Math.min(MAX_REGION_BYTES, align(CONTROL_BYTES + rows * (rowBytes + 4 * ALIGN)));
}

export class RegionClient {
  readonly bytes: number;
  private readonly native: NativeShmRegion;
  private readonly f32: Float32Array; // [bytes / 4] the whole region
  private readonly u32: Uint32Array; // [bytes / 4] the whole region
  private readonly placed: Placed[] = []; // reused per call: no allocation on the hot path
  private rung = 0; // the last request number rung
  private chain: Promise<unknown> = Promise.resolve();
  id = 0; // the shard's region id, once registered
  torn = false;

  /** A new region of `bytes`, not yet registered. */
  constructor(bytes: number) {
    this.bytes = bytes;
    this.native = new (loadAddon().ShmRegion)('create', bytes);
    const buf = this.native.buffer();
    this.f32 = new Float32Array(buf);
    this.u32 = new Uint32Array(buf);
    this.u32[0] = REGION_MAGIC;
    this.u32[1] = REGION_VERSION;
  }

  /** What RegisterRegion sends: the path, and a fresh nonce written into the region. */
  registration(): { path: string; nonce: Uint8Array } {
    const nonce = randomBytes(NONCE_BYTES);
    new Uint8Array(this.u32.buffer, NONCE_AT, NONCE_BYTES).set(nonce);
    return { path: this.native.path()!, nonce };
  }

  /** Runs fn when no other request uses the region. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Copies the items' tensors into the arena; false when they do not fit (send bytes instead). */
  place(items: readonly ShardAttendItem[]): boolean {
    if (items.length > MAX_DOORBELL_ITEMS) return false;
    let at = CONTROL_BYTES;
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      const p = (this.placed[i] ??= { q: 0, k: 0, v: 0, out: 0 });
      p.q = at;
      p.k = align(p.q + it.q.byteLength);
      p.v = align(p.k + it.kNew.byteLength);
      p.out = align(p.v + it.vNew.byteLength);
      at = align(p.out + it.q.byteLength); // the output has q's shape
      if (at > this.bytes) return false;
    }
    for (let i = 0; i < items.length; i++) {
      const it = items[i], p = this.placed[i];
      this.f32.set(it.q, p.q / 4);
      this.f32.set(it.kNew, p.k / 4);
      this.f32.set(it.vNew, p.v / 4);
    }
    return true;
  }

  /** The placed items as an AttendRequest's items (gRPC doorbell). */
  wireItems(items: readonly ShardAttendItem[]): AttendItemWire[] {
    const empty = new Float32Array(0);
    return items.map((it, i) => {
      const p = this.placed[i];
      return { sequenceId: it.seq, rows: it.rows, q: empty, kNew: empty, vNew: empty, qOffset: p.q, kOffset: p.k, vOffset: p.v, outOffset: p.out };
    });
  }

  /** Writes the descriptor of the placed items and rings; resolves with the answer. */
  async ring(layer: number, items: readonly ShardAttendItem[], traceparent: string, timeoutMs: number): Promise<RingResult> {
    const u = this.u32, r = REQUEST_AT / 4;
    u[r] = layer;
    u[r + 1] = items.length;
    const tp = new Uint8Array(u.buffer, TRACEPARENT_AT, TRACEPARENT_MAX);
    u[r + 2] = traceparent ? Buffer.from(tp.buffer, tp.byteOffset, tp.byteLength).write(traceparent, 'utf8') : 0;
    for (let i = 0; i < items.length; i++) {
      const w = ITEMS_AT / 4 + i * ITEM_WORDS, p = this.placed[i];
      u[w] = items[i].seq;
      u[w + 1] = items[i].rows;
      u[w + 2] = p.q;
      u[w + 3] = p.k;
      u[w + 4] = p.v;
      u[w + 5] = p.out;
    }
    this.rung = (this.rung + 1) >>> 0 || 1; // 0 is the initial value of resp_seq: never a request number
    const n = this.rung;
    this.native.post(n);
    // Other shards of this step post theirs before anyone blocks (a microtask each).
    await null;
    let status = this.native.waitSync(n, Math.min(SYNC_WAIT_MS, timeoutMs));
    if (status === 2) status = await this.native.wait(n, Math.max(0, timeoutMs - SYNC_WAIT_MS));
    if (status === 1 || this.torn) return 'torn down';
    if (status === 2) return 'timed out';
    const s = RESPONSE_AT / 4;
    const code = u[s], engineUs = u[s + 1];
    const message = code ? Buffer.from(u.buffer, MESSAGE_AT, Math.min(u[s + 2], MESSAGE_MAX)).toString('utf8') : '';
    return { code, message, engineUs };
  }

  /** The outputs of the placed items: copied into each item's `out` when it has one, else views into the region
   * (valid until the next request). */
  outputs(items: readonly ShardAttendItem[]): Float32Array[] {
    return items.map((it, i) => {
      const p = this.placed[i];
      const view = this.f32.subarray(p.out / 4, p.out / 4 + it.q.length);
      if (!it.out) return new Float32Array(view); // the caller keeps it: a copy the next request cannot overwrite
      it.out.set(view);
      return it.out;
    });
  }

  /**
   * A copy of the f32 array an ExportImportanceBatch result left at `offset`
   * ([layers][tokens][width]); null when it came in the message (offset 0).
   * The offset is the service's: checked here as the service checks ours.
   */
  copyF32(offset: bigint, r: { layers: number; tokens: number }, width = 1): Float32Array | null {
    if (offset === 0n) return null;
    const off = Number(offset), len = r.layers * r.tokens * width * 4;
    if (off % 4 !== 0 || off < CONTROL_BYTES || off + len > this.bytes)
      throw new Error(`the cache service named region offset ${off} (+ ${len} bytes) outside the arena [${CONTROL_BYTES}, ${this.bytes})`);
    return this.f32.slice(off / 4, (off + len) / 4);
  }

  /** Tears the region down for both sides (a waiting ring() returns 'torn down'). */
  close(): void {
    this.torn = true;
    this.native.close();
  }
}

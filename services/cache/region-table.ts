// The cache service's side of the data plane: the shared-memory regions its
// callers registered (data-plane-layout.ts), each owned by one owner token
// and torn down with that owner's last attend stream. A region serves two
// doorbells with the same checks:
//   - an AttendRequest naming the region (region_id + offsets), over gRPC;
//   - the futex doorbell: the caller writes the same descriptor into the
//     region's control block and rings; a native thread wakes this one,
//     which answers into the control block and completes.
// Every offset is checked against the registered size before any view is
// made; the descriptor is copied out of shared memory before it is checked.
import * as grpc from '@grpc/grpc-js';

import { loadAddon, type NativeShmRegion } from '../../native/binding.js';
import { invalidArgument, RpcError, statusOf } from '../common/rpc.js';
import type { AttendItemWire, AttendRequestWire } from './attend-codec.js';
import type { ShardAttendItem } from './cache-api.js';
import {
  CONTROL_BYTES, ITEM_WORDS, ITEMS_AT, MAX_DOORBELL_ITEMS, MAX_REGION_BYTES, MESSAGE_AT, MESSAGE_MAX,
  NONCE_AT, NONCE_BYTES, REQUEST_AT, RESPONSE_AT, TRACEPARENT_AT, TRACEPARENT_MAX, type RowShape,
} from './data-plane-layout.js';

const utf8 = new TextEncoder();

export interface Region {
  id: number;
  owner: string;
  bytes: number;
  native: NativeShmRegion;
  f32: Float32Array; // [bytes / 4] the whole region
  u32: Uint32Array; // [bytes / 4] the whole region
  busy: boolean; // a doorbell request is being answered
  rung: number | null; // the newest request rung while busy
}

/** Regions one owner may hold: each costs a mapping and a waiting thread, and
 * an orchestrator needs one per shard (a few more while one is replaced). */
export const MAX_REGIONS_PER_OWNER = 4;

/** Answers one attend whose tensors are in a region (cache-server.ts). */
export type RegionAttend = (req: AttendRequestWire, owner: string) => Promise<{ engineUs: number }>;

/** Writes one result's importance and sq_error into a checked part of a region. */
export interface ImportanceArena {
  /** Their byte offsets in the region, or null when they do not fit (they go as bytes). */
  place(importance: Float32Array, sqError: Float32Array): { importance: number; sqError: number } | null;
}

const align64 = (n: number) => Math.ceil(n / 64) * 64;

export class RegionTable {
  private readonly regions = new Map<number, Region>();
  private nextId = 1;

  constructor(
    private readonly shape: RowShape,
    private readonly log: (line: string) => void,
  ) {}

  /** Maps the caller's region; FAILED_PRECONDITION when it is not reachable from here. */
  register(owner: string, path: string, byteSize: number, nonce: Uint8Array, attend: RegionAttend): number {
    if (!path.startsWith('/proc/')) throw invalidArgument(`path: expected /proc/<pid>/fd/<fd> of the caller's memfd, got '${path}'`);
    if (!(byteSize >= CONTROL_BYTES && byteSize <= MAX_REGION_BYTES))
      throw invalidArgument(`byte_size: ${byteSize} is not between the ${CONTROL_BYTES}-byte control block and ${MAX_REGION_BYTES} bytes`);
    if (nonce.length !== NONCE_BYTES) throw invalidArgument(`nonce: expected ${NONCE_BYTES} bytes, got ${nonce.length}`);
    const held = [...this.regions.values()].filter((r) => r.owner === owner).length;
    if (held >= MAX_REGIONS_PER_OWNER)
      throw new RpcError(grpc.status.RESOURCE_EXHAUSTED, `this caller holds ${held} regions, the most one owner may; unregister one first`);
    let native: NativeShmRegion;
    try {
      native = new (loadAddon().ShmRegion)('open', path, byteSize);
    } catch (e) {
      throw new RpcError(grpc.status.FAILED_PRECONDITION, `region ${path} cannot be mapped here (is the caller on this host?): ${(e as Error).message}`);
    }
    const buf = native.buffer();
    const seen = new Uint8Array(buf, NONCE_AT, NONCE_BYTES);
    if (!seen.every((b, i) => b === nonce[i])) {
      native.close();
      throw new RpcError(grpc.status.FAILED_PRECONDITION, `region ${path}: its nonce differs from the one sent (another process's file, or another host's)`);
    }
    const r: Region = { id: this.nextId++, owner, bytes: byteSize, native, f32: new Float32Array(buf), u32: new Uint32Array(buf), busy: false, rung: null };
    this.regions.set(r.id, r);
    native.watch((n) => this.rung(r, n, attend));
    return r.id;
  }

  /** The caller's region, or NOT_FOUND (someone else's is as unknown as a missing one). */
  get(owner: string, id: number, field = 'region_id'): Region {
    const r = this.regions.get(id);
    if (!r || r.owner !== owner) throw new RpcError(grpc.status.NOT_FOUND, `${field}: no region ${id} of this caller (registered and not torn down)`);
    return r;
  }

  unregister(owner: string, id: number): void {
    this.drop(this.get(owner, id));
  }

  /** Tears down every region of `owner` (its last attend stream closed); returns how many. */
  dropOwner(owner: string): number {
    const mine = [...this.regions.values()].filter((r) => r.owner === owner);
    mine.forEach((r) => this.drop(r));
    return mine.length;
  }

  closeAll(): void {
    [...this.regions.values()].forEach((r) => this.drop(r));
  }

  private drop(r: Region): void {
    this.regions.delete(r.id);
    r.native.close(); // wakes a caller waiting on the doorbell: its request fails cleanly
  }

  /**
   * The items of a request that names a region: views into it at checked
   * offsets, the output included (the engine writes it in place).
   */
  items(req: AttendRequestWire, owner: string, ownSeq: (seq: number, field: string) => number): ShardAttendItem[] {
    const r = this.get(owner, req.regionId!);
    const { qHeads, kvHeads, headDim } = this.shape;
    return req.items.map((it, i) => {
      if (!(it.rows >= 1)) throw invalidArgument(`items[${i}].rows must be ≥ 1`);
      if (it.q.length || it.kNew.length || it.vNew.length) throw invalidArgument(`items[${i}]: q, k_new and v_new must be empty when region_id names a region`);
      const view = (name: string, offset: number | undefined, heads: number) => {
        const off = offset ?? 0, len = it.rows * heads * headDim * 4;
        if (!Number.isSafeInteger(off) || off % 4 !== 0 || off < CONTROL_BYTES || off + len > r.bytes)
          throw invalidArgument(
            `items[${i}].${name}_offset ${off} (+ ${len} bytes for ${it.rows} rows) is outside region ${r.id}'s arena [${CONTROL_BYTES}, ${r.bytes}) or not a multiple of 4`,
          );
        return r.f32.subarray(off / 4, (off + len) / 4);
      };
      return {
        seq: ownSeq(it.sequenceId, `items[${i}].sequence_id`),
        rows: it.rows,
        q: view('q', it.qOffset, qHeads),
        kNew: view('k', it.kOffset, kvHeads),
        vNew: view('v', it.vOffset, kvHeads),
        out: view('out', it.outOffset, qHeads),
      };
    });
  }

  /**
   * Where an ExportImportanceBatch may write its float arrays: [offset,
   * offset + bytes) of the caller's region, checked against the registered
   * size before anything is written. Results go in one after another while
   * they fit; place() answers null for one that does not (it goes as bytes).
   */
  arena(owner: string, id: number, offset: number, bytes: number): ImportanceArena {
    const r = this.get(owner, id);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset % 4 !== 0 || offset < CONTROL_BYTES || bytes < 0 || offset + bytes > r.bytes)
      throw invalidArgument(`arena_offset ${offset} + arena_bytes ${bytes} is outside region ${r.id}'s arena [${CONTROL_BYTES}, ${r.bytes}) or not a multiple of 4`);
    const end = offset + bytes;
    let at = offset;
    return {
      place: (importance, sqError) => {
        // Torn down while the export ran: its mapping is gone, the results go as bytes.
        if (this.regions.get(r.id) !== r) return null;
        const i = at, e = align64(i + importance.byteLength), next = align64(e + sqError.byteLength);
        if (e + sqError.byteLength > end) return null;
        r.f32.set(importance, i / 4);
        r.f32.set(sqError, e / 4);
        at = Math.min(next, end);
        return { importance: i, sqError: e };
      },
    };
  }

  /** The futex doorbell rang request n: answer it (one at a time; the newest wins). */
  private rung(r: Region, n: number, attend: RegionAttend): void {
    if (r.busy) return void (r.rung = n);
    r.busy = true;
    let code = 0, message = '', engineUs = 0;
    let req: AttendRequestWire;
    try {
      req = this.descriptor(r, n);
    } catch (e) {
      return void this.answer(r, n, statusOf(e), (e as Error).message, 0, attend);
    }
    attend(req, r.owner).then(
      (res) => (engineUs = res.engineUs),
      (e) => {
        code = statusOf(e);
        message = e instanceof Error ? e.message : String(e);
        if (code === grpc.status.INTERNAL) this.log(`internal error: ${(e as Error)?.stack ?? e}`);
      },
    ).finally(() => this.answer(r, n, code, message, engineUs, attend));
  }

  private answer(r: Region, n: number, code: number, message: string, engineUs: number, attend: RegionAttend): void {
    if (this.regions.get(r.id) === r) {
      const w = RESPONSE_AT / 4;
      r.u32[w] = code;
      r.u32[w + 1] = engineUs;
      const bytes = new Uint8Array(r.u32.buffer, MESSAGE_AT, MESSAGE_MAX);
      const { written } = utf8.encodeInto(message, bytes);
      r.u32[w + 2] = written;
      r.native.complete(n);
    }
    r.busy = false;
    const next = r.rung;
    r.rung = null;
    if (next !== null && next !== n) this.rung(r, next, attend);
  }

  /** Request n's descriptor, copied out of the control block, then checked. */
  private descriptor(r: Region, n: number): AttendRequestWire {
    const head = r.u32.slice(REQUEST_AT / 4, REQUEST_AT / 4 + 3); // copied: the peer may write meanwhile
    const [layer, count, tpBytes] = head;
    if (count < 1 || count > MAX_DOORBELL_ITEMS) throw invalidArgument(`region ${r.id}: the request names ${count} items (1 to ${MAX_DOORBELL_ITEMS})`);
    if (tpBytes > TRACEPARENT_MAX) throw invalidArgument(`region ${r.id}: a traceparent of ${tpBytes} bytes (at most ${TRACEPARENT_MAX})`);
    const words = r.u32.slice(ITEMS_AT / 4, ITEMS_AT / 4 + count * ITEM_WORDS); // [count][6]
    const empty = new Float32Array(0);
    const items: AttendItemWire[] = [];
    for (let i = 0; i < count; i++) {
      const w = i * ITEM_WORDS;
      items.push({ sequenceId: words[w], rows: words[w + 1], q: empty, kNew: empty, vNew: empty, qOffset: words[w + 2], kOffset: words[w + 3], vOffset: words[w + 4], outOffset: words[w + 5] });
    }
    const traceparent = tpBytes ? Buffer.from(new Uint8Array(r.u32.buffer, TRACEPARENT_AT, tpBytes)).toString('utf8') : '';
    return { id: BigInt(n), layer, items, traceparent, regionId: r.id };
  }
}

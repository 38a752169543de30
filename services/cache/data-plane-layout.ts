// The data plane's shared-memory region, as both sides read it (the
// orchestrator creates and fills it, the cache service validates and answers;
// native/src/shm-region.cc knows only the three futex words).
//
//   0        u32 magic 'SKVR', u32 version, [8, 24) nonce (16 random bytes)
//   64       u32 req_seq    futex: the orchestrator rang request n
//   128      u32 resp_seq   futex: the cache answered request n
//   192      u32 closed     1 = torn down by either side
//   256      request:  u32 layer, u32 items, u32 traceparent bytes, [268, 524) traceparent
//   1024     response: u32 status (gRPC code), u32 engine µs, u32 message bytes, [1036, 2048) message
//   4096     items:    [items][6] u32 {sequence id, rows, q, k, v, out byte offsets}
//   65536    tensor arena: each item's q [rows][qHeads][D], k and v [rows][kvHeads][D],
//            out [rows][qHeads][D], f32, at the offsets its descriptor names
//
// Everything the cache service reads from here is copied before it is
// checked (the other process can write at any time); tensors are checked by
// offset and length only, since their values cannot hurt the service.

export const REGION_MAGIC = 0x52564b53; // 'SKVR' little-endian
export const REGION_VERSION = 1;
export const NONCE_AT = 8;
export const NONCE_BYTES = 16;
export const REQUEST_AT = 256;
export const TRACEPARENT_AT = 268;
export const TRACEPARENT_MAX = 256;
export const RESPONSE_AT = 1024;
export const MESSAGE_AT = 1036;
export const MESSAGE_MAX = 2048 - MESSAGE_AT;
export const ITEMS_AT = 4096;
export const ITEM_WORDS = 6;
export const CONTROL_BYTES = 65536;
export const MAX_DOORBELL_ITEMS = (CONTROL_BYTES - ITEMS_AT) / (ITEM_WORDS * 4);
/** A region this large is plenty for any batch an orchestrator sends; larger attends go as bytes. */
export const MAX_REGION_BYTES = 256 * 1024 * 1024;

/** f32 words per query row of each tensor. */
export interface RowShape {
  qHeads: number;
  kvHeads: number;
  headDim: number;
}

/** Bytes one attend row takes in the arena (q, k, v and out). */
export function rowBytes(s: RowShape): number {
  return (2 * s.qHeads + 2 * s.kvHeads) * s.headDim * 4;
}

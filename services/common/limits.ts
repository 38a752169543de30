// Message-size limits of the three servers, sized from what a legitimate call
// of the served model can need, so that grpc-js refuses anything larger with
// RESOURCE_EXHAUSTED from the message's length prefix, before reading it into
// memory (the library default was 256 MiB here: a 255 MB message to the
// allocator was read in full, 93 → 631 MB RSS, before it was refused).
//
// Each limit is the largest legitimate message of the server's methods
// (below), × 1.25 + 64 KiB for framing and fields we do not count exactly.
// One place knows these shapes; the servers, Info/Stats and the tests read it.

/** The model shape the limits follow (ModelConfig has these fields). */
export interface ModelShape {
  layers: number;
  heads: number; // query heads
  kvHeads: number;
  headDim: number;
  maxPositions: number; // the context: no sequence holds more tokens
}

export interface MessageLimits {
  receiveBytes: number; // the most a request may carry ('grpc.max_receive_message_length')
  sendBytes: number; // the most a response may carry ('grpc.max_send_message_length')
}

export interface CacheLimits extends MessageLimits {
  attendRows: number; // query rows in one AttendRequest, over all its items
  batchTokens: number; // tokens per layer one ExportImportanceBatch may export in all (one context: what a response is sized for)
  sequencesPerOwner: number; // live sequences one owner token may hold
}

export interface PublicLimits extends MessageLimits {
  promptBytes: number; // UTF-8 bytes of a prompt or Score text, checked before tokenising
}

const KIB = 1024;

/** The most sequences one batched reallocation call (ExportImportanceBatch,
 * AllocateBatch, ApplyPlanBatch) may name: far above any step's batch
 * (--max-batch), low enough that one call's per-item framing stays within
 * the margin below. A batch's tensors are bounded separately: its tokens in
 * all by one context (CacheLimits.batchTokens), so that one whole-context
 * sequence and a batch of short ones need the same message size. */
export const MAX_BATCH_SEQUENCES = 256;
const withMargin = (need: number) => Math.ceil(need * 1.25) + 64 * KIB;

// Per-item framing of an attend item (tags, varints of id, rows and three
// lengths) and of the request (id, layer, traceparent ≤ 55 chars).
const ATTEND_ITEM_FRAMING = 32;
const ATTEND_REQUEST_FRAMING = 256;

/** AttendRequest of `rows` rows: q [rows][heads][headDim] and k_new, v_new
 * [rows][kvHeads][headDim] f32; at most one item per row. */
export function attendRequestBytes(s: ModelShape, rows: number): number {
  return rows * ((s.heads + 2 * s.kvHeads) * s.headDim * 4 + ATTEND_ITEM_FRAMING) + ATTEND_REQUEST_FRAMING;
}

/** AttendResponse: out [rows][heads][headDim] f32 per item, plus an error message. */
export function attendResponseBytes(s: ModelShape, rows: number): number {
  return rows * (s.heads * s.headDim * 4 + 8) + 4 * KIB;
}

/** Per (token, layer) of a whole sequence: ExportImportance's importance f32,
 * format u8 and sq_error 3 × f32; ApplyPlan's position u32 and format u8;
 * Allocate's importance f32, sq_error 3 × f32, upper bound u8, current format u8. */
const EXPORT_PER_TOKEN_LAYER = 4 + 1 + 12;
const PLAN_PER_TOKEN_LAYER = 4 + 1;
const ALLOCATE_PER_TOKEN_LAYER = 4 + 12 + 1 + 1;

function perSequence(s: ModelShape, perTokenLayer: number): number {
  return s.maxPositions * s.layers * perTokenLayer + s.layers * 32 + 4 * KIB;
}

/** The cache service: Attend of `attendRows` rows, or a plan / export of a whole context. */
export function cacheLimits(s: ModelShape, attendRows: number, sequencesPerOwner = 1024): CacheLimits {
  return {
    attendRows,
    batchTokens: s.maxPositions,
    sequencesPerOwner,
    receiveBytes: withMargin(Math.max(attendRequestBytes(s, attendRows), perSequence(s, PLAN_PER_TOKEN_LAYER))),
    sendBytes: withMargin(Math.max(attendResponseBytes(s, attendRows), perSequence(s, EXPORT_PER_TOKEN_LAYER))),
  };
}

/** The allocator: one Allocate for a whole context (its plan: a format per token and layer). */
export function allocatorLimits(s: ModelShape): MessageLimits {
  return { receiveBytes: withMargin(perSequence(s, ALLOCATE_PER_TOKEN_LAYER)), sendBytes: withMargin(perSequence(s, 1)) };
}

/** Default prompt bytes: 16 per token of context — byte-level and BPE
 * vocabularies average 1–5 bytes a token — and at least 64 KiB. */
export function defaultPromptBytes(s: ModelShape): number {
  return Math.max(64 * KIB, s.maxPositions * 16);
}

/** The public API: a prompt of `promptBytes` or a context of token ids (≤ 5
 * bytes each as varints) plus 8 stop strings of 256 bytes; Score answers
 * logprob f32 + token id + top id per token. */
export function publicLimits(s: ModelShape, promptBytes: number): PublicLimits {
  const request = Math.max(promptBytes, s.maxPositions * 5) + 8 * (256 + 4) + 4 * KIB;
  return { promptBytes, receiveBytes: withMargin(request), sendBytes: withMargin(s.maxPositions * (4 + 5 + 5) + 4 * KIB) };
}

/** grpc-js server options for `l`. */
export function serverOptions(l: MessageLimits): Record<string, number> {
  return { 'grpc.max_receive_message_length': l.receiveBytes, 'grpc.max_send_message_length': l.sendBytes };
}

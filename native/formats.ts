// KV formats as the engine numbers them (smartkv::kv_format), and the byte
// cost of a token in each, mirrored from kernels/include/smartkv/block-layout.h
// so that an allocator can budget bytes without touching the engine.

export const FORMATS = ['fp16', 'int8', 'int4', 'int2'] as const;
export type KvFormat = (typeof FORMATS)[number];
export const FORMAT_CODE: Readonly<Record<KvFormat, number>> = { fp16: 0, int8: 1, int4: 2, int2: 3 };
export const FORMAT_BITS: readonly number[] = [16, 8, 4, 2]; // by code

export type QuantMode = 'symmetric' | 'asymmetric';

export interface LayoutShape {
  headDim: number;
  kvHeads: number;
  blockTokens: number;
  quant: QuantMode;
}

const align64 = (n: number): number => Math.ceil(n / 64) * 64;

/** Token slots per block of format `code` in an engine of T-token blocks
 * (block-layout.h, format_block_tokens): T for fp16 and int8, 2T for int4,
 * 4T for int2, at most 1024, so that each integer format's block carries the
 * same code bytes per kv-head. */
export function formatBlockTokens(code: number, T: number): number {
  return Math.min(1024, code === 2 ? 2 * T : code === 3 ? 4 * T : T);
}

/** Bytes of one storage block of `code` (block-layout.h): packed K and V rows,
 * their scales (and minima), and the slots' positions, each section 64-aligned. */
export function blockBytes(code: number, s: LayoutShape): number {
  const row = (s.headDim * FORMAT_BITS[code]) / 8, t = formatBlockTokens(code, s.blockTokens);
  const nParams = code === 0 ? 0 : s.quant === 'symmetric' ? 1 : 2;
  const codes = s.kvHeads * t * row;
  const params = s.kvHeads * t * nParams * 2;
  return 2 * align64(codes) + 2 * align64(params) + align64(t * 4);
}

/** Bytes per token in each format ([4] by code), for full blocks. The engine
 * also holds 8 bytes per token of bookkeeping (slot map and importance), in
 * pages of 128 tokens per (sequence, layer): under 1 KiB of page rounding,
 * plus the page tables (8 bytes a page, doubling). */
export function tokenBytes(s: LayoutShape): number[] {
  return FORMATS.map((_, code) => blockBytes(code, s) / formatBlockTokens(code, s.blockTokens));
}

/** Bookkeeping bytes per token that do not depend on the format. */
export const TOKEN_META_BYTES = 8;

/** Tokens per bookkeeping page (kernels/src/cpu/paged-array.h, meta_page_elems). */
export const META_PAGE_TOKENS = 128;

/** Bytes of one block-table or page-table entry (a pointer); tables double. */
export const TABLE_ENTRY_BYTES = 8;

/** Token slots per 16- and 8-bit storage block (4-bit blocks hold twice as
 * many, 2-bit blocks four times: formatBlockTokens). A partly filled block is
 * held whole, so larger blocks hold more slack bytes but give attention
 * longer runs of one kv-head's rows (docs/bench-attention.md measures both). */
export const DEFAULT_BLOCK_TOKENS = 32;

/** Why t cannot be a block size (the engine's check, sequence-engine.cc), or null. */
export function blockTokensProblem(t: number): string | null {
  return Number.isInteger(t) && t >= 16 && t <= 1024 && t % 16 === 0 ? null : `must be a multiple of 16 from 16 to 1024, got ${t}`;
}

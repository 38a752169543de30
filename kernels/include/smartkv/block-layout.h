// Byte layout of one storage block: the unit the buckets are paged in.
//
// A block holds `block_tokens` (T) token slots of ONE format for one
// (sequence, layer); every slot carries all kv-heads (H) of that token.
// The engine's block size T is that of the 16- and 8-bit blocks; 4-bit blocks
// hold 2T slots and 2-bit blocks 4T (format_block_tokens), so every integer
// format's block carries the same code bytes per kv-head (T x head_dim).
//
//   +--------------------------------------------+ offset 0
//   | k_codes  [H][T][row_bytes]     u8           |  packed rows (fp16: halves)
//   | v_codes  [H][T][row_bytes]     u8           |
//   | k_params [H][T][n_params]      f16          |  scale (, minimum)
//   | v_params [H][T][n_params]      f16          |
//   | pos      [T]                   i32          |  token position in the sequence
//   +--------------------------------------------+ block_bytes
//
// Head-major order makes each kv-head's keys one contiguous stream, which is
// what attention reads. Every section starts on a 64-byte boundary.
//
// A KIVI group block (see kivi.h) differs only in its key parameters, which
// are per channel: k_params [H][D][2] f16 instead of [H][T][n_params].
#pragma once
#include <cstddef>
#include <cstdint>

#include "smartkv/formats.h"

namespace smartkv {

SKV_HD constexpr size_t align64(size_t n) { return (n + 63) & ~size_t(63); }

struct block_layout {
    int head_dim = 0;
    int n_kv_heads = 0;
    int block_tokens = 0;
    int row = 0;       // bytes of one packed row
    int n_params = 0;  // half floats per vector
    size_t k_codes = 0, v_codes = 0, k_params = 0, v_params = 0, pos = 0;  // section offsets
    size_t bytes = 0;                                                       // whole block
    size_t payload_bytes = 0, param_bytes = 0, meta_bytes = 0;              // split for accounting

    SKV_HD size_t code_offset(int head, int slot) const { return size_t(head * block_tokens + slot) * size_t(row); }
    SKV_HD size_t param_offset(int head, int slot) const {
        return size_t(head * block_tokens + slot) * size_t(n_params) * sizeof(half_bits);
    }
};

// Slots per block of format f in an engine of T-token blocks: T for fp16
// and int8, 2T for int4, 4T for int2, at most 1024 (T is a multiple of 16 up
// to 1024, so these are too). Why: attention pays a fixed cost per block and
// per kv-head (the online-softmax update, the value weights' quantisation and
// the integer accumulators' fold), and the hardware prefetcher ramps up again
// on each kv-head's piece of a block; equal bytes per piece spread both over
// the same bytes in every integer format. At 32-token int2 blocks that cost
// was ~290 instructions per block (9 of 41 per token, one query) and int2 ran
// ~1.27x faster in 128-token blocks (docs/bench-attention.md). The slack of a
// partly filled last block is then the same bytes in each integer format.
SKV_HD constexpr int format_block_tokens(kv_format f, int block_tokens) {
    const int t = f == kv_format::int4 ? 2 * block_tokens : f == kv_format::int2 ? 4 * block_tokens : block_tokens;
    return t < 1024 ? t : 1024;
}

// kivi_keys: key parameters per channel (KIVI group) instead of per vector.
SKV_HD block_layout make_block_layout(kv_format f, quant_mode m, int head_dim, int n_kv_heads,
                                             int block_tokens, bool kivi_keys = false) {
    block_layout l;
    l.head_dim = head_dim;
    l.n_kv_heads = n_kv_heads;
    l.block_tokens = block_tokens;
    l.row = row_bytes(f, head_dim);
    l.n_params = params_per_vector(f, m);
    const size_t codes = size_t(n_kv_heads) * block_tokens * l.row;
    const size_t v_param_bytes = size_t(n_kv_heads) * block_tokens * l.n_params * sizeof(half_bits);
    const size_t k_param_bytes = kivi_keys ? size_t(n_kv_heads) * head_dim * 2 * sizeof(half_bits) : v_param_bytes;
    l.k_codes = 0;
    l.v_codes = align64(codes);
    l.k_params = l.v_codes + align64(codes);
    l.v_params = l.k_params + align64(k_param_bytes);
    l.pos = l.v_params + align64(v_param_bytes);
    l.bytes = l.pos + align64(size_t(block_tokens) * sizeof(int32_t));
    l.payload_bytes = 2 * align64(codes);
    l.param_bytes = align64(k_param_bytes) + align64(v_param_bytes);
    l.meta_bytes = l.bytes - l.payload_bytes - l.param_bytes;
    return l;
}

// The layout of format f's blocks in an engine of block_tokens-token blocks.
SKV_HD block_layout make_format_layout(kv_format f, quant_mode m, int head_dim, int n_kv_heads, int block_tokens) {
    return make_block_layout(f, m, head_dim, n_kv_heads, format_block_tokens(f, block_tokens));
}

}  // namespace smartkv

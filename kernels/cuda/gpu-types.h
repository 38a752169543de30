// Plain descriptors the host builds and the CUDA kernels read (host and
// device compile this header). Device pointers only; no CUDA types here, so
// host-only code (the engine, the checks) includes it without nvcc.
#pragma once
#include <cstdint>

#include "smartkv/block-layout.h"

namespace smartkv::cuda {

// ---------------------------------------------------------------------------
// Vector conversion (quantize.cu): one K or V vector of one kv-head.

constexpr uint8_t k_src_f32 = 0xff;  // convert_item::src_fmt for an f32 source

struct convert_item {
    const void* src = nullptr;              // f32 [D], or a packed row of src_fmt
    const half_bits* src_params = nullptr;  // the source row's parameters (null for f32 / fp16)
    uint8_t* dst_row = nullptr;             // packed row of dst_fmt
    half_bits* dst_params = nullptr;        // params_per_vector(dst_fmt) halves (null for fp16)
    int32_t* dst_pos = nullptr;             // optional: the slot's position word
    int32_t pos = 0;                        // written to *dst_pos
    uint8_t src_fmt = k_src_f32;            // kv_format or k_src_f32
    uint8_t dst_fmt = 0;                    // kv_format
    uint8_t src_mode = 0;                   // quant_mode of the source parameters
    uint8_t dst_mode = 0;                   // quant_mode of the destination
    float clip = 1.f;                       // symmetric scale covers clip·absmax (formats.h)
};

// ---------------------------------------------------------------------------
// Whole-slot copies inside a bucket (slot-copy.cu): the swap-removes of a
// batch of moves, already resolved on the host so sources are never targets.

struct slot_copy_item {
    const uint8_t* src_block = nullptr;
    uint8_t* dst_block = nullptr;
    uint16_t src_slot = 0, dst_slot = 0;
    uint8_t fmt = 0;  // kv_format: picks the layout
};

// ---------------------------------------------------------------------------
// KIVI group formation (kivi.cu): 32 residual fp16 tokens -> one group block.

struct kivi_group_item {
    const uint8_t* src_block[32];  // fp16-bucket block of token t
    uint16_t src_slot[32];         // slot of token t in that block
    uint8_t* dst_group;            // group block (kivi layout of fmt)
    int32_t pos0;                  // position of token 0; tokens are pos0 .. pos0+31
    uint8_t fmt;                   // kv_format::int2 or int4
};

// ---------------------------------------------------------------------------
// Attention (attend.cu, attend-merge.cu, query-prep.cu).
//
// A request covers n_rows query rows of one (sequence, layer). Its query
// "slots" are ordered like the CPU engine's: qi = kv_head*(n_rows*G) + r*G + g
// (G = q-heads per kv-head), and score rows use the same order.

enum : uint8_t { blk_quantized = 0, blk_fp16 = 1, blk_kivi = 2 };  // = block_kind

struct gpu_block {               // one block of a request's block list
    const uint8_t* data = nullptr;
    uint32_t slot_base = 0;      // score column of slot 0
    uint16_t n_valid = 0;        // used slots
    uint8_t kind = blk_fp16;
    uint8_t fmt = 0;             // kv_format
};

struct gpu_request {
    const gpu_block* blocks = nullptr;  // [n_blocks] this request's block list (the store's, block-list.h)
    int n_blocks = 0;
    int n_rows = 0;                // query rows in this launch
    int pos0 = 0;                  // position of row 0 (row r sees tokens at pos <= pos0 + r)
    int n_after = 0;               // score columns (tokens visible to the last row)
    int n_splits = 1;              // context splits (flash-decoding)
    int qv0 = 0;                   // first prepared query vector: qv = qv0 + r*n_q_heads + q_head
    int64_t part0 = 0;             // first partial state: part0 + split*(n_rows*Hq) + qi
    float* scores = nullptr;       // [n_rows*Hq][n_after] raw scores by qi, or null
    int32_t* col_pos = nullptr;    // [n_after] position of each score column, or null
    float* out = nullptr;          // [n_rows][Hq][D] f32
    float* final_m = nullptr;      // [n_rows*Hq] merged max, by qi
    float* final_l = nullptr;      // [n_rows*Hq] merged sum, by qi
    float* importance = nullptr;   // [>= n_after] by position, or null
    float* probs = nullptr;        // [n_rows][n_after] by position, or null
    float gamma = 0.9f;            // importance EMA factor of the sequence
};

struct gpu_work {                  // one CTA of the attention launch
    int req = 0, kv_head = 0, q_tile = 0, split = 0;
};

struct attend_args {
    block_layout layout[4];        // per kv_format, for quantized and fp16 blocks
    block_layout kivi_layout[4];   // KIVI group blocks, by kv_format (int4 and int2 used)
    int head_dim = 0, n_q_heads = 0, n_kv_heads = 0, group = 0;
    uint8_t mode = 0;              // quant_mode of quantized blocks
    uint8_t use_q8 = 1;            // integer dot products for quantized keys
    const gpu_request* reqs = nullptr;
    const gpu_work* work = nullptr;
    int n_work = 0, n_reqs = 0;
    // prepared queries, by query vector qv: [n_qv][D] f32 scaled by 1/sqrt(D),
    // [n_qv][D] s8 codes, [n_qv] scale, [n_qv] code sum, [n_qv] float sum
    const float* qf = nullptr;
    const int8_t* q8 = nullptr;
    const float* q8_scale = nullptr;
    const int32_t* q8_sum = nullptr;
    const float* q_sum = nullptr;
    // split partial states: m, l, z [n_part], acc [n_part][D]
    float* part_m = nullptr;
    float* part_l = nullptr;
    float* part_z = nullptr;
    float* part_acc = nullptr;
};

}  // namespace smartkv::cuda

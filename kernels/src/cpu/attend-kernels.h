// Per-block attention kernels: the inner loop of attention over buckets.
//
// One call handles one kv-head of one block for all the queries that read
// that kv-head (n_rows query rows x group q-heads, "nq" below). It computes
// the block's scores, writes them out for the importance pass, and folds the
// block into each query's online-softmax state:
//
//   m' = max(m, max_t s_t)         running maximum
//   l  = l*e^(m-m') + sum_t e^(s_t-m')
//   acc= acc*e^(m-m') + sum_t e^(s_t-m') * scale_v,t * code_v,t   [head_dim]
//   z  = z*e^(m-m')   + sum_t e^(s_t-m') * zero_v,t               (the zero point,
//                                                                  common to all dims)
//   output = (acc + z) / l  after the last block.
//
// Implementations with one signature: the portable scalar reference
// (attend-ref.cc), the AVX-512/VNNI fast path (attend-avx512.cc) and the AVX2
// fast path for CPUs without AVX-512 (attend-avx2.cc). attend_block_fast
// picks one by the CPU once (attend-dispatch.cc, compiled without AVX flags so
// that nothing there runs an instruction the CPU lacks).
#pragma once
#include <cstddef>
#include <cstdint>

#include "smartkv/block-layout.h"

namespace smartkv {

struct head_query {
    int n_rows = 0, group = 0, head_dim = 0;
    const float* q = nullptr;         // [nq][head_dim] f32, already times 1/sqrt(head_dim)
    const float* q_sum = nullptr;     // [nq] sum over d of q (zero-point term, float path)
    const int8_t* q8 = nullptr;       // [nq][head_dim] s8 codes of q, or null (float path)
    const float* q8_scale = nullptr;  // [nq] q ~= q8_scale * q8
    const int32_t* q8_sum = nullptr;  // [nq] sum over d of q8
    const int32_t* row_pos = nullptr; // [n_rows] position of each query row (causal mask)
    int nq() const { return n_rows * group; }
};

struct head_state {
    float* m = nullptr;    // [nq] running max, starts at -inf
    float* l = nullptr;    // [nq] running sum of exp, starts at 0
    float* z = nullptr;    // [nq] zero-point accumulator, starts at 0
    float* acc = nullptr;  // [nq][head_dim], starts at 0
};

enum class block_kind : uint8_t { quantized, fp16, kivi };

struct block_ref {
    const uint8_t* data = nullptr;
    block_kind kind = block_kind::fp16;
    kv_format fmt = kv_format::fp16;
    int n_valid = 0;          // used slots
    bool needs_mask = false;  // may hold tokens later than some query row
    uint32_t slot_base = 0;   // index of slot 0 in the score rows
};

// Where scores go: scores[qi * stride + slot_base + t] for query qi = r*group+g.
struct score_sink {
    float* scores = nullptr;
    size_t stride = 0;
};

// scratch: attend_scratch_floats(head_dim, block_tokens) floats per thread.
void attend_block_ref(const block_layout& layout, quant_mode mode, const block_ref& blk, int head,
                      const head_query& q, head_state& st, const score_sink& sink, float* scratch);
void attend_block_fast(const block_layout& layout, quant_mode mode, const block_ref& blk, int head,
                       const head_query& q, head_state& st, const score_sink& sink, float* scratch);

// Consecutive blocks of one layout for one kv-head (the blocks of one bucket
// in order): folds as many of blks[0..n_avail) as the fast path takes in one
// pass — at least one — and returns that count. The result equals one
// attend_block_fast per block up to float rounding (one softmax update and
// one weight scale for the run instead of one per block). The AVX-512 path
// joins up to 512 tokens of unmasked quantised blocks for up to 16 queries
// (MHA decode, a GQA group, a few prefill rows); everything else goes one
// block at a time.
int attend_blocks_fast(const block_layout& layout, quant_mode mode, const block_ref* blks, int n_avail, int head,
                       const head_query& q, head_state& st, const score_sink& sink, float* scratch);

// True when attend_block_fast has a vectorised path for this shape on this CPU.
bool fast_path_available(int head_dim);
// The same question for one instruction set (used by the dispatcher and by
// code that has its own AVX-512 loops, e.g. the model's matmul).
bool avx512_path_available(int head_dim);
bool avx2_path_available(int head_dim);
void attend_block_avx512(const block_layout& layout, quant_mode mode, const block_ref& blk, int head,
                         const head_query& q, head_state& st, const score_sink& sink, float* scratch);
int attend_blocks_avx512(const block_layout& layout, quant_mode mode, const block_ref* blks, int n_avail, int head,
                         const head_query& q, head_state& st, const score_sink& sink, float* scratch);
void attend_block_avx2(const block_layout& layout, quant_mode mode, const block_ref& blk, int head,
                       const head_query& q, head_state& st, const score_sink& sink, float* scratch);
void add_probabilities_avx512(const float* scores, size_t n, float m, float w, float* out);
void add_probabilities_avx2(const float* scores, size_t n, float m, float w, float* out);

// out[j] += exp(scores[j] - m) * w for j < n (the importance pass).
void add_probabilities(const float* scores, size_t n, float m, float w, float* out);
size_t attend_scratch_floats(int head_dim, int block_tokens);

}  // namespace smartkv

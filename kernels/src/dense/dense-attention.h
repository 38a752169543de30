// Dense decode attention over plain contiguous K/V arrays: the fp32 and fp16
// baselines the benchmark compares the buckets against. Same thread pool,
// same online softmax, the best loops we have for plain arrays.
#pragma once
#include <cstdint>

#include "smartkv/half.h"

namespace smartkv {

class thread_pool;

struct dense_problem {
    int n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
    int n_ctx = 0;
    const float* q = nullptr;  // [n_q_heads][head_dim] f32, one query row
    const void* k = nullptr;   // [n_kv_heads][n_ctx][head_dim] f32 or f16
    const void* v = nullptr;   // [n_kv_heads][n_ctx][head_dim] f32 or f16
    float* out = nullptr;      // [n_q_heads][head_dim] f32
};

// Pick the AVX-512 or the AVX2 loops by the CPU (dense-dispatch.cc); a CPU
// with neither throws std::runtime_error.
void dense_attention_f32(const dense_problem& p, thread_pool& pool);
void dense_attention_f16(const dense_problem& p, thread_pool& pool);
bool dense_attention_available();

// One instruction set each (dense-attention.cc, dense-avx2.cc).
void dense_attention_f32_avx512(const dense_problem& p, thread_pool& pool);
void dense_attention_f16_avx512(const dense_problem& p, thread_pool& pool);
void dense_attention_f32_avx2(const dense_problem& p, thread_pool& pool);
void dense_attention_f16_avx2(const dense_problem& p, thread_pool& pool);

}  // namespace smartkv

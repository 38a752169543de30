// y = x · W^T for F32/F16/BF16 weights, on the thread pool.
//
// Work is split over blocks of 16 output rows. Each task converts its 16
// weight rows to f32 once (16 x cols floats of scratch) and then serves every
// row of x from them, so prefill (many rows of x) is compute-bound and decode
// (one row) streams the weights once.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../cpu/simd-math.h"
#include "../cpu/thread-pool.h"
#include "smartkv/half.h"
#include "smartkv/model.h"

namespace smartkv {

namespace {

constexpr int rows_per_task = 16;

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

void convert_row(const tensor_view& w, int64_t row, float* out) {
    const int64_t cols = w.cols;
    switch (w.dtype) {
        case weight_dtype::f32:
            std::memcpy(out, static_cast<const float*>(w.data) + row * cols, size_t(cols) * 4);
            break;
        case weight_dtype::f16: {
            const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * cols;
            int64_t c = 0;
            for (; c + 16 <= cols; c += 16)
                _mm512_storeu_ps(out + c, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c))));
            for (; c < cols; ++c) out[c] = half_to_float(src[c]);
            break;
        }
        case weight_dtype::bf16: {
            const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * cols;
            int64_t c = 0;
            for (; c + 16 <= cols; c += 16) {
                const __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c)));
                _mm512_storeu_ps(out + c, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
            }
            for (; c < cols; ++c) out[c] = bf16_to_float(src[c]);
            break;
        }
    }
}

float read_scalar(const tensor_view& t, int64_t i) {
    switch (t.dtype) {
        case weight_dtype::f16: return half_to_float(static_cast<const uint16_t*>(t.data)[i]);
        case weight_dtype::bf16: return bf16_to_float(static_cast<const uint16_t*>(t.data)[i]);
        default: return static_cast<const float*>(t.data)[i];
    }
}

// 16 dot products of one x row with 16 converted weight rows.
inline void dot16(const float* wbuf, int cols, const float* x, float* y) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 16 <= cols; c += 16) {
        const __m512 xv = _mm512_loadu_ps(x + c);
        for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(wbuf + size_t(j) * cols + c), xv, acc[j]);
    }
    alignas(64) float sums[16];
    _mm512_store_ps(sums, simd::reduce16_ps(acc));
    for (int j = 0; j < 16; ++j) {
        for (int k = c; k < cols; ++k) sums[j] += wbuf[size_t(j) * cols + k] * x[k];  // tail when cols % 16 != 0
        y[j] = sums[j];
    }
}

}  // namespace

void matmul_avx512(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, thread_pool& pool) {
    const int rows = int(w.rows), cols = int(w.cols);
    const int n_tasks = (rows + rows_per_task - 1) / rows_per_task;
    std::vector<std::vector<float>> scratch(size_t(pool.size()));
    pool.parallel_for(size_t(n_tasks), [&](size_t task, int thread) {
        const int r0 = int(task) * rows_per_task, nr = std::min(rows_per_task, rows - r0);
        std::vector<float>& wbuf = scratch[size_t(thread)];  // [16][cols] f32
        wbuf.assign(size_t(rows_per_task) * cols, 0.f);
        for (int j = 0; j < nr; ++j) convert_row(w, r0 + j, &wbuf[size_t(j) * cols]);
        float out[16];
        for (int i = 0; i < n; ++i) {
            dot16(wbuf.data(), cols, x + size_t(i) * cols, out);
            float* yi = y + size_t(i) * rows + r0;
            for (int j = 0; j < nr; ++j) yi[j] = out[j] + (bias && bias->data ? read_scalar(*bias, r0 + j) : 0.f);
        }
    });
}

}  // namespace smartkv

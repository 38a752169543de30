// y = x · W^T for F32/F16/BF16 weights on AVX2 + FMA + F16C CPUs (no AVX-512).
//
// Work is split over blocks of 8 output rows. Each task converts its 8 weight
// rows to f32 once (8 x cols floats on the stack) and serves every row of x
// from them: prefill (many rows of x) is then bound by FMAs, decode (one row)
// streams the weights once. The inner tile is 4 weight rows x 2 rows of x = 8
// accumulators, 6 loads per 8 FMAs, reduced together with one reduce8_ps.
//
// No std:: containers here: their inline members would be weak symbols shared
// with the AVX-512 objects, and the linker may keep either copy
// (kernels/test/simd-link-check.sh).
#include <immintrin.h>

#include <cstring>

#include "../cpu/simd-avx2.h"
#include "../cpu/thread-pool.h"
#include "smartkv/half.h"
#include "smartkv/model.h"

namespace smartkv {

namespace {

constexpr int rows_per_task = 8;
constexpr int max_stack_cols = 2048;  // 64 KB of stack per task at most

void convert_row(const tensor_view& w, int64_t row, float* out) {
    const int64_t cols = w.cols;
    switch (w.dtype) {
        case weight_dtype::f32:
            std::memcpy(out, static_cast<const float*>(w.data) + row * cols, size_t(cols) * 4);
            break;
        case weight_dtype::f16: {
            const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * cols;
            for (int64_t c = 0; c < cols; c += 8) _mm256_storeu_ps(out + c, simd2::load_f16x8(src + c));
            break;
        }
        case weight_dtype::bf16: {
            const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * cols;
            for (int64_t c = 0; c < cols; c += 8) {
                const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c)));
                _mm256_storeu_ps(out + c, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
            }
            break;
        }
    }
}

float bias_at(const tensor_view* bias, int64_t i) {
    if (!bias || !bias->data) return 0.f;
    switch (bias->dtype) {
        case weight_dtype::f16: return half_to_float(static_cast<const uint16_t*>(bias->data)[i]);
        case weight_dtype::bf16: return bits_to_float(uint32_t(static_cast<const uint16_t*>(bias->data)[i]) << 16);
        default: return static_cast<const float*>(bias->data)[i];
    }
}

// out[r * 2 + i] = w row r · x row i, for r < 4, i < 2 (x1 may equal x0).
inline void tile4x2(const float* w, int cols, const float* x0, const float* x1, float out[8]) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    const size_t stride = size_t(cols);
    for (int c = 0; c < cols; c += 8) {
        const __m256 a = _mm256_loadu_ps(x0 + c), b = _mm256_loadu_ps(x1 + c);
        for (int r = 0; r < 4; ++r) {
            const __m256 wr = _mm256_loadu_ps(w + r * stride + c);
            acc[r * 2] = _mm256_fmadd_ps(wr, a, acc[r * 2]);
            acc[r * 2 + 1] = _mm256_fmadd_ps(wr, b, acc[r * 2 + 1]);
        }
    }
    _mm256_storeu_ps(out, simd2::reduce8_ps(acc));
}

void run_block(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, int r0, float* wbuf) {
    const int rows = int(w.rows), cols = int(w.cols);
    const int nr = rows - r0 < rows_per_task ? rows - r0 : rows_per_task;
    std::memset(wbuf, 0, sizeof(float) * size_t(rows_per_task) * cols);  // rows past nr stay zero
    for (int j = 0; j < nr; ++j) convert_row(w, r0 + j, wbuf + size_t(j) * cols);
    float b[rows_per_task];
    for (int j = 0; j < nr; ++j) b[j] = bias_at(bias, r0 + j);
    for (int i = 0; i < n; i += 2) {
        const float* x0 = x + size_t(i) * cols;
        const float* x1 = i + 1 < n ? x0 + cols : x0;
        for (int half = 0; half < rows_per_task; half += 4) {
            float out[8];
            tile4x2(wbuf + size_t(half) * cols, cols, x0, x1, out);
            for (int r = 0; r < 4 && half + r < nr; ++r) {
                y[size_t(i) * rows + r0 + half + r] = out[r * 2] + b[half + r];
                if (i + 1 < n) y[size_t(i + 1) * rows + r0 + half + r] = out[r * 2 + 1] + b[half + r];
            }
        }
    }
}

}  // namespace

// False when the shape needs the portable path (cols not a multiple of 8).
bool matmul_avx2(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, thread_pool& pool) {
    if (w.cols % 8 != 0) return false;
    const int n_tasks = int((w.rows + rows_per_task - 1) / rows_per_task);
    pool.parallel_for(size_t(n_tasks), [&](size_t task, int) {
        const size_t floats = size_t(rows_per_task) * size_t(w.cols);
        if (w.cols <= max_stack_cols) {
            float wbuf[rows_per_task * max_stack_cols];  // [8][cols] f32 weight rows of this block
            run_block(x, n, w, bias, y, int(task) * rows_per_task, wbuf);
        } else {
            float* wbuf = new float[floats];  // [8][cols]
            run_block(x, n, w, bias, y, int(task) * rows_per_task, wbuf);
            delete[] wbuf;
        }
    });
    return true;
}

}  // namespace smartkv

#include <algorithm>
#include <cmath>

#include "../cpu/thread-pool.h"
#include "smartkv/half.h"
#include "smartkv/model.h"

namespace smartkv {

namespace {
float element(const tensor_view& t, int64_t i) {
    switch (t.dtype) {
        case weight_dtype::f16: return half_to_float(static_cast<const uint16_t*>(t.data)[i]);
        case weight_dtype::bf16: return bits_to_float(uint32_t(static_cast<const uint16_t*>(t.data)[i]) << 16);
        default: return static_cast<const float*>(t.data)[i];
    }
}
}  // namespace

void matmul_avx512(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, thread_pool& pool);
bool avx512_path_available(int head_dim);  // attend-avx512.cc: true when the CPU has AVX-512/VNNI/F16C
bool matmul_avx2(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, thread_pool& pool);
bool avx2_path_available(int head_dim);  // attend-avx2.cc: true when the CPU has AVX2/FMA/F16C

void matmul(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, thread_pool& pool) {
    static const bool avx512 = avx512_path_available(64);
    static const bool avx2 = avx2_path_available(64);
    if (avx512) return matmul_avx512(x, n, w, bias, y, pool);
    if (avx2 && matmul_avx2(x, n, w, bias, y, pool)) return;
    // Portable fallback for CPUs without AVX2.
    pool.parallel_for(size_t(w.rows), [&](size_t r, int) {
        for (int i = 0; i < n; ++i) {
            float s = bias && bias->data ? element(*bias, int64_t(r)) : 0.f;
            for (int64_t c = 0; c < w.cols; ++c) s += element(w, int64_t(r) * w.cols + c) * x[size_t(i) * w.cols + c];
            y[size_t(i) * w.rows + r] = s;
        }
    });
}

model_runtime::model_runtime(model_config cfg, model_weights w, int n_threads)
    : cfg_(std::move(cfg)), w_(std::move(w)), pool_(std::make_unique<thread_pool>(n_threads)) {}

model_runtime::~model_runtime() = default;

void model_runtime::embed(const int32_t* tokens, int n, float* x) const {
    const int d = cfg_.d_model;
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < d; ++c) x[size_t(i) * d + c] = element(w_.embed, int64_t(tokens[i]) * d + c);
}

// y = x / sqrt(mean(x^2) + eps) * weight, in float as Hugging Face does.
void model_runtime::rms_norm(const float* x, int n, const tensor_view& w, float* y) const {
    const int d = cfg_.d_model;
    for (int i = 0; i < n; ++i) {
        const float* xi = x + size_t(i) * d;
        float ss = 0.f;
        for (int c = 0; c < d; ++c) ss += xi[c] * xi[c];
        const float inv = 1.f / std::sqrt(ss / float(d) + cfg_.rms_eps);
        for (int c = 0; c < d; ++c) y[size_t(i) * d + c] = element(w, c) * (xi[c] * inv);
    }
}

// Rotate-half RoPE: dims i and i + D/2 form a pair (Hugging Face layout).
void model_runtime::rope(float* v, int n, int heads, const int32_t* positions) const {
    const int D = cfg_.head_dim, half = D / 2;
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < half; ++j) {
            const float angle = float(positions[i]) * cfg_.rope_inv_freq[size_t(j)];
            const float c = std::cos(angle), s = std::sin(angle);
            for (int h = 0; h < heads; ++h) {
                float* row = v + (size_t(i) * heads + h) * D;
                const float a = row[j], b = row[j + half];
                row[j] = a * c - b * s;
                row[j + half] = b * c + a * s;
            }
        }
}

void model_runtime::pre_attention(int layer, const float* x, const int32_t* positions, int n, float* q, float* k,
                                  float* v) {
    const layer_weights& L = w_.layers[size_t(layer)];
    h_.resize(size_t(n) * cfg_.d_model);
    rms_norm(x, n, L.attn_norm, h_.data());
    matmul(h_.data(), n, L.wq, L.bq.data ? &L.bq : nullptr, q, *pool_);
    matmul(h_.data(), n, L.wk, L.bk.data ? &L.bk : nullptr, k, *pool_);
    matmul(h_.data(), n, L.wv, L.bv.data ? &L.bv : nullptr, v, *pool_);
    rope(q, n, cfg_.n_heads, positions);
    rope(k, n, cfg_.n_kv_heads, positions);
}

void model_runtime::post_attention(int layer, const float* attn, int n, float* x) {
    const layer_weights& L = w_.layers[size_t(layer)];
    const int d = cfg_.d_model, f = cfg_.d_ff;
    h_.resize(size_t(n) * std::max(d, f));
    gate_.resize(size_t(n) * f);
    up_.resize(size_t(n) * f);
    matmul(attn, n, L.wo, nullptr, h_.data(), *pool_);
    for (size_t i = 0; i < size_t(n) * d; ++i) x[i] += h_[i];
    rms_norm(x, n, L.mlp_norm, h_.data());
    matmul(h_.data(), n, L.w_gate, nullptr, gate_.data(), *pool_);
    matmul(h_.data(), n, L.w_up, nullptr, up_.data(), *pool_);
    for (size_t i = 0; i < size_t(n) * f; ++i) {
        const float g = gate_[i];
        gate_[i] = g / (1.f + std::exp(-g)) * up_[i];  // silu(gate) * up
    }
    matmul(gate_.data(), n, L.w_down, nullptr, h_.data(), *pool_);
    for (size_t i = 0; i < size_t(n) * d; ++i) x[i] += h_[i];
}

void model_runtime::logits(const float* x, int n, float* out) {
    h_.resize(size_t(n) * cfg_.d_model);
    rms_norm(x, n, w_.final_norm, h_.data());
    matmul(h_.data(), n, w_.lm_head, nullptr, out, *pool_);
}

}  // namespace smartkv

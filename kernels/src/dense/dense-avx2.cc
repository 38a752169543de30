// Dense decode attention with AVX2/FMA/F16C, for CPUs without AVX-512: the
// structure of dense-attention.cc with 8-lane vectors. One task per
// (kv-head, context split) keeps an online-softmax state for the group of
// q-heads sharing the kv-head, so every K and V element is loaded and
// converted once per tile and used by the whole group.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../cpu/simd-avx2.h"
#include "../cpu/thread-pool.h"
#include "dense-attention.h"

namespace smartkv {

namespace {

using namespace simd2;

constexpr int tile = 8;  // tokens per softmax update
constexpr int max_group = 16;

template <bool F16>
inline __m256 load8(const void* base, size_t i) {
    if constexpr (F16) {
        return load_f16x8(static_cast<const uint16_t*>(base) + i);
    } else {
        return _mm256_loadu_ps(static_cast<const float*>(base) + i);
    }
}

struct split_state {
    float m[max_group], l[max_group];
    std::vector<float> acc;  // [group][head_dim]
};

// Scores of the tile's tokens for the group: s[g][i]. The 8 tokens' dot
// products run as 8 independent FMA chains (one latency chain per token would
// stall), reduced by one transpose-add. A group larger than 1 converts the
// tile's keys to floats once (kf) and reads them from L1 for every query.
template <bool F16, int D, int GC>
inline void scores8(const void* k, size_t row0, const float* q, int G_run, int n, float (*s)[tile]) {
    const int G = GC ? GC : G_run;
    alignas(32) float kf[GC == 1 ? 1 : tile * D];  // [tile][D] converted keys
    if constexpr (GC != 1) {
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < D / 8; ++c) _mm256_store_ps(kf + i * D + 8 * c, load8<F16>(k, row0 + size_t(i) * D + 8 * c));
    }
    for (int g = 0; g < G; ++g) {
        __m256 part[tile];
        for (int i = 0; i < tile; ++i) part[i] = _mm256_setzero_ps();
        for (int c = 0; c < D / 8; ++c) {
            const __m256 qc = _mm256_loadu_ps(q + size_t(g) * D + 8 * c);
            auto token = [&](int i) {
                const __m256 kc = GC == 1 ? load8<F16>(k, row0 + size_t(i) * D + 8 * c) : _mm256_load_ps(kf + i * D + 8 * c);
                part[i] = _mm256_fmadd_ps(kc, qc, part[i]);
            };
            if (n == tile) {
                for (int i = 0; i < tile; ++i) token(i);
            } else {
                for (int i = 0; i < n; ++i) token(i);
            }
        }
        _mm256_store_ps(s[g], reduce8_ps(part));
    }
}

// Online softmax over one tile for every query of the group: s becomes the
// weights, the state is rescaled.
template <int D>
inline void softmax8(float (*s)[tile], int G, int n, split_state& st) {
    const __m256 valid = _mm256_castsi256_ps(first_lanes(n));
    const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int g = 0; g < G; ++g) {
        const __m256 x = _mm256_blendv_ps(neg_inf, _mm256_load_ps(s[g]), valid);
        const float mx = std::max(st.m[g], hmax8(x));
        const float alpha = std::exp(st.m[g] - mx);
        st.m[g] = mx;
        const __m256 p = exp8(_mm256_sub_ps(x, _mm256_set1_ps(mx)));
        _mm256_store_ps(s[g], p);
        st.l[g] = st.l[g] * alpha + hsum8(p);
        if (alpha != 1.f) {
            float* acc = &st.acc[size_t(g) * D];
            for (int d = 0; d < D; d += 8) _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), _mm256_set1_ps(alpha)));
        }
    }
}

// acc[g] += sum_i s[g][i] * v_i over one tile, CH vectors of dims at a time
// with the group's accumulators in registers across the tile's tokens.
template <bool F16, int D, int GC>
inline void values8(const void* v, size_t row0, int G_run, int n, const float (*s)[tile], split_state& st) {
    const int G = GC ? GC : G_run;
    constexpr int CH = GC == 1 ? 8 : GC == 2 ? 4 : GC == 4 ? 2 : 1;  // <= 8-12 accumulators
    constexpr int C = std::min(CH, D / 8);
    constexpr int NG = GC ? GC : max_group;
    for (int d0 = 0; d0 < D; d0 += 8 * C) {
        __m256 acc[NG][C];
        for (int g = 0; g < G; ++g)
            for (int c = 0; c < C; ++c) acc[g][c] = _mm256_loadu_ps(&st.acc[size_t(g) * D + d0 + 8 * c]);
        auto token = [&](int i) {
            for (int c = 0; c < C; ++c) {
                const __m256 x = load8<F16>(v, row0 + size_t(i) * D + d0 + 8 * c);
                for (int g = 0; g < G; ++g) acc[g][c] = _mm256_fmadd_ps(_mm256_broadcast_ss(&s[g][i]), x, acc[g][c]);
            }
        };
        if (n == tile) {  // a constant trip count: unrolled without a compare per token
            for (int i = 0; i < tile; ++i) token(i);
        } else {
            for (int i = 0; i < n; ++i) token(i);
        }
        for (int g = 0; g < G; ++g)
            for (int c = 0; c < C; ++c) _mm256_storeu_ps(&st.acc[size_t(g) * D + d0 + 8 * c], acc[g][c]);
    }
}

template <bool F16, int D, int GC>
void dense_task_d(const dense_problem& p, int head, int t0, int t1, split_state& st) {
    const int G = p.n_q_heads / p.n_kv_heads;
    const float scale = 1.f / std::sqrt(float(D));
    const size_t head_off = size_t(head) * p.n_ctx * D;
    alignas(32) float q[max_group * D];
    for (int g = 0; g < G; ++g)
        for (int d = 0; d < D; ++d) q[size_t(g) * D + d] = p.q[(size_t(head) * G + g) * D + d] * scale;
    st.acc.assign(size_t(G) * D, 0.f);
    for (int g = 0; g < G; ++g) st.m[g] = -std::numeric_limits<float>::infinity(), st.l[g] = 0.f;
    alignas(32) float s[max_group][tile];
    for (int t = t0; t < t1; t += tile) {
        const int n = std::min(tile, t1 - t);
        const size_t row0 = head_off + size_t(t) * D;
        scores8<F16, D, GC>(p.k, row0, q, G, n, s);
        softmax8<D>(s, G, n, st);
        values8<F16, D, GC>(p.v, row0, G, n, s, st);
    }
}

template <bool F16, int D>
void dense_task_g(const dense_problem& p, int head, int t0, int t1, split_state& st) {
    switch (p.n_q_heads / p.n_kv_heads) {
        case 1: return dense_task_d<F16, D, 1>(p, head, t0, t1, st);
        case 2: return dense_task_d<F16, D, 2>(p, head, t0, t1, st);
        case 4: return dense_task_d<F16, D, 4>(p, head, t0, t1, st);
        case 8: return dense_task_d<F16, D, 8>(p, head, t0, t1, st);
        default: return dense_task_d<F16, D, 0>(p, head, t0, t1, st);
    }
}

// Any head_dim that is a multiple of 8: plain loops, one token at a time.
template <bool F16>
void dense_task_generic(const dense_problem& p, int head, int t0, int t1, split_state& st) {
    const int G = p.n_q_heads / p.n_kv_heads, D = p.head_dim;
    const float scale = 1.f / std::sqrt(float(D));
    const size_t head_off = size_t(head) * p.n_ctx * D;
    st.acc.assign(size_t(G) * D, 0.f);
    for (int g = 0; g < G; ++g) st.m[g] = -std::numeric_limits<float>::infinity(), st.l[g] = 0.f;
    for (int t = t0; t < t1; ++t) {
        const size_t row = head_off + size_t(t) * D;
        for (int g = 0; g < G; ++g) {
            const float* qg = p.q + (size_t(head) * G + g) * D;
            __m256 dot = _mm256_setzero_ps();
            for (int d = 0; d < D; d += 8) dot = _mm256_fmadd_ps(load8<F16>(p.k, row + d), _mm256_loadu_ps(qg + d), dot);
            const float sc = hsum8(dot) * scale;
            const float mx = std::max(st.m[g], sc), alpha = std::exp(st.m[g] - mx), w = std::exp(sc - mx);
            st.m[g] = mx;
            st.l[g] = st.l[g] * alpha + w;
            float* acc = &st.acc[size_t(g) * D];
            for (int d = 0; d < D; d += 8)
                _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(_mm256_set1_ps(w), load8<F16>(p.v, row + d),
                                                          _mm256_mul_ps(_mm256_loadu_ps(acc + d), _mm256_set1_ps(alpha))));
        }
    }
}

template <bool F16>
void dense_task(const dense_problem& p, int head, int t0, int t1, split_state& st) {
    switch (p.head_dim) {
        case 64: return dense_task_g<F16, 64>(p, head, t0, t1, st);
        case 128: return dense_task_g<F16, 128>(p, head, t0, t1, st);
        case 256: return dense_task_g<F16, 256>(p, head, t0, t1, st);
        default: return dense_task_generic<F16>(p, head, t0, t1, st);
    }
}

template <bool F16>
void dense_attention(const dense_problem& p, thread_pool& pool) {
    const int H = p.n_kv_heads, G = p.n_q_heads / p.n_kv_heads, D = p.head_dim;
    const int want = pool.size() * 4;
    const int splits = std::max(1, std::min((want + H - 1) / H, p.n_ctx / 256));
    std::vector<split_state> states(size_t(H) * splits);
    pool.parallel_for(size_t(H) * splits, [&](size_t task, int) {
        const int head = int(task) / splits, s = int(task) % splits;
        const int t0 = int(int64_t(p.n_ctx) * s / splits), t1 = int(int64_t(p.n_ctx) * (s + 1) / splits);
        dense_task<F16>(p, head, t0, t1, states[task]);
    });
    for (int h = 0; h < H; ++h)
        for (int g = 0; g < G; ++g) {
            float M = -std::numeric_limits<float>::infinity(), L = 0.f;
            for (int s = 0; s < splits; ++s) M = std::max(M, states[size_t(h) * splits + s].m[g]);
            float* out = p.out + (size_t(h) * G + g) * D;
            std::fill(out, out + D, 0.f);
            for (int s = 0; s < splits; ++s) {
                const split_state& st = states[size_t(h) * splits + s];
                const float w = std::exp(st.m[g] - M);
                L += w * st.l[g];
                for (int d = 0; d < D; ++d) out[d] += w * st.acc[size_t(g) * D + d];
            }
            for (int d = 0; d < D; ++d) out[d] /= L;
        }
}

}  // namespace

void dense_attention_f32_avx2(const dense_problem& p, thread_pool& pool) { dense_attention<false>(p, pool); }
void dense_attention_f16_avx2(const dense_problem& p, thread_pool& pool) { dense_attention<true>(p, pool); }

}  // namespace smartkv

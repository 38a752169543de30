// Dense decode attention with AVX-512 (see dense-attention.h; dense-avx2.cc is
// the same structure for CPUs without AVX-512). One task per
// (kv-head, context split); each task keeps an online-softmax state for the
// group of q-heads that share the kv-head, so every K and V element is loaded
// and converted once and used by the whole group.
#include "dense-attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../cpu/simd-math.h"
#include "../cpu/thread-pool.h"

namespace smartkv {

namespace {

constexpr int tile = 16;      // tokens per softmax update
constexpr int max_group = 16;

template <bool F16>
inline __m512 load16(const void* base, size_t i) {
    if constexpr (F16) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i)));
    } else {
        return _mm512_loadu_ps(static_cast<const float*>(base) + i);
    }
}

struct split_state {
    float m[max_group], l[max_group];
    std::vector<float> acc;  // [group][head_dim]
};

// Any head_dim that is a multiple of 16: the plain loop.
template <bool F16>
void dense_task_generic(const dense_problem& p, int head, int t0, int t1, split_state& st) {
    const int G = p.n_q_heads / p.n_kv_heads, D = p.head_dim;
    const float scale = 1.f / std::sqrt(float(D));
    const size_t head_off = size_t(head) * p.n_ctx * D;
    std::vector<float> q(size_t(G) * D);
    for (int g = 0; g < G; ++g)
        for (int d = 0; d < D; ++d) q[size_t(g) * D + d] = p.q[(size_t(head) * G + g) * D + d] * scale;
    st.acc.assign(size_t(G) * D, 0.f);
    for (int g = 0; g < G; ++g) st.m[g] = -std::numeric_limits<float>::infinity(), st.l[g] = 0.f;
    alignas(64) float s[max_group][tile];
    for (int t = t0; t < t1; t += tile) {
        const int n = std::min(tile, t1 - t);
        for (int i = 0; i < n; ++i) {
            __m512 dot[max_group];
            for (int g = 0; g < G; ++g) dot[g] = _mm512_setzero_ps();
            const size_t row = head_off + size_t(t + i) * D;
            for (int d = 0; d < D; d += 16) {
                const __m512 k = load16<F16>(p.k, row + d);
                for (int g = 0; g < G; ++g) dot[g] = _mm512_fmadd_ps(k, _mm512_loadu_ps(&q[size_t(g) * D + d]), dot[g]);
            }
            for (int g = 0; g < G; ++g) s[g][i] = _mm512_reduce_add_ps(dot[g]);
        }
        for (int g = 0; g < G; ++g) {
            float mx = st.m[g];
            for (int i = 0; i < n; ++i) mx = std::max(mx, s[g][i]);
            const float alpha = std::exp(st.m[g] - mx);
            st.m[g] = mx;
            st.l[g] *= alpha;
            float* acc = &st.acc[size_t(g) * D];
            for (int d = 0; d < D; ++d) acc[d] *= alpha;
            for (int i = 0; i < n; ++i) {
                s[g][i] = std::exp(s[g][i] - mx);
                st.l[g] += s[g][i];
            }
        }
        for (int i = 0; i < n; ++i) {
            const size_t row = head_off + size_t(t + i) * D;
            for (int d = 0; d < D; d += 16) {
                const __m512 v = load16<F16>(p.v, row + d);
                for (int g = 0; g < G; ++g) {
                    float* a = &st.acc[size_t(g) * D + d];
                    _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(s[g][i]), v, _mm512_loadu_ps(a)));
                }
            }
        }
    }
}

// Scores of 16 tokens [t, t+16) for the group: s[g][i]. Each key row is
// converted once; every query takes one FMA per 16 dims and the 16 partial
// vectors of a query fold in one transpose-reduction (no horizontal sum per
// token).
template <bool F16, int D, int GC>
inline void scores16(const void* k, size_t row0, const float* q, int G_run, int n, float (*s)[tile]) {
    const int G = GC ? GC : G_run;
    alignas(64) float part[max_group][tile][16];  // [g][token] partial sums
    auto token = [&](int i, bool valid) {
        __m512 kc[D / 16];
        for (int c = 0; c < D / 16; ++c) kc[c] = valid ? load16<F16>(k, row0 + size_t(i) * D + 16 * c) : _mm512_setzero_ps();
        for (int g = 0; g < G; ++g) {
            __m512 dot = _mm512_mul_ps(kc[0], _mm512_loadu_ps(q + size_t(g) * D));
            for (int c = 1; c < D / 16; ++c) dot = _mm512_fmadd_ps(kc[c], _mm512_loadu_ps(q + size_t(g) * D + 16 * c), dot);
            _mm512_store_ps(part[g][i], dot);
        }
    };
    if (n == tile) {
        for (int i = 0; i < tile; ++i) token(i, true);
    } else {
        for (int i = 0; i < tile; ++i) token(i, i < n);
    }
    for (int g = 0; g < G; ++g) {
        __m512 v[tile];
        for (int i = 0; i < tile; ++i) v[i] = _mm512_load_ps(part[g][i]);
        _mm512_store_ps(s[g], simd::reduce16_ps(v));
    }
}

// Online softmax over one tile for every query of the group: s becomes the
// weights, the state is rescaled.
template <int D>
inline void softmax16(float (*s)[tile], int G, int n, split_state& st) {
    const __mmask16 valid = n == tile ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    for (int g = 0; g < G; ++g) {
        const __m512 x = _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), valid, _mm512_load_ps(s[g]));
        const float mx = std::max(st.m[g], _mm512_reduce_max_ps(x));
        const float alpha = std::exp(st.m[g] - mx);
        st.m[g] = mx;
        const __m512 p = simd::exp16(_mm512_sub_ps(x, _mm512_set1_ps(mx)));
        _mm512_store_ps(s[g], p);
        st.l[g] = st.l[g] * alpha + _mm512_reduce_add_ps(p);
        if (alpha != 1.f) {
            float* acc = &st.acc[size_t(g) * D];
            for (int d = 0; d < D; d += 16) _mm512_storeu_ps(acc + d, _mm512_mul_ps(_mm512_loadu_ps(acc + d), _mm512_set1_ps(alpha)));
        }
    }
}

// acc[g] += sum_i s[g][i] * v_i over one tile, 16 dims at a time with the
// group's accumulators in registers across the tile's tokens. GC: the group
// size when known at compile time (with a run-time count GCC 12 keeps the
// accumulators in memory), 0 otherwise.
template <bool F16, int D, int GC>
inline void values16(const void* v, size_t row0, int G_run, int n, const float (*s)[tile], split_state& st) {
    const int G = GC ? GC : G_run;
    for (int c = 0; c < D / 16; ++c) {
        __m512 acc[max_group];
        for (int g = 0; g < G; ++g) acc[g] = _mm512_loadu_ps(&st.acc[size_t(g) * D + 16 * c]);
        auto token = [&](int i) {
            const __m512 x = load16<F16>(v, row0 + size_t(i) * D + 16 * c);
            for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(s[g][i]), x, acc[g]);
        };
        if (n == tile) {  // a constant trip count: unrolled without a compare per token
            for (int i = 0; i < tile; ++i) token(i);
        } else {
            for (int i = 0; i < n; ++i) token(i);
        }
        for (int g = 0; g < G; ++g) _mm512_storeu_ps(&st.acc[size_t(g) * D + 16 * c], acc[g]);
    }
}

template <bool F16, int D, int GC>
void dense_task_d(const dense_problem& p, int head, int t0, int t1, split_state& st) {
    const int G = p.n_q_heads / p.n_kv_heads;
    const float scale = 1.f / std::sqrt(float(D));
    const size_t head_off = size_t(head) * p.n_ctx * D;
    alignas(64) float q[max_group * D];
    for (int g = 0; g < G; ++g)
        for (int d = 0; d < D; ++d) q[size_t(g) * D + d] = p.q[(size_t(head) * G + g) * D + d] * scale;
    st.acc.assign(size_t(G) * D, 0.f);
    for (int g = 0; g < G; ++g) st.m[g] = -std::numeric_limits<float>::infinity(), st.l[g] = 0.f;
    alignas(64) float s[max_group][tile];
    for (int t = t0; t < t1; t += tile) {
        const int n = std::min(tile, t1 - t);
        const size_t row0 = head_off + size_t(t) * D;
        scores16<F16, D, GC>(p.k, row0, q, G, n, s);
        softmax16<D>(s, G, n, st);
        values16<F16, D, GC>(p.v, row0, G, n, s, st);
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

void dense_attention_f32_avx512(const dense_problem& p, thread_pool& pool) { dense_attention<false>(p, pool); }
void dense_attention_f16_avx512(const dense_problem& p, thread_pool& pool) { dense_attention<true>(p, pool); }

}  // namespace smartkv

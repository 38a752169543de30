// AVX2 fast path for one block of attention (contract in attend-kernels.h),
// for CPUs without AVX-512 (this project's VM moved to an AMD Zen 3 host on
// 2026-12-02: AVX2, FMA, F16C, no AVX-512, no VNNI).
//
// Keys (int8/4/2): the query is int8 and q.k is an integer dot product.
// 4- and 2-bit codes are unpacked with a shift and an AND per 32 codes and
// multiplied with vpmaddubsw (u8 code x s8 query, pairs summed to s16; a sum
// of at most 8 such products stays below 2^15 for codes <= 15), then one
// vpmaddwd against ones widens to int32. 8-bit codes would saturate
// vpmaddubsw (2*255*127 > 2^15), so they are widened to 16 bits and take
// vpmaddwd directly. Scales and zero points apply once per token after the
// integer sum, as in the AVX-512 path:
//   q.k = s_q * (s_k * sum_d q8_d*code_d + z_k * sum_d q8_d)
//
// Values (int8/4/2), for one query and for query tiles alike (GQA groups,
// prefill rows): integer too. Per block and query the weights w_t = p_t*s_t
// are quantised to 16 bits with one block scale, centred to int16
// (w ~= ws*(wq + 32768)); the codes of two tokens are interleaved as 16-bit
// pairs, so one vpmaddwd folds two tokens into 8 channels' int32 accumulators:
//
//   rows t, t+1 ─widen─> [c_t c_t+1] per dword (16-bit each)
//   acc_int += (wq_t, wq_t+1) . (c_t, c_t+1)      vpmaddwd + vpaddd
//   csum    += (c_t, c_t+1)                       vpaddw, shared by the tile
//   acc_out += ws * (acc_int + 32768*csum)   (flushed every 32 tokens, each
//                                             segment of 32 with its own ws)
//
// The code pairs are built once per token pair and 8 or 16 bytes and used by
// every query of the tile. The weight rounding error is at most
// ws/2 = max_t w_t / 131070 per token, the bound of the AVX-512 path (15-bit
// weights, 2x that, failed the 1e-4 float64-reference checks: 1.1-1.7e-4).
//
// KIVI groups (2- and 4-bit): keys carry a scale s_d and minimum z_d per
// channel for the whole 32-token group, so
//   q.k_t = sum_d (q_d*s_d) * code_t,d + sum_d q_d*z_d
// the scales fold into the query once per group (qs), the minima into one
// bias per query, and the codes become floats that meet qs in FMAs: float
// arithmetic like the reference (kivi_scores). KIVI values are per-token
// asymmetric rows: the integer value path above, with asymmetric parameters.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "attend-kernels.h"
#include "simd-avx2.h"

namespace smartkv {

namespace {

using namespace simd2;

constexpr int max_tile = 16;
// Value weights get one scale per segment of this many tokens, and the int32
// value accumulators are flushed to float at each segment's end: blocks of
// any size keep the weight precision of a 32-token block (blocks of 256 with
// one scale failed the 1e-4 float64-reference checks: 1.1-1.6e-4).
constexpr int segment_tokens = 32;

// Scales and zero points of 8 consecutive slots [t0, t0+n) as vectors.
// Parameters are [T][n_params] halves: one (symmetric) or two (asymmetric).
inline void params8(kv_format f, quant_mode mode, const half_bits* params, int t0, int n, __m256& scale, __m256& zero) {
    const int np = mode == quant_mode::symmetric ? 1 : 2;
    alignas(32) half_bits buf[16] = {};
    const half_bits* src = params + size_t(np) * t0;
    if (n < 8) {
        std::memcpy(buf, src, size_t(n * np) * sizeof(half_bits));
        src = buf;
    }
    if (np == 1) {
        scale = load_f16x8(src);
        zero = _mm256_mul_ps(scale, _mm256_set1_ps(-0.5f * float(format_max_code(f))));
        return;
    }
    const __m256 a = load_f16x8(src), b = load_f16x8(src + 8);  // [s0 z0 s1 z1 ...], [s4 z4 ...]
    scale = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    zero = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
}

struct tile_view {
    int q0, n;  // queries [q0, q0+n) of the head_query
};

// The int8 query of one head in the form the key dots need: 16-bit lanes for
// 8-bit codes (vpmaddwd), raw s8 bytes for 4- and 2-bit codes (vpmaddubsw).
template <int D, int B>
struct key_query {
    static constexpr int n = B == 8 ? D / 16 : D / 32;
    __m256i v[n];
    explicit key_query(const int8_t* q8) {
        for (int c = 0; c < n; ++c) {
            if constexpr (B == 8) {
                v[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q8 + 16 * c)));
            } else {
                v[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * c));
            }
        }
    }
};

// One planar-packed key row in the form key_dot multiplies: for 8-bit codes
// the D codes widened to 16 bits (D/16 vectors); for 4- and 2-bit codes the
// D codes as bytes (D/32 vectors), vector c holding dims [32c, 32c+32) like
// key_query's v[c]. Plane p of a b-bit row holds dims [p*P, (p+1)*P) at bit
// offset b*p of bytes [0, P) (formats.h).
template <int D, int B>
inline void key_codes(const uint8_t* row, __m256i* out) {
    constexpr int P = D * B / 8;
    if constexpr (B == 8) {
        for (int c = 0; c < D / 16; ++c) out[c] = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * c)));
    } else if constexpr (P >= 32) {
        const __m256i mask = _mm256_set1_epi8(char((1 << B) - 1));
        for (int j = 0; j < P / 32; ++j) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * j));
            for (int p = 0; p < 8 / B; ++p)
                out[p * (P / 32) + j] = p == 0 ? _mm256_and_si256(x, mask) : _mm256_and_si256(_mm256_srli_epi16(x, B * p), mask);
        }
    } else {
        static_assert(P == 16 && B == 2, "16-byte rows: 2-bit codes of 64 dims");
        // planes 0|1 and 2|3 in the two 128-bit lanes of one broadcast row
        const __m256i mask = _mm256_set1_epi8(3);
        const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
        out[0] = _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), mask);
        out[1] = _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), mask);
    }
}

// sum_d q8_d * code_d of one row in key_codes form, as 8 int32 partial sums.
// 4/2-bit: vpmaddubsw (u8 code x s8 query) into s16 sums: at most 8 products
// of <= 2*15*127 per lane, no saturation; then one vpmaddwd against ones.
template <int D, int B>
inline __m256i key_dot(const __m256i* codes, const key_query<D, B>& q) {
    if constexpr (B == 8) {
        __m256i acc = _mm256_madd_epi16(codes[0], q.v[0]);
        for (int c = 1; c < D / 16; ++c) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(codes[c], q.v[c]));
        return acc;
    } else {
        __m256i s = _mm256_maddubs_epi16(codes[0], q.v[0]);
        for (int c = 1; c < D / 32; ++c) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(codes[c], q.v[c]));
        return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
    }
}

template <int D, int B>
inline __m256i key_partial(const uint8_t* row, const key_query<D, B>& q) {
    __m256i codes[key_query<D, B>::n];
    key_codes<D, B>(row, codes);
    return key_dot<D, B>(codes, q);
}

// Scores of a quantised block for a tile of queries: s[i*T + t] (pre-softmax).
// One query unpacks each row in registers; for a tile (GQA group, prefill
// rows) of 4- or 2-bit codes the 8 rows are unpacked once into a small buffer
// that every query of the tile reads (the rows' bytes come from memory once
// per tile either way; this shares the shifts and masks too). 8-bit rows are
// widened by one load-and-extend per 16 codes, no cheaper from a buffer: each
// query reads the rows itself (sharing cost int8 GQA 37 instead of 24
// instructions per token and query).
template <int D, int B>
void quantized_scores(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                      const tile_view& tv, float* s, int T) {
    constexpr kv_format F = B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    constexpr int P = D * B / 8, V = key_query<D, B>::n;  // L.row == P for a quantised block
    const uint8_t* rows = blk.data + L.k_codes + L.code_offset(head, 0);
    const half_bits* params = reinterpret_cast<const half_bits*>(blk.data + L.k_params + L.param_offset(head, 0));
    for (int t0 = 0; t0 < blk.n_valid; t0 += 8) {
        const int n = std::min(8, blk.n_valid - t0);
        __m256 vscale, vzero;
        params8(F, mode, params, t0, n, vscale, vzero);
        // s = s_q * (s_k * dot + z_k * sum(q8)) for query j of the tile
        const auto store = [&](int j, __m256i* part) {
            const int qi = tv.q0 + j;
            const __m256 sums = _mm256_cvtepi32_ps(reduce8_epi32(part));
            const __m256 v = _mm256_mul_ps(_mm256_set1_ps(q.q8_scale[qi]),
                                           _mm256_fmadd_ps(vscale, sums, _mm256_mul_ps(vzero, _mm256_set1_ps(float(q.q8_sum[qi])))));
            _mm256_maskstore_ps(s + size_t(j) * T + t0, first_lanes(n), v);
        };
        __m256i part[8];
        if (B != 8 && tv.n > 1) {
            __m256i codes[8][V];  // [8 rows][V] unpacked codes, rows past n zero
            for (int i = 0; i < 8; ++i) {
                if (i < n) {
                    key_codes<D, B>(rows + size_t(t0 + i) * P, codes[i]);
                } else {
                    for (int c = 0; c < V; ++c) codes[i][c] = _mm256_setzero_si256();
                }
            }
            for (int j = 0; j < tv.n; ++j) {
                const key_query<D, B> kq(q.q8 + size_t(tv.q0 + j) * D);
                for (int i = 0; i < 8; ++i) part[i] = key_dot<D, B>(codes[i], kq);
                store(j, part);
            }
            continue;
        }
        for (int j = 0; j < tv.n; ++j) {
            const key_query<D, B> kq(q.q8 + size_t(tv.q0 + j) * D);
            if (n == 8) {  // full groups: no compare per token
                for (int i = 0; i < 8; ++i) part[i] = key_partial<D, B>(rows + size_t(t0 + i) * P, kq);
            } else {
                for (int i = 0; i < 8; ++i) part[i] = i < n ? key_partial<D, B>(rows + size_t(t0 + i) * P, kq) : _mm256_setzero_si256();
            }
            store(j, part);
        }
    }
}

// Scores against fp16 keys (the protected window and sinks), with the causal mask.
template <int D>
void fp16_scores(const block_layout& L, const block_ref& blk, int head, const head_query& q, const tile_view& tv,
                 float* s, int T) {
    const uint8_t* rows = blk.data + L.k_codes + L.code_offset(head, 0);
    const int32_t* pos = reinterpret_cast<const int32_t*>(blk.data + L.pos);
    for (int t0 = 0; t0 < blk.n_valid; t0 += 8) {
        const int n = std::min(8, blk.n_valid - t0);
        for (int j = 0; j < tv.n; ++j) {
            const int qi = tv.q0 + j;
            const float* qv = q.q + size_t(qi) * D;
            __m256 part[8];
            for (int i = 0; i < 8; ++i) {
                part[i] = _mm256_setzero_ps();
                if (i >= n) continue;
                const uint8_t* row = rows + size_t(t0 + i) * L.row;
                for (int c = 0; c < D / 8; ++c) part[i] = _mm256_fmadd_ps(load_f16x8(row + 16 * c), _mm256_loadu_ps(qv + 8 * c), part[i]);
            }
            alignas(32) float out[8];
            _mm256_store_ps(out, reduce8_ps(part));
            for (int i = 0; i < n; ++i) {
                const bool masked = blk.needs_mask && pos[t0 + i] > q.row_pos[qi / q.group];
                s[size_t(j) * T + t0 + i] = masked ? -std::numeric_limits<float>::infinity() : out[i];
            }
        }
    }
}

// ---------------------------------------------------------------------------
// KIVI keys (see the header comment).

// Plane p of 8 consecutive code bytes (zero-extended to dwords) as 8 floats.
// 2-bit: one vpermps lookup; the table repeats every 4 entries, so the next
// plane's bit that vpermps also reads (it takes 3 index bits) needs no mask.
// 4-bit: an AND (none for the top plane: nothing above it) and a convert.
template <int B, int p>
inline __m256 kivi_codes8(__m256i x) {
    if constexpr (p > 0) x = _mm256_srli_epi32(x, B * p);
    if constexpr (B == 2) {
        return _mm256_permutevar8x32_ps(_mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 0.f, 1.f, 2.f, 3.f), x);
    } else if constexpr (p == 8 / B - 1) {
        return _mm256_cvtepi32_ps(x);
    } else {
        return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32((1 << B) - 1)));
    }
}

// Calls f(d, codes of dims [d, d+8) as floats) over one planar row: each load
// of 8 bytes serves every plane (plane p holds dims [p*P, (p+1)*P)).
template <int D, int B, class F>
inline void kivi_for_codes(const uint8_t* row, F&& f) {
    constexpr int P = D * B / 8;
    for (int j = 0; j < P; j += 8) {
        const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j)));
        f(j, kivi_codes8<B, 0>(x));
        f(P + j, kivi_codes8<B, 1>(x));
        if constexpr (B == 2) {
            f(2 * P + j, kivi_codes8<B, 2>(x));
            f(3 * P + j, kivi_codes8<B, 3>(x));
        }
    }
}

// sum_d qs_d * code_d of one row as 8 float partial sums (two FMA chains).
template <int D, int B>
inline __m256 kivi_partial(const uint8_t* row, const float* qs) {
    constexpr int P = D * B / 8;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();  // even and odd planes
    for (int j = 0; j < P; j += 8) {
        const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j)));
        a0 = _mm256_fmadd_ps(kivi_codes8<B, 0>(x), _mm256_loadu_ps(qs + j), a0);
        a1 = _mm256_fmadd_ps(kivi_codes8<B, 1>(x), _mm256_loadu_ps(qs + P + j), a1);
        if constexpr (B == 2) {
            a0 = _mm256_fmadd_ps(kivi_codes8<B, 2>(x), _mm256_loadu_ps(qs + 2 * P + j), a0);
            a1 = _mm256_fmadd_ps(kivi_codes8<B, 3>(x), _mm256_loadu_ps(qs + 3 * P + j), a1);
        }
    }
    return _mm256_add_ps(a0, a1);
}

// Scores of a KIVI group for a tile of queries: s[i*T + t]. qs: [tile][D]
// scratch for the scaled queries. One query (MHA decode) dots each row as it
// unpacks it; a tile (GQA group, prefill rows) unpacks 8 rows to floats once
// and every query reads them with one FMA per 8 dims.
template <int D, int B>
void kivi_scores(const block_layout& L, const block_ref& blk, int head, const head_query& q, const tile_view& tv,
                 float* s, int T, float* qs) {
    constexpr kv_format F = B == 4 ? kv_format::int4 : kv_format::int2;
    const uint8_t* rows = blk.data + L.k_codes + L.code_offset(head, 0);
    const half_bits* ch = reinterpret_cast<const half_bits*>(blk.data + L.k_params) + size_t(head) * D * 2;  // [D][2]
    __m256 vbias[max_tile];
    for (int i = 0; i < tv.n; ++i) vbias[i] = _mm256_setzero_ps();
    for (int d = 0; d < D; d += 8) {
        __m256 scale, minimum;  // of channels [d, d+8): the (scale, minimum) pairs read like 8 slots' parameters
        params8(F, quant_mode::asymmetric, ch, d, 8, scale, minimum);
        for (int i = 0; i < tv.n; ++i) {
            const __m256 qd = _mm256_loadu_ps(q.q + size_t(tv.q0 + i) * D + d);
            _mm256_storeu_ps(qs + size_t(i) * D + d, _mm256_mul_ps(qd, scale));
            vbias[i] = _mm256_fmadd_ps(qd, minimum, vbias[i]);
        }
    }
    float bias[max_tile];
    for (int i = 0; i < tv.n; ++i) bias[i] = hsum8(vbias[i]);
    alignas(32) float kb[8][D];  // 8 rows' codes as floats (tiles only)
    for (int t0 = 0; t0 < blk.n_valid; t0 += 8) {
        const int n = std::min(8, blk.n_valid - t0);
        const __m256i lanes = first_lanes(n);
        __m256 part[8];
        if (tv.n == 1) {
            for (int i = 0; i < 8; ++i) part[i] = i < n ? kivi_partial<D, B>(rows + size_t(t0 + i) * L.row, qs) : _mm256_setzero_ps();
            _mm256_maskstore_ps(s + t0, lanes, _mm256_add_ps(reduce8_ps(part), _mm256_set1_ps(bias[0])));
            continue;
        }
        for (int i = 0; i < 8; ++i) {
            if (i < n) {
                kivi_for_codes<D, B>(rows + size_t(t0 + i) * L.row, [&](int d, __m256 c) { _mm256_store_ps(kb[i] + d, c); });
            } else {
                std::fill(kb[i], kb[i] + D, 0.f);
            }
        }
        for (int j = 0; j < tv.n; ++j) {
            const float* qj = qs + size_t(j) * D;
            for (int i = 0; i < 8; ++i) part[i] = _mm256_setzero_ps();
            for (int d = 0; d < D; d += 8) {
                const __m256 qv = _mm256_loadu_ps(qj + d);
                for (int i = 0; i < 8; ++i) part[i] = _mm256_fmadd_ps(_mm256_load_ps(kb[i] + d), qv, part[i]);
            }
            _mm256_maskstore_ps(s + size_t(j) * T + t0, lanes, _mm256_add_ps(reduce8_ps(part), _mm256_set1_ps(bias[j])));
        }
    }
}

// Online-softmax update for one query over the block's scores s[0..n_valid):
// rescales the state and turns s into the weights p (in place). Returns false
// when every score is masked (nothing to add).
inline bool softmax_update(float* s, int n_valid, int D, head_state& st, int qi) {
    __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    int t = 0;
    for (; t + 8 <= n_valid; t += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + t));
    float block_max = hmax8(mx);
    for (; t < n_valid; ++t) block_max = std::max(block_max, s[t]);
    if (block_max == -std::numeric_limits<float>::infinity()) return false;
    const float m_new = std::max(st.m[qi], block_max);
    const float alpha = std::exp(st.m[qi] - m_new);
    st.m[qi] = m_new;
    const __m256 vm = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (t = 0; t < n_valid; t += 8) {
        const __m256i k = first_lanes(n_valid - t);
        const __m256 p = _mm256_and_ps(_mm256_castsi256_ps(k), exp8(_mm256_sub_ps(_mm256_maskload_ps(s + t, k), vm)));
        _mm256_maskstore_ps(s + t, k, p);
        sum = _mm256_add_ps(sum, p);
    }
    st.l[qi] = st.l[qi] * alpha + hsum8(sum);
    st.z[qi] *= alpha;
    if (alpha != 1.f) {
        const __m256 va = _mm256_set1_ps(alpha);
        float* acc = st.acc + size_t(qi) * D;
        for (int d = 0; d < D; d += 8) _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), va));
    }
    return true;
}

// acc += sum_t p_t * v_t for one query against fp16 value rows, 64 dims of
// accumulators in registers at a time.
template <int D>
void fp16_values(const uint8_t* rows, int row_stride, int n_valid, const float* p, float* acc_out) {
    constexpr int C = D < 64 ? D / 8 : 8;
    for (int d0 = 0; d0 < D; d0 += 8 * C) {
        __m256 acc[C];
        for (int c = 0; c < C; ++c) acc[c] = _mm256_loadu_ps(acc_out + d0 + 8 * c);
        for (int t = 0; t < n_valid; ++t) {
            const __m256 w = _mm256_broadcast_ss(p + t);
            const uint8_t* row = rows + size_t(t) * row_stride + 2 * d0;
            for (int c = 0; c < C; ++c) acc[c] = _mm256_fmadd_ps(w, load_f16x8(row + 16 * c), acc[c]);
        }
        for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc_out + d0 + 8 * c, acc[c]);
    }
}

// w[0..n) (all >= 0) -> int16 wq[0..n4) with one offset: w ~= ws * (wq + 32768),
// wq in [-32768, 32767], so the 16 bits give 65536 levels (the rounding error
// is at most ws/2 = max_t w_t / 131070, as in the AVX-512 path). Past n (n4 =
// n rounded up to even) wq = -32768, a weight of 0. Returns ws, 0 when every
// weight is 0.
inline float quantize_weights16(const float* w, int n, int16_t* wq) {
    __m256 mx = _mm256_setzero_ps();
    int t = 0;
    for (; t + 8 <= n; t += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(w + t));
    float wmax = hmax8(mx);
    for (; t < n; ++t) wmax = std::max(wmax, w[t]);
    if (!(wmax > 0.f)) {
        std::fill(wq, wq + ((n + 1) & ~1), int16_t(-32768));
        return 0.f;
    }
    const float inv = 65535.f / wmax;
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(65535.f);
    const __m256i offset = _mm256_set1_epi32(32768);
    for (t = 0; t + 8 <= n; t += 8) {
        const __m256 u = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(w + t), vinv)));
        const __m256i x = _mm256_sub_epi32(_mm256_cvtps_epi32(u), offset);  // round to nearest, then centre
        const __m128i packed = _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(wq + t), packed);
    }
    for (; t < n; ++t) wq[t] = int16_t(long(std::lrintf(std::min(65535.f, std::max(0.f, w[t] * inv)))) - 32768);
    if (n & 1) wq[n] = -32768;
    return wmax / 65535.f;
}

// acc += c . *w, vpmaddwd with its weight operand read from memory: the
// broadcast weight pairs of every query stay in L1 instead of taking one of
// the 16 registers each, which leaves room for 4 queries' accumulators. The
// asm keeps the operand in memory (GCC would load a weight once into a
// register for all planes and spill accumulators instead).
inline void madd_add_mem(__m256i& acc, __m256i c, const __m256i* w) {
    __m256i r;
    asm("vpmaddwd %[w], %[c], %[r]" : [r] "=x"(r) : [c] "x"(c), [w] "m"(*w));
    acc = _mm256_add_epi32(acc, r);
}

// The token-pair loop of values_int over tokens [t0, t1) of one CB-byte
// column: acc[i] = weights . code pairs, csum = sum of the code pairs, from
// zero (zeroed here, not by the caller: GCC zeroes memory with 16-byte
// stores, and reading those as 32-byte vectors defeats store forwarding,
// a stall per accumulator per call). A function of
// its own so that nothing of the caller (the flush's constants, the outer
// loops' state) holds registers here: inlined, GCC 12 kept most of the
// accumulators on the stack (a load and a store each per step).
template <int P, int B, int NQ, int H>
__attribute__((noinline)) void accumulate_pairs(const uint8_t* rows, int t0, int t1, const __m256i* const* wb,
                                                __m256i (&acc_out)[NQ][8 / B][H], __m256i (&csum_out)[8 / B][H]) {
    constexpr int NP = 8 / B;
    const __m256i mask = _mm256_set1_epi16(short((1 << B) - 1));
    __m256i acc[NQ][NP][H], csum[NP][H];
    // Every loop over planes, halves and queries is unrolled before GCC's
    // scalar replacement runs, so the arrays become registers (left to the
    // unroller, the 2-bit loops kept them on the stack: a load and a store
    // per accumulator per step).
    #pragma GCC unroll 16
    for (int p = 0; p < NP; ++p)
        #pragma GCC unroll 16
        for (int h = 0; h < H; ++h) {
            csum[p][h] = _mm256_setzero_si256();
            #pragma GCC unroll 16
            for (int i = 0; i < NQ; ++i) acc[i][p][h] = _mm256_setzero_si256();
        }
    const __m256i* w[NQ];
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) w[i] = wb[i] + t0 / 2;
    for (int t = t0; t < t1; t += 2) {
        const uint8_t* r = rows + size_t(t) * P;
        __m256i x[H];  // (token t, token t+1) code pairs, 16 bits each
        if constexpr (H == 2) {
            const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r)));
            const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + P)));
            x[0] = _mm256_unpacklo_epi16(a, b);
            x[1] = _mm256_unpackhi_epi16(a, b);
        } else {
            const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r)));
            const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r + P)));
            x[0] = _mm256_or_si256(a, _mm256_slli_epi32(b, 16));
        }
        #pragma GCC unroll 16
        for (int h = 0; h < H; ++h)
            #pragma GCC unroll 16
            for (int p = 0; p < NP; ++p) {
                __m256i c;
                if constexpr (B == 8) c = x[h];
                else if (p == 0) c = _mm256_and_si256(x[h], mask);
                else if (p == NP - 1) c = _mm256_srli_epi16(x[h], B * p);
                else c = _mm256_and_si256(_mm256_srli_epi16(x[h], B * p), mask);
                csum[p][h] = _mm256_add_epi16(csum[p][h], c);
                #pragma GCC unroll 16
                for (int i = 0; i < NQ; ++i) madd_add_mem(acc[i][p][h], c, w[i]);
            }
        #pragma GCC unroll 16
        for (int i = 0; i < NQ; ++i) ++w[i];
    }
    #pragma GCC unroll 16
    for (int p = 0; p < NP; ++p)
        #pragma GCC unroll 16
        for (int h = 0; h < H; ++h) {
            csum_out[p][h] = csum[p][h];
            #pragma GCC unroll 16
            for (int i = 0; i < NQ; ++i) acc_out[i][p][h] = acc[i][p][h];
        }
}

// Integer value accumulation for NQ queries (see the header comment).
// wb[i]: [n_valid/2 rounded up] the centred int16 weights of tokens
// (2k, 2k+1) as one dword broadcast to 8 lanes, ws[i]: [segments] their
// scales, out[i]: [D] float accumulators. The centring
// offset needs each channel's code sum (csum, shared by the queries, 16-bit:
// at most 16 pairs x 255 per segment). CB bytes of each row per step: 16 (two vectors of 8
// channels, lanes in the order {0-3, 8-11} / {4-7, 12-15}, undone at the flush)
// or 8 (one vector, natural order; fewer accumulators for 2-bit codes).
// Reads row n_valid when n_valid is odd (a slot of the block; weight 0).
template <int D, int B, int NQ, int CB>
__attribute__((noinline)) void values_int(const uint8_t* rows, int n_valid, const __m256i* const* wb, const float* const* ws,
                                          float* const* out) {
    constexpr int P = D * B / 8, NP = 8 / B, H = CB / 8;  // bytes per row, planes, vectors per step
    for (int j0 = 0; j0 < P; j0 += CB) {
        for (int tc = 0; tc < n_valid; tc += segment_tokens) {
            const int tend = std::min(n_valid, tc + segment_tokens);
            __m256i acc[NQ][NP][H], csum[NP][H];
            accumulate_pairs<P, B, NQ, H>(rows + j0, tc, tend, wb, acc, csum);
            // sum_t w_t c_t = ws * (sum_t wq_t c_t + 32768 * sum_t c_t), combined in float
            const __m256i ones = _mm256_set1_epi16(1);
            for (int p = 0; p < NP; ++p) {
                __m256 off[H];
                for (int h = 0; h < H; ++h)
                    off[h] = _mm256_mul_ps(_mm256_set1_ps(32768.f), _mm256_cvtepi32_ps(_mm256_madd_epi16(csum[p][h], ones)));
                for (int i = 0; i < NQ; ++i) {
                    const __m256 vws = _mm256_set1_ps(ws[i][tc / segment_tokens]);
                    float* o = out[i] + p * P + j0;
                    __m256 f[H];
                    for (int h = 0; h < H; ++h) f[h] = _mm256_add_ps(_mm256_cvtepi32_ps(acc[i][p][h]), off[h]);
                    if constexpr (H == 2) {
                        const __m256 c0 = _mm256_permute2f128_ps(f[0], f[1], 0x20);  // channels 0-7
                        const __m256 c1 = _mm256_permute2f128_ps(f[0], f[1], 0x31);  // channels 8-15
                        _mm256_storeu_ps(o, _mm256_fmadd_ps(vws, c0, _mm256_loadu_ps(o)));
                        _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(vws, c1, _mm256_loadu_ps(o + 8)));
                    } else {
                        _mm256_storeu_ps(o, _mm256_fmadd_ps(vws, f[0], _mm256_loadu_ps(o)));
                    }
                }
            }
        }
    }
}

// Queries per values_int call and bytes per step, so that the int32
// accumulators (NQ x planes x CB/8) and the code sums (planes x CB/8) fit the
// 16 registers beside the code pairs (the weights are memory operands):
// 8-bit 4 queries x 16 bytes (8 + 2), 4-bit 4 x 8 (8 + 2), 2-bit 2 x 8 (8 + 4);
// the remainder sub-tiles of 2 and 1 queries (4-bit: 16 bytes, values_chunk_bytes).
// 4 queries per pass halve the passes over a GQA group's value rows (each
// pass re-widens the code pairs). Instructions per step of the pair loop
// (GCC 12, D = 128): 4-bit 31 for 4 queries (was 47 for 2 queries x 16
// bytes, its accumulators stored or copied every step), 8-bit 29, 2-bit 35.
template <int B>
constexpr int values_sub_tile() {
    return B == 2 ? 2 : 4;
}
// 4-bit with fewer than 4 queries: 16 bytes per step (half the steps and
// flushes of 8; 4 queries x 16 bytes would need 16 accumulators).
template <int B, int NQ>
constexpr int values_chunk_bytes() {
    return B == 8 || (B == 4 && NQ < 4) ? 16 : 8;
}

template <int D, int B>
void values_int_any(const uint8_t* rows, int n_valid, const __m256i* const* wb, const float* const* ws, float* const* out, int n) {
    constexpr int S = values_sub_tile<B>();
    int i = 0;
    for (; i + S <= n; i += S) values_int<D, B, S, values_chunk_bytes<B, S>()>(rows, n_valid, wb + i, ws + i, out + i);
    if constexpr (S == 4) {
        if (i + 2 <= n) {
            values_int<D, B, 2, values_chunk_bytes<B, 2>()>(rows, n_valid, wb + i, ws + i, out + i);
            i += 2;
        }
    }
    for (; i < n; ++i) values_int<D, B, 1, values_chunk_bytes<B, 1>()>(rows, n_valid, wb + i, ws + i, out + i);
}

// One tile of queries against one block; KIVI: a KIVI group (B = 2 or 4).
template <int D, int B, bool KIVI = false>
void attend_tile(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                 head_state& st, const score_sink& sink, const tile_view& tv, float* scratch) {
    const int T = L.block_tokens;
    float* s = scratch;                                                  // [tile][T] scores, then weights p
    int16_t* wq = reinterpret_cast<int16_t*>(scratch + max_tile * T);    // [tile][T] int16 weights
    float* w = scratch + 2 * max_tile * T;                               // [T + 8] p * value scale of one query
    float* wsc = w + T + 8;                                              // [tile][T/32 + 1] weight scales per segment
    float* qs = wsc + max_tile * (T / segment_tokens + 1);               // [tile][D] KIVI scaled queries
    const int pairs = T / 2 + 1;
    __m256i* wb = reinterpret_cast<__m256i*>((reinterpret_cast<uintptr_t>(qs + max_tile * D) + 31) & ~uintptr_t(31));
    //                                                                     [tile][pairs] broadcast weight pairs
    if constexpr (B == 16) {
        fp16_scores<D>(L, blk, head, q, tv, s, T);
    } else if constexpr (KIVI) {
        kivi_scores<D, B>(L, blk, head, q, tv, s, T, qs);
    } else {
        quantized_scores<D, B>(L, mode, blk, head, q, tv, s, T);
    }
    (void)qs;
    // KIVI values are per-token asymmetric rows whatever the engine's mode
    if constexpr (KIVI) mode = quant_mode::asymmetric;
    constexpr kv_format F = B == 16 ? kv_format::fp16 : B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    const half_bits* vparams = reinterpret_cast<const half_bits*>(blk.data + L.v_params + L.param_offset(head, 0));
    const uint8_t* v_rows = blk.data + L.v_codes + L.code_offset(head, 0);
    const __m256i* wbs[max_tile];
    const float* wss[max_tile];
    float* outs[max_tile];
    int active = 0;
    for (int i = 0; i < tv.n; ++i) {
        const int qi = tv.q0 + i;
        float* si = s + size_t(i) * T;
        if (sink.scores) std::copy(si, si + blk.n_valid, sink.scores + size_t(qi) * sink.stride + blk.slot_base);
        if (!softmax_update(si, blk.n_valid, D, st, qi)) continue;
        if constexpr (B == 16) {
            fp16_values<D>(v_rows, L.row, blk.n_valid, si, st.acc + size_t(qi) * D);
        } else {
            // w = p * scale per token; the zero points go to z (common to all dims)
            __m256 zsum = _mm256_setzero_ps();
            for (int t0 = 0; t0 < blk.n_valid; t0 += 8) {
                const int n = std::min(8, blk.n_valid - t0);
                const __m256i k = first_lanes(n);
                __m256 scale, zero;
                params8(F, mode, vparams, t0, n, scale, zero);
                const __m256 pv = _mm256_maskload_ps(si + t0, k);
                _mm256_storeu_ps(w + t0, _mm256_mul_ps(pv, scale));
                zsum = _mm256_fmadd_ps(pv, zero, zsum);
            }
            st.z[qi] += hsum8(zsum);
            int16_t* wqi = wq + size_t(i) * T;
            float* wsi = wsc + size_t(i) * (T / segment_tokens + 1);
            bool any = false;
            for (int t0 = 0, seg = 0; t0 < blk.n_valid; t0 += segment_tokens, ++seg) {
                wsi[seg] = quantize_weights16(w + t0, std::min(segment_tokens, blk.n_valid - t0), wqi + t0);
                any |= wsi[seg] != 0.f;
            }
            if (!any) continue;
            __m256i* wbi = wb + size_t(i) * pairs;
            const int n_pairs = (blk.n_valid + 1) / 2;  // a local: the stores below may alias blk for all GCC knows
            for (int k = 0; k < n_pairs; ++k) {
                int32_t pair;  // the int16 weights of tokens 2k, 2k+1
                std::memcpy(&pair, wqi + 2 * k, 4);
                _mm256_storeu_si256(wbi + k, _mm256_set1_epi32(pair));
            }
            wbs[active] = wbi;
            wss[active] = wsi;
            outs[active] = st.acc + size_t(qi) * D;
            ++active;
        }
    }
    if constexpr (B != 16) {
        if (active > 0) values_int_any<D, B>(v_rows, blk.n_valid, wbs, wss, outs, active);
    }
}

template <int D>
void attend_block_d(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                    head_state& st, const score_sink& sink, float* scratch) {
    for (int q0 = 0; q0 < q.nq(); q0 += max_tile) {
        const tile_view tv{q0, std::min(max_tile, q.nq() - q0)};
        if (blk.kind == block_kind::fp16) {
            attend_tile<D, 16>(L, mode, blk, head, q, st, sink, tv, scratch);
            continue;
        }
        if (blk.kind == block_kind::kivi) {
            if (blk.fmt == kv_format::int4) {
                attend_tile<D, 4, true>(L, mode, blk, head, q, st, sink, tv, scratch);
            } else {
                attend_tile<D, 2, true>(L, mode, blk, head, q, st, sink, tv, scratch);
            }
            continue;
        }
        switch (blk.fmt) {
            case kv_format::int8: attend_tile<D, 8>(L, mode, blk, head, q, st, sink, tv, scratch); break;
            case kv_format::int4: attend_tile<D, 4>(L, mode, blk, head, q, st, sink, tv, scratch); break;
            default: attend_tile<D, 2>(L, mode, blk, head, q, st, sink, tv, scratch); break;
        }
    }
}

}  // namespace

bool avx2_path_available(int head_dim) {
    static const bool cpu_ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    return cpu_ok && (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

void add_probabilities_avx2(const float* scores, size_t n, float m, float w, float* out) {
    size_t j = 0;
    const __m256 vm = _mm256_set1_ps(m), vw = _mm256_set1_ps(w);
    for (; j + 8 <= n; j += 8) {
        const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vm));
        _mm256_storeu_ps(out + j, _mm256_fmadd_ps(p, vw, _mm256_loadu_ps(out + j)));
    }
    for (; j < n; ++j) out[j] += std::exp(scores[j] - m) * w;
}

void attend_block_avx2(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                       head_state& st, const score_sink& sink, float* scratch) {
    // Quantised keys without the int8 query, odd block sizes (the value
    // pairs), KIVI groups of other formats or with masked slots (the engine
    // makes neither) and other head sizes take the reference path. KIVI keys
    // are float dots and need no int8 query.
    const bool quantized = blk.kind == block_kind::quantized, kivi = blk.kind == block_kind::kivi;
    const bool kivi_ok = !blk.needs_mask && (blk.fmt == kv_format::int2 || blk.fmt == kv_format::int4);
    if ((quantized && !q.q8) || ((quantized || kivi) && L.block_tokens % 2 != 0) || (kivi && !kivi_ok))
        return attend_block_ref(L, mode, blk, head, q, st, sink, scratch);
    switch (L.head_dim) {
        case 64: return attend_block_d<64>(L, mode, blk, head, q, st, sink, scratch);
        case 128: return attend_block_d<128>(L, mode, blk, head, q, st, sink, scratch);
        case 256: return attend_block_d<256>(L, mode, blk, head, q, st, sink, scratch);
        default: return attend_block_ref(L, mode, blk, head, q, st, sink, scratch);
    }
}

}  // namespace smartkv

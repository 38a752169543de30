// AVX-512 fast path for one block of attention (contract in attend-kernels.h).
//
// Quantised keys use integer dot products: the query is int8 (q8), the key
// codes are unpacked to u8 lanes and vpdpbusd multiplies and sums 4 pairs per
// 32-bit lane, so a 128-dim key costs two instructions per query head:
//   q.k = s_q * (s_k * sum_d q8_d*code_d + z_k * sum_d q8_d)
// Values for a single query (MHA decode) are integer too: the block's weights
// p*s_v are quantised to 16 bits and vpdpbusd folds 4 tokens per channel
// (accumulate_values_int), and a run of a bucket's blocks shares one softmax
// update and one accumulator transpose (attend_quantized_run). Query tiles of
// up to 16 (q-heads of a group x rows) prepare each block's value codes for
// vpdpbusd once and fold them per query the same way
// (accumulate_values_int_tile; 64-dim int2 rows and fp16 blocks: floats and
// FMA, acc += (p*s_v) * code); the zero point goes to the z accumulator.
// Instruction counts per token: docs/bench-attention.md
// (smartkv-count-instructions).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attend-kernels.h"
#include "prefetch.h"
#include "simd-math.h"
#include "smartkv/kivi.h"

namespace smartkv {

namespace {

constexpr int max_tile = 16;
constexpr int max_tile_values_tokens = 256;  // blocks up to this size take the tiles' integer value path
// A run's scores: [nq][512] floats, in the caller's scratch (attend_scratch_floats).
constexpr int max_run_scores = 512;
// The value weights get one 16-bit scale per this many tokens of a block
// (quantize_weights16). The kernel check's float64-reference bound is 1e-4:
// with 64 its largest error stays 6.9e-5 (as with one scale per 32-token
// block), while one scale per 128-token int2 block reached 1.12e-4. Each
// segment costs a weight quantisation and a fold of the integer sums (~100
// instructions), so longer segments are cheaper: 32 gave int2 37.7
// instructions per token in 128-token blocks, 64 gives 35.8.
constexpr int weight_segment_tokens = 64;
constexpr int max_run_tokens = 1024;  // one block (block_tokens <= 1024) or a run of blocks (attend_quantized_run): weights on the stack

// Scales and zero points of 16 consecutive slots [t0, t0+n) as vectors.
// Parameters are [T][n_params] halves: one (symmetric) or two (asymmetric).
inline void params16(kv_format f, quant_mode mode, const half_bits* params, int t0, int n, __m512& scale, __m512& zero) {
    const __mmask16 k = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    if (mode == quant_mode::symmetric) {
        scale = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, params + t0));
        zero = _mm512_mul_ps(scale, _mm512_set1_ps(-0.5f * float(format_max_code(f))));
        return;
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __mmask16 lo = n >= 8 ? __mmask16(0xffff) : __mmask16((1u << (2 * n)) - 1);
    const __mmask16 hi = n > 8 ? __mmask16((1u << (2 * (n - 8))) - 1) : __mmask16(0);
    const __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, params + 2 * t0));
    const __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, params + 2 * t0 + 16));
    scale = _mm512_permutex2var_ps(a, even, b);
    zero = _mm512_permutex2var_ps(a, odd, b);
}

struct tile_view {
    int q0, n;  // queries [q0, q0+n) of the head_query
};

// Online-softmax update for one query over the block's scores s[0..n_valid):
// rescales the state and turns s into the weights p (in place). Returns false
// when every score is masked (nothing to add).
template <int D>
inline bool softmax_update(float* s, int n_valid, head_state& st, int qi) {
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    int t = 0;
    for (; t + 16 <= n_valid; t += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + t));
    float block_max = _mm512_reduce_max_ps(mx);
    for (; t < n_valid; ++t) block_max = std::max(block_max, s[t]);
    if (block_max == -std::numeric_limits<float>::infinity()) return false;
    const float m_new = std::max(st.m[qi], block_max);
    const float alpha = std::exp(st.m[qi] - m_new);
    st.m[qi] = m_new;
    const __m512 vm = _mm512_set1_ps(m_new);
    __m512 sum = _mm512_setzero_ps();
    for (t = 0; t < n_valid; t += 16) {
        const __mmask16 k = n_valid - t >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n_valid - t)) - 1);
        const __m512 p = _mm512_maskz_mov_ps(k, simd::exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), vm)));
        _mm512_mask_storeu_ps(s + t, k, p);
        sum = _mm512_add_ps(sum, p);
    }
    st.l[qi] = st.l[qi] * alpha + _mm512_reduce_add_ps(sum);
    st.z[qi] *= alpha;
    if (alpha != 1.f) {
        const __m512 va = _mm512_set1_ps(alpha);
        float* acc = st.acc + size_t(qi) * D;
        for (int d = 0; d < D; d += 16) _mm512_storeu_ps(acc + d, _mm512_mul_ps(_mm512_loadu_ps(acc + d), va));
    }
    return true;
}

// acc[qi] += sum_t w[qi][t] * codes_t  for the tile, 16 dims at a time.
// w: [tile][T] weights already multiplied by each token's value scale.
// NT: the tile size when known at compile time, 0 otherwise (with a run-time
// count GCC 12 keeps acc[] in memory: a load and a store per FMA).
template <int D, int B, int NT>
void accumulate_values(const uint8_t* v_rows, int row_stride, int n_valid, const float* w, int T, const tile_view& tv_in,
                       head_state& st) {
    const tile_view tv{tv_in.q0, NT ? NT : tv_in.n};
    for (int c = 0; c < D / 16; ++c) {
        __m512 acc[max_tile];
        for (int i = 0; i < tv.n; ++i) acc[i] = _mm512_loadu_ps(st.acc + size_t(tv.q0 + i) * D + 16 * c);
        for (int t = 0; t < n_valid; ++t) {
            __m512 v;
            if constexpr (B == 16) {
                v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v_rows + size_t(t) * row_stride + 32 * c)));
            } else {
                v = simd::codes16_as_float<D, B>(v_rows + size_t(t) * row_stride, c);
            }
            for (int i = 0; i < tv.n; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(w[i * T + t]), v, acc[i]);
        }
        for (int i = 0; i < tv.n; ++i) _mm512_storeu_ps(st.acc + size_t(tv.q0 + i) * D + 16 * c, acc[i]);
    }
}

// Scores against fp16 keys (the protected window and sinks), with the causal mask.
template <int D>
void fp16_scores(const block_layout& L, const block_ref& blk, int head, const head_query& q, const tile_view& tv,
                 float* s, int T) {
    const uint8_t* rows = blk.data + L.k_codes + L.code_offset(head, 0);
    const int32_t* pos = reinterpret_cast<const int32_t*>(blk.data + L.pos);
    for (int t = 0; t < blk.n_valid; ++t) {
        __m512 k[D / 16];
        for (int c = 0; c < D / 16; ++c)
            k[c] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + size_t(t) * L.row + 32 * c)));
        for (int i = 0; i < tv.n; ++i) {
            const int qi = tv.q0 + i;
            if (blk.needs_mask && pos[t] > q.row_pos[qi / q.group]) {
                s[i * T + t] = -std::numeric_limits<float>::infinity();
                continue;
            }
            __m512 dot = _mm512_setzero_ps();
            for (int c = 0; c < D / 16; ++c) dot = _mm512_fmadd_ps(k[c], _mm512_loadu_ps(q.q + size_t(qi) * D + 16 * c), dot);
            s[i * T + t] = _mm512_reduce_add_ps(dot);
        }
    }
}

// Scores against a KIVI group: per-channel key parameters fold into the query.
template <int D, int B>
void kivi_scores(const block_layout& L, const block_ref& blk, int head, const head_query& q, const tile_view& tv,
                 float* s, int T, float* qs /*[D]*/) {
    const uint8_t* rows = blk.data + L.k_codes + L.code_offset(head, 0);
    const half_bits* ch = reinterpret_cast<const half_bits*>(blk.data + L.k_params) + size_t(head) * D * 2;
    // Per-channel (scale, minimum) pairs as two float vectors of 16 channels.
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int i = 0; i < tv.n; ++i) {
        const float* qv = q.q + size_t(tv.q0 + i) * D;
        __m512 vbias = _mm512_setzero_ps();
        for (int d = 0; d < D; d += 16) {
            const __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ch + 2 * d)));
            const __m512 b = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ch + 2 * d + 16)));
            const __m512 qd = _mm512_loadu_ps(qv + d);
            _mm512_storeu_ps(qs + d, _mm512_mul_ps(qd, _mm512_permutex2var_ps(a, even, b)));
            vbias = _mm512_fmadd_ps(qd, _mm512_permutex2var_ps(a, odd, b), vbias);
        }
        const float bias = _mm512_reduce_add_ps(vbias);
        for (int t = 0; t < blk.n_valid; ++t) {
            __m512 dot = _mm512_setzero_ps();
            for (int c = 0; c < D / 16; ++c)
                dot = _mm512_fmadd_ps(simd::codes16_as_float<D, B>(rows + size_t(t) * L.row, c), _mm512_loadu_ps(qs + 16 * c), dot);
            s[i * T + t] = _mm512_reduce_add_ps(dot) + bias;
        }
    }
}

// Integer dot products of one query with 16 consecutive key rows (P bytes
// each): lane i = sum_d q8_d * code_{i,d}. Full groups run without a branch
// per token; rows past n count as zero.
template <int D, int B>
inline __m512i key_dots16(const uint8_t* rows, const __m512i* q8, int n) {
    constexpr int P = D * B / 8;
    __m512i dot[16];
    if (n == 16) {
        for (int i = 0; i < 16; ++i) dot[i] = simd::key_dot<D, B>(rows + i * P, q8);
    } else {
        for (int i = 0; i < 16; ++i) dot[i] = i < n ? simd::key_dot<D, B>(rows + i * P, q8) : _mm512_setzero_si512();
    }
    return simd::reduce16_epi32(dot);
}

// 2-bit, 128-dim keys: one 32-byte row holds plane p (dims 32p..32p+31) in
// bits 2p..2p+1 of each byte, so one 64-byte load is two tokens and four
// vpdpbusd against the query's planes (qp[p]: dims 32p.. in both halves)
// give each token's dot as 8 lanes of its half. Per 16 tokens: 8 loads, 28
// shift/mask, 32 vpdpbusd and a 21-instruction reduction of 8 vectors,
// against 16 unpacks of half-empty registers and a reduction of 16 in
// key_dots16. Rows past n are skipped by pairs; the odd one of the last pair
// is read (T even: inside the block) and its lane is never stored.
inline __m512i key_dots16_int2_d128(const uint8_t* rows, const __m512i* qp, int n) {
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i acc[8];
    for (int j = 0; j < 8; ++j) {
        if (2 * j >= n) {
            acc[j] = _mm512_setzero_si512();
            continue;
        }
        const __m512i x = _mm512_loadu_si512(rows + 64 * j);
        __m512i a = simd::dpbusd(_mm512_setzero_si512(), _mm512_and_si512(x, mask), qp[0]);
        a = simd::dpbusd(a, _mm512_and_si512(_mm512_srli_epi16(x, 2), mask), qp[1]);
        a = simd::dpbusd(a, _mm512_and_si512(_mm512_srli_epi16(x, 4), mask), qp[2]);
        acc[j] = simd::dpbusd(a, _mm512_and_si512(_mm512_srli_epi16(x, 6), mask), qp[3]);
    }
    // Per 128-bit lane: the 4 dwords of 4 sources summed (as reduce16_epi32).
    __m512i b[4], c[2];
    for (int i = 0; i < 4; ++i)
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[2 * i], acc[2 * i + 1]), _mm512_unpackhi_epi32(acc[2 * i], acc[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
        c[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]), _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
    // A token is two lanes of its source (lanes 0-1: the even token, 2-3: the odd one).
    const __m512i d = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88), _mm512_shuffle_i32x4(c[0], c[1], 0xdd));
    // d holds tokens 0,2,4,6 | 1,3,5,7 | 8,10,12,14 | 9,11,13,15: back to order.
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15), d);
}

// key_dots16_int2_d128 for NQ queries of a tile at once: each pair of rows
// is split into its four planes once for all of them. qpb[i]: query i's four
// planes, each broadcast to both halves ([4][64] bytes, prepared per block).
// Four pairs at a time fold to one vector per query (the first two levels of
// the single-query reduction), then the two halves meet. GQA group of 4:
// 136.2 -> 124.0 instructions per token per kv-head, paired wall time
// 1.02-1.04x (an A/A pair of one build reads 0.98-1.02). The same sharing for
// int4 and int8 rows cut 134 -> 126 and 134 -> 130 instructions but ran
// 0.97-0.98x: not kept.
template <int NQ, bool FULL>
__attribute__((always_inline)) inline void key_dots16_int2_d128_shared(const uint8_t* rows, const int8_t* const* qpb, int n,
                                                                       __m512i* out) {
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i half[NQ][2];  // per query, pairs 4h..4h+3 folded
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
        __m512i acc[NQ][4];
        for (int jj = 0; jj < 4; ++jj) {
            const int j = 4 * h + jj;
            if (!FULL && 2 * j >= n) {
                for (int i = 0; i < NQ; ++i) acc[i][jj] = _mm512_setzero_si512();
                continue;
            }
            const __m512i x = _mm512_loadu_si512(rows + 64 * j);
            for (int p = 0; p < 4; ++p) {
                const __m512i plane = p == 0 ? _mm512_and_si512(x, mask) : _mm512_and_si512(_mm512_srli_epi16(x, unsigned(2 * p)), mask);
                for (int i = 0; i < NQ; ++i)
                    acc[i][jj] = simd::dpbusd_mem(p == 0 ? _mm512_setzero_si512() : acc[i][jj], plane, qpb[i] + 64 * p);
            }
        }
        for (int i = 0; i < NQ; ++i) {
            const __m512i* a = acc[i];
            const __m512i b0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
            const __m512i b1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
            half[i][h] = _mm512_add_epi32(_mm512_unpacklo_epi64(b0, b1), _mm512_unpackhi_epi64(b0, b1));
        }
    }
    const __m512i order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    for (int i = 0; i < NQ; ++i) {
        const __m512i* c = half[i];
        const __m512i d = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88), _mm512_shuffle_i32x4(c[0], c[1], 0xdd));
        out[i] = _mm512_permutexvar_epi32(order, d);
    }
}

// Fetching ahead inside a run of blocks. One kv-head's slice of a 32-token
// block is four short pieces (key rows, value rows, their parameters) far
// from the previous block's, too short for the hardware prefetchers to ramp
// up on. Each 16-token chunk of a block's scores prefetches the same chunk of
// the keys two blocks ahead and of this block's values (read by the value
// pass after the run's scores) into L2. Paired at 32K, MHA 32 heads
// (smartkv-attend-bench, one process, calls alternating): against no
// prefetch (what the build ran before, see prefetch.h) int8/int4/int2/mix
// 1.61/1.70/1.40/1.79x; against a whole block's slice fetched into L1 in one
// burst at the block's start (the earlier code, had it been compiled)
// 1.37/1.44/1.14/1.33x. With it 128-token blocks are only 0.98-1.12x faster
// than 32-token ones (1.24-1.42x without).
//
// The value pass of a run reads only what the scores pass fetched, so memory
// sat idle during it: it now fetches the next run's blocks (keys and values,
// next_run), block j of the next run during block j of its own. Paired the
// same way, int8/int4/int2/mix MHA: next run's keys only 1.05-1.11x (median
// of four runs ~1.08 for int8, int4 and mix, ~1.03 int2), keys and values a
// further 1.03-1.08x. The run's own prefetches stay (the first run of a task
// has nothing before it; without them 0.93x).
struct fetch_ahead {
    const uint8_t* k_rows = nullptr;     // [T][P] key codes of a later block, or null
    const uint8_t* k_params = nullptr;   // its key parameters, k_param_bytes long
    const uint8_t* v_rows = nullptr;     // [T][P] value codes of this block, or null
    const uint8_t* v_params = nullptr;   // its value parameters, v_param_bytes long
    size_t k_param_bytes = 0, v_param_bytes = 0;

    // Before the scores of tokens t0..t0+15 (rows of P bytes): 16*P/64 lines
    // of each, unrolled (a loop cost ~4 instructions a line: int8 went from
    // 37 to 55 instructions per token per kv-head).
    template <int P>
    void chunk(int t0) const {
        const size_t off = size_t(t0) * P;
        if (k_rows) {
#pragma GCC unroll 32
            for (int l = 0; l < P / 4; ++l) prefetch_line_l2(k_rows + off + 64 * l);
            if (t0 == 0) prefetch_l2(k_params, k_param_bytes);
        }
        if (v_rows) {
#pragma GCC unroll 32
            for (int l = 0; l < P / 4; ++l) prefetch_line_l2(v_rows + off + 64 * l);
            if (t0 == 0) prefetch_l2(v_params, v_param_bytes);
        }
    }
};

// The whole of one block's kv-head slice (keys, values, their parameters):
// what the value pass of a run fetches of the next run's block j.
inline fetch_ahead fetch_block(const block_layout& L, const block_ref& b, int head) {
    fetch_ahead a;
    a.k_rows = b.data + L.k_codes + L.code_offset(head, 0);
    a.k_params = b.data + L.k_params + L.param_offset(head, 0);
    a.v_rows = b.data + L.v_codes + L.code_offset(head, 0);
    a.v_params = b.data + L.v_params + L.param_offset(head, 0);
    a.k_param_bytes = a.v_param_bytes = size_t(b.n_valid) * size_t(L.n_params) * sizeof(half_bits);
    return a;
}

// The blocks after a run (same bucket, same layout) that its value pass
// fetches: up to nb of them.
struct next_run {
    const block_ref* blks = nullptr;
    int n = 0;
    fetch_ahead of(const block_layout& L, int j, int head) const { return j < n ? fetch_block(L, blks[j], head) : fetch_ahead{}; }
};

// What block j of a run fetches ahead: block j+2's keys, its own values.
inline fetch_ahead fetch_ahead_of(const block_layout& L, const block_ref* blks, int nb, int j, int head) {
    constexpr int distance = 2;  // blocks; 1-8 measured the same within noise
    fetch_ahead a;
    const size_t param_bytes_per_token = size_t(L.n_params) * sizeof(half_bits);
    if (j + distance < nb) {
        const block_ref& b = blks[j + distance];
        a.k_rows = b.data + L.k_codes + L.code_offset(head, 0);
        a.k_params = b.data + L.k_params + L.param_offset(head, 0);
        a.k_param_bytes = size_t(b.n_valid) * param_bytes_per_token;
    }
    a.v_rows = blks[j].data + L.v_codes + L.code_offset(head, 0);
    a.v_params = blks[j].data + L.v_params + L.param_offset(head, 0);
    a.v_param_bytes = size_t(blks[j].n_valid) * param_bytes_per_token;
    return a;
}

// Scores of a quantised block for a tile of queries: s[i][t] (pre-softmax).
// Per query and 16 tokens: unpack each row in registers, two vpdpbusd per
// 128 dims, one transpose-reduction, then the scales once per token:
//   s = s_q * (s_k * dot + z_k * sum(q8))
// Re-unpacking per query of a GQA tile costs 2-4 instructions per row and
// keeps everything in registers (a shared unpacked buffer spilled; rows
// unpacked in registers once per 4 queries cut instructions but not time,
// see key_dots16_int2_d128_shared, which is kept for 128-dim int2 only).
//
// Always inlined: called once per block of a run, its setup (constants, the
// query's registers) is then hoisted out of the run's loop and the call
// goes; one query: int8 / int4 / int2 43.8 / 41.4 / 42.7 -> 41.6 / 38.8 /
// 39.7 instructions per token per kv-head (smartkv-count-instructions 16).
template <int D, int B>
__attribute__((always_inline)) inline void quantized_scores(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                      const tile_view& tv, float* s, int T, const fetch_ahead& ahead = {}) {
    constexpr kv_format F = B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    constexpr int C = D / 64, P = D * B / 8;  // L.row == P for a quantised block
    constexpr bool int2_d128 = D == 128 && B == 2;
    const uint8_t* rows = blk.data + L.k_codes + L.code_offset(head, 0);
    const half_bits* params = reinterpret_cast<const half_bits*>(blk.data + L.k_params + L.param_offset(head, 0));
    const bool pairs = int2_d128 && L.block_tokens % 2 == 0;  // key_dots16_int2_d128
    // Tiles (GQA groups, prefill rows) on the pairs path take 4 (then 2)
    // queries at a time, each pair of rows split into planes once for all.
    alignas(64) int8_t qpb[int2_d128 ? max_tile : 1][4][64];  // [tile][plane] each plane in both halves
    if (pairs && tv.n >= 2)
        for (int i = 0; i < tv.n; ++i)
            for (int p = 0; p < 4; ++p)
                _mm512_store_si512(qpb[i][p], _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.q8 + size_t(tv.q0 + i) * D + 32 * p))));
    for (int t0 = 0; t0 < blk.n_valid; t0 += 16) {
        const int n = std::min(16, blk.n_valid - t0);
        const __mmask16 k = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
        ahead.chunk<P>(t0);
        __m512 vscale, vzero;
        params16(F, mode, params, t0, n, vscale, vzero);
        // s = s_q * (s_k * dot + z_k * sum(q8)) for query j of the tile
        const auto scale_store = [&](int j, __m512i dots) {
            const int qi = tv.q0 + j;
            const __m512 v = _mm512_mul_ps(_mm512_set1_ps(q.q8_scale[qi]),
                                           _mm512_fmadd_ps(vscale, _mm512_cvtepi32_ps(dots), _mm512_mul_ps(vzero, _mm512_set1_ps(float(q.q8_sum[qi])))));
            _mm512_mask_storeu_ps(s + size_t(j) * T + t0, k, v);
        };
        int j = 0;
        if constexpr (int2_d128) {
            if (pairs) {
                const uint8_t* r = rows + size_t(t0) * P;
                for (; j + 4 <= tv.n; j += 4) {
                    const int8_t* qs[4] = {qpb[j][0], qpb[j + 1][0], qpb[j + 2][0], qpb[j + 3][0]};
                    __m512i dots[4];
                    if (n == 16) key_dots16_int2_d128_shared<4, true>(r, qs, n, dots);
                    else key_dots16_int2_d128_shared<4, false>(r, qs, n, dots);
                    for (int i = 0; i < 4; ++i) scale_store(j + i, dots[i]);
                }
                for (; j + 2 <= tv.n; j += 2) {
                    const int8_t* qs[2] = {qpb[j][0], qpb[j + 1][0]};
                    __m512i dots[2];
                    if (n == 16) key_dots16_int2_d128_shared<2, true>(r, qs, n, dots);
                    else key_dots16_int2_d128_shared<2, false>(r, qs, n, dots);
                    for (int i = 0; i < 2; ++i) scale_store(j + i, dots[i]);
                }
            }
        }
        for (; j < tv.n; ++j) {  // one query (MHA decode), or the tile's last
            const int qi = tv.q0 + j;
            if (pairs) {
                __m512i qp[4];  // the query's 4 planes, each in both halves
                for (int p = 0; p < 4; ++p)
                    qp[p] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.q8 + size_t(qi) * D + 32 * p)));
                scale_store(j, key_dots16_int2_d128(rows + size_t(t0) * P, qp, n));
            } else {
                __m512i q8[C];
                for (int c = 0; c < C; ++c) q8[c] = _mm512_loadu_si512(q.q8 + size_t(qi) * D + 64 * c);
                scale_store(j, key_dots16<D, B>(rows + size_t(t0) * P, q8, n));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Integer value accumulation for one query (8-, 4- and 2-bit codes, D = 64/128).
//
// Per 64 tokens of a block (weight_segment_tokens) the weights w_t = p_t *
// scale_t are quantised to 16 bits with one scale ws = max_t w_t / 65535 and
// split into bytes (hi, lo). Four token
// rows are transposed on the fly so that each dword holds one byte position's
// codes of tokens t..t+3; vpdpbusd then folds 4 tokens into a channel's int32
// accumulator, once with the hi and once with the lo weight bytes:
//
//   rows t..t+3 ──unpack8/16──> [c_t c_t+1 c_t+2 c_t+3] per dword (u8, b bits)
//   acc_hi += w_hi·codes, acc_lo += w_lo·codes        (exact in int32 for T <= 1024: T·255·128 < 2^31)
//   acc_out += ws * (256·acc_hi + acc_lo) + sum_t p_t*zero_t
//
// The weight rounding error is at most ws/2 = max_t w_t / 131070 per token.
// Each group of 4 accumulators covers 64 dims in a 128-bit-lane order that a
// 4x4 transpose of 128-bit lanes undoes once per block.

// Raw bytes of 4 consecutive rows at byte offset off, transposed: x[k] lane m
// holds byte 16*(m/4) + 4k + m%4 of tokens 0..3 (one token per byte).
inline void transpose4_rows(__m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i x[4]) {
    const __m512i a = _mm512_unpacklo_epi8(r0, r1), b = _mm512_unpackhi_epi8(r0, r1);
    const __m512i c = _mm512_unpacklo_epi8(r2, r3), d = _mm512_unpackhi_epi8(r2, r3);
    x[0] = _mm512_unpacklo_epi16(a, c);
    x[1] = _mm512_unpackhi_epi16(a, c);
    x[2] = _mm512_unpacklo_epi16(b, d);
    x[3] = _mm512_unpackhi_epi16(b, d);
}

// The 128-bit-lane transpose: n[L] = [a[0].L, a[1].L, a[2].L, a[3].L].
inline void transpose4_lanes(const __m512* a, __m512* n) {
    const __m512 t0 = _mm512_shuffle_f32x4(a[0], a[1], 0x44), t1 = _mm512_shuffle_f32x4(a[0], a[1], 0xee);
    const __m512 t2 = _mm512_shuffle_f32x4(a[2], a[3], 0x44), t3 = _mm512_shuffle_f32x4(a[2], a[3], 0xee);
    n[0] = _mm512_shuffle_f32x4(t0, t2, 0x88);
    n[1] = _mm512_shuffle_f32x4(t0, t2, 0xdd);
    n[2] = _mm512_shuffle_f32x4(t1, t3, 0x88);
    n[3] = _mm512_shuffle_f32x4(t1, t3, 0xdd);
}

template <int D, int B>
constexpr bool int_values_supported() {
    constexpr int P = D * B / 8;
    return D <= 128 && (B == 8 || P == 32 || P == 64);
}

// Quantises w[0..n) (n <= T, padded with zeros to a multiple of 4) to 16 bits:
// hi/lo bytes. Returns the block scale ws (0 when every weight is 0).
inline float quantize_weights16(const float* w, int n, uint8_t* hi, uint8_t* lo) {
    __m512 mx = _mm512_setzero_ps();
    for (int t = 0; t < n; t += 16) mx = _mm512_max_ps(mx, _mm512_load_ps(w + t));  // w is padded to 16
    const float wmax = _mm512_reduce_max_ps(mx);
    if (!(wmax > 0.f)) return 0.f;
    const float ws = wmax / 65535.f;
    const __m512 inv = _mm512_set1_ps(65535.f / wmax);
    for (int t = 0; t < n; t += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(w + t), inv));  // round to nearest
        q = _mm512_min_epi32(q, _mm512_set1_epi32(65535));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + t), _mm512_cvtepi32_epi8(_mm512_srli_epi32(q, 8)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(lo + t), _mm512_cvtepi32_epi8(_mm512_and_si512(q, _mm512_set1_epi32(255))));
    }
    return ws;
}

// The value codes of 4 consecutive rows r..r+3 as vpdpbusd's s8 operands:
// c[g][k] holds, per dword, one byte position's codes of the 4 tokens for the
// dims of group g (64 dims; order undone by transpose4_lanes). 8-bit codes
// are flipped to code-128 (the caller adds 128*scale to the zero point).
template <int D, int B>
inline void value_codes4(const uint8_t* r, __m512i c[][4]) {
    constexpr int P = D * B / 8, NG = D / 64;
    const __m512i mask = _mm512_set1_epi8(char((1 << B) - 1));
    if constexpr (B == 8) {  // group g = bytes [64g, 64g+64) of each row
        const __m512i flip = _mm512_set1_epi8(char(0x80));
        for (int g = 0; g < NG; ++g) {
            __m512i x[4];
            transpose4_rows(_mm512_loadu_si512(r + 64 * g), _mm512_loadu_si512(r + P + 64 * g),
                            _mm512_loadu_si512(r + 2 * P + 64 * g), _mm512_loadu_si512(r + 3 * P + 64 * g), x);
            for (int k = 0; k < 4; ++k) c[g][k] = _mm512_xor_si512(x[k], flip);
        }
        return;
    }
    __m512i x[4];
    if constexpr (P == 64) {
        transpose4_rows(_mm512_loadu_si512(r), _mm512_loadu_si512(r + P), _mm512_loadu_si512(r + 2 * P),
                        _mm512_loadu_si512(r + 3 * P), x);
    } else {  // 32-byte rows, each broadcast to both halves: low half = even plane, high = odd
        auto row = [&](int i) { return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + i * P))); };
        transpose4_rows(row(0), row(1), row(2), row(3), x);
    }
    for (int g = 0; g < NG; ++g)
        for (int k = 0; k < 4; ++k) {
            if constexpr (P == 64) {  // group g = plane g (D/64 planes of 64 dims)
                c[g][k] = g == 0 ? _mm512_and_si512(x[k], mask) : _mm512_and_si512(_mm512_srli_epi16(x[k], unsigned(B * g)), mask);
            } else {  // group g = planes 2g (low half) and 2g+1 (high half)
                const __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * g * B)), _mm256_set1_epi16(short((2 * g + 1) * B)), 1);
                c[g][k] = _mm512_and_si512(_mm512_srlv_epi16(x[k], sh), mask);
            }
        }
}

// Not inlined: its own register allocation keeps the 2*D/16 accumulators in
// registers (inlined, GCC 12 copied them around the loop every iteration).
//
// A run of nb blocks (attend_quantized_run) shares one zero-point sum, one
// set of float accumulators and one final transpose; each block keeps its
// own weight scale. p holds block j's weights at j*T, and every block but the
// last is full (T a multiple of 16, nb*T <= max_run_tokens).
template <int D, int B>
__attribute__((noinline)) void accumulate_values_int(const block_layout& L, quant_mode mode, const block_ref* blks, int nb,
                                                     int head, const float* p, float* acc_out, const next_run& next) {
    constexpr kv_format F = B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    constexpr int P = D * B / 8, NG = D / 64;  // groups of 64 dims
    const int T = L.block_tokens;
    alignas(64) float w[max_run_tokens];  // [(nb-1)*T + last n_valid, rounded up to 16] p*scale, 0 past n_valid (masked loads)
    alignas(64) uint8_t whi[max_run_tokens], wlo[max_run_tokens];
    __m512 zacc = _mm512_setzero_ps();
    for (int j = 0; j < nb; ++j) {
        const block_ref& blk = blks[j];
        const half_bits* params = reinterpret_cast<const half_bits*>(blk.data + L.v_params + L.param_offset(head, 0));
        const float* pj = p + size_t(j) * T;
        float* wj = w + size_t(j) * T;
        for (int t0 = 0; t0 < blk.n_valid; t0 += 16) {
            const int n = std::min(16, blk.n_valid - t0);
            __m512 scale, zero;
            params16(F, mode, params, t0, n, scale, zero);
            const __m512 pv = _mm512_maskz_loadu_ps(n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), pj + t0);
            const __m512 wv = _mm512_mul_ps(pv, scale);
            _mm512_store_ps(wj + t0, wv);
            zacc = _mm512_fmadd_ps(pv, zero, zacc);
            // 8-bit codes are folded as signed code-128 (vpdpbusd's second operand
            // is s8): scale*code + zero = scale*(code-128) + (zero + 128*scale)
            if constexpr (B == 8) zacc = _mm512_fmadd_ps(wv, _mm512_set1_ps(128.f), zacc);
        }
    }
    const float zsum = _mm512_reduce_add_ps(zacc);
    // Each block keeps its own weight scale (the rounding bound above is per
    // block); its integer sums are folded into float accumulators, still in
    // the 128-bit-lane order, and transposed once for the run.
    __m512 fa[NG][4];
    for (int g = 0; g < NG; ++g)
        for (int k = 0; k < 4; ++k) fa[g][k] = _mm512_setzero_ps();
    for (int j = 0; j < nb; ++j) {
      const int n4 = (blks[j].n_valid + 3) & ~3;
      const fetch_ahead ahead = next.of(L, j, head);
      const uint8_t* v_rows = blks[j].data + L.v_codes + L.code_offset(head, 0);  // [T][P]
      for (int s0 = 0; s0 < n4; s0 += weight_segment_tokens) {  // one weight scale per segment
        const int s1 = std::min(n4, s0 + weight_segment_tokens);
        uint8_t* whi_j = whi + size_t(j) * T;
        uint8_t* wlo_j = wlo + size_t(j) * T;
        const float ws = quantize_weights16(w + size_t(j) * T + s0, s1 - s0, whi_j + s0, wlo_j + s0);
        if (ws == 0.f) continue;
        __m512i ah[NG][4], al[NG][4];
        for (int g = 0; g < NG; ++g)
            for (int k = 0; k < 4; ++k) ah[g][k] = al[g][k] = _mm512_setzero_si512();
        for (int t0 = s0; t0 < s1; t0 += 16) {
            ahead.chunk<P>(t0);
            for (int t = t0; t < std::min(s1, t0 + 16); t += 4) {
                const uint8_t* r = v_rows + size_t(t) * P;
                uint32_t h32, l32;
                std::memcpy(&h32, whi_j + t, 4);
                std::memcpy(&l32, wlo_j + t, 4);
                const __m512i wh = _mm512_set1_epi32(int(h32)), wl = _mm512_set1_epi32(int(l32));
                __m512i c[NG][4];
                value_codes4<D, B>(r, c);
                for (int g = 0; g < NG; ++g)
                    for (int k = 0; k < 4; ++k) {
                        ah[g][k] = simd::dpbusd(ah[g][k], wh, c[g][k]);
                        al[g][k] = simd::dpbusd(al[g][k], wl, c[g][k]);
                    }
            }
        }
        // combined in float: 256*hi + lo could pass 2^31 in int32 for blocks over 256 tokens
        const __m512 vws = _mm512_set1_ps(ws);
        for (int g = 0; g < NG; ++g)
            for (int k = 0; k < 4; ++k)
                fa[g][k] = _mm512_fmadd_ps(vws, _mm512_fmadd_ps(_mm512_cvtepi32_ps(ah[g][k]), _mm512_set1_ps(256.f), _mm512_cvtepi32_ps(al[g][k])), fa[g][k]);
      }
    }
    const __m512 vz = _mm512_set1_ps(zsum);
    for (int g = 0; g < NG; ++g) {
        __m512 n[4];
        transpose4_lanes(fa[g], n);
        for (int L = 0; L < 4; ++L) {
            float* o = acc_out + 64 * g + 16 * L;
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_add_ps(n[L], vz)));
        }
    }
}

// Integer sums of prepared value codes (value_codes4 of every 4 rows:
// [n4/4][NG][4] vectors) weighted by 16-bit weights split into bytes:
// ah = sum whi*code, al = sum wlo*code, in the 128-bit-lane order.
template <int NG>
__attribute__((always_inline)) inline void prepared_value_sums(const __m512i* codes, int n4, const uint8_t* whi, const uint8_t* wlo,
                                                               __m512i (&ah)[NG][4], __m512i (&al)[NG][4]) {
    for (int g = 0; g < NG; ++g)
        for (int k = 0; k < 4; ++k) ah[g][k] = al[g][k] = _mm512_setzero_si512();
    // pointers stepped, not indexed: with c = codes + t/4*NG*4 GCC 12 spent 3 instructions a
    // step on the index and stored and reloaded the hi weights (36 -> 28 instructions per 4 tokens)
    const __m512i* const end = codes + size_t(n4 / 4) * NG * 4;
    for (const __m512i* c = codes; c != end; c += NG * 4, whi += 4, wlo += 4) {
        uint32_t h32, l32;
        std::memcpy(&h32, whi, 4);
        std::memcpy(&l32, wlo, 4);
        const __m512i wh = _mm512_set1_epi32(int(h32)), wl = _mm512_set1_epi32(int(l32));
        for (int g = 0; g < NG; ++g)
            for (int k = 0; k < 4; ++k) {
                // a load and two register vpdpbusd: with a memory operand in the asm, GCC 12
                // kept every accumulator in memory (a store per vpdpbusd)
                const __m512i ck = _mm512_load_si512(c + 4 * g + k);
                ah[g][k] = simd::dpbusd(ah[g][k], wh, ck);
                al[g][k] = simd::dpbusd(al[g][k], wl, ck);
            }
    }
}

// fa += the weighted sums of n4 prepared rows (value_codes4 vectors), with the
// weights w (p*scale, 0 past the valid tokens up to a multiple of 16)
// quantised to 16 bits per weight_segment_tokens; whi/wlo: scratch bytes.
template <int NG>
__attribute__((always_inline)) inline void fold_prepared_values(const __m512i* codes /*[n4/4][NG][4]*/, int n4, const float* w,
                                                                uint8_t* whi, uint8_t* wlo, __m512 (&fa)[NG][4]) {
    for (int s0 = 0; s0 < n4; s0 += weight_segment_tokens) {  // one weight scale per segment
        const int sn = std::min(weight_segment_tokens, n4 - s0);
        const float ws = quantize_weights16(w + s0, sn, whi, wlo);
        if (ws == 0.f) continue;
        __m512i ah[NG][4], al[NG][4];
        prepared_value_sums<NG>(codes + size_t(s0 / 4) * NG * 4, sn, whi, wlo, ah, al);
        const __m512 vws = _mm512_set1_ps(ws);
        for (int g = 0; g < NG; ++g)
            for (int k = 0; k < 4; ++k)
                fa[g][k] = _mm512_fmadd_ps(vws, _mm512_fmadd_ps(_mm512_cvtepi32_ps(ah[g][k]), _mm512_set1_ps(256.f), _mm512_cvtepi32_ps(al[g][k])), fa[g][k]);
    }
}

// Integer values for one query of a tile, over value codes a tile shares
// (value_codes4 of every 4 rows, prepared once): w = p*scale per token (the
// zero points are in st.z), quantised to 16 bits per block as in
// accumulate_values_int, a load and two vpdpbusd per code vector.
// The float loop it replaces (accumulate_values) converted and multiplied
// every code once per query: 96 of int2's 207 instructions per token for a
// group of 4.
template <int D, int B>
__attribute__((noinline)) void accumulate_values_int_tile(const __m512i* codes /*[n4/4][D/64][4]*/, int n_valid,
                                                          const float* w /*[n_valid] p*scale*/, float* acc_out) {
    constexpr int NG = D / 64;
    const int n4 = (n_valid + 3) & ~3;
    alignas(64) float wa[max_tile_values_tokens];  // w, 0 past n_valid up to a multiple of 16
    alignas(64) uint8_t whi[max_tile_values_tokens], wlo[max_tile_values_tokens];
    for (int t = 0; t < n_valid; t += 16) {
        const int n = std::min(16, n_valid - t);
        _mm512_store_ps(wa + t, _mm512_maskz_loadu_ps(n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), w + t));
    }
    __m512 fa[NG][4];  // float sums, 128-bit-lane order
    for (int g = 0; g < NG; ++g)
        for (int k = 0; k < 4; ++k) fa[g][k] = _mm512_setzero_ps();
    fold_prepared_values<NG>(codes, n4, wa, whi, wlo, fa);
    for (int g = 0; g < NG; ++g) {
        __m512 n[4];
        transpose4_lanes(fa[g], n);
        for (int L = 0; L < 4; ++L) {
            float* o = acc_out + 64 * g + 16 * L;
            _mm512_storeu_ps(o, _mm512_add_ps(n[L], _mm512_loadu_ps(o)));
        }
    }
}

// The tile version of accumulate_values_int: a run of nb blocks for the
// queries of a tile. Per block the value codes are prepared once for the
// whole tile (value_codes4) and the scales and zero points read once; per
// query and block the weights get their own 16-bit scale (the bound of
// accumulate_values_int_tile) and the integer sums are folded into that
// query's float accumulators, which are transposed once per run. The zero
// points go to st.z. p: [tile][stride] probabilities, block j at j*T.
template <int D, int B>
__attribute__((noinline)) void accumulate_values_int_tile_run(const block_layout& L, quant_mode mode, const block_ref* blks,
                                                              int nb, int head, const float* p, int stride,
                                                              const tile_view& tv, const bool* active, head_state& st,
                                                              const next_run& next) {
    constexpr kv_format F = B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    constexpr int P = D * B / 8, NG = D / 64;
    const int T = L.block_tokens;  // <= max_tile_values_tokens, a multiple of 16
    alignas(64) __m512i codes[max_tile_values_tokens / 4 * NG * 4];  // one block: [n4/4][NG][4]
    alignas(64) __m512 scales[max_tile_values_tokens / 16], zeros[max_tile_values_tokens / 16];  // one block, per 16 tokens
    alignas(64) __m512 fa[max_tile][NG][4];  // float sums per query, 128-bit-lane order
    alignas(64) float w[max_tile_values_tokens];  // one query's p*scale, 0 past n_valid up to a multiple of 16
    alignas(64) uint8_t whi[max_tile_values_tokens], wlo[max_tile_values_tokens];
    float zsum[max_tile] = {};
    for (int i = 0; i < tv.n; ++i)
        for (int g = 0; g < NG; ++g)
            for (int k = 0; k < 4; ++k) fa[i][g][k] = _mm512_setzero_ps();
    for (int j = 0; j < nb; ++j) {
        const block_ref& blk = blks[j];
        const uint8_t* v_rows = blk.data + L.v_codes + L.code_offset(head, 0);
        const half_bits* params = reinterpret_cast<const half_bits*>(blk.data + L.v_params + L.param_offset(head, 0));
        const int n4 = (blk.n_valid + 3) & ~3;
        const fetch_ahead ahead = next.of(L, j, head);
        for (int t0 = 0; t0 < n4; t0 += 16) {
            ahead.chunk<P>(t0);
            for (int t = t0; t < std::min(n4, t0 + 16); t += 4)
                value_codes4<D, B>(v_rows + size_t(t) * P, reinterpret_cast<__m512i(*)[4]>(codes + size_t(t / 4) * NG * 4));
        }
        for (int t0 = 0; t0 < blk.n_valid; t0 += 16) params16(F, mode, params, t0, std::min(16, blk.n_valid - t0), scales[t0 / 16], zeros[t0 / 16]);
        for (int i = 0; i < tv.n; ++i) {
            if (!active[i]) continue;
            const float* pj = p + size_t(i) * stride + size_t(j) * T;
            __m512 zacc = _mm512_setzero_ps();
            for (int t0 = 0; t0 < blk.n_valid; t0 += 16) {
                const int n = std::min(16, blk.n_valid - t0);
                const __m512 pv = _mm512_maskz_loadu_ps(n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), pj + t0);
                const __m512 wv = _mm512_mul_ps(pv, scales[t0 / 16]);
                _mm512_store_ps(w + t0, wv);
                zacc = _mm512_fmadd_ps(pv, zeros[t0 / 16], zacc);
                if constexpr (B == 8) zacc = _mm512_fmadd_ps(wv, _mm512_set1_ps(128.f), zacc);  // codes folded as code-128
            }
            zsum[i] += _mm512_reduce_add_ps(zacc);
            fold_prepared_values<NG>(codes, n4, w, whi, wlo, fa[i]);
        }
    }
    for (int i = 0; i < tv.n; ++i) {
        if (!active[i]) continue;
        const int qi = tv.q0 + i;
        st.z[qi] += zsum[i];
        for (int g = 0; g < NG; ++g) {
            __m512 n[4];
            transpose4_lanes(fa[i][g], n);
            for (int c = 0; c < 4; ++c) {
                float* o = st.acc + size_t(qi) * D + 64 * g + 16 * c;
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), n[c]));
            }
        }
    }
}

// acc += sum_t p_t * (scale_t*code_t + zero_t) for one query. For 2- and
// 4-bit codes each token gets a 16-entry table of its possible values (one
// FMA), and every 16 dims cost a permute and an add: no int->float converts.
template <int D, int B>
void accumulate_values_1(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const float* p,
                         float* acc_out) {
    constexpr kv_format F = B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    constexpr int P = D * B / 8;  // bytes per row
    const uint8_t* rows = blk.data + L.v_codes + L.code_offset(head, 0);
    const half_bits* params = reinterpret_cast<const half_bits*>(blk.data + L.v_params + L.param_offset(head, 0));
    __m512 acc[D / 16];
    for (int c = 0; c < D / 16; ++c) acc[c] = _mm512_loadu_ps(acc_out + 16 * c);
    alignas(64) float ws[1024], zs[1024];  // [n_valid] p*scale and p*zero of each token (block_tokens <= 1024)
    for (int t0 = 0; t0 < blk.n_valid; t0 += 16) {
        const int n = std::min(16, blk.n_valid - t0);
        __m512 scale, zero;
        params16(F, mode, params, t0, n, scale, zero);
        const __m512 pv = _mm512_maskz_loadu_ps(n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), p + t0);
        _mm512_store_ps(ws + t0, _mm512_mul_ps(pv, scale));
        _mm512_store_ps(zs + t0, _mm512_mul_ps(pv, zero));
    }
    for (int t = 0; t < blk.n_valid; ++t) {
        if (p[t] == 0.f) continue;
        const uint8_t* row = rows + size_t(t) * L.row;
        if constexpr (B == 8) {
            const __m512 w = _mm512_set1_ps(ws[t]), z = _mm512_set1_ps(zs[t]);
            for (int c = 0; c < D / 16; ++c) {
                const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * c))));
                acc[c] = _mm512_add_ps(acc[c], _mm512_fmadd_ps(w, x, z));
            }
        } else {
            const __m512 table = _mm512_fmadd_ps(simd::code_pattern<B>(), _mm512_set1_ps(ws[t]), _mm512_set1_ps(zs[t]));
            for (int j = 0; j < P / 16; ++j) {
                const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * j)));
                for (int plane = 0; plane < 8 / B; ++plane) {
                    const __m512i idx = plane == 0 ? x : _mm512_srli_epi32(x, B * plane);
                    const int c = plane * (P / 16) + j;
                    acc[c] = _mm512_add_ps(acc[c], _mm512_permutexvar_ps(idx, table));
                }
            }
        }
    }
    for (int c = 0; c < D / 16; ++c) _mm512_storeu_ps(acc_out + 16 * c, acc[c]);
}

// One query's values: the integer path where it applies, else the table path.
template <int D, int B>
void accumulate_values_1p(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const float* p,
                          float* acc_out) {
    if constexpr (int_values_supported<D, B>()) {
        if (L.block_tokens % 4 == 0) return accumulate_values_int<D, B>(L, mode, &blk, 1, head, p, acc_out, next_run{});
    }
    accumulate_values_1<D, B>(L, mode, blk, head, p, acc_out);
}

// The whole block for a single query against quantised keys.
template <int D, int B>
void attend_quantized_1(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                        head_state& st, const score_sink& sink, int qi, float* s) {
    quantized_scores<D, B>(L, mode, blk, head, q, tile_view{qi, 1}, s, L.block_tokens);
    if (sink.scores) std::copy(s, s + blk.n_valid, sink.scores + size_t(qi) * sink.stride + blk.slot_base);
    if (!softmax_update<D>(s, blk.n_valid, st, qi)) return;
    accumulate_values_1p<D, B>(L, mode, blk, head, s, st.acc + size_t(qi) * D);
}

// A run of nb blocks of one quantised format for one query (MHA decode):
// every block's scores into s (block j at j*T), one online-softmax update,
// one integer value pass (accumulate_values_int). At 32-token blocks the
// per-block part of attend_quantized_1 (the softmax state update, the weight
// quantisation, the accumulators' transpose and store, the dispatch) was ~22
// of int2's 53 instructions per token per kv-head.
template <int D, int B>
void attend_quantized_run(const block_layout& L, quant_mode mode, const block_ref* blks, int nb, int head,
                          const head_query& q, head_state& st, const score_sink& sink, float* s, const next_run& next) {
    const int T = L.block_tokens;
    const int n_tokens = (nb - 1) * T + blks[nb - 1].n_valid;
    for (int j = 0; j < nb; ++j)
        quantized_scores<D, B>(L, mode, blks[j], head, q, tile_view{0, 1}, s + size_t(j) * T, T, fetch_ahead_of(L, blks, nb, j, head));
    // the run's slots are consecutive: every block but the last is full
    if (sink.scores) std::copy(s, s + n_tokens, sink.scores + blks[0].slot_base);
    if (!softmax_update<D>(s, n_tokens, st, 0)) return;
    accumulate_values_int<D, B>(L, mode, blks, nb, head, s, st.acc, next);
}

// A run of nb blocks of one quantised format for a tile of queries (GQA
// decode: a kv-head's group; prefill rows of unmasked blocks): the tile's
// scores for every block, one online-softmax update per query for the run,
// then accumulate_values_int_tile_run. Block by block (attend_tile) the
// per-query softmax update, score copy and accumulator transpose came to
// ~12 of int2's ~42 instructions per query and token for a group of 4.
template <int D, int B>
void attend_quantized_tile_run(const block_layout& L, quant_mode mode, const block_ref* blks, int nb, int head,
                               const head_query& q, head_state& st, const score_sink& sink, const tile_view& tv, float* s,
                               const next_run& next) {
    const int T = L.block_tokens, stride = nb * T;  // s: [tile][stride] scores, then probabilities
    const int n_tokens = (nb - 1) * T + blks[nb - 1].n_valid;
    for (int j = 0; j < nb; ++j) {
        quantized_scores<D, B>(L, mode, blks[j], head, q, tv, s + size_t(j) * T, stride, fetch_ahead_of(L, blks, nb, j, head));
    }
    bool active[max_tile];
    for (int i = 0; i < tv.n; ++i) {
        const int qi = tv.q0 + i;
        float* si = s + size_t(i) * stride;
        // the run's slots are consecutive: every block but the last is full
        if (sink.scores) std::copy(si, si + n_tokens, sink.scores + size_t(qi) * sink.stride + blks[0].slot_base);
        active[i] = softmax_update<D>(si, n_tokens, st, qi);
    }
    accumulate_values_int_tile_run<D, B>(L, mode, blks, nb, head, s, stride, tv, active, st, next);
}

// How many of blks[0..n_avail) a run takes at once (attend_quantized_run for
// one query, attend_quantized_tile_run for a tile of up to max_tile): blocks
// of blks[0]'s format, unmasked, all but the last full, at most run_tokens.
int run_length(const block_layout& L, const block_ref* blks, int n_avail, const head_query& q) {
    constexpr int run_tokens = max_run_scores;
    const int T = L.block_tokens;
    const block_ref& b0 = blks[0];
    if (q.nq() > max_tile || !q.q8 || b0.kind != block_kind::quantized || b0.needs_mask || T % 16 != 0 || 2 * T > run_tokens) return 1;
    // The integer value paths' shapes (int_values_supported): 64-dim int2 rows are 16 bytes.
    if (L.head_dim != 128 && !(L.head_dim == 64 && b0.fmt != kv_format::int2)) return 1;
    int nb = 1;
    while (nb < n_avail && (nb + 1) * T <= run_tokens && blks[nb - 1].n_valid == T && blks[nb].kind == block_kind::quantized &&
           blks[nb].fmt == b0.fmt && !blks[nb].needs_mask)
        ++nb;
    return nb;
}

template <int D, int B>
void attend_tile(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                 head_state& st, const score_sink& sink, const tile_view& tv, float* scratch) {
    const int T = L.block_tokens;
    if constexpr (B != 16) {
        if (tv.n == 1 && blk.kind == block_kind::quantized)
            return attend_quantized_1<D, B>(L, mode, blk, head, q, st, sink, tv.q0, scratch);
        if (tv.n == 1 && blk.kind == block_kind::kivi) {
            // KIVI values are per-token asymmetric rows: the single-query table path applies.
            float* s1 = scratch;
            kivi_scores<D, B>(L, blk, head, q, tv, s1, T, scratch + 2 * max_tile * T);
            if (sink.scores) std::copy(s1, s1 + blk.n_valid, sink.scores + size_t(tv.q0) * sink.stride + blk.slot_base);
            if (softmax_update<D>(s1, blk.n_valid, st, tv.q0))
                accumulate_values_1p<D, B>(L, quant_mode::asymmetric, blk, head, s1, st.acc + size_t(tv.q0) * D);
            return;
        }
    }
    float* s = scratch;                    // [tile][T] scores, then weights
    float* w = scratch + max_tile * T;     // [tile][T] weights times value scale
    float* qs = scratch + 2 * max_tile * T;  // [D] KIVI scaled query
    if (blk.kind == block_kind::fp16) {
        fp16_scores<D>(L, blk, head, q, tv, s, T);
    } else if (blk.kind == block_kind::kivi) {
        kivi_scores<D, B>(L, blk, head, q, tv, s, T, qs);
    } else {
        quantized_scores<D, B>(L, mode, blk, head, q, tv, s, T);
    }
    const quant_mode vmode = blk.kind == block_kind::kivi ? quant_mode::asymmetric : mode;
    constexpr kv_format F = B == 16 ? kv_format::fp16 : B == 8 ? kv_format::int8 : B == 4 ? kv_format::int4 : kv_format::int2;
    const half_bits* vparams = reinterpret_cast<const half_bits*>(blk.data + L.v_params + L.param_offset(head, 0));
    // Integer values (accumulate_values_int_tile) where the codes fit them.
    constexpr bool int_shape = B != 16 && int_values_supported<D, B>();
    const bool int_values = int_shape && T % 4 == 0 && T <= max_tile_values_tokens;
    int active = 0;
    for (int i = 0; i < tv.n; ++i) {
        const int qi = tv.q0 + i;
        float* si = s + i * T;
        if (sink.scores) std::copy(si, si + blk.n_valid, sink.scores + size_t(qi) * sink.stride + blk.slot_base);
        float* wi = w + i * T;
        if (!softmax_update<D>(si, blk.n_valid, st, qi)) {
            std::fill(wi, wi + blk.n_valid, 0.f);
            continue;
        }
        ++active;
        if constexpr (B == 16) {
            std::copy(si, si + blk.n_valid, wi);
        } else {
            // w = p * scale per token; the zero points go to z (common to all dims)
            __m512 zsum = _mm512_setzero_ps();
            for (int t0 = 0; t0 < blk.n_valid; t0 += 16) {
                const int n = std::min(16, blk.n_valid - t0);
                const __mmask16 k = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
                __m512 scale, zero;
                params16(F, vmode, vparams, t0, n, scale, zero);
                const __m512 pv = _mm512_maskz_loadu_ps(k, si + t0);
                const __m512 wv = _mm512_mul_ps(pv, scale);
                _mm512_mask_storeu_ps(wi + t0, k, wv);
                zsum = _mm512_fmadd_ps(pv, zero, zsum);
                // the integer path folds 8-bit codes as code-128 (value_codes4)
                if (B == 8 && int_values) zsum = _mm512_fmadd_ps(wv, _mm512_set1_ps(128.f), zsum);
            }
            st.z[qi] += _mm512_reduce_add_ps(zsum);
        }
    }
    if (active == 0) return;
    const uint8_t* v_rows = blk.data + L.v_codes + L.code_offset(head, 0);
    if constexpr (int_shape) {
        if (int_values) {
            // The block's value codes once for the whole tile: [n4/4][D/64][4] vectors.
            constexpr int NG = D / 64, P = D * B / 8;
            alignas(64) __m512i codes[max_tile_values_tokens / 4 * NG * 4];
            const int n4 = (blk.n_valid + 3) & ~3;
            for (int t = 0; t < n4; t += 4)
                value_codes4<D, B>(v_rows + size_t(t) * P, reinterpret_cast<__m512i(*)[4]>(codes + size_t(t / 4) * NG * 4));
            for (int i = 0; i < tv.n; ++i)
                accumulate_values_int_tile<D, B>(codes, blk.n_valid, w + i * T, st.acc + size_t(tv.q0 + i) * D);
            return;
        }
    }
    switch (tv.n) {
        case 1: return accumulate_values<D, B, 1>(v_rows, L.row, blk.n_valid, w, T, tv, st);
        case 2: return accumulate_values<D, B, 2>(v_rows, L.row, blk.n_valid, w, T, tv, st);
        case 4: return accumulate_values<D, B, 4>(v_rows, L.row, blk.n_valid, w, T, tv, st);
        case 8: return accumulate_values<D, B, 8>(v_rows, L.row, blk.n_valid, w, T, tv, st);
        case 16: return accumulate_values<D, B, 16>(v_rows, L.row, blk.n_valid, w, T, tv, st);
        default: return accumulate_values<D, B, 0>(v_rows, L.row, blk.n_valid, w, T, tv, st);
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
        switch (blk.fmt) {
            case kv_format::int8: attend_tile<D, 8>(L, mode, blk, head, q, st, sink, tv, scratch); break;
            case kv_format::int4: attend_tile<D, 4>(L, mode, blk, head, q, st, sink, tv, scratch); break;
            default: attend_tile<D, 2>(L, mode, blk, head, q, st, sink, tv, scratch); break;
        }
    }
}

}  // namespace

bool avx512_path_available(int head_dim) {
    static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                               __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    return cpu_ok && (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

void add_probabilities_avx512(const float* scores, size_t n, float m, float w, float* out) {
    size_t j = 0;
    const __m512 vm = _mm512_set1_ps(m), vw = _mm512_set1_ps(w);
    for (; j + 16 <= n; j += 16) {
        const __m512 p = simd::exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + j), vm));
        _mm512_storeu_ps(out + j, _mm512_fmadd_ps(p, vw, _mm512_loadu_ps(out + j)));
    }
    for (; j < n; ++j) out[j] += std::exp(scores[j] - m) * w;
}

int attend_blocks_avx512(const block_layout& L, quant_mode mode, const block_ref* blks, int n_avail, int head,
                         const head_query& q, head_state& st, const score_sink& sink, float* scratch) {
    const int nb = run_length(L, blks, n_avail, q);
    if (nb < 2) {
        attend_block_avx512(L, mode, blks[0], head, q, st, sink, scratch);
        return 1;
    }
    const bool d64 = L.head_dim == 64;
    const next_run next{blks + nb, std::min(nb, n_avail - nb)};
    if (q.nq() > 1) {
        const tile_view tv{0, q.nq()};
        switch (blks[0].fmt) {
            case kv_format::int8: d64 ? attend_quantized_tile_run<64, 8>(L, mode, blks, nb, head, q, st, sink, tv, scratch, next)
                                      : attend_quantized_tile_run<128, 8>(L, mode, blks, nb, head, q, st, sink, tv, scratch, next); break;
            case kv_format::int4: d64 ? attend_quantized_tile_run<64, 4>(L, mode, blks, nb, head, q, st, sink, tv, scratch, next)
                                      : attend_quantized_tile_run<128, 4>(L, mode, blks, nb, head, q, st, sink, tv, scratch, next); break;
            default: attend_quantized_tile_run<128, 2>(L, mode, blks, nb, head, q, st, sink, tv, scratch, next); break;  // not 64-dim int2 (run_length)
        }
        return nb;
    }
    switch (blks[0].fmt) {
        case kv_format::int8: d64 ? attend_quantized_run<64, 8>(L, mode, blks, nb, head, q, st, sink, scratch, next)
                                  : attend_quantized_run<128, 8>(L, mode, blks, nb, head, q, st, sink, scratch, next); break;
        case kv_format::int4: d64 ? attend_quantized_run<64, 4>(L, mode, blks, nb, head, q, st, sink, scratch, next)
                                  : attend_quantized_run<128, 4>(L, mode, blks, nb, head, q, st, sink, scratch, next); break;
        default: d64 ? attend_quantized_run<64, 2>(L, mode, blks, nb, head, q, st, sink, scratch, next)
                     : attend_quantized_run<128, 2>(L, mode, blks, nb, head, q, st, sink, scratch, next); break;
    }
    return nb;
}

void attend_block_avx512(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                       head_state& st, const score_sink& sink, float* scratch) {
    // Quantised keys need the int8 query; without it the reference path runs.
    if (blk.kind == block_kind::quantized && !q.q8) return attend_block_ref(L, mode, blk, head, q, st, sink, scratch);
    switch (L.head_dim) {
        case 64: return attend_block_d<64>(L, mode, blk, head, q, st, sink, scratch);
        case 128: return attend_block_d<128>(L, mode, blk, head, q, st, sink, scratch);
        case 256: return attend_block_d<256>(L, mode, blk, head, q, st, sink, scratch);
        default: return attend_block_ref(L, mode, blk, head, q, st, sink, scratch);
    }
}

}  // namespace smartkv

// Small AVX-512 helpers shared by the fast attention paths.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace smartkv::simd {

// acc += u8 a x s8 b, 4 pairs per int32 lane (vpdpbusd). GCC 12 keeps the
// intrinsic's operands in zmm0-15 and copies accumulators that live in
// zmm16-31 in and out around every use (~2 extra moves per instruction in the
// value loop); the asm lets any of the 32 registers hold them.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

// The same with the s8 operand read from memory (64 bytes at b): the load
// rides in the instruction instead of taking a register and an instruction.
inline __m512i dpbusd_mem(__m512i acc, __m512i a, const void* b) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "m"(*static_cast<const __m512i*>(b)));
    return acc;
}

// e^x for 16 floats, relative error ~2e-7; x <= -87.3 gives exactly 0 (so
// masked scores of -inf contribute nothing).
inline __m512 exp16(__m512 x) {
    const __m512 too_small = _mm512_set1_ps(-87.3f);
    const __mmask16 zero = _mm512_cmp_ps_mask(x, too_small, _CMP_LT_OQ);
    x = _mm512_max_ps(x, too_small);
    x = _mm512_min_ps(x, _mm512_set1_ps(88.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n*ln2 in two parts for accuracy
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_maskz_mov_ps(~zero, _mm512_scalef_ps(p, n));
}

// 16 codes of b bits as floats: dims [16c, 16c+16) of a planar-packed row of
// head_dim D (formats.h). Plane p holds dims [p*P, (p+1)*P), P = D*b/8 bytes.
template <int D, int B>
inline __m512 codes16_as_float(const uint8_t* row, int c) {
    constexpr int P = D * B / 8;  // bytes per row = dims per plane
    const int first = 16 * c, plane = first / P, byte = first % P;
    __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + byte)));
    if constexpr (B < 8) {
        x = _mm512_and_si512(_mm512_srlv_epi32(x, _mm512_set1_epi32(B * plane)), _mm512_set1_epi32((1 << B) - 1));
    }
    return _mm512_cvtepi32_ps(x);
}

// 64 codes of b bits as u8 lanes: dims [64c, 64c+64) of a planar-packed row.
// c is a constant after unrolling, so every shift below is an immediate (or
// vanishes for plane 0) and repeated loads of the same short row are one
// broadcast.
template <int D, int B>
inline __m512i codes64(const uint8_t* row, int c) {
    constexpr int P = D * B / 8;
    const __m512i mask = _mm512_set1_epi8(char((1 << B) - 1));
    if constexpr (B == 8) {
        return _mm512_loadu_si512(row + 64 * c);
    } else if constexpr (P >= 64) {
        const int first = 64 * c, plane = first / P, byte = first % P;
        const __m512i x = _mm512_loadu_si512(row + byte);
        if (plane == 0) return _mm512_and_si512(x, mask);
        return _mm512_and_si512(_mm512_srli_epi16(x, unsigned(B * plane)), mask);  // 16-bit shifts; the mask drops the spill
    } else if constexpr (P == 32) {
        // two planes per 64 dims: [plane 2c | plane 2c+1] from the same 32 bytes
        const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)));
        const int s = B * 2 * c;
        const __m512i shifts = _mm512_inserti64x4(_mm512_set1_epi16(short(s)), _mm256_set1_epi16(short(s + B)), 1);
        return _mm512_and_si512(_mm512_srlv_epi16(x, shifts), mask);
    } else {
        static_assert(P == 16, "rows of 16 bytes hold four planes of 16 dims");
        const __m512i x = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
        const int s = B * 4 * c;
        const __m512i shifts = _mm512_set_epi16(
            short(s + 3 * B), short(s + 3 * B), short(s + 3 * B), short(s + 3 * B), short(s + 3 * B), short(s + 3 * B),
            short(s + 3 * B), short(s + 3 * B), short(s + 2 * B), short(s + 2 * B), short(s + 2 * B), short(s + 2 * B),
            short(s + 2 * B), short(s + 2 * B), short(s + 2 * B), short(s + 2 * B), short(s + B), short(s + B),
            short(s + B), short(s + B), short(s + B), short(s + B), short(s + B), short(s + B), short(s), short(s),
            short(s), short(s), short(s), short(s), short(s), short(s));
        return _mm512_and_si512(_mm512_srlv_epi16(x, shifts), mask);
    }
}

// sum_d q8_d * code_d of one packed key row as 16 int32 partial sums
// (vpdpbusd: u8 codes x s8 query, 4 pairs per lane).
template <int D, int B>
inline __m512i key_dot(const uint8_t* row, const __m512i* q8) {
    __m512i acc = dpbusd(_mm512_setzero_si512(), codes64<D, B>(row, 0), q8[0]);
    for (int c = 1; c < D / 64; ++c) acc = dpbusd(acc, codes64<D, B>(row, c), q8[c]);
    return acc;
}

}  // namespace smartkv::simd

namespace smartkv::simd {

// Sums of 16 vectors of 16 int32 lanes: lane i of the result = sum of a[i].
// A transpose-and-add tree, ~3 instructions per vector instead of ~8 for a
// horizontal reduction each.
inline __m512i reduce16_epi32(const __m512i* a) {
    __m512i b[8], c[4];
    for (int i = 0; i < 8; ++i)
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
        c[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]), _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
    const __m512i d0 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88), _mm512_shuffle_i32x4(c[0], c[1], 0xdd));
    const __m512i d1 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2], c[3], 0x88), _mm512_shuffle_i32x4(c[2], c[3], 0xdd));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(d0, d1, 0x88), _mm512_shuffle_i32x4(d0, d1, 0xdd));
}

// The 16-entry code -> value table index pattern of a b-bit format: vpermps
// looks at the low 4 bits of each index, so for 2-bit codes the entry for i
// must depend on i & 3 only (the bits above belong to the next plane).
template <int B>
inline __m512 code_pattern() {
    if constexpr (B == 4) return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    else return _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
}

}  // namespace smartkv::simd

namespace smartkv::simd {

// Float version of reduce16_epi32: lane i of the result = sum of a[i].
inline __m512 reduce16_ps(const __m512* a) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; ++i) b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {
        const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
        const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
        c[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
    const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xdd));
}

}  // namespace smartkv::simd

// AVX-512 versions of quantize_vector / dequantize_vector (formats.h) for the
// append and plan paths. They produce bit-identical rows and parameters: the
// same fp16 rounding of the parameters (vcvtps2ph, round to nearest even),
// the same float arithmetic, and rint's round-to-nearest-even.
#include <immintrin.h>

#include "quantize-fast.h"

namespace smartkv {

namespace {

// codes [D] u8 -> planar-packed row (formats.h)
void pack_codes(kv_format f, const uint8_t* codes, int D, uint8_t* row) {
    const int bits = format_bits(f), planes = 8 / bits, P = D / planes;  // P: bytes per row
    for (int j = 0; j < P; j += 64) {
        const __mmask64 m = P - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (P - j)) - 1;
        __m512i acc = _mm512_maskz_loadu_epi8(m, codes + j);
        for (int p = 1; p < planes; ++p) {
            // codes < 2^bits, so a 16-bit shift never carries into the next byte
            const __m512i c = _mm512_maskz_loadu_epi8(m, codes + p * P + j);
            acc = _mm512_or_si512(acc, _mm512_sll_epi16(c, _mm_cvtsi32_si128(bits * p)));
        }
        _mm512_mask_storeu_epi8(row + j, m, acc);
    }
}

// planar-packed row -> codes [D] u8
void unpack_codes(kv_format f, const uint8_t* row, int D, uint8_t* codes) {
    const int bits = format_bits(f), planes = 8 / bits, P = D / planes;
    const __m512i mask = _mm512_set1_epi8(char((1 << bits) - 1));
    for (int j = 0; j < P; j += 64) {
        const __mmask64 m = P - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (P - j)) - 1;
        const __m512i x = _mm512_maskz_loadu_epi8(m, row + j);
        for (int p = 0; p < planes; ++p) {
            const __m512i c = _mm512_and_si512(_mm512_srl_epi16(x, _mm_cvtsi32_si128(bits * p)), mask);
            _mm512_mask_storeu_epi8(codes + p * P + j, m, c);
        }
    }
}

inline half_bits to_half(float x) { return half_bits(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)); }

}  // namespace

void quantize_vector_fast(kv_format f, quant_mode m, const float* x, int D, uint8_t* row, half_bits* params, float clip) {
    if (f == kv_format::fp16) {
        for (int d = 0; d < D; d += 16)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + 2 * d),
                                _mm512_cvtps_ph(_mm512_loadu_ps(x + d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        return;
    }
    __m512 lo = _mm512_loadu_ps(x), hi = lo;
    for (int d = 16; d < D; d += 16) {
        const __m512 v = _mm512_loadu_ps(x + d);
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    const float mn = _mm512_reduce_min_ps(lo), mx = _mm512_reduce_max_ps(hi);
    const int max_code = format_max_code(f);
    if (m == quant_mode::symmetric) {
        const float absmax = (-mn > mx ? -mn : mx) * clip;
        params[0] = to_half(absmax > 0.f ? absmax / (0.5f * float(max_code)) : 1.f);
    } else {
        params[0] = to_half(mx > mn ? (mx - mn) / float(max_code) : 1.f);
        params[1] = to_half(mn);
    }
    const dequant_params p = read_params(f, m, params);
    const __m512 inv = _mm512_set1_ps(1.f / p.scale), zero = _mm512_set1_ps(p.zero);
    const __m512 top = _mm512_set1_ps(float(max_code)), bottom = _mm512_setzero_ps();
    alignas(64) uint8_t codes[512];
    for (int d = 0; d < D; d += 16) {
        __m512 c = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + d), zero), inv);
        c = _mm512_roundscale_ps(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        c = _mm512_min_ps(_mm512_max_ps(c, bottom), top);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + d), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c)));
    }
    if (f == kv_format::int8) {
        for (int d = 0; d < D; ++d) row[d] = codes[d];
        return;
    }
    pack_codes(f, codes, D, row);
}

void dequantize_vector_fast(kv_format f, quant_mode m, const uint8_t* row, const half_bits* params, int D, float* out) {
    if (f == kv_format::fp16) {
        for (int d = 0; d < D; d += 16)
            _mm512_storeu_ps(out + d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * d))));
        return;
    }
    alignas(64) uint8_t codes[512];
    const uint8_t* c = row;
    if (f != kv_format::int8) {
        unpack_codes(f, row, D, codes);
        c = codes;
    }
    const dequant_params p = read_params(f, m, params);
    const __m512 scale = _mm512_set1_ps(p.scale), zero = _mm512_set1_ps(p.zero);
    for (int d = 0; d < D; d += 16) {
        const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + d))));
        // scale*code + zero, rounded the same way as the reference (no FMA contraction)
        _mm512_storeu_ps(out + d, _mm512_add_ps(_mm512_mul_ps(scale, v), zero));
    }
}

}  // namespace smartkv

namespace smartkv {
bool quantize_fast_available() {
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
    return ok;
}
}  // namespace smartkv

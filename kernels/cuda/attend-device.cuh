// Device helpers of the attention kernel: unpacking planar rows, integer and
// float dot products, value rows. Planar packing (formats.h) means a 32-bit
// word of a row, shifted by bits*s and masked, holds the u8 codes of 4
// consecutive dims of plane s: dims s*R + byte .. +3 (R = bytes of a row).
//
//   8-bit: 1 plane    4-bit: 2 planes (low nibbles, high nibbles)
//   2-bit: 4 planes   -> each masked word feeds one dp4a with 4 s8 q codes.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "smartkv/formats.h"

namespace smartkv::cuda {

#define SKV_NEG_INF (-__int_as_float(0x7f800000))  // -infinity, on the device

template <int BITS>
struct plane_bits {
    static constexpr int planes = 8 / BITS;
    static constexpr uint32_t mask = BITS == 8 ? 0xffffffffu : BITS == 4 ? 0x0f0f0f0fu : 0x03030303u;
};

__device__ __forceinline__ float h2f(half_bits h) { return __half2float(__ushort_as_half(h)); }

// 4 u8 codes (bytes of w) -> floats, exactly: bits 0x4b0000cc are 2^23 + cc.
__device__ __forceinline__ void codes_to_floats(uint32_t w, float f[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7540u + i)) - 8388608.f;
}

// u8 codes x s8 query codes, 4 at a time.
__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Parameters of a stored vector with the hardware half conversion (the same
// values as read_params in formats.h).
__device__ __forceinline__ dequant_params load_params(kv_format f, quant_mode m, const half_bits* p) {
    const float scale = h2f(p[0]);
    if (m == quant_mode::asymmetric) return {scale, h2f(p[1])};
    return {scale, -scale * (0.5f * float(format_max_code(f)))};
}

// Integer dot of one packed key row with QT s8 queries: acc[j] += sum_d code_d * q8[j][d].
// q8w: shared [QT][D/4] words.
template <int D, int BITS, int QT>
__device__ __forceinline__ void dot_codes_int(const uint8_t* row, const int* q8w, int acc[QT]) {
    constexpr int R = D * BITS / 8;
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
#pragma unroll 4  // 64 bytes of a row in flight per step: bounds the registers
    for (int c = 0; c < R / 16; ++c) {
        const uint4 v = __ldg(r4 + c);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int wi = 0; wi < 4; ++wi)
#pragma unroll
            for (int s = 0; s < plane_bits<BITS>::planes; ++s) {
                const uint32_t cw = (words[wi] >> (BITS * s)) & plane_bits<BITS>::mask;
                const int widx = (s * R + 16 * c + 4 * wi) / 4;
#pragma unroll
                for (int j = 0; j < QT; ++j) acc[j] = dp4a_us(cw, q8w[j * (D / 4) + widx], acc[j]);
            }
    }
}

// Float dot of one packed key row (codes as floats) with QT weight vectors.
// w: shared [QT][D] f32.
template <int D, int BITS, int QT>
__device__ __forceinline__ void dot_codes_float(const uint8_t* row, const float* w, float acc[QT]) {
    constexpr int R = D * BITS / 8;
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
#pragma unroll 4  // 64 bytes of a row in flight per step: bounds the registers
    for (int c = 0; c < R / 16; ++c) {
        const uint4 v = __ldg(r4 + c);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int wi = 0; wi < 4; ++wi)
#pragma unroll
            for (int s = 0; s < plane_bits<BITS>::planes; ++s) {
                float f[4];
                codes_to_floats((words[wi] >> (BITS * s)) & plane_bits<BITS>::mask, f);
                const int d0 = s * R + 16 * c + 4 * wi;
#pragma unroll
                for (int j = 0; j < QT; ++j) {
                    const float4 q = *reinterpret_cast<const float4*>(w + j * D + d0);
                    acc[j] += q.x * f[0] + q.y * f[1] + q.z * f[2] + q.w * f[3];
                }
            }
    }
}

// Float dot of one fp16 key row with QT queries.
template <int D, int QT>
__device__ __forceinline__ void dot_fp16(const uint8_t* row, const float* w, float acc[QT]) {
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
#pragma unroll 4
    for (int c = 0; c < D / 8; ++c) {
        const uint4 v = __ldg(r4 + c);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int wi = 0; wi < 4; ++wi) {
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[wi]));
            const int d0 = 8 * c + 2 * wi;
#pragma unroll
            for (int j = 0; j < QT; ++j) {
                const float2 q = *reinterpret_cast<const float2*>(w + j * D + d0);
                acc[j] += q.x * f.x + q.y * f.y;
            }
        }
    }
}

// The DPL = D/32 consecutive dims a lane owns in the value accumulator,
// dims lane*DPL .. +DPL-1, from a packed value row (codes as floats).
template <int D, int BITS>
__device__ __forceinline__ void value_codes(const uint8_t* row, int lane, float v[D / 32]) {
    constexpr int R = D * BITS / 8, DPL = D / 32;
    const int d0 = lane * DPL, s = d0 / R, off = d0 % R;
    const int shift = BITS * s;
    if constexpr (DPL == 2) {
        const uint32_t w = *reinterpret_cast<const uint16_t*>(row + off);
        float f[4];
        codes_to_floats((w >> shift) & plane_bits<BITS>::mask, f);
        v[0] = f[0], v[1] = f[1];
    } else if constexpr (DPL == 4) {
        const uint32_t w = __ldg(reinterpret_cast<const unsigned int*>(row + off));
        codes_to_floats((w >> shift) & plane_bits<BITS>::mask, v);
    } else {
        static_assert(DPL == 8, "head_dim 64, 128 or 256");
        const uint2 w = __ldg(reinterpret_cast<const uint2*>(row + off));
        codes_to_floats((w.x >> shift) & plane_bits<BITS>::mask, v);
        codes_to_floats((w.y >> shift) & plane_bits<BITS>::mask, v + 4);
    }
}

template <int D>
__device__ __forceinline__ void value_fp16(const uint8_t* row, int lane, float v[D / 32]) {
    constexpr int DPL = D / 32;
    const uint8_t* p = row + size_t(lane) * DPL * 2;
    if constexpr (DPL == 2) {
        const uint32_t w = __ldg(reinterpret_cast<const unsigned int*>(p));
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
        v[0] = f.x, v[1] = f.y;
    } else if constexpr (DPL == 4) {
        const uint2 w = __ldg(reinterpret_cast<const uint2*>(p));
        const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&w.x));
        const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&w.y));
        v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
        const uint4 w = __ldg(reinterpret_cast<const uint4*>(p));
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
            v[2 * i] = f.x, v[2 * i + 1] = f.y;
        }
    }
}

}  // namespace smartkv::cuda

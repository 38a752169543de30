// Device helpers of the attention kernel: unpacking planar rows, integer and
// float dot products, value rows. Planar packing (formats.h) means a 32-bit
// word of a row, shifted by bits*s and masked, holds the u8 codes of 4
// consecutive dims of plane s: dims s*R + byte .. +3 (R = bytes of a row).
//
//   8-bit: 1 plane    4-bit: 2 planes (low nibbles, high nibbles)
//   2-bit: 4 planes   -> each masked word feeds one dp4a with 4 s8 q codes.
//
// The row helpers also compile as plain C++ (SKV_DEV, host stand-ins for the
// intrinsics) so smartkv-gpu-check can check their index math on any machine.
#pragma once
#include <cstdint>
#include <cstring>

#include "smartkv/formats.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define SKV_DEV __device__ __forceinline__
#else
#include <vector_types.h>  // uint4, float4, ... (host-compatible CUDA header)
#define SKV_DEV inline
#endif

namespace smartkv::cuda {

#define SKV_NEG_INF (-__int_as_float(0x7f800000))  // -infinity, on the device

// Intrinsics with host stand-ins (same results). The device branch must name
// the intrinsic (__ldg): a call to ldg itself here is infinite recursion, which
// the compiler is free to drop; smartkv-ptx-check (test/ptx-check.sh) asserts
// the 128-bit read-only loads this produces, since the host emulator cannot.
template <typename T>
SKV_DEV T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

// 16 bytes global -> shared without passing through registers (cp.async, sm_80+;
// .cg: not kept in L1, the tile is read once). Completed by cp_async_wait_all();
// the host stand-in copies at once.
SKV_DEV void cp_async16(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__)
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#else
    std::memcpy(smem_dst, gmem_src, 16);
#endif
}

// Asks for the 128-byte line at p to be brought into L2 (no registers, no
// wait); a no-op on the host.
SKV_DEV void prefetch_l2(const void* p) {
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}

// Waits for this thread's cp.async copies; a __syncwarp after it makes every
// lane's copies visible to the warp.
SKV_DEV void cp_async_wait_all() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

SKV_DEV uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t sel) {
#if defined(__CUDA_ARCH__)
    return __byte_perm(x, y, sel);
#else
    const uint64_t v = (uint64_t(y) << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= uint32_t((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
#endif
}

// Two halves (low, high) of a 32-bit word -> floats.
struct float_pair {
    float x, y;
};
SKV_DEV float_pair halves_to_floats(uint32_t w) {
#if defined(__CUDA_ARCH__)
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
    return {f.x, f.y};
#else
    return {half_to_float(half_bits(w & 0xffff)), half_to_float(half_bits(w >> 16))};
#endif
}

template <int BITS>
struct plane_bits {
    static constexpr int planes = 8 / BITS;
    static constexpr uint32_t mask = BITS == 8 ? 0xffffffffu : BITS == 4 ? 0x0f0f0f0fu : 0x03030303u;
};

SKV_DEV float h2f(half_bits h) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h));
#else
    return half_to_float(h);
#endif
}

// 4 u8 codes (bytes of w) -> floats, exactly: bits 0x4b0000cc are 2^23 + cc.
SKV_DEV void codes_to_floats(uint32_t w, float f[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = bits_to_float(byte_perm(w, 0x4b000000u, 0x7540u + i)) - 8388608.f;
}

// u8 codes x s8 query codes, 4 at a time.
SKV_DEV int dp4a_us(uint32_t a, int b, int c) {
#if defined(__CUDA_ARCH__)
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#else
    for (int i = 0; i < 4; ++i) c += int((a >> (8 * i)) & 0xff) * int(int8_t((uint32_t(b) >> (8 * i)) & 0xff));
    return c;
#endif
}

#if defined(__CUDACC__)
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
#endif

// Parameters of a stored vector with the hardware half conversion (the same
// values as read_params in formats.h).
SKV_DEV dequant_params load_params(kv_format f, quant_mode m, const half_bits* p) {
    const float scale = h2f(p[0]);
    if (m == quant_mode::asymmetric) return {scale, h2f(p[1])};
    return {scale, -scale * (0.5f * float(format_max_code(f)))};
}

// 16-byte chunks of a key row in flight per loop step: fewer as the query
// slots' state (QT x D/32 accumulators a lane) grows, so nothing spills
// (ptx-check.sh asserts it).
template <int D, int QT>
SKV_DEV constexpr int key_row_unroll() {
    return D * QT >= 2048 || (D == 64 && QT >= 4) ? 1 : D * QT >= 256 ? 2 : 4;
}

// The QT slots' query words for one word index, together: one 128-bit shared
// load per 4 slots instead of one load per dp4a.
template <int QT>
SKV_DEV void load_slot_words(const int* p, int out[QT]) {
    if constexpr (QT % 4 == 0) {
#pragma unroll
        for (int j = 0; j < QT; j += 4) {
            const int4 v = *reinterpret_cast<const int4*>(p + j);
            out[j] = v.x, out[j + 1] = v.y, out[j + 2] = v.z, out[j + 3] = v.w;
        }
    } else if constexpr (QT == 2) {
        const int2 v = *reinterpret_cast<const int2*>(p);
        out[0] = v.x, out[1] = v.y;
    } else {
#pragma unroll
        for (int j = 0; j < QT; ++j) out[j] = p[j];
    }
}

// Integer dot of one packed key row with QT s8 queries: acc[j] += sum_d code_d * q8[j][d].
// q8w: shared [D/4][QT] words (word w of every slot side by side: 4 dims of slot j
// at q8w[w*QT + j]), 16-byte aligned.
template <int D, int BITS, int QT>
SKV_DEV void dot_codes_int(const uint8_t* row, const int* q8w, int acc[QT]) {
    constexpr int R = D * BITS / 8;
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
#pragma unroll(key_row_unroll<D, QT>())
    for (int c = 0; c < R / 16; ++c) {
        const uint4 v = ldg(r4 + c);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int wi = 0; wi < 4; ++wi)
#pragma unroll
            for (int s = 0; s < plane_bits<BITS>::planes; ++s) {
                const uint32_t cw = (words[wi] >> (BITS * s)) & plane_bits<BITS>::mask;
                const int widx = (s * R + 16 * c + 4 * wi) / 4;
                int qw[QT];
                load_slot_words<QT>(q8w + widx * QT, qw);
#pragma unroll
                for (int j = 0; j < QT; ++j) acc[j] = dp4a_us(cw, qw[j], acc[j]);
            }
    }
}

// Float dot of one packed key row (codes as floats) with QT weight vectors.
// w: shared [QT][D] f32.
template <int D, int BITS, int QT>
SKV_DEV void dot_codes_float(const uint8_t* row, const float* w, float acc[QT]) {
    constexpr int R = D * BITS / 8;
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
#pragma unroll(key_row_unroll<D, QT>())
    for (int c = 0; c < R / 16; ++c) {
        const uint4 v = ldg(r4 + c);
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
SKV_DEV void dot_fp16(const uint8_t* row, const float* w, float acc[QT]) {
    const uint4* r4 = reinterpret_cast<const uint4*>(row);
#pragma unroll(key_row_unroll<D, QT>())
    for (int c = 0; c < D / 8; ++c) {
        const uint4 v = ldg(r4 + c);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int wi = 0; wi < 4; ++wi) {
            const float_pair f = halves_to_floats(words[wi]);
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
// dims lane*DPL .. +DPL-1, from a packed value row (codes as floats). Rows
// come from the warp's shared value tile (plain loads, not __ldg).
template <int D, int BITS>
SKV_DEV void value_codes(const uint8_t* row, int lane, float v[D / 32]) {
    constexpr int R = D * BITS / 8, DPL = D / 32;
    const int d0 = lane * DPL, s = d0 / R, off = d0 % R;
    const int shift = BITS * s;
    if constexpr (DPL == 2) {
        const uint32_t w = *reinterpret_cast<const uint16_t*>(row + off);
        float f[4];
        codes_to_floats((w >> shift) & plane_bits<BITS>::mask, f);
        v[0] = f[0], v[1] = f[1];
    } else if constexpr (DPL == 4) {
        const uint32_t w = *reinterpret_cast<const unsigned int*>(row + off);
        codes_to_floats((w >> shift) & plane_bits<BITS>::mask, v);
    } else {
        static_assert(DPL == 8, "head_dim 64, 128 or 256");
        const uint2 w = *reinterpret_cast<const uint2*>(row + off);
        codes_to_floats((w.x >> shift) & plane_bits<BITS>::mask, v);
        codes_to_floats((w.y >> shift) & plane_bits<BITS>::mask, v + 4);
    }
}

template <int D>
SKV_DEV void value_fp16(const uint8_t* row, int lane, float v[D / 32]) {
    constexpr int DPL = D / 32;
    const uint8_t* p = row + size_t(lane) * DPL * 2;
    if constexpr (DPL == 2) {
        const float_pair f = halves_to_floats(*reinterpret_cast<const unsigned int*>(p));
        v[0] = f.x, v[1] = f.y;
    } else if constexpr (DPL == 4) {
        const uint2 w = *reinterpret_cast<const uint2*>(p);
        const float_pair a = halves_to_floats(w.x), b = halves_to_floats(w.y);
        v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
        const uint4 w = *reinterpret_cast<const uint4*>(p);
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float_pair f = halves_to_floats(words[i]);
            v[2 * i] = f.x, v[2 * i + 1] = f.y;
        }
    }
}

}  // namespace smartkv::cuda

// IEEE-754 binary16 <-> binary32 conversion usable from host C++ and CUDA.
// The CPU fast path uses F16C instructions instead; these are the reference.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SKV_HD __host__ __device__ __forceinline__
#else
#define SKV_HD inline
#endif

namespace smartkv {

using half_bits = uint16_t;  // raw binary16 storage; no arithmetic on it

SKV_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

SKV_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
#endif
}

SKV_HD float half_to_float(half_bits h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: value = man * 2^-24
        const float mag = float(man) * 5.9604644775390625e-8f;
        return sign ? -mag : mag;
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
    return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest even, overflow to infinity, like vcvtps2ph with imm 0.
SKV_HD half_bits float_to_half(float f) {
    const uint32_t x = float_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return half_bits(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return half_bits(sign | 0x7c00u);  // rounds past 65504
    if (abs < 0x38800000u) {
        // result is subnormal (or zero): scale to units of 2^-24 and round
        const float mag = bits_to_float(abs) * 16777216.0f;
        uint32_t m = uint32_t(mag);
        const float rem = mag - float(m);
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
        return half_bits(sign | m);
    }
    const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return half_bits(sign | ((rounded - (112u << 23)) >> 13));
}

SKV_HD float round_to_half(float f) { return half_to_float(float_to_half(f)); }

}  // namespace smartkv

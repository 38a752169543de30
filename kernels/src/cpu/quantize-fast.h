// Vectorised quantise/dequantise of one vector, bit-identical to the
// reference in formats.h; `quantize_fast_available()` says whether this CPU
// runs them (AVX-512BW/F16C), else callers use the reference.
#pragma once
#include "smartkv/formats.h"

namespace smartkv {

bool quantize_fast_available();
void quantize_vector_fast(kv_format f, quant_mode m, const float* x, int head_dim, uint8_t* row, half_bits* params,
                          float clip = 1.f);
void dequantize_vector_fast(kv_format f, quant_mode m, const uint8_t* row, const half_bits* params, int head_dim, float* out);

// Dispatching wrappers used by the stores.
inline void quantize_row(kv_format f, quant_mode m, const float* x, int D, uint8_t* row, half_bits* params,
                         float clip = 1.f) {
    static const bool fast = quantize_fast_available();
    if (fast && D % 16 == 0) quantize_vector_fast(f, m, x, D, row, params, clip);
    else quantize_vector(f, m, x, D, row, params, clip);
}
inline void dequantize_row(kv_format f, quant_mode m, const uint8_t* row, const half_bits* params, int D, float* out) {
    static const bool fast = quantize_fast_available();
    if (fast && D % 16 == 0) dequantize_vector_fast(f, m, row, params, D, out);
    else dequantize_vector(f, m, row, params, D, out);
}

}  // namespace smartkv

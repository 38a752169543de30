// KIVI baseline storage (Liu et al. 2024), as a storage kind of the engine:
// keys quantised per channel over a group of kivi_group tokens (asymmetric,
// a scale and minimum per (kv-head, channel)), values per token (asymmetric),
// and a 16-bit residual window of the newest tokens.
//
// A group is one block (block-layout.h with kivi_keys = true, T = 32):
//   k_codes  [H][32][row]  u8   per-token rows, planar packed as in formats.h
//   v_codes  [H][32][row]  u8
//   k_params [H][D][2]     f16  per channel: scale, minimum over the 32 tokens
//   v_params [H][32][2]    f16  per token: scale, minimum
//   pos      [32]          i32
#pragma once
#include "smartkv/formats.h"

namespace smartkv {

constexpr int kivi_group = 32;

// Quantise the keys of one kv-head for a full group: x is [32][D] f32,
// rows are written at row_stride bytes apart, channel params [D][2].
SKV_HD void kivi_quantize_keys(kv_format f, const float* x, int head_dim, uint8_t* rows, int row_stride,
                               half_bits* channel_params) {
    const int max_code = format_max_code(f);
    for (int t = 0; t < kivi_group; ++t)
        for (int i = 0; i < row_bytes(f, head_dim); ++i) rows[t * row_stride + i] = 0;
    for (int d = 0; d < head_dim; ++d) {
        float lo = x[d], hi = x[d];
        for (int t = 1; t < kivi_group; ++t) {
            lo = fminf(lo, x[t * head_dim + d]);
            hi = fmaxf(hi, x[t * head_dim + d]);
        }
        channel_params[2 * d] = float_to_half(hi > lo ? (hi - lo) / float(max_code) : 1.f);
        channel_params[2 * d + 1] = float_to_half(lo);
        const float scale = half_to_float(channel_params[2 * d]);
        const float zero = half_to_float(channel_params[2 * d + 1]);
        for (int t = 0; t < kivi_group; ++t) {
            float c = rintf((x[t * head_dim + d] - zero) / scale);
            c = fminf(fmaxf(c, 0.f), float(max_code));
            set_code(f, rows + t * row_stride, head_dim, d, int(c));
        }
    }
}

SKV_HD void kivi_dequantize_key(kv_format f, const uint8_t* row, const half_bits* channel_params, int head_dim,
                                float* out) {
    for (int d = 0; d < head_dim; ++d)
        out[d] = half_to_float(channel_params[2 * d]) * float(code_at(f, row, head_dim, d)) +
                 half_to_float(channel_params[2 * d + 1]);
}

}  // namespace smartkv

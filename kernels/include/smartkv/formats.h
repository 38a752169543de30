// KV storage formats and the one traits table that CPU and CUDA code share.
//
// A token's key (or value) for one kv-head is a vector of head_dim floats. It
// is stored as a *row* of codes plus per-vector parameters:
//
//   fp16  : head_dim half floats, no parameters           (protected tokens)
//   int8  : head_dim codes, 1 a byte                       }  x = scale*code + zero
//   int4  : head_dim codes, 2 a byte                       }  symmetric: zero = -scale*(2^(b-1)-1/2)
//   int2  : head_dim codes, 4 a byte                       }  asymmetric: zero = stored minimum
//
// Codes are unsigned (0 .. 2^b-1), which is what u8 x s8 integer dot products
// (AVX-512 VNNI, CUDA dp4a) want. Symmetric levels sit at ±(k+1/2)·scale, so
// 2-bit keeps four levels instead of the three of a signed {-1,0,1} code.
//
// Packing is *planar* so that unpacking yields contiguous runs of dimensions:
//   4-bit: byte j (j < D/2) = code[j] | code[j + D/2] << 4
//   2-bit: byte j (j < D/4) = code[j] | code[j+D/4] << 2 | code[j+D/2] << 4 | code[j+3D/4] << 6
// A 64-byte load of a 4-bit row (D = 128) gives dims 0..63 in the low nibbles
// and 64..127 in the high nibbles; no shuffles are needed.
#pragma once
#include <cmath>
#include <cstdint>

#include "smartkv/half.h"

namespace smartkv {

enum class kv_format : uint8_t { fp16 = 0, int8 = 1, int4 = 2, int2 = 3 };
constexpr int n_formats = 4;

enum class quant_mode : uint8_t { symmetric = 0, asymmetric = 1 };

struct format_traits {
    const char* name;
    int bits;           // bits per stored element
    int max_code;       // 2^bits - 1 (0 for fp16)
};

constexpr format_traits k_format_traits[n_formats] = {
    {"fp16", 16, 0},
    {"int8", 8, 255},
    {"int4", 4, 15},
    {"int2", 2, 3},
};

SKV_HD constexpr int format_bits(kv_format f) {
    return f == kv_format::fp16 ? 16 : f == kv_format::int8 ? 8 : f == kv_format::int4 ? 4 : 2;
}
SKV_HD constexpr int format_max_code(kv_format f) { return (1 << format_bits(f)) - 1; }
SKV_HD constexpr bool format_is_quantized(kv_format f) { return f != kv_format::fp16; }

// Bytes of one packed row (one vector of head_dim elements).
SKV_HD constexpr int row_bytes(kv_format f, int head_dim) { return head_dim * format_bits(f) / 8; }

// Half floats of parameters per vector: none for fp16, a scale (symmetric) or
// a scale and a minimum (asymmetric) for the integer formats.
SKV_HD constexpr int params_per_vector(kv_format f, quant_mode m) {
    return f == kv_format::fp16 ? 0 : (m == quant_mode::symmetric ? 1 : 2);
}

// Bytes per token per kv-head for K and V together, payload plus parameters.
SKV_HD constexpr int vector_pair_bytes(kv_format f, quant_mode m, int head_dim) {
    return 2 * (row_bytes(f, head_dim) + 2 * params_per_vector(f, m));
}

// ---------------------------------------------------------------------------
// Reference quantisation of one vector (host and device). `params` receives
// params_per_vector() half floats. Parameters are rounded to fp16 *before* the
// codes are chosen, so the stored parameters reproduce exactly what was used.

struct dequant_params {
    float scale;
    float zero;  // x = scale * code + zero
};

SKV_HD dequant_params read_params(kv_format f, quant_mode m, const half_bits* p) {
    const float scale = half_to_float(p[0]);
    if (m == quant_mode::asymmetric) return {scale, half_to_float(p[1])};
    const float mid = 0.5f * float(format_max_code(f));  // 2^(b-1) - 1/2
    return {scale, -scale * mid};
}

SKV_HD int code_at(kv_format f, const uint8_t* row, int head_dim, int d) {
    switch (f) {
        case kv_format::int8: return row[d];
        case kv_format::int4: {
            const int half = head_dim / 2;
            return d < half ? (row[d] & 0xf) : (row[d - half] >> 4);
        }
        case kv_format::int2: {
            const int quarter = head_dim / 4;
            return (row[d % quarter] >> (2 * (d / quarter))) & 0x3;
        }
        default: return 0;
    }
}

SKV_HD void set_code(kv_format f, uint8_t* row, int head_dim, int d, int code) {
    switch (f) {
        case kv_format::int8: row[d] = uint8_t(code); break;
        case kv_format::int4: {
            const int half = head_dim / 2;
            if (d < half) row[d] = uint8_t((row[d] & 0xf0) | code);
            else row[d - half] = uint8_t((row[d - half] & 0x0f) | (code << 4));
            break;
        }
        case kv_format::int2: {
            const int quarter = head_dim / 4, shift = 2 * (d / quarter);
            uint8_t& b = row[d % quarter];
            b = uint8_t((b & ~(0x3 << shift)) | (code << shift));
            break;
        }
        default: break;
    }
}

// Share of absmax a symmetric scale covers. Vectors rotated by the rotate_kv
// option (kv-rotation.h) are close to Gaussian, and for those a 2-bit scale
// covering 0.6·absmax, with the few values beyond clipped to the outer level,
// roughly halves the squared error (64-dim Gaussian vectors: 0.256 → 0.121
// σ²; 0.5 and 0.7 give 0.128 and 0.135). 4 and 8 bits gain little (4-bit at
// 0.9: −7 %), and unrotated vectors with outlier channels lose from clipping,
// so everything else covers the whole range.
SKV_HD float symmetric_clip(kv_format f, quant_mode m, bool rotated) {
    return rotated && m == quant_mode::symmetric && f == kv_format::int2 ? 0.6f : 1.f;
}

// Quantise x[head_dim] into row (row_bytes) and params. fp16 stores halves.
// clip: the symmetric scale covers clip·absmax (symmetric_clip); asymmetric
// ignores it.
SKV_HD void quantize_vector(kv_format f, quant_mode m, const float* x, int head_dim, uint8_t* row,
                            half_bits* params, float clip = 1.f) {
    if (f == kv_format::fp16) {
        half_bits* h = reinterpret_cast<half_bits*>(row);
        for (int d = 0; d < head_dim; ++d) h[d] = float_to_half(x[d]);
        return;
    }
    const int max_code = format_max_code(f);
    float lo = x[0], hi = x[0];
    for (int d = 1; d < head_dim; ++d) {
        lo = x[d] < lo ? x[d] : lo;  // plain compares: fminf is a libm call on the host
        hi = x[d] > hi ? x[d] : hi;
    }
    if (m == quant_mode::symmetric) {
        const float absmax = (-lo > hi ? -lo : hi) * clip;
        // levels ±(k+1/2)·scale for k < 2^(b-1): (clipped) absmax maps to the outermost level
        params[0] = float_to_half(absmax > 0.f ? absmax / (0.5f * float(max_code)) : 1.f);
    } else {
        params[0] = float_to_half(hi > lo ? (hi - lo) / float(max_code) : 1.f);
        params[1] = float_to_half(lo);
    }
    const dequant_params p = read_params(f, m, params);
    const float inv = 1.f / p.scale;
    for (int i = 0; i < row_bytes(f, head_dim); ++i) row[i] = 0;
    for (int d = 0; d < head_dim; ++d) {
        float c = rintf((x[d] - p.zero) * inv);
        c = c < 0.f ? 0.f : (c > float(max_code) ? float(max_code) : c);
        set_code(f, row, head_dim, d, int(c));
    }
}

// Dequantise a row into out[head_dim].
SKV_HD void dequantize_vector(kv_format f, quant_mode m, const uint8_t* row, const half_bits* params,
                              int head_dim, float* out) {
    if (f == kv_format::fp16) {
        const half_bits* h = reinterpret_cast<const half_bits*>(row);
        for (int d = 0; d < head_dim; ++d) out[d] = half_to_float(h[d]);
        return;
    }
    const dequant_params p = read_params(f, m, params);
    for (int d = 0; d < head_dim; ++d) out[d] = p.scale * float(code_at(f, row, head_dim, d)) + p.zero;
}

// The value range a stored vector spans, recovered from its parameters; used
// to model the error of other bit-widths without keeping the original.
SKV_HD float stored_range(kv_format f, const half_bits* params) {
    return half_to_float(params[0]) * float(format_max_code(f));
}

// Expected squared error of one vector of head_dim elements spanning `range`
// when quantised to format f (uniform rounding error: step^2 / 12 per element).
SKV_HD float modelled_sq_error(kv_format f, float range, int head_dim) {
    if (f == kv_format::fp16) return 0.f;
    const float step = range / float(format_max_code(f));
    return float(head_dim) * step * step / 12.f;
}

// The same for a vector now stored as `stored` with stored range `range`
// (fp16: its full range), when clipped scales are in use (symmetric_clip):
// the full range is recovered from the stored one, then clipped for f.
SKV_HD float modelled_sq_error_from(kv_format f, kv_format stored, float range, quant_mode m, bool rotated,
                                    int head_dim) {
    const float full = range / symmetric_clip(stored, m, rotated);
    return modelled_sq_error(f, full * symmetric_clip(f, m, rotated), head_dim);
}

}  // namespace smartkv

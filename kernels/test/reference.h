// Float64 reference attention over plain arrays, for checking the engine.
#pragma once
#include <cstddef>
#include <vector>

namespace smartkv::testing {

// q: [n_rows][Hq][D], k/v: [n_ctx][H][D] (dequantised), rows at positions
// n_ctx - n_rows .. n_ctx - 1 attend causally. Returns out [n_rows][Hq][D] and
// probs [n_rows][n_ctx] averaged over q-heads. q_for_token(pos, head) lets the
// caller give a different query per key (the int8 query used for quantised keys).
struct ref_problem {
    int n_rows, n_q_heads, n_kv_heads, head_dim, n_ctx;
    const float* q;
    const float* q_int8_dequant;    // same shape as q, or null
    const unsigned char* key_uses_int8;  // [n_ctx] 1 when the key is read with q_int8_dequant
    const float* k;
    const float* v;
};

void reference_attention(const ref_problem& p, std::vector<double>& out, std::vector<double>& probs);

}  // namespace smartkv::testing

// Portable scalar reference for one block of attention (see attend-kernels.h).
// Written for clarity: dequantise each row, dot in float, update the state.
#include <cmath>
#include <limits>

#include "attend-kernels.h"
#include "smartkv/kivi.h"

namespace smartkv {

namespace {

// Key parameters of slot t for this head: per vector, or per channel (KIVI).
float key_score(const block_layout& L, quant_mode mode, const block_ref& blk, int head, int t, const head_query& q,
                int qi, float* k_tmp) {
    const uint8_t* row = blk.data + L.k_codes + L.code_offset(head, t);
    if (blk.kind == block_kind::kivi) {
        const half_bits* ch = reinterpret_cast<const half_bits*>(blk.data + L.k_params) + size_t(head) * L.head_dim * 2;
        kivi_dequantize_key(blk.fmt, row, ch, L.head_dim, k_tmp);
    } else {
        const half_bits* p = reinterpret_cast<const half_bits*>(blk.data + L.k_params + L.param_offset(head, t));
        if (blk.kind == block_kind::quantized && q.q8) {
            // integer path: q ~= s_q * q8, k = s_k*code + z_k
            const dequant_params kp = read_params(blk.fmt, mode, p);
            int32_t dot = 0;
            for (int d = 0; d < L.head_dim; ++d) dot += int32_t(q.q8[size_t(qi) * L.head_dim + d]) * code_at(blk.fmt, row, L.head_dim, d);
            return q.q8_scale[qi] * (kp.scale * float(dot) + kp.zero * float(q.q8_sum[qi]));
        }
        dequantize_vector(blk.fmt, mode, row, p, L.head_dim, k_tmp);
    }
    float s = 0.f;
    for (int d = 0; d < L.head_dim; ++d) s += q.q[size_t(qi) * L.head_dim + d] * k_tmp[d];
    return s;
}

// Value row t as scale*code + zero: fills code_tmp with codes-as-float (or the
// fp16 values with scale 1, zero 0).
dequant_params value_row(const block_layout& L, quant_mode mode, const block_ref& blk, int head, int t, float* code_tmp) {
    const uint8_t* row = blk.data + L.v_codes + L.code_offset(head, t);
    if (blk.kind == block_kind::fp16) {
        dequantize_vector(kv_format::fp16, mode, row, nullptr, L.head_dim, code_tmp);
        return {1.f, 0.f};
    }
    // KIVI values are per token, asymmetric: the same as a quantised row.
    const quant_mode vmode = blk.kind == block_kind::kivi ? quant_mode::asymmetric : mode;
    const half_bits* p = reinterpret_cast<const half_bits*>(blk.data + L.v_params + L.param_offset(head, t));
    for (int d = 0; d < L.head_dim; ++d) code_tmp[d] = float(code_at(blk.fmt, row, L.head_dim, d));
    return read_params(blk.fmt, vmode, p);
}

}  // namespace

void attend_block_ref(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                      head_state& st, const score_sink& sink, float* scratch) {
    const int D = L.head_dim;
    float* tmp = scratch;            // [D]
    float* s = scratch + D;          // [T] scores of this query
    const int32_t* pos = reinterpret_cast<const int32_t*>(blk.data + L.pos);
    const float neg_inf = -std::numeric_limits<float>::infinity();

    for (int qi = 0; qi < q.nq(); ++qi) {
        const int r = qi / q.group;
        float block_max = neg_inf;
        for (int t = 0; t < blk.n_valid; ++t) {
            const bool masked = blk.needs_mask && pos[t] > q.row_pos[r];
            s[t] = masked ? neg_inf : key_score(L, mode, blk, head, t, q, qi, tmp);
            block_max = std::fmax(block_max, s[t]);
            if (sink.scores) sink.scores[size_t(qi) * sink.stride + blk.slot_base + t] = s[t];
        }
        if (block_max == neg_inf) continue;  // every token masked for this row

        const float m_new = std::fmax(st.m[qi], block_max);
        const float alpha = std::exp(st.m[qi] - m_new);  // exp(-inf) = 0 on the first block
        float* acc = st.acc + size_t(qi) * D;
        for (int d = 0; d < D; ++d) acc[d] *= alpha;
        st.l[qi] *= alpha;
        st.z[qi] *= alpha;
        st.m[qi] = m_new;
        for (int t = 0; t < blk.n_valid; ++t) {
            const float p = std::exp(s[t] - m_new);
            if (p == 0.f) continue;
            const dequant_params vp = value_row(L, mode, blk, head, t, tmp);
            const float a = p * vp.scale;
            for (int d = 0; d < D; ++d) acc[d] += a * tmp[d];
            st.z[qi] += p * vp.zero;
            st.l[qi] += p;
        }
    }
}

}  // namespace smartkv

#include "reference.h"

#include <cmath>

namespace smartkv::testing {

void reference_attention(const ref_problem& p, std::vector<double>& out, std::vector<double>& probs) {
    const int D = p.head_dim, G = p.n_q_heads / p.n_kv_heads;
    out.assign(size_t(p.n_rows) * p.n_q_heads * D, 0.0);
    probs.assign(size_t(p.n_rows) * p.n_ctx, 0.0);
    const double scale = 1.0 / std::sqrt(double(D));
    std::vector<double> s(size_t(p.n_ctx));
    for (int r = 0; r < p.n_rows; ++r) {
        const int qpos = p.n_ctx - p.n_rows + r;
        for (int qh = 0; qh < p.n_q_heads; ++qh) {
            const int kh = qh / G;
            double mx = -1e300;
            for (int t = 0; t <= qpos; ++t) {
                const float* q = ((p.q_int8_dequant && p.key_uses_int8[t]) ? p.q_int8_dequant : p.q) +
                                 (size_t(r) * p.n_q_heads + qh) * D;
                const float* k = p.k + (size_t(t) * p.n_kv_heads + kh) * D;
                double dot = 0.0;
                for (int d = 0; d < D; ++d) dot += double(q[d]) * double(k[d]);
                s[size_t(t)] = dot * (p.q_int8_dequant && p.key_uses_int8[t] ? 1.0 : scale);
                mx = std::max(mx, s[size_t(t)]);
            }
            double sum = 0.0;
            for (int t = 0; t <= qpos; ++t) sum += (s[size_t(t)] = std::exp(s[size_t(t)] - mx));
            double* o = &out[(size_t(r) * p.n_q_heads + qh) * D];
            for (int t = 0; t <= qpos; ++t) {
                const double w = s[size_t(t)] / sum;
                probs[size_t(r) * p.n_ctx + t] += w / p.n_q_heads;
                const float* v = p.v + (size_t(t) * p.n_kv_heads + kh) * D;
                for (int d = 0; d < D; ++d) o[d] += w * double(v[d]);
            }
        }
    }
}

}  // namespace smartkv::testing

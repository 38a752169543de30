// The model runtime (dense part) with attention through the KV engine,
// against a naive float64 forward of the same tiny random Llama model.
#include <cmath>
#include <random>
#include <string>

#include "check.h"
#include "smartkv/engine.h"
#include "smartkv/model.h"

using namespace smartkv;

namespace {

struct tiny_model {
    int L = 2, d = 64, Hq = 4, Hkv = 2, D = 32, F = 96, V = 50;
    std::vector<std::vector<uint16_t>> store;  // owns every f16 tensor
    model_config cfg;
    model_weights w;

    tensor_view make(int64_t rows, int64_t cols, std::mt19937& rng, float sigma, float mean = 0.f) {
        std::normal_distribution<float> g(mean, sigma);
        store.emplace_back(size_t(rows * cols));
        for (auto& h : store.back()) h = float_to_half(g(rng));
        return {store.back().data(), weight_dtype::f16, rows, cols};
    }

    tiny_model() {
        store.reserve(64);
        std::mt19937 rng(42);
        cfg = {L, d, Hq, Hkv, D, F, V, 1e-5f, {}};
        for (int j = 0; j < D / 2; ++j) cfg.rope_inv_freq.push_back(float(std::pow(10000.0, -2.0 * j / D)));
        w.embed = make(V, d, rng, 1.f);
        w.final_norm = make(1, d, rng, 0.1f, 1.f);
        w.lm_head = w.embed;  // tied
        for (int l = 0; l < L; ++l) {
            layer_weights lw;
            lw.attn_norm = make(1, d, rng, 0.1f, 1.f);
            lw.wq = make(Hq * D, d, rng, 0.15f);
            lw.wk = make(Hkv * D, d, rng, 0.15f);
            lw.wv = make(Hkv * D, d, rng, 0.15f);
            lw.wo = make(d, Hq * D, rng, 0.1f);
            lw.mlp_norm = make(1, d, rng, 0.1f, 1.f);
            lw.w_gate = make(F, d, rng, 0.1f);
            lw.w_up = make(F, d, rng, 0.1f);
            lw.w_down = make(d, F, rng, 0.1f);
            w.layers.push_back(lw);
        }
    }
    double at(const tensor_view& t, int64_t i) const { return half_to_float(static_cast<const uint16_t*>(t.data)[i]); }
};

// Naive float64 forward over the whole sequence; k and v are rounded to fp16
// as the engine stores them. Returns logits [n][V].
std::vector<double> naive_forward(const tiny_model& m, const std::vector<int32_t>& tok) {
    const int n = int(tok.size()), d = m.d, D = m.D, G = m.Hq / m.Hkv;
    std::vector<double> x(size_t(n) * d), logits(size_t(n) * m.V);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < d; ++c) x[size_t(i) * d + c] = m.at(m.w.embed, int64_t(tok[i]) * d + c);
    auto norm = [&](const std::vector<double>& in, const tensor_view& wt) {
        std::vector<double> out(in.size());
        for (int i = 0; i < n; ++i) {
            double ss = 0;
            for (int c = 0; c < d; ++c) ss += in[size_t(i) * d + c] * in[size_t(i) * d + c];
            const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
            for (int c = 0; c < d; ++c) out[size_t(i) * d + c] = m.at(wt, c) * in[size_t(i) * d + c] * inv;
        }
        return out;
    };
    auto mm = [&](const std::vector<double>& in, int in_dim, const tensor_view& wt) {
        std::vector<double> out(size_t(n) * wt.rows);
        for (int i = 0; i < n; ++i)
            for (int64_t r = 0; r < wt.rows; ++r) {
                double s = 0;
                for (int c = 0; c < in_dim; ++c) s += m.at(wt, r * in_dim + c) * in[size_t(i) * in_dim + c];
                out[size_t(i) * wt.rows + r] = s;
            }
        return out;
    };
    auto rope = [&](std::vector<double>& v, int heads) {
        for (int i = 0; i < n; ++i)
            for (int h = 0; h < heads; ++h)
                for (int j = 0; j < D / 2; ++j) {
                    const double ang = double(i) * double(m.cfg.rope_inv_freq[size_t(j)]);
                    double* row = &v[(size_t(i) * heads + h) * D];
                    const double a = row[j], b = row[j + D / 2];
                    row[j] = a * std::cos(ang) - b * std::sin(ang);
                    row[j + D / 2] = b * std::cos(ang) + a * std::sin(ang);
                }
    };
    for (int l = 0; l < m.L; ++l) {
        const layer_weights& lw = m.w.layers[size_t(l)];
        auto h = norm(x, lw.attn_norm);
        auto q = mm(h, d, lw.wq), k = mm(h, d, lw.wk), v = mm(h, d, lw.wv);
        rope(q, m.Hq);
        rope(k, m.Hkv);
        for (auto& e : k) e = half_to_float(float_to_half(float(e)));
        for (auto& e : v) e = half_to_float(float_to_half(float(e)));
        std::vector<double> o(size_t(n) * m.Hq * D, 0.0);
        for (int i = 0; i < n; ++i)
            for (int qh = 0; qh < m.Hq; ++qh) {
                const int kh = qh / G;
                std::vector<double> s(size_t(i) + 1);
                double mx = -1e300, sum = 0;
                for (int t = 0; t <= i; ++t) {
                    double dot = 0;
                    for (int e = 0; e < D; ++e) dot += q[(size_t(i) * m.Hq + qh) * D + e] * k[(size_t(t) * m.Hkv + kh) * D + e];
                    s[size_t(t)] = dot / std::sqrt(double(D));
                    mx = std::max(mx, s[size_t(t)]);
                }
                for (auto& e : s) sum += (e = std::exp(e - mx));
                for (int t = 0; t <= i; ++t)
                    for (int e = 0; e < D; ++e)
                        o[(size_t(i) * m.Hq + qh) * D + e] += s[size_t(t)] / sum * v[(size_t(t) * m.Hkv + kh) * D + e];
            }
        auto ao = mm(o, m.Hq * D, lw.wo);
        for (size_t e = 0; e < x.size(); ++e) x[e] += ao[e];
        h = norm(x, lw.mlp_norm);
        auto g = mm(h, d, lw.w_gate), u = mm(h, d, lw.w_up);
        for (size_t e = 0; e < g.size(); ++e) g[e] = g[e] / (1.0 + std::exp(-g[e])) * u[e];
        auto dn = mm(g, m.F, lw.w_down);
        for (size_t e = 0; e < x.size(); ++e) x[e] += dn[e];
    }
    auto h = norm(x, m.w.final_norm);
    return mm(h, d, m.w.lm_head);
}

}  // namespace

TEST(model_forward_matches_naive_float64) {
    tiny_model m;
    model_runtime rt(m.cfg, m.w, 2);
    engine_config ec;
    ec.n_layers = m.L;
    ec.n_q_heads = m.Hq;
    ec.n_kv_heads = m.Hkv;
    ec.head_dim = m.D;
    ec.query_int8 = false;
    auto eng = make_cpu_backend(ec);
    const uint32_t seq = eng->create_sequence(storage_kind::mixed);
    std::vector<int32_t> tok = {1, 7, 3, 9, 22, 41, 5, 5, 5, 13, 2, 48, 30, 17, 6, 6, 0, 44, 19, 8};
    const auto want = naive_forward(m, tok);

    // Prefill 12 tokens in one chunk, then decode one at a time.
    double worst = 0.0;
    auto run = [&](int start, int n) {
        std::vector<float> x(size_t(n) * m.d), q(size_t(n) * m.Hq * m.D), k(size_t(n) * m.Hkv * m.D),
            v(size_t(n) * m.Hkv * m.D), o(q.size()), lg(size_t(n) * m.V);
        std::vector<int32_t> pos(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) pos[size_t(i)] = start + i;
        rt.embed(&tok[size_t(start)], n, x.data());
        for (int l = 0; l < m.L; ++l) {
            rt.pre_attention(l, x.data(), pos.data(), n, q.data(), k.data(), v.data());
            attend_request r{seq, l, n, q.data(), k.data(), v.data(), o.data(), nullptr};
            eng->attend(&r, 1);
            rt.post_attention(l, o.data(), n, x.data());
        }
        rt.logits(x.data(), n, lg.data());
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < m.V; ++c)
                worst = std::max(worst, std::fabs(double(lg[size_t(i) * m.V + c]) - want[size_t(start + i) * m.V + c]));
    };
    run(0, 12);
    for (int t = 12; t < int(tok.size()); ++t) run(t, 1);
    CHECK_MSG(worst <= 1e-3, "max |logit diff| " + std::to_string(worst));
}

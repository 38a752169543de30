// The bit mixes the timings run on, as host code (smartkv-gpu-check also
// checks them on the CPU engine, so the GPU run's mix is known to be right).
//
// The beta = 0.25 mix is the allocator's (services/allocator/greedy.ts):
// every unprotected token starts at int2 and upgrades are taken by
// importance x delta-error per extra byte, best first, while they fit a
// budget of beta x the FP16 bytes of the sequence (sinks and window at fp16,
// bookkeeping and partly filled blocks counted first, as budgetForBeta does).
// Errors are the engine's own model (report()); importance is a heavy-tailed
// draw (log-normal, sigma 2: a few tokens carry most of the attention, as
// measured EMAs do). The old fixed 12/48/40 % mix was not what the allocator
// chooses.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "smartkv/block-layout.h"
#include "smartkv/engine.h"

namespace smartkv::testing {

inline constexpr int k_sinks = 4, k_window = 64;
inline constexpr double k_beta = 0.25;

// Bytes of one token (all kv-heads, K and V, parameters and position) by format.
inline double token_bytes(const engine_config& cfg, kv_format f) {
    const block_layout L = make_format_layout(f, cfg.mode, cfg.head_dim, cfg.n_kv_heads, cfg.block_tokens);
    return double(cfg.n_kv_heads) * 2.0 * (double(L.row) + double(L.n_params) * sizeof(half_bits)) + sizeof(int32_t);
}

// Bytes a partly filled last block of format f can leave unused (greedy.ts's bound).
inline double slack(const engine_config& cfg, kv_format f, double token_bytes_f) {
    return double(format_block_tokens(f, cfg.block_tokens) - 1) * token_bytes_f;
}

// The greedy allocator's plan (greedy.ts) for tokens [k_sinks, n - k_window):
// from int2, upgrades by importance x delta-error per extra byte, best first,
// each taken while it fits (a 4->8 step only after its token's 2->4).
inline std::vector<uint8_t> allocator_plan(const engine_config& cfg, const std::vector<float>& imp,
                                           const std::vector<float>& err /*[n][3] int8,int4,int2*/, int lo, int hi) {
    const double b16 = token_bytes(cfg, kv_format::fp16), b8 = token_bytes(cfg, kv_format::int8);
    const double b4 = token_bytes(cfg, kv_format::int4), b2 = token_bytes(cfg, kv_format::int2);
    const double c24 = b4 - b2, c48 = b8 - b4;
    const double n = double(imp.size());
    // budgetForBeta (greedy.ts): protected tokens, bookkeeping (importance and
    // token map, 8 bytes a token) and a partly filled block per format come first.
    const double fixed = double(int(imp.size()) - (hi - lo)) * b16 + 8.0 * n +
                         slack(cfg, kv_format::fp16, b16) + slack(cfg, kv_format::int8, b8) +
                         slack(cfg, kv_format::int4, b4) + slack(cfg, kv_format::int2, b2);
    double room = k_beta * n * b16 - fixed - double(hi - lo) * b2;
    struct cand {
        double key;
        int token, step;  // step 0: 2->4 (2->8 when to8: the merged step of greedy.ts), 1: 4->8
        bool to8;
    };
    std::vector<cand> c;
    for (int i = lo; i < hi; ++i) {
        const double w = imp[size_t(i)], e8 = err[3 * size_t(i)], e4 = err[3 * size_t(i) + 1], e2 = err[3 * size_t(i) + 2];
        const double g24 = w * (e2 - e4) / c24, g48 = w * (e4 - e8) / c48;
        if (g48 <= g24) {
            c.push_back({g24, i, 0, false});
            c.push_back({g48, i, 1, false});
        } else {
            c.push_back({w * (e2 - e8) / (c24 + c48), i, 0, true});
        }
    }
    std::stable_sort(c.begin(), c.end(), [](const cand& a, const cand& b) { return a.key > b.key; });
    std::vector<uint8_t> fmt(imp.size(), uint8_t(kv_format::fp16));
    for (int i = lo; i < hi; ++i) fmt[size_t(i)] = uint8_t(kv_format::int2);
    for (const cand& x : c) {
        const double cost = x.to8 ? c24 + c48 : x.step == 0 ? c24 : c48;
        if (cost > room) continue;
        if (x.step == 1 && fmt[size_t(x.token)] != uint8_t(kv_format::int4)) continue;
        fmt[size_t(x.token)] = uint8_t(x.to8 || x.step == 1 ? kv_format::int8 : kv_format::int4);
        room -= cost;
    }
    return fmt;
}

// Heavy-tailed importance, deterministic: exp(2 z), z ~ N(0, 1).
inline std::vector<float> heavy_tailed_importance(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> z(0.f, 1.f);
    std::vector<float> imp(n);
    for (float& x : imp) x = std::exp(2.f * z(rng));
    return imp;
}

}  // namespace smartkv::testing

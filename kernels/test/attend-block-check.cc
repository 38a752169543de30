// Block-level checks of the attention kernels: the vectorised paths against
// the scalar reference (attend_block_ref) on hand-built blocks, so that every
// tile size and fill level is reached directly, not only the ones the engine
// happens to produce.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "cpu/attend-kernels.h"
#include "smartkv/kivi.h"

using namespace smartkv;

namespace {

using kernel_fn = void (*)(const block_layout&, quant_mode, const block_ref&, int, const head_query&, head_state&,
                           const score_sink&, float*);

// KIVI groups of H kv-heads: keys per channel over the group, values per token
// (kivi.h), an outlier-ish channel pattern in the keys as in the engine checks.
struct kivi_blocks {
    kv_format fmt;
    block_layout L;
    std::vector<std::vector<uint8_t>> data;  // [n_blocks][L.bytes]
};

kivi_blocks make_kivi_blocks(kv_format f, int D, int H, int n_blocks, std::mt19937& rng) {
    kivi_blocks b;
    b.fmt = f;
    b.L = make_block_layout(f, quant_mode::asymmetric, D, H, kivi_group, /*kivi_keys=*/true);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> keys(size_t(kivi_group) * D), v(static_cast<size_t>(D));  // [32][D], [D]
    for (int i = 0; i < n_blocks; ++i) {
        std::vector<uint8_t> blk(b.L.bytes, 0);
        for (int h = 0; h < H; ++h) {
            for (size_t j = 0; j < keys.size(); ++j) keys[j] = g(rng) + (j % 3 == 0 ? 2.f : 0.f);
            kivi_quantize_keys(f, keys.data(), D, blk.data() + b.L.k_codes + b.L.code_offset(h, 0), b.L.row,
                               reinterpret_cast<half_bits*>(blk.data() + b.L.k_params) + size_t(h) * D * 2);
            for (int t = 0; t < kivi_group; ++t) {
                for (auto& x : v) x = g(rng);
                quantize_vector(f, quant_mode::asymmetric, v.data(), D, blk.data() + b.L.v_codes + b.L.code_offset(h, t),
                                reinterpret_cast<half_bits*>(blk.data() + b.L.v_params + b.L.param_offset(h, t)));
            }
        }
        int32_t* pos = reinterpret_cast<int32_t*>(blk.data() + b.L.pos);
        for (int t = 0; t < kivi_group; ++t) pos[t] = i * kivi_group + t;
        b.data.push_back(std::move(blk));
    }
    return b;
}

struct run_result {
    std::vector<float> out;     // [nq][D] (acc + z) / l
    std::vector<float> scores;  // [nq][n_slots]
};

// nq queries of kv-head `head` (one row, group nq) over the blocks, the last
// one filled to last_fill slots.
run_result run_blocks(kernel_fn kernel, const kivi_blocks& b, int head, int nq, int last_fill, uint32_t seed) {
    const int D = b.L.head_dim, T = b.L.block_tokens, n_slots = int(b.data.size()) * T;
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.f, 1.f);
    const size_t nqs = size_t(nq);
    std::vector<float> q(nqs * D), qsum(nqs);  // [nq][D] already / sqrt(D)
    for (int i = 0; i < nq; ++i)
        for (int d = 0; d < D; ++d) {
            q[size_t(i) * D + d] = g(rng) / std::sqrt(float(D));
            qsum[size_t(i)] += q[size_t(i) * D + d];
        }
    std::vector<int32_t> row_pos(1, n_slots);
    head_query hq;
    hq.n_rows = 1;
    hq.group = nq;
    hq.head_dim = D;
    hq.q = q.data();
    hq.q_sum = qsum.data();
    hq.row_pos = row_pos.data();
    std::vector<float> m(nqs, -std::numeric_limits<float>::infinity()), l(nqs), z(nqs), acc(nqs * D),
        scratch(attend_scratch_floats(D, T));
    head_state st{m.data(), l.data(), z.data(), acc.data()};
    run_result r;
    r.scores.assign(size_t(nq) * n_slots, 0.f);
    const score_sink sink{r.scores.data(), size_t(n_slots)};
    for (size_t i = 0; i < b.data.size(); ++i) {
        const int fill = i + 1 == b.data.size() ? last_fill : T;
        const block_ref ref{b.data[i].data(), block_kind::kivi, b.fmt, fill, false, uint32_t(i) * uint32_t(T)};
        kernel(b.L, quant_mode::symmetric, ref, head, hq, st, sink, scratch.data());
    }
    r.out.resize(acc.size());
    for (int i = 0; i < nq; ++i)
        for (int d = 0; d < D; ++d) r.out[size_t(i) * D + d] = (acc[size_t(i) * D + d] + z[size_t(i)]) / l[size_t(i)];
    return r;
}

// max |got - want| / max |want|
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        num = std::max(num, std::fabs(double(got[i]) - double(want[i])));
        den = std::max(den, std::fabs(double(want[i])));
    }
    return num / std::max(den, 1e-30);
}

}  // namespace

// KIVI groups on the vectorised paths (AVX2 where the CPU has it, and the
// dispatcher's choice) against the scalar reference: both formats, D =
// 64/128/256, one query and tiles of 2, 5, 16 and 20 (two tiles), the last
// group filled to 1, 7, 17, 31 or 32 slots (odd fills end a value pair early).
// Keys are float dots like the reference's, values take 16-bit weights
// (error <= max w / 131070 per token): outputs within 1e-4, scores 1e-5.
TEST(kivi_blocks_fast_paths_match_scalar_reference) {
    std::mt19937 rng(4242);
    uint32_t seed = 100;
    for (kv_format f : {kv_format::int2, kv_format::int4})
        for (int D : {64, 128, 256}) {
            const kivi_blocks b = make_kivi_blocks(f, D, 2, 2, rng);
            std::vector<std::pair<const char*, kernel_fn>> paths{{"dispatch", attend_block_fast}};
            if (avx2_path_available(D)) paths.push_back({"avx2", attend_block_avx2});
            for (int nq : {1, 2, 5, 16, 20})
                for (int fill : {1, 7, 17, 31, 32}) {
                    const run_result want = run_blocks(attend_block_ref, b, 1, nq, fill, ++seed);
                    for (const auto& [name, fn] : paths) {
                        const run_result got = run_blocks(fn, b, 1, nq, fill, seed);
                        const double eo = rel_error(got.out, want.out), es = rel_error(got.scores, want.scores);
                        const std::string what = std::string(name) + " " + (f == kv_format::int2 ? "kivi-2" : "kivi-4") +
                                                 " D=" + std::to_string(D) + " nq=" + std::to_string(nq) +
                                                 " fill=" + std::to_string(fill) + ": out " + std::to_string(eo) +
                                                 " scores " + std::to_string(es);
                        CHECK_MSG(eo <= 1e-4 && es <= 1e-5, what);
                    }
                }
        }
}

namespace {

// n_blocks quantised blocks of one format (H kv-heads, T slots each), the
// last filled to last_fill: keys and values quantised per token.
struct quant_blocks {
    block_layout L;
    std::vector<std::vector<uint8_t>> data;  // [n_blocks][L.bytes]
    std::vector<block_ref> refs;             // [n_blocks]
};

quant_blocks make_quant_blocks(kv_format f, quant_mode mode, int D, int H, int T, int n_blocks, int last_fill, std::mt19937& rng) {
    quant_blocks b;
    b.L = make_block_layout(f, mode, D, H, T, /*kivi_keys=*/false);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> x(static_cast<size_t>(D));  // [D]
    for (int i = 0; i < n_blocks; ++i) {
        std::vector<uint8_t> blk(b.L.bytes, 0);
        const int fill = i + 1 == n_blocks ? last_fill : T;
        for (int h = 0; h < H; ++h)
            for (int t = 0; t < fill; ++t) {
                for (int d = 0; d < D; ++d) x[size_t(d)] = g(rng) + (d % 3 == 0 ? 2.f : 0.f);
                quantize_vector(f, mode, x.data(), D, blk.data() + b.L.k_codes + b.L.code_offset(h, t),
                                reinterpret_cast<half_bits*>(blk.data() + b.L.k_params + b.L.param_offset(h, t)));
                for (auto& v : x) v = g(rng);
                quantize_vector(f, mode, x.data(), D, blk.data() + b.L.v_codes + b.L.code_offset(h, t),
                                reinterpret_cast<half_bits*>(blk.data() + b.L.v_params + b.L.param_offset(h, t)));
            }
        int32_t* pos = reinterpret_cast<int32_t*>(blk.data() + b.L.pos);
        for (int t = 0; t < fill; ++t) pos[t] = i * T + t;
        b.data.push_back(std::move(blk));
    }
    for (int i = 0; i < n_blocks; ++i)
        b.refs.push_back({b.data[size_t(i)].data(), block_kind::quantized, f, i + 1 == n_blocks ? last_fill : T, false, uint32_t(i * T)});
    return b;
}

// nq queries of kv-head `head` (one decode row of a group of nq: MHA decode
// for 1, GQA for more) over the blocks: per block with attend_block_ref, or
// as attend_blocks_fast takes them. runs: the block counts each
// attend_blocks_fast call took. Outputs and scores are [nq][...].
run_result run_quant(const quant_blocks& b, quant_mode mode, int head, int nq, bool fast, uint32_t seed, std::vector<int>* runs) {
    const int D = b.L.head_dim, T = b.L.block_tokens, n_slots = int(b.refs.size()) * T;
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.f, 1.f);
    const size_t n_q = static_cast<size_t>(nq);
    std::vector<float> q(n_q * D), qsum(n_q), q8_scale(n_q);  // [nq][D] already / sqrt(D)
    std::vector<int8_t> q8(n_q * D);                                                    // [nq][D] as the engine quantises it
    std::vector<int32_t> q8_sum(n_q);
    for (int i = 0; i < nq; ++i) {
        float absmax = 0.f;
        for (int d = 0; d < D; ++d) {
            const float x = g(rng) / std::sqrt(float(D));
            q[size_t(i) * D + d] = x;
            qsum[size_t(i)] += x;
            absmax = std::max(absmax, std::fabs(x));
        }
        q8_scale[size_t(i)] = absmax / 127.f;
        for (int d = 0; d < D; ++d)
            q8_sum[size_t(i)] += (q8[size_t(i) * D + d] = int8_t(std::lrintf(q[size_t(i) * D + d] / q8_scale[size_t(i)])));
    }
    std::vector<int32_t> row_pos(1, n_slots);
    head_query hq;
    hq.n_rows = 1;
    hq.group = nq;
    hq.head_dim = D;
    hq.q = q.data();
    hq.q_sum = qsum.data();
    hq.q8 = q8.data();
    hq.q8_scale = q8_scale.data();
    hq.q8_sum = q8_sum.data();
    hq.row_pos = row_pos.data();
    std::vector<float> m(n_q, -std::numeric_limits<float>::infinity()), l(n_q), z(n_q);
    std::vector<float> acc(n_q * D), scratch(attend_scratch_floats(D, T));
    head_state st{m.data(), l.data(), z.data(), acc.data()};
    run_result r;
    r.scores.assign(size_t(nq) * n_slots, 0.f);
    const score_sink sink{r.scores.data(), size_t(n_slots)};
    for (size_t i = 0; i < b.refs.size();) {
        if (!fast) {
            attend_block_ref(b.L, mode, b.refs[i], head, hq, st, sink, scratch.data());
            ++i;
            continue;
        }
        const int took = attend_blocks_fast(b.L, mode, &b.refs[i], int(b.refs.size() - i), head, hq, st, sink, scratch.data());
        if (runs) runs->push_back(took);
        i += size_t(took);
    }
    r.out.resize(acc.size());
    for (int i = 0; i < nq; ++i)
        for (int d = 0; d < D; ++d) r.out[size_t(i) * D + d] = (acc[size_t(i) * D + d] + z[size_t(i)]) / l[size_t(i)];
    return r;
}

}  // namespace

// Runs of quantised blocks for one query and for tiles of 3, 4 and 16
// (attend_blocks_fast: one softmax update and one accumulator transpose per
// query and run of up to 512 tokens, a weight scale per block and query)
// against the scalar reference one block at a time: every
// format, both modes, D = 64/128, 1 to 20 blocks of 32 (20: a run of 16 and
// one of 4) and 16-slot blocks, the last filled to 1, 7, 17 or all slots.
// Outputs within 1e-4 (the single-block bound), scores within 1e-5. With
// AVX-512 the 128-dim runs must actually join blocks.
TEST(quantized_block_runs_match_scalar_reference) {
    std::mt19937 rng(777);
    uint32_t seed = 500;
    bool joined = false;
    for (kv_format f : {kv_format::int2, kv_format::int4, kv_format::int8})
        for (quant_mode mode : {quant_mode::symmetric, quant_mode::asymmetric})
            for (int D : {64, 128})
                for (int T : {16, 32})
                    for (int n_blocks : {1, 3, 20})
                        for (int fill : {1, 7, 17, 32})
                            for (int nq : {1, 3, 4, 16}) {
                                if (fill > T) continue;
                                const quant_blocks b = make_quant_blocks(f, mode, D, 2, T, n_blocks, fill, rng);
                                std::vector<int> runs;
                                const run_result want = run_quant(b, mode, 1, nq, false, ++seed, nullptr);
                                const run_result got = run_quant(b, mode, 1, nq, true, seed, &runs);
                                const double eo = rel_error(got.out, want.out), es = rel_error(got.scores, want.scores);
                                int longest = 0;
                                for (int n : runs) longest = std::max(longest, n);
                                if (longest > 1) joined = true;
                                if (avx512_path_available(D) && D == 128 && n_blocks > 1)
                                    CHECK_MSG(longest > 1, "no run was joined (nq=" + std::to_string(nq) + ")");
                                CHECK_MSG(longest * T <= 512, "a run longer than 512 tokens");
                                const std::string what = std::string(f == kv_format::int2 ? "int2" : f == kv_format::int4 ? "int4" : "int8") +
                                                         (mode == quant_mode::symmetric ? " sym" : " asym") + " D=" + std::to_string(D) +
                                                         " T=" + std::to_string(T) + " nq=" + std::to_string(nq) + " blocks=" +
                                                         std::to_string(n_blocks) + " fill=" + std::to_string(fill) + " longest run " +
                                                         std::to_string(longest) + ": out " + std::to_string(eo) + " scores " + std::to_string(es);
                                CHECK_MSG(eo <= 1e-4 && es <= 1e-5, what);
                            }
    if (avx512_path_available(128)) CHECK_MSG(joined, "the AVX-512 path joined no blocks");
}

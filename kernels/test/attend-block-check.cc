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

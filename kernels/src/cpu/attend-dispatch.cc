// Picks the attention kernels for this CPU once: AVX-512/VNNI, else AVX2,
// else the scalar reference. Compiled with the default flags: the ISA files
// are entered only through the functions below, after the CPU check.
#include <algorithm>
#include <cmath>

#include "attend-kernels.h"

namespace smartkv {

namespace {
enum class isa { avx512, avx2, scalar };

isa best_isa(int head_dim) {
    if (avx512_path_available(head_dim)) return isa::avx512;
    if (avx2_path_available(head_dim)) return isa::avx2;
    return isa::scalar;
}
}  // namespace

bool fast_path_available(int head_dim) { return best_isa(head_dim) != isa::scalar; }

void attend_block_fast(const block_layout& L, quant_mode mode, const block_ref& blk, int head, const head_query& q,
                       head_state& st, const score_sink& sink, float* scratch) {
    switch (best_isa(L.head_dim)) {
        case isa::avx512: return attend_block_avx512(L, mode, blk, head, q, st, sink, scratch);
        case isa::avx2: return attend_block_avx2(L, mode, blk, head, q, st, sink, scratch);
        default: return attend_block_ref(L, mode, blk, head, q, st, sink, scratch);
    }
}

int attend_blocks_fast(const block_layout& L, quant_mode mode, const block_ref* blks, int n_avail, int head,
                       const head_query& q, head_state& st, const score_sink& sink, float* scratch) {
    if (best_isa(L.head_dim) == isa::avx512) return attend_blocks_avx512(L, mode, blks, n_avail, head, q, st, sink, scratch);
    attend_block_fast(L, mode, blks[0], head, q, st, sink, scratch);
    return 1;
}

void add_probabilities(const float* scores, size_t n, float m, float w, float* out) {
    static const isa best = best_isa(64);
    if (best == isa::avx512) return add_probabilities_avx512(scores, n, m, w, out);
    if (best == isa::avx2) return add_probabilities_avx2(scores, n, m, w, out);
    for (size_t j = 0; j < n; ++j) out[j] += std::exp(scores[j] - m) * w;
}

// Scratch of the widest user: [2][16 queries][T] scores and weights, plus the
// single-query and KIVI buffers, plus the AVX2 tiles' [16 queries][head_dim]
// KIVI scaled queries and [16 queries][block_tokens/2 + 1][8] broadcast value
// weight pairs (32-byte aligned inside the buffer: 8 floats of slack); or
// the AVX-512 runs' [16 queries][512] scores, whichever is larger.
size_t attend_scratch_floats(int head_dim, int block_tokens) {
    const size_t per_block = size_t(2 * 16 * block_tokens + 2 * head_dim + 4 * block_tokens + 64 + 16 * head_dim +
                                    16 * 8 * (block_tokens / 2 + 1) + 8);
    return std::max(per_block, size_t(16 * 512));
}

}  // namespace smartkv

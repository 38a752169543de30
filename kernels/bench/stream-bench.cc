// One thread, one format: how far the kernels are from compute and from
// memory. Three numbers per format, each the median of `reps` passes:
//
//   hot    the decode kernel (attend_blocks_fast, as cpu-attend.cc calls it)
//          over 2,048 tokens of one kv-head, again and again: the data sit in
//          L1/L2, so this is what the instructions cost
//   cold   the same kernel over every kv-head of n_blocks blocks (n_blocks x
//          T tokens x heads, far larger than the caches): what memory adds
//   reader no arithmetic, only loads of the same key and value pieces in the
//          kernel's order (a run of 16 blocks' keys, then their values), with
//          prefetcht1 `ahead` pieces ahead (0: none): what this layout's
//          pieces allow one thread to read at all
//
// Times are ns per token per kv-head; GB/s counts the block bytes (codes,
// parameters, positions) for the kernel and the codes for the reader.
// Usage: smartkv-stream-bench [format 1..3 = int8/int4/int2] [heads 32] [n_blocks 1024] [reps 5] [block_tokens T 32]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <immintrin.h>
#include <limits>
#include <random>
#include <vector>

#include "cpu/attend-kernels.h"

using namespace smartkv;

namespace {

constexpr int D = 128, run_blocks = 16;
int T = 32;  // tokens per block (argv[5])

double now_ns() {
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

// n_blocks blocks of `heads` kv-heads, each its own allocation as in a bucket.
std::vector<uint8_t*> make_blocks(kv_format f, const block_layout& L, int heads, int n_blocks, std::mt19937& rng) {
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> x(D);
    std::vector<uint8_t*> blocks;
    for (int i = 0; i < n_blocks; ++i) {
        uint8_t* p = static_cast<uint8_t*>(std::aligned_alloc(64, (L.bytes + 63) / 64 * 64));
        for (int h = 0; h < heads; ++h)
            for (int t = 0; t < T; ++t)
                for (int kv = 0; kv < 2; ++kv) {
                    for (auto& v : x) v = g(rng);
                    quantize_vector(f, quant_mode::symmetric, x.data(), D, p + (kv ? L.v_codes : L.k_codes) + L.code_offset(h, t),
                                    reinterpret_cast<half_bits*>(p + (kv ? L.v_params : L.k_params) + L.param_offset(h, t)));
                }
        int32_t* pos = reinterpret_cast<int32_t*>(p + L.pos);
        for (int t = 0; t < T; ++t) pos[t] = i * T + t;
        blocks.push_back(p);
    }
    return blocks;
}

// Loads of every code line, in the kernel's order; prefetcht1 `ahead` pieces ahead.
double read_pieces(const block_layout& L, const std::vector<uint8_t*>& blocks, int heads, int ahead) {
    const int nb = int(blocks.size());
    const size_t piece = size_t(T) * size_t(L.row);  // one kv-head's keys (or values) of a block
    // piece k of a head: run k / 32, keys for (k % 32) < 16, block run*16 + k % 16
    const auto piece_at = [&](int k, int h) -> const uint8_t* {
        const int run = k / (2 * run_blocks), kv = (k % (2 * run_blocks)) / run_blocks, b = run * run_blocks + k % run_blocks;
        return b < nb ? blocks[size_t(b)] + (kv ? L.v_codes : L.k_codes) + L.code_offset(h, 0) : nullptr;
    };
    __m256i sum = _mm256_setzero_si256();  // AVX2: the tool runs wherever a fast path does
    const double t0 = now_ns();
    for (int h = 0; h < heads; ++h)
        for (int k = 0; k < 2 * nb; ++k) {
            const uint8_t* p = piece_at(k, h);
            if (ahead > 0)
                if (const uint8_t* f = piece_at(k + ahead, h))
                    for (size_t o = 0; o < piece; o += 64) asm volatile("prefetcht1 %0" : : "m"(f[o]));
            for (size_t o = 0; o < piece; o += 64)
                sum = _mm256_add_epi64(sum, _mm256_add_epi64(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + o)),
                                                             _mm256_load_si256(reinterpret_cast<const __m256i*>(p + o + 32))));
        }
    const double ns = now_ns() - t0;
    volatile long long keep = _mm256_extract_epi64(sum, 0) + _mm256_extract_epi64(sum, 3);
    (void)keep;
    return ns / (double(heads) * nb * T);
}

}  // namespace

int main(int argc, char** argv) {
    const int fmt = argc > 1 ? std::atoi(argv[1]) : 2;
    const int heads = argc > 2 ? std::atoi(argv[2]) : 32;
    const int n_blocks = argc > 3 ? std::atoi(argv[3]) : 1024;
    const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
    T = argc > 5 ? std::atoi(argv[5]) : 32;
    if (fmt < 1 || fmt > 3 || heads < 1 || n_blocks < 64 || n_blocks % run_blocks != 0 || reps < 1 || T < 16 || T > 1024 ||
        T % 16 != 0 || 2048 % T != 0) {
        std::fprintf(stderr, "usage: smartkv-stream-bench [format 1..3] [heads] [n_blocks >= 64, a multiple of 16] [reps] [block_tokens 16..1024 dividing 2048]\n");
        return 2;
    }
    if (!fast_path_available(D)) {
        std::fprintf(stderr, "no fast path (AVX-512 or AVX2) on this CPU\n");
        return 1;
    }
    const kv_format f = kv_format(fmt);
    const block_layout L = make_block_layout(f, quant_mode::symmetric, D, heads, T);
    std::mt19937 rng(1);
    const std::vector<uint8_t*> blocks = make_blocks(f, L, heads, n_blocks, rng);
    const int n = n_blocks * T;

    // One decode query (MHA), quantised as the engine does.
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> q(D), q_sum(1), q8_scale(1), m(1), l(1), z(1), acc(D), scratch(attend_scratch_floats(D, T));
    std::vector<float> scores(static_cast<size_t>(n));  // the importance sink, [n]
    std::vector<int8_t> q8(D);
    std::vector<int32_t> q8_sum(1), row_pos(1, n);
    float absmax = 0.f;
    for (auto& x : q) absmax = std::max(absmax, std::fabs(x = g(rng) / std::sqrt(float(D))));
    q8_scale[0] = absmax / 127.f;
    for (int d = 0; d < D; ++d) q8_sum[0] += q8[size_t(d)] = int8_t(std::lrintf(q[size_t(d)] / q8_scale[0]));
    head_query hq;
    hq.n_rows = 1;
    hq.group = 1;
    hq.head_dim = D;
    hq.q = q.data();
    hq.q_sum = q_sum.data();
    hq.q8 = q8.data();
    hq.q8_scale = q8_scale.data();
    hq.q8_sum = q8_sum.data();
    hq.row_pos = row_pos.data();
    std::vector<block_ref> refs;
    for (int i = 0; i < n_blocks; ++i) refs.push_back({blocks[size_t(i)], block_kind::quantized, f, T, false, uint32_t(i * T)});
    // One kv-head over blocks [0, b1), in offers of up to 64 blocks (cpu-attend.cc's max_run_blocks).
    const auto attend_head = [&](int head, int b1) {
        m[0] = -std::numeric_limits<float>::infinity();
        l[0] = z[0] = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        head_state st{m.data(), l.data(), z.data(), acc.data()};
        const score_sink sink{scores.data(), size_t(n)};
        for (int b = 0; b < b1;) b += attend_blocks_fast(L, quant_mode::symmetric, &refs[size_t(b)], std::min(64, b1 - b), head, hq, st, sink, scratch.data());
    };

    std::vector<double> hot, cold;
    const int hot_blocks = 2048 / T, hot_passes = 200;  // 2,048 tokens whatever the block size
    for (int r = 0; r < reps; ++r) {
        double t0 = now_ns();
        for (int i = 0; i < hot_passes; ++i) attend_head(0, hot_blocks);
        hot.push_back((now_ns() - t0) / (double(hot_passes) * hot_blocks * T));
        t0 = now_ns();
        for (int h = 0; h < heads; ++h) attend_head(h, n_blocks);
        cold.push_back((now_ns() - t0) / (double(heads) * n));
    }
    const char* names[] = {"fp16", "int8", "int4", "int2"};
    const double block_bytes_per_token = double(L.bytes) / T / heads, code_bytes_per_token = 2.0 * L.row;
    std::printf("%s, %d kv-heads, %d blocks of %d tokens, one thread\n", names[fmt], heads, n_blocks, T);
    std::printf("kernel hot   %6.2f ns/token\n", median(hot));
    std::printf("kernel cold  %6.2f ns/token  %5.1f GB/s  (cold/hot %.2f)\n", median(cold), block_bytes_per_token / median(cold),
                median(cold) / median(hot));
    for (int ahead : {0, 2, 4, 8}) {
        std::vector<double> rd;
        for (int r = 0; r < reps; ++r) rd.push_back(read_pieces(L, blocks, heads, ahead));
        std::printf("reader, prefetch %d pieces ahead  %6.2f ns/token  %5.1f GB/s\n", ahead, median(rd), code_bytes_per_token / median(rd));
    }
    for (uint8_t* p : blocks) std::free(p);
    return 0;
}

// The attention kernels run on the host: a small SIMT emulator executes the
// very kernel bodies (attend-impl.cuh, attend-merge.cu, query-prep.cu) with
// one std::thread per CUDA thread, barriers for __syncthreads/__syncwarp and
// an exchange for warp shuffles, CTAs one at a time. It checks the index
// math, masks, merges and the importance pass against the float64 reference
// on any machine; speed and the hardware intrinsics are the H200's to check.
#define __host__
#define __device__
#define __global__
#define __shared__
#define __grid_constant__
#include <cuda_runtime.h>
#undef __launch_bounds__
#define __launch_bounds__(...)

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "attend-device.cuh"

// ---------------------------------------------------------------------------
// The emulator: CUDA built-ins on the host.

namespace emu {

struct barrier {
    explicit barrier(int n) : count(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(m);
        const uint64_t g = gen;
        if (++waiting == count) {
            waiting = 0;
            ++gen;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return gen != g; });
        }
    }
    std::mutex m;
    std::condition_variable cv;
    int count, waiting = 0;
    uint64_t gen = 0;
};

struct cta {
    explicit cta(int threads) : all(threads) {
        for (int w = 0; w < (threads + 31) / 32; ++w) warps.emplace_back(new barrier(32));
        slots.resize(size_t(threads));
    }
    barrier all;
    std::vector<std::unique_ptr<barrier>> warps;
    std::vector<uint32_t> slots;  // shuffle exchange, one word per thread
};

thread_local cta* current = nullptr;

// Runs fn() for every thread of every CTA of the grid (CTAs in turn).
template <typename F>
void launch(dim3 grid, dim3 block, F fn);

}  // namespace emu

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

inline void __syncthreads() { emu::current->all.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::current->warps[threadIdx.x / 32]->wait(); }
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    emu::cta& c = *emu::current;
    const unsigned t = threadIdx.x, base = t & ~31u;
    std::memcpy(&c.slots[t], &v, 4);
    c.warps[t / 32]->wait();
    T r;
    std::memcpy(&r, &c.slots[base + ((t & 31u) ^ unsigned(lane_mask))], 4);
    c.warps[t / 32]->wait();
    return r;
}
inline float __expf(float x) { return std::exp(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float x) { return int(std::lrintf(x)); }

template <typename F>
void emu::launch(dim3 grid, dim3 block, F fn) {
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                cta c(int(block.x));
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < block.x; ++t)
                    threads.emplace_back([&, t] {
                        current = &c;
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        blockDim = block;
                        gridDim = grid;
                        fn();
                    });
                for (std::thread& th : threads) th.join();
            }
}

namespace smartkv::cuda {
inline int min(int a, int b) { return a < b ? a : b; }
inline float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
inline float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
namespace attend_detail {
alignas(16) uint8_t smem[65536];  // dynamic shared memory of the one CTA running
}
}  // namespace smartkv::cuda

// The kernels themselves.
#include "../cuda/attend-impl.cuh"
#include "../cuda/attend-merge.cu"
#include "../cuda/query-prep.cu"

// ---------------------------------------------------------------------------
// The check: descriptors over CPU layer stores (same block layout), the four
// kernels emulated, against float64.

#include "check.h"
#include "cpu/layer-store.h"
#include "reference.h"
#include "smartkv/kivi.h"

using namespace smartkv;
using namespace smartkv::cuda;
using namespace smartkv::testing;

namespace {

std::vector<float> normal(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> x(n);
    for (float& v : x) v = d(rng);
    return x;
}

struct emu_case {
    int hq, hkv, D, n, rows, splits, block_tokens, n_req;
    storage_kind kind;
    bool int8q;
    quant_mode mode;
};

template <int D, int QT>
void run_partials(const attend_args& a) {
    emu::launch(dim3(unsigned(a.n_work)), dim3(128), [&] { attend_detail::attend_partials_kernel<D, QT>(a); });
}

template <int D>
void run_partials_qt(const attend_args& a, int qt) {
    if (qt == 1) run_partials<D, 1>(a);
    else if (qt == 2) run_partials<D, 2>(a);
    else if (qt == 4) run_partials<D, 4>(a);
    else run_partials<D, 8>(a);
}

void run_emu_case(const emu_case& c, uint32_t seed) {
    engine_config cfg;
    cfg.n_layers = 1, cfg.n_q_heads = c.hq, cfg.n_kv_heads = c.hkv, cfg.head_dim = c.D;
    cfg.block_tokens = c.block_tokens, cfg.mode = c.mode, cfg.query_int8 = c.int8q;
    const int H = c.hkv, G = c.hq / c.hkv, D = c.D, Hq = c.hq;
    const size_t kvn = size_t(c.n) * H * D;
    std::vector<std::unique_ptr<layer_store>> stores;
    std::vector<std::vector<float>> qs;
    std::vector<gpu_block> blocks;
    std::vector<gpu_request> reqs(size_t(c.n_req));
    std::vector<gpu_work> work;
    std::vector<float> q_all;
    std::mt19937 rng(seed);
    const int qt = c.rows * G <= 1 ? 1 : c.rows * G <= 2 ? 2 : c.rows * G <= 4 ? 4 : 8;
    size_t n_part = 0, n_scores = 0, n_out = 0, n_fin = 0;
    for (int i = 0; i < c.n_req; ++i) {
        stores.emplace_back(new layer_store(cfg, c.kind));
        layer_store& s = *stores.back();
        auto k = normal(kvn, seed + 10 * i), v = normal(kvn, seed + 10 * i + 1);
        for (size_t j = 0; j < k.size(); j += 3) k[j] += 2.f;
        s.append(c.n, k.data(), v.data());
        if (c.kind == storage_kind::mixed)
            for (int p = 4; p < c.n - c.rows - 8; ++p) s.move(size_t(p), kv_format(rng() % 4));
        s.flush_kivi_groups();
        // the rows' own tokens are the newest; KIVI keeps them in the residual
        qs.push_back(normal(size_t(c.rows) * Hq * D, seed + 10 * i + 2));
        gpu_request& r = reqs[size_t(i)];
        r.block0 = int(blocks.size());
        uint32_t base = 0;
        for (size_t g = 0; g < s.n_groups(); ++g) {
            gpu_block b;
            b.data = s.group(g), b.slot_base = base, b.n_valid = kivi_group, b.kind = blk_kivi;
            b.fmt = uint8_t(c.kind == storage_kind::kivi2 ? kv_format::int2 : kv_format::int4);
            blocks.push_back(b);
            base += kivi_group;
        }
        for (int f = 0; f < n_formats; ++f) {
            const bucket& bk = s.bucket_of(kv_format(f));
            for (size_t bi = 0; bi < bk.n_blocks(); ++bi) {
                gpu_block b;
                b.data = bk.block(bi), b.slot_base = base, b.n_valid = uint16_t(bk.block_fill(bi));
                b.kind = f == 0 ? blk_fp16 : blk_quantized, b.fmt = uint8_t(f);
                blocks.push_back(b);
                base += b.n_valid;
            }
        }
        r.n_blocks = int(blocks.size()) - r.block0;
        r.n_rows = c.rows, r.pos0 = c.n - c.rows, r.n_after = int(base);
        r.n_splits = std::max(1, std::min(c.splits, r.n_blocks));
        r.qv0 = int(q_all.size() / size_t(D));
        q_all.insert(q_all.end(), qs.back().begin(), qs.back().end());
        r.part0 = int64_t(n_part);
        n_part += size_t(r.n_splits) * c.rows * Hq;
        const int tiles = (c.rows * G + qt - 1) / qt;
        for (int h = 0; h < H; ++h)
            for (int t = 0; t < tiles; ++t)
                for (int sp = 0; sp < r.n_splits; ++sp) work.push_back({i, h, t, sp});
        n_scores += size_t(c.rows) * Hq * base, n_out += size_t(c.rows) * Hq * D, n_fin += size_t(c.rows) * Hq;
        CHECK(base == uint32_t(c.n));
    }
    std::vector<float> scores(n_scores), out(n_out), fin_m(n_fin), fin_l(n_fin);
    std::vector<int32_t> cols(size_t(c.n) * c.n_req);
    std::vector<std::vector<float>> imp(size_t(c.n_req), std::vector<float>(size_t(c.n), 0.f));
    std::vector<std::vector<float>> probs(size_t(c.n_req), std::vector<float>(size_t(c.rows) * c.n, -1.f));
    size_t so = 0, oo = 0, fo = 0;
    for (int i = 0; i < c.n_req; ++i) {
        gpu_request& r = reqs[size_t(i)];
        r.scores = scores.data() + so, r.col_pos = cols.data() + size_t(i) * c.n, r.out = out.data() + oo;
        r.final_m = fin_m.data() + fo, r.final_l = fin_l.data() + fo;
        r.importance = imp[size_t(i)].data(), r.probs = probs[size_t(i)].data();
        so += size_t(c.rows) * Hq * r.n_after, oo += size_t(c.rows) * Hq * D, fo += size_t(c.rows) * Hq;
    }
    const int n_qv = int(q_all.size() / size_t(D));
    const size_t nqv = static_cast<size_t>(n_qv);
    std::vector<float> qf(q_all.size()), q8s(nqv), qsum(nqv);
    std::vector<int8_t> q8(q_all.size());
    std::vector<int32_t> q8sum(nqv);
    std::vector<float> pm(n_part), pl(n_part), pz(n_part), pacc(n_part * size_t(D));
    attend_args a;
    for (int f = 0; f < n_formats; ++f) a.layout[f] = make_block_layout(kv_format(f), c.mode, D, H, c.block_tokens);
    a.kivi_layout = make_block_layout(c.kind == storage_kind::kivi4 ? kv_format::int4 : kv_format::int2,
                                      quant_mode::asymmetric, D, H, kivi_group, true);
    a.head_dim = D, a.n_q_heads = Hq, a.n_kv_heads = H, a.group = G, a.mode = uint8_t(c.mode);
    a.use_q8 = c.int8q, a.gamma = 0.9f, a.reqs = reqs.data(), a.blocks = blocks.data(), a.work = work.data();
    a.n_work = int(work.size()), a.n_reqs = c.n_req;
    a.qf = qf.data(), a.q8 = q8.data(), a.q8_scale = q8s.data(), a.q8_sum = q8sum.data(), a.q_sum = qsum.data();
    a.part_m = pm.data(), a.part_l = pl.data(), a.part_z = pz.data(), a.part_acc = pacc.data();

    const float inv = 1.f / std::sqrt(float(D));
    emu::launch(dim3(unsigned((n_qv * 32 + 255) / 256)), dim3(256), [&] {
        prepare_queries_kernel(q_all.data(), n_qv, D, inv, c.int8q, qf.data(), q8.data(), q8s.data(), q8sum.data(), qsum.data());
    });
    if (D == 64) run_partials_qt<64>(a, qt);
    else if (D == 128) run_partials_qt<128>(a, qt);
    else run_partials_qt<256>(a, qt);
    emu::launch(dim3(unsigned(c.rows * Hq), unsigned(c.n_req)), dim3(unsigned(D)), [&] { merge_partials_kernel(a); });
    emu::launch(dim3(unsigned((c.n + 255) / 256), unsigned(c.n_req)), dim3(256), [&] { score_probabilities_kernel(a); });

    // float64 reference on the stored (dequantised) values, int8 queries for quantised keys
    for (int i = 0; i < c.n_req; ++i) {
        const layer_store& s = *stores[size_t(i)];
        std::vector<float> k(kvn), v(kvn);
        std::vector<unsigned char> uses8(size_t(c.n), 0);
        for (size_t p = 0; p < size_t(c.n); ++p) {
            for (int h = 0; h < H; ++h) s.read(p, h, &k[(p * H + h) * D], &v[(p * H + h) * D]);
            uses8[p] = c.int8q && !s.in_group(p) && s.where(p).fmt != kv_format::fp16;
        }
        std::vector<float> q8d(qs[size_t(i)].size());
        for (size_t vv = 0; vv < q8d.size() / size_t(D); ++vv) {
            float am = 0.f;
            for (int d = 0; d < D; ++d) am = std::max(am, std::fabs(qs[size_t(i)][vv * D + d] * inv));
            const float sc = am > 0.f ? am / 127.f : 1.f;
            for (int d = 0; d < D; ++d) q8d[vv * D + d] = sc * float(std::lrintf(qs[size_t(i)][vv * D + d] * inv / sc));
        }
        ref_problem rp{c.rows, Hq, H, D, c.n, qs[size_t(i)].data(), c.int8q ? q8d.data() : nullptr, uses8.data(), k.data(), v.data()};
        std::vector<double> want, want_probs;
        reference_attention(rp, want, want_probs);
        double num = 0, den = 0, pnum = 0, inum = 0;
        const float* o = out.data() + size_t(i) * c.rows * Hq * D;
        for (size_t j = 0; j < want.size(); ++j) num = std::max(num, std::fabs(o[j] - want[j])), den = std::max(den, std::fabs(want[j]));
        for (size_t j = 0; j < want_probs.size(); ++j) pnum = std::max(pnum, std::fabs(probs[size_t(i)][j] - want_probs[j]));
        for (int p = 0; p < c.n; ++p) {
            double e = 0.0;
            for (int r = 0; r < c.rows; ++r) e = 0.9 * e + 0.1 * want_probs[size_t(r) * c.n + p];
            inum = std::max(inum, std::fabs(imp[size_t(i)][size_t(p)] - e));
        }
        char msg[300];
        std::snprintf(msg, sizeof msg, "emulated hq=%d hkv=%d D=%d n=%d rows=%d splits=%d T=%d kind=%d int8q=%d mode=%d: out %.1e probs %.1e importance %.1e",
                      c.hq, c.hkv, D, c.n, c.rows, c.splits, c.block_tokens, int(c.kind), int(c.int8q), int(c.mode),
                      num / std::max(den, 1e-30), pnum, inum);
        CHECK_MSG(num / std::max(den, 1e-30) <= 1e-4 && pnum <= 1e-5 && inum <= 1e-6, msg);
    }
}

}  // namespace

TEST(attention_kernels_emulated_on_host) {
    const emu_case cases[] = {
        {8, 2, 64, 300, 1, 3, 32, 2, storage_kind::mixed, true, quant_mode::symmetric},     // GQA-4 decode, splits
        {4, 4, 128, 200, 1, 2, 32, 1, storage_kind::mixed, true, quant_mode::symmetric},    // MHA
        {12, 4, 64, 150, 5, 2, 16, 1, storage_kind::mixed, false, quant_mode::asymmetric},  // GQA-3 prefill, T=16
        {8, 1, 64, 170, 3, 1, 64, 1, storage_kind::mixed, true, quant_mode::symmetric},     // GQA-8, T=64
        {4, 2, 256, 100, 1, 2, 32, 1, storage_kind::mixed, true, quant_mode::symmetric},    // head_dim 256
        {8, 2, 64, 400, 2, 3, 32, 1, storage_kind::kivi2, true, quant_mode::symmetric},     // KIVI-2
        {4, 2, 128, 330, 1, 2, 32, 1, storage_kind::kivi4, true, quant_mode::symmetric},    // KIVI-4
    };
    uint32_t seed = 900;
    for (const emu_case& c : cases) run_emu_case(c, seed += 17);
}

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
alignas(16) uint8_t smem[232448];  // dynamic shared memory of the one CTA running (the H100/H200 maximum, 227 KiB)
}
}  // namespace smartkv::cuda

namespace smartkv::cuda {
namespace {

// Each request of a launch carries its own γ (a per-request setting): alternate two.
float request_gamma(int i) { return i % 2 ? 0.5f : 0.9f; }
alignas(16) float smem[16384];  // dynamic shared memory of quantize.cu and kivi.cu kernels
}
}  // namespace smartkv::cuda

// The kernels themselves.
#include "../cuda/attend-impl.cuh"
#include "../cuda/attend-merge.cu"
#include "../cuda/kivi.cu"
#include "../cuda/quantize.cu"
#include "../cuda/query-prep.cu"
#include "../cuda/slot-copy.cu"

// ---------------------------------------------------------------------------
// The check: descriptors over CPU layer stores (same block layout), the four
// kernels emulated, against float64.

#include "check.h"
#include "attend-batch.h"
#include "cpu/layer-store.h"
#include "gpu-report.h"
#include "gpu-store.h"
#include "host-mirror.h"
#include "reference.h"
#include "smartkv/engine.h"
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
    static_assert(attend_detail::smem_plan<D, QT>::bytes <= sizeof(attend_detail::smem), "emulator shared memory too small");
    emu::launch(dim3(unsigned(a.n_work)), dim3(128), [&] { attend_detail::attend_partials_kernel<D, QT>(a); });
}

template <int D>
void run_partials_qt(const attend_args& a, int qt) {
    if (qt == 1) run_partials<D, 1>(a);
    else if (qt == 2) run_partials<D, 2>(a);
    else if (qt == 4) run_partials<D, 4>(a);
    else if constexpr (attend_max_q_tile(D) >= 8) run_partials<D, 8>(a);
    else throw std::logic_error("query tile over attend_max_q_tile");
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
    std::vector<size_t> block0(size_t(c.n_req));  // each request's first entry in `blocks`
    std::vector<gpu_work> work;
    std::vector<float> q_all;
    std::mt19937 rng(seed);
    const int qt = attend_q_tile_size(c.rows * G, D);
    size_t n_part = 0, n_scores = 0, n_out = 0, n_fin = 0;
    for (int i = 0; i < c.n_req; ++i) {
        stores.emplace_back(new layer_store(cfg, c.kind, cfg.master_copy));
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
        block0[size_t(i)] = blocks.size();
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
        r.n_blocks = int(blocks.size() - block0[size_t(i)]);
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
        r.blocks = blocks.data() + block0[size_t(i)];  // `blocks` is complete: no more reallocation
        r.scores = scores.data() + so, r.col_pos = cols.data() + size_t(i) * c.n, r.out = out.data() + oo;
        r.final_m = fin_m.data() + fo, r.final_l = fin_l.data() + fo;
        r.importance = imp[size_t(i)].data(), r.probs = probs[size_t(i)].data();
        r.gamma = request_gamma(i);
        so += size_t(c.rows) * Hq * r.n_after, oo += size_t(c.rows) * Hq * D, fo += size_t(c.rows) * Hq;
    }
    const int n_qv = int(q_all.size() / size_t(D));
    const size_t nqv = static_cast<size_t>(n_qv);
    std::vector<float> qf(q_all.size()), q8s(nqv), qsum(nqv);
    std::vector<int8_t> q8(q_all.size());
    std::vector<int32_t> q8sum(nqv);
    std::vector<float> pm(n_part), pl(n_part), pz(n_part), pacc(n_part * size_t(D));
    attend_args a;
    for (int f = 0; f < n_formats; ++f) a.layout[f] = make_format_layout(kv_format(f), c.mode, D, H, c.block_tokens);
    for (int f = 1; f < n_formats; ++f)
        a.kivi_layout[f] = make_block_layout(kv_format(f), quant_mode::asymmetric, D, H, kivi_group, true);
    a.head_dim = D, a.n_q_heads = Hq, a.n_kv_heads = H, a.group = G, a.mode = uint8_t(c.mode);
    a.use_q8 = c.int8q, a.reqs = reqs.data(), a.work = work.data();
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
            const double g = request_gamma(i);
            for (int r = 0; r < c.rows; ++r) e = g * e + (1.0 - g) * want_probs[size_t(r) * c.n + p];
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
    if (!emulation_wanted()) return;
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

// ---------------------------------------------------------------------------
// The whole pipeline under emulation: gpu_store over a host pool, its work
// items run by the emulated write kernels, attend_batch's descriptors, the
// emulated attention kernels; against the CPU engine (scalar reference).

namespace {

void emu_execute(gpu_ops& ops, const engine_config& cfg) {
    const int D = cfg.head_dim, H = cfg.n_kv_heads;
    if (!ops.converts.empty()) {
        const int n = int(ops.converts.size());
        emu::launch(dim3(unsigned((n + 31) / 32)), dim3(32), [&] { convert_vectors_kernel(ops.converts.data(), n, D); });
    }
    if (!ops.kivi.empty()) {
        const block_layout l16 = make_format_layout(kv_format::fp16, cfg.mode, D, H, cfg.block_tokens);
        emu::launch(dim3(unsigned(ops.kivi.size()), unsigned(H)), dim3(128), [&] { kivi_groups_kernel(ops.kivi.data(), l16); });
    }
    if (!ops.copies.empty()) {
        layouts4 l;
        for (int f = 0; f < n_formats; ++f) l.l[f] = make_format_layout(kv_format(f), cfg.mode, D, H, cfg.block_tokens);
        const int n = int(ops.copies.size());
        emu::launch(dim3(unsigned((n * 32 + 127) / 128)), dim3(128), [&] { copy_slots_kernel(ops.copies.data(), n, l); });
    }
    ops.converts.clear(), ops.kivi.clear(), ops.copies.clear();
}

void emu_attend(attend_batch& batch, const engine_config& cfg) {
    const attend_args& a = batch.args();
    const int D = cfg.head_dim, n_qv = batch.n_query_vectors();
    const float inv = 1.f / std::sqrt(float(D));
    emu::launch(dim3(unsigned((n_qv * 32 + 255) / 256)), dim3(256), [&] {
        prepare_queries_kernel(batch.raw_queries(), n_qv, D, inv, a.use_q8 != 0, const_cast<float*>(a.qf),
                               const_cast<int8_t*>(a.q8), const_cast<float*>(a.q8_scale), const_cast<int32_t*>(a.q8_sum),
                               const_cast<float*>(a.q_sum));
    });
    if (D == 64) run_partials_qt<64>(a, batch.q_tile());
    else if (D == 128) run_partials_qt<128>(a, batch.q_tile());
    else run_partials_qt<256>(a, batch.q_tile());
    emu::launch(dim3(unsigned(batch.max_slots()), unsigned(a.n_reqs)), dim3(unsigned(D)), [&] { merge_partials_kernel(a); });
    emu::launch(dim3(unsigned((batch.max_n_after() + 255) / 256), unsigned(a.n_reqs)), dim3(256),
                [&] { score_probabilities_kernel(a); });
}

struct pipe_case {
    int hq, hkv, D, n_prefix, rows, batch;
    storage_kind kind;
    bool master;
    bool mixed_kinds = false;  // alternate kivi2 / kivi4 / mixed sequences in one batch
};

void run_pipe_step(const pipe_case& c, const engine_config& cfg, kv_backend& cpu_engine, const std::vector<uint32_t>& ids,
                   std::vector<std::unique_ptr<gpu_store>>& stores, gpu_ops& ops, device_pool& pool, uint32_t seed);

void run_pipe_case(const pipe_case& c, uint32_t seed) {
    engine_config cfg;
    cfg.n_layers = 1, cfg.n_q_heads = c.hq, cfg.n_kv_heads = c.hkv, cfg.head_dim = c.D;
    cfg.master_copy = c.master, cfg.fast_path = false;
    auto cpu = make_cpu_backend(cfg);
    device_pool pool(nullptr, /*host_memory=*/true);
    std::vector<std::unique_ptr<gpu_store>> stores;
    std::vector<uint32_t> ids;
    gpu_ops ops;
    const size_t kvn = size_t(c.n_prefix) * c.hkv * c.D;
    std::mt19937 rng(seed);
    const storage_kind kinds[3] = {storage_kind::kivi2, storage_kind::kivi4, storage_kind::mixed};
    for (int b = 0; b < c.batch; ++b) {
        const storage_kind kind = c.mixed_kinds ? kinds[b % 3] : c.kind;
        ids.push_back(cpu->create_sequence(kind));
        stores.emplace_back(new gpu_store(cfg, kind, cfg.master_copy, pool, nullptr));
        gpu_store& s = *stores.back();
        auto k = normal(kvn, seed + 10 * b), v = normal(kvn, seed + 10 * b + 1);
        cpu->append(ids.back(), 0, c.n_prefix, k.data(), v.data());
        s.append(c.n_prefix, k.data(), v.data(), k.data(), v.data(), ops);
        emu_execute(ops, cfg);
        s.flush_kivi_groups(ops);
        emu_execute(ops, cfg);
        pool.commit();
        if (kind != storage_kind::mixed) continue;
        for (int round = 0; round < (c.master ? 3 : 1); ++round) {  // with the master copy: down, then some up again
            std::vector<uint32_t> pos;
            std::vector<uint8_t> fmt;
            for (int p = 4; p + 16 < c.n_prefix; ++p) {
                if (round > 0 && rng() % 3) continue;
                pos.push_back(uint32_t(p));
                fmt.push_back(uint8_t(round == 0 ? 1 + rng() % 3 : rng() % 4));
            }
            cpu->apply_plan(ids.back(), 0, pos.data(), fmt.data(), pos.size());
            std::vector<std::pair<uint32_t, kv_format>> moves;
            for (size_t i = 0; i < pos.size(); ++i) moves.emplace_back(pos[i], kv_format(fmt[i]));
            const std::vector<half_bits> master = s.master_rows(moves);
            s.move_round(moves, master.data(), ops);
            emu_execute(ops, cfg);
            pool.commit();
        }
    }
    // Three attention steps, CPU engine vs the emulated GPU pipeline. A plan
    // between the second and the third (mixed sequences) makes the stores'
    // cached device block lists rebuild; the second step updates only their
    // fp16 tails (block-list.h).
    for (int step = 0; step < 3; ++step) {
        if (step == 2) {
            for (int b = 0; b < c.batch; ++b) {
                gpu_store& s = *stores[size_t(b)];
                if (s.kind() != storage_kind::mixed) continue;
                std::vector<uint32_t> pos;
                std::vector<uint8_t> fmt;
                for (uint32_t p = 4; p + 24 < uint32_t(s.size()); p += 3) {
                    const kv_format now = s.where(p).fmt;
                    const kv_format to = now == kv_format::int2 ? kv_format::int2 : kv_format(int(now) + 1);
                    pos.push_back(p);
                    fmt.push_back(uint8_t(to));
                }
                cpu->apply_plan(ids[size_t(b)], 0, pos.data(), fmt.data(), pos.size());
                std::vector<std::pair<uint32_t, kv_format>> moves;
                for (size_t i = 0; i < pos.size(); ++i) moves.emplace_back(pos[i], kv_format(fmt[i]));
                s.move_round(moves, nullptr, ops);
                emu_execute(ops, cfg);
                pool.commit();
            }
        }
        run_pipe_step(c, cfg, *cpu, ids, stores, ops, pool, seed + 1000 * uint32_t(step));
    }
}

void run_pipe_step(const pipe_case& c, const engine_config& cfg, kv_backend& cpu_engine, const std::vector<uint32_t>& ids,
                   std::vector<std::unique_ptr<gpu_store>>& stores, gpu_ops& ops, device_pool& pool, uint32_t seed) {
    kv_backend* cpu = &cpu_engine;
    const size_t qn = size_t(c.rows) * c.hq * c.D, rn = size_t(c.rows) * c.hkv * c.D;
    std::vector<std::vector<float>> q, kn, vn, oc, og, pc, pg;
    std::vector<attend_request> reqs;
    std::vector<attend_input> inputs;
    for (int b = 0; b < c.batch; ++b) {
        q.push_back(normal(qn, seed + 100 + b));
        kn.push_back(normal(rn, seed + 200 + b));
        vn.push_back(normal(rn, seed + 300 + b));
        const size_t n_after = stores[size_t(b)]->size() + size_t(c.rows);
        oc.emplace_back(qn), og.emplace_back(qn), pc.emplace_back(c.rows * n_after), pg.emplace_back(c.rows * n_after);
    }
    for (int b = 0; b < c.batch; ++b) {
        reqs.push_back({ids[b], 0, c.rows, q[b].data(), kn[b].data(), vn[b].data(), oc[b].data(), pc[b].data()});
        gpu_store& s = *stores[size_t(b)];
        s.append(c.rows, kn[b].data(), vn[b].data(), kn[b].data(), vn[b].data(), ops);
        emu_execute(ops, cfg);
        attend_input in;
        in.store = &s, in.q = q[b].data(), in.n_rows = c.rows, in.pos0 = int(s.size()) - c.rows;
        in.out = og[b].data(), in.probs = pg[b].data();
        inputs.push_back(in);
    }
    cpu->attend(reqs.data(), reqs.size());
    attend_batch batch(cfg, /*n_sms=*/3, /*host_memory=*/true);
    batch.build(inputs, nullptr);
    emu_attend(batch, cfg);
    batch.finish(nullptr);
    for (auto& s : stores) s->flush_kivi_groups(ops), emu_execute(ops, cfg);
    pool.commit();

    double out_err = 0, probs_err = 0, imp_err = 0;
    int kv_bad = 0;
    for (int b = 0; b < c.batch; ++b) {
        double num = 0, den = 0;
        for (size_t i = 0; i < qn; ++i) num = std::max(num, double(std::fabs(og[b][i] - oc[b][i]))), den = std::max(den, double(std::fabs(oc[b][i])));
        out_err = std::max(out_err, num / std::max(den, 1e-30));
        for (size_t i = 0; i < pc[b].size(); ++i) probs_err = std::max(probs_err, double(std::fabs(pg[b][i] - pc[b][i])));
        const gpu_store& s = *stores[size_t(b)];
        std::vector<float> imp(s.size());
        cpu->report(ids[b], 0, {imp.data(), nullptr, nullptr});
        for (size_t p = 0; p < s.size(); ++p) imp_err = std::max(imp_err, double(std::fabs(imp[p] - s.importance()[p])));
        std::vector<float> kc(s.size() * c.hkv * c.D), vc(kc.size());
        cpu->read_kv(ids[b], 0, kc.data(), vc.data());
        const host_mirror mirror(s, cfg, nullptr, /*host_memory=*/true);
        std::vector<float> k(static_cast<size_t>(c.D)), v(k.size());
        for (size_t p = 0; p < s.size(); ++p)
            for (int h = 0; h < c.hkv; ++h) {
                mirror.read(p, h, k.data(), v.data());
                const size_t o = (p * c.hkv + h) * c.D;
                if (std::memcmp(k.data(), &kc[o], k.size() * 4) || std::memcmp(v.data(), &vc[o], v.size() * 4)) ++kv_bad;
            }
    }
    char msg[300];
    std::snprintf(msg, sizeof msg, "pipeline hq=%d hkv=%d D=%d n=%d rows=%d batch=%d kind=%d master=%d step seed %u: out %.1e probs %.1e importance %.1e, %d vectors differ",
                  c.hq, c.hkv, c.D, int(stores[0]->size()), c.rows, c.batch, int(c.kind), int(c.master), seed, out_err, probs_err, imp_err, kv_bad);
    CHECK_MSG(out_err <= 2e-4 && probs_err <= 1e-5 && imp_err <= 1e-6 && kv_bad == 0, msg);
}

}  // namespace

TEST(pipeline_emulated_matches_cpu_engine) {
    if (!emulation_wanted()) return;
    const pipe_case cases[] = {
        {8, 2, 64, 300, 1, 3, storage_kind::mixed, false},
        {8, 2, 64, 250, 7, 2, storage_kind::mixed, true},
        {4, 4, 128, 200, 2, 2, storage_kind::mixed, true},
        {8, 2, 64, 400, 1, 2, storage_kind::kivi2, false},
        {4, 2, 128, 330, 3, 1, storage_kind::kivi4, false},
        {8, 2, 64, 420, 2, 3, storage_kind::mixed, false, true},  // KIVI-2, KIVI-4 and mixed in one batch
    };
    uint32_t seed = 4000;
    for (const pipe_case& c : cases) run_pipe_case(c, seed += 31);
}

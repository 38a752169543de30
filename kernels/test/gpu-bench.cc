// Timings of smartkv-gpu-check (CUDA events, best of N after warm-up):
//   copy      cudaMemcpy device-to-device of 1 GiB: the bandwidth yardstick
//   decode    one query row per sequence, the whole batch in one launch, over
//             a beta = 0.25 mix and over FP16 KV (same kernels): n = 32K,
//             batch 16, 32 q-heads / 8 kv-heads, head_dim 128
//   shapes    a few more decode and prefill shapes, GB/s of the KV read
//   writes    append and plan application throughput (host-timed, whole call)
// Bytes are the stored KV the attention reads (codes, parameters, positions);
// the raw scores the importance pass writes and reads back are reported apart.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "attend-batch.h"
#include "cuda-engine.h"
#include "gpu-report.h"
#include "kernels.h"
#include "smartkv/engine.h"

using namespace smartkv;
using namespace smartkv::testing;

namespace {

std::vector<float> uniform(size_t n, uint32_t seed) {
    std::vector<float> x(n);
    uint64_t s = 0x2545f4914f6cdd1dull * (seed + 3);
    for (float& v : x) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        v = float(int64_t(s >> 40) - (int64_t(1) << 23)) * (1.f / 8388608.f) * 1.7f;
    }
    return x;
}

template <typename F>
float best_ms(F&& fn, cudaStream_t stream, int warmup, int reps) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < warmup; ++i) fn();
    float best = 1e30f;
    for (int i = 0; i < reps; ++i) {
        cudaEventRecord(a, stream);
        fn();
        cudaEventRecord(b, stream);
        cudaEventSynchronize(b);
        float ms = 0.f;
        cudaEventElapsedTime(&ms, a, b);
        best = std::min(best, ms);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return best;
}

double copy_bandwidth_gbs() {
    const size_t bytes = size_t(1) << 30;
    void *src = nullptr, *dst = nullptr;
    if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) return 0.0;
    cudaMemset(src, 1, bytes);
    const float ms = best_ms([&] { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, nullptr); }, nullptr, 2, 10);
    cudaFree(src);
    cudaFree(dst);
    const double gbs = 2.0 * double(bytes) / (double(ms) * 1e-3) / 1e9;  // read + write
    add_record("timings", json_record().str("bench", "copy_d2d").num("bytes", double(bytes)).num("ms", ms).num("gbs_read_plus_write", gbs));
    std::printf("  copy d2d 1 GiB: %.3f ms, %.0f GB/s (read+write)\n", ms, gbs);
    return gbs;
}

struct shape {
    const char* name;
    int hq, hkv, D, n, batch, rows;
    int mix;  // 0: fp16 only, 1: beta 0.25 mix (12 % int8, 48 % int4, 40 % int2; sinks + window fp16)
};

// Fills `batch` sequences of one engine; all share the same K/V values.
std::vector<uint32_t> fill(cuda::cuda_engine& eng, const shape& s, const std::vector<float>& k, const std::vector<float>& v) {
    std::vector<uint32_t> seqs;
    std::vector<uint32_t> pos;
    std::vector<uint8_t> fmt;
    std::mt19937 rng(5);
    for (int i = 4; i + 64 < s.n; ++i) {
        const uint32_t u = rng() % 100;
        pos.push_back(uint32_t(i));
        fmt.push_back(u < 12 ? 1 : u < 60 ? 2 : 3);
    }
    for (int b = 0; b < s.batch; ++b) {
        const uint32_t id = eng.create_sequence(storage_kind::mixed);
        eng.append(id, 0, s.n, k.data(), v.data());
        if (s.mix == 1) eng.apply_plan(id, 0, pos.data(), fmt.data(), pos.size());
        seqs.push_back(id);
    }
    return seqs;
}

struct timing {
    float ms = 0, ms_no_importance = 0, ms_partials = 0;  // whole run() with/without importance; partials kernel alone
    double kv_bytes = 0, score_bytes = 0, beta = 0;
};

timing time_attention(cuda::cuda_engine& eng, const shape& s, const std::vector<uint32_t>& seqs, int reps) {
    const engine_config& cfg = eng.config();
    std::vector<std::vector<float>> q, out;
    std::vector<cuda::attend_input> in;
    for (size_t b = 0; b < seqs.size(); ++b) {
        q.push_back(uniform(size_t(s.rows) * cfg.n_q_heads * cfg.head_dim, 77 + uint32_t(b)));
        out.emplace_back(q.back().size());
    }
    for (size_t b = 0; b < seqs.size(); ++b) {
        cuda::attend_input x;
        x.store = &eng.store(seqs[b], 0);
        x.q = q[b].data();
        x.n_rows = s.rows;
        x.pos0 = int(x.store->size()) - s.rows;
        x.out = out[b].data();
        in.push_back(x);
    }
    timing t;
    for (int imp = 1; imp >= 0; --imp) {
        for (auto& x : in) x.importance = imp != 0;
        cuda::attend_batch batch(cfg, eng.n_sms());
        batch.build(in, eng.stream());
        const float ms = best_ms([&] { batch.run(eng.stream()); }, eng.stream(), 3, reps);
        batch.finish(eng.stream());
        if (imp) {
            t.ms = ms;
            t.score_bytes = double(batch.score_bytes());
        } else {
            t.ms_no_importance = ms;
            t.ms_partials = best_ms([&] { cuda::attend_partials(batch.args(), batch.q_tile(), eng.stream()); },
                                    eng.stream(), 2, reps);
        }
        t.kv_bytes = double(batch.kv_bytes());
    }
    t.beta = eng.stats(seqs[0]).beta();
    return t;
}

void record_timing(const shape& s, const timing& t, double copy_gbs) {
    const double gbs = t.kv_bytes / (double(t.ms_no_importance) * 1e-3) / 1e9;
    const double gbs_imp = (t.kv_bytes + 2.0 * t.score_bytes) / (double(t.ms) * 1e-3) / 1e9;
    json_record r;
    r.str("bench", "attention").str("shape", s.name).num("hq", s.hq).num("hkv", s.hkv).num("head_dim", s.D);
    r.num("n", s.n).num("batch", s.batch).num("rows", s.rows).str("kv", s.mix ? "beta25_mix" : "fp16");
    r.num("beta", t.beta).num("kv_bytes", t.kv_bytes).num("score_bytes", t.score_bytes);
    r.num("ms_outputs_only", t.ms_no_importance).num("ms_with_importance", t.ms).num("ms_partials_kernel", t.ms_partials);
    r.num("gbs_partials_kernel", t.kv_bytes / (double(t.ms_partials) * 1e-3) / 1e9);
    r.num("gbs_kv_read", gbs).num("fraction_of_copy_bw", copy_gbs > 0 ? gbs / copy_gbs : 0.0);
    r.num("gbs_with_importance_traffic", gbs_imp);
    add_record("timings", r);
    std::printf("  %-22s %s beta %.3f: %.3f ms (%.3f ms with importance), %.2f GB KV, %.0f GB/s = %.0f%% of copy\n",
                s.name, s.mix ? "mix " : "fp16", t.beta, t.ms_no_importance, t.ms, t.kv_bytes / 1e9, gbs,
                copy_gbs > 0 ? 100.0 * gbs / copy_gbs : 0.0);
}

engine_config bench_config(const shape& s) {
    engine_config c;
    c.n_layers = 1;
    c.n_q_heads = s.hq;
    c.n_kv_heads = s.hkv;
    c.head_dim = s.D;
    return c;
}

}  // namespace

namespace smartkv::testing {

void run_gpu_benchmarks(bool quick) {
    std::printf("timings (best of N after warm-up, CUDA events):\n");
    const double copy_gbs = copy_bandwidth_gbs();

    // The headline: beta = 0.25 vs FP16, n = 32K, batch 16.
    {
        const shape mix{"decode_n32k_b16", 32, 8, 128, 32768, 16, 1, 1};
        const shape f16{"decode_n32k_b16", 32, 8, 128, 32768, 16, 1, 0};
        const size_t kvn = size_t(mix.n) * mix.hkv * mix.D;
        const std::vector<float> k = uniform(kvn, 1), v = uniform(kvn, 2);
        auto eng_ptr = make_cuda_backend(bench_config(mix));
        auto& eng = dynamic_cast<cuda::cuda_engine&>(*eng_ptr);
        const auto t0 = std::chrono::steady_clock::now();
        const auto seqs_mix = fill(eng, mix, k, v);
        const double fill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const timing tm = time_attention(eng, mix, seqs_mix, quick ? 5 : 20);
        record_timing(mix, tm, copy_gbs);
        for (uint32_t id : seqs_mix) eng.free_sequence(id);
        const auto seqs_f16 = fill(eng, f16, k, v);
        const timing tf = time_attention(eng, f16, seqs_f16, quick ? 5 : 20);
        record_timing(f16, tf, copy_gbs);
        const double speedup = double(tf.ms_no_importance) / double(tm.ms_no_importance);
        const double speedup_imp = double(tf.ms) / double(tm.ms);
        const double frac = (tm.kv_bytes / (double(tm.ms_no_importance) * 1e-3) / 1e9) / std::max(copy_gbs, 1.0);
        json_record r;
        r.str("bench", "goal_beta25_vs_fp16").num("speedup_outputs_only", speedup).num("speedup_with_importance", speedup_imp);
        r.num("fraction_of_copy_bw", frac).boolean("goal_speedup_3x", speedup >= 3.0).boolean("goal_70pct_copy_bw", frac >= 0.7);
        r.num("fill_seconds", fill_s).num("device_reserved_bytes", double(eng.device_reserved_bytes()));
        add_record("timings", r);
        std::printf("  beta 0.25 vs fp16: %.2fx faster (%.2fx with importance); %.0f%% of copy bandwidth\n", speedup,
                    speedup_imp, 100.0 * frac);
    }
    if (quick) return;
    // More shapes, beta mix: GB/s of the KV read.
    const shape shapes[] = {
        {"decode_n32k_b1", 32, 8, 128, 32768, 1, 1, 1},
        {"decode_n4k_b32", 32, 8, 128, 4096, 32, 1, 1},
        {"decode_mha_d64_n8k_b8", 16, 16, 64, 8192, 8, 1, 1},
        {"decode_gqa8_d128_n16k_b8", 64, 8, 128, 16384, 8, 1, 1},
        {"prefill_512_n8k", 32, 8, 128, 8192, 1, 512, 1},
    };
    for (const shape& s : shapes) {
        const size_t kvn = size_t(s.n) * s.hkv * s.D;
        const std::vector<float> k = uniform(kvn, 3), v = uniform(kvn, 4);
        auto eng_ptr = make_cuda_backend(bench_config(s));
        auto& eng = dynamic_cast<cuda::cuda_engine&>(*eng_ptr);
        const auto seqs = fill(eng, s, k, v);
        record_timing(s, time_attention(eng, s, seqs, 10), copy_gbs);
    }
    // Write paths, whole calls (host-timed): append 32K tokens, then a plan over them.
    {
        const shape s{"writes", 32, 8, 128, 32768, 1, 1, 1};
        const size_t kvn = size_t(s.n) * s.hkv * s.D;
        const std::vector<float> k = uniform(kvn, 5), v = uniform(kvn, 6);
        auto eng = make_cuda_backend(bench_config(s));
        const uint32_t id = eng->create_sequence(storage_kind::mixed);
        auto t0 = std::chrono::steady_clock::now();
        eng->append(id, 0, s.n, k.data(), v.data());
        const double append_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::vector<uint32_t> pos;
        std::vector<uint8_t> fmt;
        for (int i = 0; i < s.n; ++i) pos.push_back(uint32_t(i)), fmt.push_back(uint8_t(1 + i % 3));
        t0 = std::chrono::steady_clock::now();
        eng->apply_plan(id, 0, pos.data(), fmt.data(), pos.size());
        const double plan_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        add_record("timings", json_record().str("bench", "writes").num("tokens", s.n).num("append_seconds", append_s)
                                  .num("apply_plan_seconds", plan_s));
        std::printf("  append 32K tokens: %.1f ms; plan over 32K tokens: %.1f ms (whole calls, host-timed)\n",
                    append_s * 1e3, plan_s * 1e3);
    }
}

}  // namespace smartkv::testing

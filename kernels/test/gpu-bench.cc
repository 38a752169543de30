// Timings of smartkv-gpu-check (CUDA events, the median of N after warm-up,
// with the fastest and slowest beside it):
//   copy      cudaMemcpy device-to-device of 1 GiB: the bandwidth yardstick
//   decode    one query row per sequence, the whole batch in one launch, over
//             the allocator's beta = 0.25 mix, an all-2-bit cache and FP16 KV
//             (same kernels): n = 32K, batch 16, 32 q-heads / 8 kv-heads,
//             head_dim 128
//   shapes    a few more decode and prefill shapes, GB/s of the KV read
//   writes    append and plan application throughput (host-timed, whole call)
// Bytes are the stored KV the attention reads (codes, parameters, positions);
// the raw scores the importance pass writes and reads back are counted apart
// and in the goal (which times the whole step, importance included). A shape
// whose KV fits in L2 is marked "l2_resident": its GB/s is not DRAM's.
//
// The beta = 0.25 mix is the allocator's (bench-mix.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "attend-batch.h"
#include "bench-mix.h"
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

struct sample {
    float median = 0, min = 0, max = 0;  // ms
};

template <typename F>
sample time_ms(F&& fn, cudaStream_t stream, int warmup, int reps) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < warmup; ++i) fn();
    std::vector<float> ms(size_t(std::max(reps, 1)));
    for (float& m : ms) {
        cudaEventRecord(a, stream);
        fn();
        cudaEventRecord(b, stream);
        cudaEventSynchronize(b);
        cudaEventElapsedTime(&m, a, b);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(ms.begin(), ms.end());
    const size_t n = ms.size();
    return {n % 2 ? ms[n / 2] : 0.5f * (ms[n / 2 - 1] + ms[n / 2]), ms.front(), ms.back()};
}

double copy_bandwidth_gbs() {
    const size_t bytes = size_t(1) << 30;
    void *src = nullptr, *dst = nullptr;
    if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) return 0.0;
    cudaMemset(src, 1, bytes);
    const sample t = time_ms([&] { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, nullptr); }, nullptr, 2, 11);
    cudaFree(src);
    cudaFree(dst);
    const float ms = t.median;
    const double gbs = 2.0 * double(bytes) / (double(ms) * 1e-3) / 1e9;  // read + write
    add_record("timings", json_record().str("bench", "copy_d2d").num("bytes", double(bytes)).num("ms", ms)
                              .num("ms_min", t.min).num("ms_max", t.max).num("gbs_read_plus_write", gbs));
    std::printf("  copy d2d 1 GiB: %.3f ms, %.0f GB/s (read+write)\n", ms, gbs);
    return gbs;
}

enum bench_mix { mix_fp16 = 0, mix_allocator_beta25 = 1, mix_all_int2 = 2 };
const char* mix_name(int m) { return m == mix_fp16 ? "fp16" : m == mix_all_int2 ? "all_int2" : "allocator_beta25"; }

struct shape {
    const char* name;
    int hq, hkv, D, n, batch, rows;
    int mix;  // bench_mix; sinks (4) and window (64) stay fp16 in the quantised mixes
};

// Fills `batch` sequences of one engine; all share the same K/V values and
// the same plan (computed once, on the first).
std::vector<uint32_t> fill(cuda::cuda_engine& eng, const shape& s, const std::vector<float>& k, const std::vector<float>& v) {
    std::vector<uint32_t> seqs;
    std::vector<uint32_t> pos;
    std::vector<uint8_t> fmt;
    const int lo = std::min(testing::k_sinks, s.n), hi = std::max(lo, s.n - testing::k_window);
    for (int b = 0; b < s.batch; ++b) {
        const uint32_t id = eng.create_sequence(storage_kind::mixed);
        eng.append(id, 0, s.n, k.data(), v.data());
        if (b == 0 && s.mix != mix_fp16) {
            std::vector<uint8_t> plan(size_t(s.n), uint8_t(kv_format::int2));
            if (s.mix == mix_allocator_beta25) {
                std::vector<float> imp(size_t(s.n)), err(size_t(s.n) * 3);
                std::vector<uint8_t> cur(size_t(s.n));
                token_report rep;
                rep.importance = imp.data(), rep.format = cur.data(), rep.sq_error = err.data();
                eng.report(id, 0, rep);
                plan = testing::allocator_plan(eng.config(), testing::heavy_tailed_importance(size_t(s.n), 11), err, lo, hi);
            }
            for (int i = lo; i < hi; ++i) pos.push_back(uint32_t(i)), fmt.push_back(plan[size_t(i)]);
        }
        if (!pos.empty()) eng.apply_plan(id, 0, pos.data(), fmt.data(), pos.size());
        seqs.push_back(id);
    }
    return seqs;
}

struct timing {
    sample ms, ms_no_importance, ms_partials;  // whole run() with/without importance; partials kernel alone
    sample ms_graph;                           // run() with importance, captured once as a CUDA graph
    std::string graph_error;                   // why the capture failed, if it did
    double kv_bytes = 0, score_bytes = 0, beta = 0;
    double by_format[n_formats] = {0, 0, 0, 0};  // token fractions
};

// run() captured into a CUDA graph and replayed: the launch sequence holds no
// synchronisation or allocation, so it is capturable; the difference to the
// stream timing is launch overhead. Returns an error text when it is not.
std::string time_graph(cuda::attend_batch& batch, cudaStream_t stream, int reps, sample& out) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return "begin capture failed";
    std::string err;
    try {
        batch.run(stream);
    } catch (const std::exception& e) {
        err = e.what();
    }
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    if (err.empty() && end != cudaSuccess) err = std::string("end capture: ") + cudaGetErrorString(end);
    if (err.empty() && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) err = "instantiate failed";
    if (err.empty()) out = time_ms([&] { cudaGraphLaunch(exec, stream); }, stream, 2, reps);
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // a failed capture leaves no sticky error behind
    return err;
}

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
        const sample ms = time_ms([&] { batch.run(eng.stream()); }, eng.stream(), 3, reps);
        batch.finish(eng.stream());
        if (imp) {
            t.ms = ms;
            t.score_bytes = double(batch.score_bytes());
            t.graph_error = time_graph(batch, eng.stream(), reps, t.ms_graph);
        } else {
            t.ms_no_importance = ms;
            t.ms_partials = time_ms([&] { cuda::attend_partials(batch.args(), batch.q_tile(), eng.stream()); },
                                    eng.stream(), 2, reps);
        }
        t.kv_bytes = double(batch.kv_bytes());
    }
    const memory_stats st = eng.stats(seqs[0]);
    t.beta = st.beta();
    for (int f = 0; f < n_formats; ++f)
        t.by_format[f] = st.tokens ? double(st.tokens_by_format[f]) / double(st.tokens) : 0.0;
    return t;
}

double gbs_of(double bytes, float ms) { return ms > 0.f ? bytes / (double(ms) * 1e-3) / 1e9 : 0.0; }

// One whole engine decode step over the batch (kv_backend::attend: append
// the new K/V, block lists, uploads, the kernels, one synchronisation,
// outputs to the host), host-timed, median of reps: what a layer costs the
// model loop, host work included.
double engine_step_ms(cuda::cuda_engine& eng, const shape& s, const std::vector<uint32_t>& seqs, int reps) {
    const engine_config& cfg = eng.config();
    const size_t qn = size_t(s.rows) * cfg.n_q_heads * cfg.head_dim, kn = size_t(s.rows) * cfg.n_kv_heads * cfg.head_dim;
    std::vector<std::vector<float>> q, k, v, out;
    std::vector<attend_request> reqs;
    for (size_t b = 0; b < seqs.size(); ++b) {
        q.push_back(uniform(qn, 500 + uint32_t(b)));
        k.push_back(uniform(kn, 600 + uint32_t(b)));
        v.push_back(uniform(kn, 700 + uint32_t(b)));
        out.emplace_back(qn);
    }
    for (size_t b = 0; b < seqs.size(); ++b)
        reqs.push_back({seqs[b], 0, s.rows, q[b].data(), k[b].data(), v[b].data(), out[b].data(), nullptr});
    std::vector<double> ms;
    for (int i = 0; i < reps + 2; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        eng.attend(reqs.data(), reqs.size());
        const double m = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (i >= 2) ms.push_back(m);  // two warm-up steps
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

void record_timing(const shape& s, const timing& t, double copy_gbs, double l2_bytes) {
    const double gbs = gbs_of(t.kv_bytes, t.ms_no_importance.median);
    const double gbs_imp = gbs_of(t.kv_bytes + 2.0 * t.score_bytes, t.ms.median);
    const bool l2 = t.kv_bytes <= l2_bytes;
    json_record r;
    r.str("bench", "attention").str("shape", s.name).num("hq", s.hq).num("hkv", s.hkv).num("head_dim", s.D);
    r.num("n", s.n).num("batch", s.batch).num("rows", s.rows).str("kv", mix_name(s.mix));
    r.num("beta", t.beta).num("frac_fp16", t.by_format[0]).num("frac_int8", t.by_format[1]);
    r.num("frac_int4", t.by_format[2]).num("frac_int2", t.by_format[3]);
    r.num("kv_bytes", t.kv_bytes).num("score_bytes", t.score_bytes).boolean("l2_resident", l2);
    r.num("ms_outputs_only", t.ms_no_importance.median).num("ms_outputs_only_min", t.ms_no_importance.min);
    r.num("ms_outputs_only_max", t.ms_no_importance.max);
    r.num("ms_with_importance", t.ms.median).num("ms_with_importance_min", t.ms.min).num("ms_with_importance_max", t.ms.max);
    r.num("ms_partials_kernel", t.ms_partials.median);
    if (t.graph_error.empty()) r.num("ms_with_importance_graph", t.ms_graph.median);
    else r.str("graph_error", t.graph_error);
    r.num("gbs_partials_kernel", gbs_of(t.kv_bytes, t.ms_partials.median));
    r.num("gbs_kv_read", gbs).num("fraction_of_copy_bw", copy_gbs > 0 ? gbs / copy_gbs : 0.0);
    r.num("gbs_with_importance_traffic", gbs_imp);
    r.num("fraction_of_copy_bw_with_importance", copy_gbs > 0 ? gbs_imp / copy_gbs : 0.0);
    add_record("timings", r);
    std::printf("  %-24s %-16s beta %.3f: %.3f ms (%.3f ms with importance), %.2f GB KV, %.0f GB/s = %.0f%% of copy%s\n",
                s.name, mix_name(s.mix), t.beta, t.ms_no_importance.median, t.ms.median, t.kv_bytes / 1e9, gbs,
                copy_gbs > 0 ? 100.0 * gbs / copy_gbs : 0.0, l2 ? " (L2-resident)" : "");
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
    std::printf("timings (median of N after warm-up, CUDA events):\n");
    const double copy_gbs = copy_bandwidth_gbs();
    int l2 = 0;
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
    const double l2_bytes = double(l2);

    // The headline: the allocator's beta = 0.25 mix (and all-2-bit) vs FP16,
    // n = 32K, batch 16; the goal is judged on the whole step, importance included.
    {
        const shape mix{"decode_n32k_b16", 32, 8, 128, 32768, 16, 1, mix_allocator_beta25};
        const shape i2{"decode_n32k_b16", 32, 8, 128, 32768, 16, 1, mix_all_int2};
        const shape f16{"decode_n32k_b16", 32, 8, 128, 32768, 16, 1, mix_fp16};
        const size_t kvn = size_t(mix.n) * mix.hkv * mix.D;
        const std::vector<float> k = uniform(kvn, 1), v = uniform(kvn, 2);
        auto eng_ptr = make_cuda_backend(bench_config(mix));
        auto& eng = dynamic_cast<cuda::cuda_engine&>(*eng_ptr);
        const int reps = quick ? 7 : 21;
        const auto t0 = std::chrono::steady_clock::now();
        const auto seqs_mix = fill(eng, mix, k, v);
        const double fill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const timing tm = time_attention(eng, mix, seqs_mix, reps);
        record_timing(mix, tm, copy_gbs, l2_bytes);
        const double step_ms = engine_step_ms(eng, mix, seqs_mix, reps);
        for (uint32_t id : seqs_mix) eng.free_sequence(id);
        const auto seqs_i2 = fill(eng, i2, k, v);
        const timing t2 = time_attention(eng, i2, seqs_i2, reps);
        record_timing(i2, t2, copy_gbs, l2_bytes);
        for (uint32_t id : seqs_i2) eng.free_sequence(id);
        const auto seqs_f16 = fill(eng, f16, k, v);
        const timing tf = time_attention(eng, f16, seqs_f16, reps);
        record_timing(f16, tf, copy_gbs, l2_bytes);
        const double speedup = double(tf.ms_no_importance.median) / double(tm.ms_no_importance.median);
        const double speedup_imp = double(tf.ms.median) / double(tm.ms.median);
        const double frac = gbs_of(tm.kv_bytes, tm.ms_no_importance.median) / std::max(copy_gbs, 1.0);
        const double frac_imp = gbs_of(tm.kv_bytes + 2.0 * tm.score_bytes, tm.ms.median) / std::max(copy_gbs, 1.0);
        json_record r;
        r.str("bench", "goal_beta25_vs_fp16").str("kv", mix_name(mix.mix)).num("beta", tm.beta);
        r.num("speedup_with_importance", speedup_imp).num("fraction_of_copy_bw_with_importance", frac_imp);
        r.boolean("goal_speedup_3x", speedup_imp >= 3.0).boolean("goal_70pct_copy_bw", frac_imp >= 0.7);
        r.num("speedup_outputs_only", speedup).num("fraction_of_copy_bw_outputs_only", frac);
        r.num("speedup_all_int2_with_importance", double(tf.ms.median) / double(t2.ms.median));
        r.num("engine_step_ms", step_ms).num("engine_step_overhead_ms", step_ms - double(tm.ms.median));
        r.num("fill_seconds", fill_s).num("device_reserved_bytes", double(eng.device_reserved_bytes()));
        add_record("timings", r);
        std::printf("  beta %.3f (allocator) vs fp16, importance included: %.2fx faster, %.0f%% of copy bandwidth "
                    "(outputs only: %.2fx, %.0f%%); whole engine step %.3f ms\n",
                    tm.beta, speedup_imp, 100.0 * frac_imp, speedup, 100.0 * frac, step_ms);
    }
    if (quick) return;
    // More shapes, the allocator's mix: GB/s of the KV read.
    const shape shapes[] = {
        {"decode_n32k_b1", 32, 8, 128, 32768, 1, 1, mix_allocator_beta25},
        {"decode_n4k_b32", 32, 8, 128, 4096, 32, 1, mix_allocator_beta25},
        {"decode_mha_d64_n8k_b8", 16, 16, 64, 8192, 8, 1, mix_allocator_beta25},
        {"decode_gqa8_d128_n16k_b8", 64, 8, 128, 16384, 8, 1, mix_allocator_beta25},
        {"prefill_512_n8k", 32, 8, 128, 8192, 1, 512, mix_allocator_beta25},
    };
    for (const shape& s : shapes) {
        const size_t kvn = size_t(s.n) * s.hkv * s.D;
        const std::vector<float> k = uniform(kvn, 3), v = uniform(kvn, 4);
        auto eng_ptr = make_cuda_backend(bench_config(s));
        auto& eng = dynamic_cast<cuda::cuda_engine&>(*eng_ptr);
        const auto seqs = fill(eng, s, k, v);
        record_timing(s, time_attention(eng, s, seqs, 11), copy_gbs, l2_bytes);
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

// Quick C++ timing of decode attention over the engine's buckets vs dense
// fp16, without Node in the way. The user-facing benchmark is
// `npx smartkv bench attention`; this is the kernel developer's loop.
// Usage: smartkv-attend-bench [n_ctx] [n_q_heads] [n_kv_heads] [reps] [variant|-1] [compare_block_tokens]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <random>
#include <vector>

#include "cpu/thread-pool.h"
#include "dense/dense-attention.h"
#include "smartkv/engine.h"

using namespace smartkv;

namespace {
double cpu_us() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) * 1e6 + double(ts.tv_nsec) / 1e3;
}
double g_cpu_per_call = 0.0;  // CPU time of all threads per call, immune to other processes
double now_us() {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
template <typename F>
double median_us(int reps, F&& fn) {
    std::vector<double> t;
    fn();
    fn();
    const double c0 = cpu_us();
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_us();
        fn();
        t.push_back(now_us() - t0);
    }
    g_cpu_per_call = (cpu_us() - c0) / reps;
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// One sequence of n tokens in an engine with T-token blocks, every token but
// the first 4 and last 64 moved to the variant's format (0 int8, 1 int4,
// 2 int2, 3 a mix: 10 % int8, 20 % int2, 70 % int4 ~ beta 0.25).
struct bucket_bench {
    std::unique_ptr<kv_backend> eng;
    uint32_t seq = 0;
};
bucket_bench make_bucket_bench(engine_config c, int T, int variant, int n, const std::vector<float>& k,
                               const std::vector<float>& v) {
    c.block_tokens = T;
    bucket_bench b{make_cpu_backend(c), 0};
    b.seq = b.eng->create_sequence(storage_kind::mixed);
    b.eng->append(b.seq, 0, n, k.data(), v.data());
    std::vector<uint32_t> pos;
    std::vector<uint8_t> fmt;
    for (int t = 4; t < n - 64; ++t) {
        pos.push_back(uint32_t(t));
        uint8_t f = uint8_t(1 + variant);
        if (variant == 3) f = (t % 10 == 0) ? 1 : (t % 10 < 3 ? 3 : 2);
        fmt.push_back(f);
    }
    b.eng->apply_plan(b.seq, 0, pos.data(), fmt.data(), pos.size());
    return b;
}
// One decode step (appends a token); returns its wall time in us.
double time_attend(bucket_bench& b, std::vector<float>& q, std::vector<float>& kn, std::vector<float>& vn,
                   std::vector<float>& out) {
    attend_request r{b.seq, 0, 1, q.data(), kn.data(), vn.data(), out.data(), nullptr};
    const double t0 = now_us();
    b.eng->attend(&r, 1);
    return now_us() - t0;
}
double quantile(std::vector<double> x, double f) {
    std::sort(x.begin(), x.end());
    return x[size_t(f * double(x.size() - 1) + 0.5)];
}
}  // namespace

int main(int argc, char** argv) {
    const int n = argc > 1 ? std::atoi(argv[1]) : 32768;
    const int hq = argc > 2 ? std::atoi(argv[2]) : 32, hkv = argc > 3 ? std::atoi(argv[3]) : 32;
    const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
    const int only = argc > 5 ? std::atoi(argv[5]) : -1;  // one variant: 0 int8 .. 3 mix
    const int compare_T = argc > 6 ? std::atoi(argv[6]) : 0;  // > 0: 32-token blocks vs these, paired
    const int D = 128;
    std::mt19937 rng(1);
    std::normal_distribution<float> g(0.f, 1.f);
    const size_t kvn = size_t(n) * hkv * D;
    std::vector<float> k(kvn), v(kvn), q(size_t(hq) * D), out(size_t(hq) * D);
    for (auto& x : k) x = g(rng);
    for (auto& x : v) x = g(rng);
    for (auto& x : q) x = g(rng);

    thread_pool pool(0 < 1 ? 2 : 2);
    std::vector<uint16_t> k16(kvn), v16(kvn);  // [H][n][D]
    for (int h = 0; h < hkv; ++h)
        for (int t = 0; t < n; ++t)
            for (int d = 0; d < D; ++d) {
                k16[(size_t(h) * n + t) * D + d] = float_to_half(k[(size_t(t) * hkv + h) * D + d]);
                v16[(size_t(h) * n + t) * D + d] = float_to_half(v[(size_t(t) * hkv + h) * D + d]);
            }
    dense_problem dp{hq, hkv, D, n, q.data(), k16.data(), v16.data(), out.data()};
    const double fp16_us = median_us(reps, [&] { dense_attention_f16(dp, pool); });
    const double fp16_bytes = double(kvn) * 2 * 2;
    const double fp16_cpu = g_cpu_per_call;
    std::printf("fp16-dense   %9.0f us  %6.1f GB/s  cpu %8.0f us\n", fp16_us, fp16_bytes / fp16_us / 1e3, fp16_cpu);

    const char* names[] = {"int8", "int4", "int2", "mix~0.25"};
    std::vector<float> kn(size_t(hkv) * D, 0.1f), vn(size_t(hkv) * D, 0.1f);  // [hkv][D] the one new token
    for (int variant = 0; variant < 4; ++variant) {
        if (only >= 0 && variant != only) continue;
        engine_config c;
        c.n_layers = 1;
        c.n_q_heads = hq;
        c.n_kv_heads = hkv;
        c.head_dim = D;
        c.n_threads = 2;
        if (compare_T > 0) {
            // The same context in 32-token blocks and in compare_T-token blocks, called
            // alternately: the per-call ratio is paired, so the VM's drift cancels.
            bucket_bench a = make_bucket_bench(c, 32, variant, n, k, v);
            bucket_bench b = make_bucket_bench(c, compare_T, variant, n, k, v);
            std::vector<double> ta, tb, ratio;
            for (int i = 0; i < reps; ++i) {
                ta.push_back(time_attend(a, q, kn, vn, out));
                tb.push_back(time_attend(b, q, kn, vn, out));
                ratio.push_back(ta.back() / tb.back());
            }
            std::printf("%-12s T=32 %9.0f us  T=%d %9.0f us  paired T32/T%d median %.3f (quartiles %.3f %.3f)  beta %.3f / %.3f\n",
                        names[variant], quantile(ta, 0.5), compare_T, quantile(tb, 0.5), compare_T, quantile(ratio, 0.5),
                        quantile(ratio, 0.25), quantile(ratio, 0.75), a.eng->stats(a.seq).beta(), b.eng->stats(b.seq).beta());
            continue;
        }
        bucket_bench bb = make_bucket_bench(c, c.block_tokens, variant, n, k, v);
        const double us = median_us(reps, [&] { time_attend(bb, q, kn, vn, out); });
        const memory_stats s = bb.eng->stats(bb.seq);
        std::printf("%-12s %9.0f us  %6.1f GB/s  cpu %8.0f us  beta %.3f  speedup %.2fx (cpu %.2fx)\n", names[variant], us,
                    double(s.held()) / us / 1e3, g_cpu_per_call, s.beta(), fp16_us / us, fp16_cpu / g_cpu_per_call);
    }
    return 0;
}

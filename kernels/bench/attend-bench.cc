// Quick C++ timing of decode attention over the engine's buckets vs dense
// fp16, without Node in the way. The user-facing benchmark is
// `npx smartkv bench attention`; this is the kernel developer's loop.
// Usage: smartkv-attend-bench [n_ctx] [n_q_heads] [n_kv_heads] [reps]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
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
}  // namespace

int main(int argc, char** argv) {
    const int n = argc > 1 ? std::atoi(argv[1]) : 32768;
    const int hq = argc > 2 ? std::atoi(argv[2]) : 32, hkv = argc > 3 ? std::atoi(argv[3]) : 32;
    const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
    const int only = argc > 5 ? std::atoi(argv[5]) : -1;  // one variant: 0 int8 .. 3 mix
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
    for (int variant = 0; variant < 4; ++variant) {
        if (only >= 0 && variant != only) continue;
        engine_config c;
        c.n_layers = 1;
        c.n_q_heads = hq;
        c.n_kv_heads = hkv;
        c.head_dim = D;
        c.n_threads = 2;
        auto eng = make_cpu_backend(c);
        const uint32_t seq = eng->create_sequence(storage_kind::mixed);
        eng->append(seq, 0, n, k.data(), v.data());
        std::vector<uint32_t> pos;
        std::vector<uint8_t> fmt;
        for (int t = 4; t < n - 64; ++t) {
            pos.push_back(uint32_t(t));
            uint8_t f = uint8_t(1 + variant);
            if (variant == 3) f = (t % 10 == 0) ? 1 : (t % 10 < 3 ? 3 : 2);  // 10% int8, 20% int2, 70% int4
            fmt.push_back(f);
        }
        eng->apply_plan(seq, 0, pos.data(), fmt.data(), pos.size());
        std::vector<float> kn(size_t(hkv) * D, 0.1f), vn(size_t(hkv) * D, 0.1f);
        attend_request r{seq, 0, 1, q.data(), kn.data(), vn.data(), out.data(), nullptr};
        const double us = median_us(reps, [&] { eng->attend(&r, 1); });
        const memory_stats s = eng->stats(seq);
        std::printf("%-12s %9.0f us  %6.1f GB/s  cpu %8.0f us  beta %.3f  speedup %.2fx (cpu %.2fx)\n", names[variant], us,
                    double(s.held()) / us / 1e3, g_cpu_per_call, s.beta(), fp16_us / us, fp16_cpu / g_cpu_per_call);
    }
    return 0;
}

// How many 512-bit FMAs and permutes one core retires per second: the compute
// ceiling that decode attention over 2-4-bit codes runs into on a small VM.
// Usage: smartkv-vector-throughput
#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {
template <typename F>
double per_second(long n, F&& body) {
    const auto t0 = std::chrono::steady_clock::now();
    body(n);
    return double(n) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main() {
    if (!__builtin_cpu_supports("avx512f")) {
        std::puts("no AVX-512 on this CPU");
        return 0;
    }
    const long n = 100000000;
    __m512 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_ps(1.f + float(i) * 1e-7f);
    // 8 independent FMA chains: enough to cover the FMA latency on current cores
    const double fma = per_second(n, [&](long k) {
        const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
        for (long j = 0; j < k; ++j)
            for (int i = 0; i < 8; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
    });
    __m512 b[8];
    for (int i = 0; i < 8; ++i) b[i] = _mm512_set1_ps(float(i));
    const __m512i idx = _mm512_set1_epi32(3);
    const double perm = per_second(n / 4, [&](long k) {
        for (long j = 0; j < k; ++j)
            for (int i = 0; i < 8; ++i) b[i] = _mm512_add_ps(_mm512_permutexvar_ps(idx, b[i]), b[(i + 1) & 7]);
    });
    float sink = 0.f;
    for (int i = 0; i < 8; ++i) sink += _mm512_reduce_add_ps(a[i]) + _mm512_reduce_add_ps(b[i]);
    std::printf("one core: %.2f G zmm FMA/s (%.1f GFLOP/s fp32), %.2f G zmm permute+add pairs/s  [%g]\n", fma * 8 / 1e9,
                fma * 8 * 32 / 1e9, perm * 8 / 1e9, double(sink));
    return 0;
}

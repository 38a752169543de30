// Benchmark-only entry points: dense fp32/fp16 attention over plain arrays
// (the baselines the engine is compared with), a memory-read-bandwidth probe,
// and a seeded Gaussian fill fast enough to make 32K-token caches.
#include <napi.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/thread-pool.h"
#include "dense/dense-attention.h"
#include "js-args.h"
#include "promise-worker.h"

namespace smartkv_node {

namespace {

using smartkv::error_code;
using smartkv::engine_error;

// One pool per thread count, shared by all bench calls; thread_pool is not
// reentrant, so the calls take the lock for their whole run.
std::mutex g_pool_mutex;

smartkv::thread_pool& pool_for(int threads) {
    static std::map<int, std::unique_ptr<smartkv::thread_pool>> pools;
    if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
    auto& p = pools[threads];
    if (!p) p = std::make_unique<smartkv::thread_pool>(threads);
    return *p;
}

struct dense_job {
    smartkv::dense_problem p;
};

// denseAttention(f16: boolean, threads, problems[]) -> Promise<void>. Each
// problem {qHeads, kvHeads, headDim, nCtx, q [Hq][D] f32, k/v [H][n][D] f32|u16, out [Hq][D] f32}
// is one decode row of one sequence; a batch runs them one after another.
Napi::Value dense_attention(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const bool f16 = info[0].ToBoolean().Value();
    const int threads = i32_arg(info[1], "threads");
    if (!info[2].IsArray()) throw Napi::TypeError::New(env, "problems must be an array");
    const Napi::Array list = info[2].As<Napi::Array>();
    auto jobs = std::make_shared<std::vector<smartkv::dense_problem>>(list.Length());
    std::vector<Napi::Value> keep;
    for (uint32_t i = 0; i < list.Length(); ++i) {
        const Napi::Object o = list.Get(i).As<Napi::Object>();
        smartkv::dense_problem& p = (*jobs)[i];
        p.n_q_heads = i32_arg(o.Get("qHeads"), "qHeads");
        p.n_kv_heads = i32_arg(o.Get("kvHeads"), "kvHeads");
        p.head_dim = i32_arg(o.Get("headDim"), "headDim");
        p.n_ctx = i32_arg(o.Get("nCtx"), "nCtx");
        p.q = typed_data<float>(o.Get("q"), "q");
        p.out = typed_data<float>(o.Get("out"), "out");
        if (f16) {
            p.k = typed_data<uint16_t>(o.Get("k"), "k");
            p.v = typed_data<uint16_t>(o.Get("v"), "v");
        } else {
            p.k = typed_data<float>(o.Get("k"), "k");
            p.v = typed_data<float>(o.Get("v"), "v");
        }
        for (const char* key : {"q", "k", "v", "out"}) keep.push_back(o.Get(key));
    }
    return promise_worker::start(
        env, "smartkv.denseAttention",
        [jobs, f16, threads] {
            // The dense loops need AVX-512 or AVX2+FMA+F16C (dense-dispatch.cc).
            if (!smartkv::dense_attention_available())
                throw engine_error(error_code::failed_precondition, "dense attention needs AVX-512F or AVX2+FMA+F16C");
            std::lock_guard<std::mutex> lock(g_pool_mutex);
            smartkv::thread_pool& pool = pool_for(threads);
            for (const smartkv::dense_problem& p : *jobs)
                f16 ? smartkv::dense_attention_f16(p, pool) : smartkv::dense_attention_f32(p, pool);
        },
        nullptr, keep);
}

// Sum of 64-bit words; the clones let the compiler use the widest loads the
// CPU has without building the whole file for AVX-512.
__attribute__((target_clones("avx512f", "avx2", "default"))) uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) a += p[i], b += p[i + 1], c += p[i + 2], d += p[i + 3];
    for (; i < n; ++i) a += p[i];
    return a + b + c + d;
}

struct free_deleter {
    void operator()(void* p) const { std::free(p); }
};

// Best-of-reps read bandwidth in GB/s over a buffer of `bytes`, all threads
// reading disjoint 2 MiB chunks.
double probe_bandwidth(size_t bytes, int threads, int reps) {
    const size_t chunk = size_t(2) << 20, n_chunks = (bytes + chunk - 1) / chunk;
    bytes = n_chunks * chunk;
    std::unique_ptr<uint64_t, free_deleter> buf(static_cast<uint64_t*>(std::aligned_alloc(4096, bytes)));
    if (!buf) throw engine_error(error_code::resource_exhausted, "bandwidth probe: cannot allocate buffer");
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    smartkv::thread_pool& pool = pool_for(threads);
    const size_t words = chunk / sizeof(uint64_t);
    pool.parallel_for(n_chunks, [&](size_t c, int) {  // touch every page (first touch by the readers)
        uint64_t* p = buf.get() + c * words;
        for (size_t i = 0; i < words; ++i) p[i] = i ^ c;
    });
    std::vector<uint64_t> sinks(size_t(pool.size()), 0);
    double best = 0.0;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.parallel_for(n_chunks, [&](size_t c, int t) { sinks[size_t(t)] += sum_words(buf.get() + c * words, words); });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(bytes) / s / 1e9);
    }
    volatile uint64_t keep = 0;
    for (uint64_t s : sinks) keep = keep + s;  // the sums must not be optimised away
    (void)keep;
    return best;
}

// memoryBandwidth(bytes, threads, reps) -> Promise<number> GB/s
Napi::Value memory_bandwidth(const Napi::CallbackInfo& info) {
    const double bytes = info[0].As<Napi::Number>().DoubleValue();
    const int threads = i32_arg(info[1], "threads"), reps = i32_arg(info[2], "reps");
    auto gbs = std::make_shared<double>(0.0);
    return promise_worker::start(
        info.Env(), "smartkv.memoryBandwidth", [=] { *gbs = probe_bandwidth(size_t(bytes), threads, reps); },
        [gbs](Napi::Env env) { return Napi::Number::New(env, *gbs); }, {});
}

uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Gaussian values for elements [i0, i1), from a stream seeded by (seed, chunk),
// so the result does not depend on the thread count. Box-Muller, two at a time.
template <typename Out>
void fill_chunk(Out* out, size_t i0, size_t i1, uint64_t seed, size_t chunk, float sigma) {
    uint64_t s = seed ^ (0x5851f42d4c957f2dull * (chunk + 1));
    for (size_t i = i0; i < i1; i += 2) {
        const double u1 = (double(splitmix64(s) >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
        const double u2 = double(splitmix64(s) >> 11) * 0x1.0p-53;
        const double r = std::sqrt(-2.0 * std::log(u1)) * sigma, a = 6.283185307179586 * u2;
        const float x[2] = {float(r * std::cos(a)), float(r * std::sin(a))};
        for (size_t j = 0; j < 2 && i + j < i1; ++j) {
            if constexpr (sizeof(Out) == 2) out[i + j] = smartkv::float_to_half(x[j]);
            else out[i + j] = x[j];
        }
    }
}

// fillGaussian(array f32 | u16 (fp16 bits), seed, sigma, threads) -> Promise<void>
Napi::Value fill_gaussian(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const bool half = info[0].IsTypedArray() && info[0].As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array;
    size_t n = 0;
    void* data = half ? static_cast<void*>(typed_data<uint16_t>(info[0], "array", false, &n))
                      : static_cast<void*>(typed_data<float>(info[0], "array", false, &n));
    const uint64_t seed = uint64_t(info[1].As<Napi::Number>().Int64Value());
    const float sigma = info[2].As<Napi::Number>().FloatValue();
    const int threads = i32_arg(info[3], "threads");
    return promise_worker::start(
        env, "smartkv.fillGaussian",
        [=] {
            const size_t chunk = size_t(1) << 16, n_chunks = (n + chunk - 1) / chunk;
            std::lock_guard<std::mutex> lock(g_pool_mutex);
            pool_for(threads).parallel_for(n_chunks, [&](size_t c, int) {
                const size_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
                if (half) fill_chunk(static_cast<uint16_t*>(data), i0, i1, seed, c, sigma);
                else fill_chunk(static_cast<float*>(data), i0, i1, seed, c, sigma);
            });
        },
        nullptr, {info[0]});
}

}  // namespace

void define_bench(Napi::Env env, Napi::Object exports) {
    exports.Set("denseAttention", Napi::Function::New(env, dense_attention, "denseAttention"));
    exports.Set("memoryBandwidth", Napi::Function::New(env, memory_bandwidth, "memoryBandwidth"));
    exports.Set("fillGaussian", Napi::Function::New(env, fill_gaussian, "fillGaussian"));
}

}  // namespace smartkv_node

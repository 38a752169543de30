// Chooses the dense baseline's loops by the CPU (default flags: nothing here
// runs an instruction the CPU may lack).
#include <stdexcept>

#include "dense-attention.h"

namespace smartkv {

namespace {
bool has_avx512() {
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    return ok;
}
bool has_avx2() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    return ok;
}
}  // namespace

bool dense_attention_available() { return has_avx512() || has_avx2(); }

void dense_attention_f32(const dense_problem& p, thread_pool& pool) {
    if (has_avx512()) return dense_attention_f32_avx512(p, pool);
    if (has_avx2()) return dense_attention_f32_avx2(p, pool);
    throw std::runtime_error("dense attention needs AVX-512F or AVX2+FMA+F16C");
}

void dense_attention_f16(const dense_problem& p, thread_pool& pool) {
    if (has_avx512()) return dense_attention_f16_avx512(p, pool);
    if (has_avx2()) return dense_attention_f16_avx2(p, pool);
    throw std::runtime_error("dense attention needs AVX-512F or AVX2+FMA+F16C");
}

}  // namespace smartkv

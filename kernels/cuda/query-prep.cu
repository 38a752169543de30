// Query preparation, once per step: scale by 1/sqrt(D) and, for integer dot
// products, quantise each q vector to s8 with one scale (absmax/127), exactly
// as cpu-attend.cc prepare_queries does. One warp per q vector.
#include "cuda-check.h"
#include "kernels.h"

namespace smartkv::cuda {

namespace {

__global__ void prepare_queries_kernel(const float* q, int n_qv, int D, float inv_sqrt_d, bool int8, float* qf,
                                       int8_t* q8, float* q8_scale, int32_t* q8_sum, float* q_sum) {
    const int v = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (v >= n_qv) return;
    const float* src = q + size_t(v) * D;
    float* dst = qf + size_t(v) * D;
    float sum = 0.f, absmax = 0.f;
    for (int d = lane; d < D; d += 32) {
        const float x = src[d] * inv_sqrt_d;
        dst[d] = x;
        sum += x;
        absmax = fmaxf(absmax, fabsf(x));
    }
    for (int o = 16; o > 0; o /= 2) {
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
        absmax = fmaxf(absmax, __shfl_xor_sync(0xffffffffu, absmax, o));
    }
    if (lane == 0) q_sum[v] = sum;
    if (!int8) return;
    const float scale = absmax > 0.f ? absmax / 127.f : 1.f;
    int isum = 0;
    for (int d = lane; d < D; d += 32) {
        const int c = __float2int_rn(__fdiv_rn(src[d] * inv_sqrt_d, scale));
        q8[size_t(v) * D + d] = int8_t(c);
        isum += c;
    }
    for (int o = 16; o > 0; o /= 2) isum += __shfl_xor_sync(0xffffffffu, isum, o);
    if (lane == 0) {
        q8_scale[v] = scale;
        q8_sum[v] = isum;
    }
}

#if defined(__CUDACC__)  // launchers: nvcc only (gpu-emulate.cc runs the kernels on the host)
void launch_prepare(const float* q, int n_qv, int D, float inv_sqrt_d, bool int8, float* qf, int8_t* q8,
                    float* q8_scale, int32_t* q8_sum, float* q_sum, cudaStream_t stream) {
    constexpr int threads = 256;
    const int grid = int((size_t(n_qv) * 32 + threads - 1) / threads);
    prepare_queries_kernel<<<grid, threads, 0, stream>>>(q, n_qv, D, inv_sqrt_d, int8, qf, q8, q8_scale, q8_sum,
                                                         q_sum);
    SKV_CUDA_CHECK_LAUNCH();
}

#endif  // __CUDACC__

}  // namespace

#if defined(__CUDACC__)
void prepare_queries(const float* q, int n_qv, int head_dim, float inv_sqrt_d, bool int8, float* qf, int8_t* q8,
                     float* q8_scale, int32_t* q8_sum, float* q_sum, cudaStream_t stream) {
    if (n_qv <= 0) return;
    launch_prepare(q, n_qv, head_dim, inv_sqrt_d, int8, qf, q8, q8_scale, q8_sum, q_sum, stream);
}

#endif  // __CUDACC__

}  // namespace smartkv::cuda

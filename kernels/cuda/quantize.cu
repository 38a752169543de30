// Vector conversion: the write side of the GPU buckets. One thread converts
// one K or V vector of one kv-head: dequantise the source into shared memory,
// then quantise it with the very functions the CPU uses (formats.h). Compiled
// with --fmad=false (CMakeLists.txt) so the arithmetic rounds like the host's
// and the stored codes and parameters match the CPU engine bit for bit.
//
//   smem: [blockDim][D+1] f32   one padded row per thread (no bank conflicts)
#include "cuda-check.h"
#include "kernels.h"

namespace smartkv::cuda {

namespace {

constexpr int k_convert_threads = 32;

__global__ void __launch_bounds__(k_convert_threads) convert_vectors_kernel(const convert_item* items, int n_items,
                                                                    int head_dim) {
    extern __shared__ float smem[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_items) return;
    const convert_item it = items[i];
    float* x = smem + threadIdx.x * (head_dim + 1);  // [D] f32
    if (it.src_fmt == k_src_f32) {
        const float* src = static_cast<const float*>(it.src);
        for (int d = 0; d < head_dim; ++d) x[d] = src[d];
    } else {
        dequantize_vector(kv_format(it.src_fmt), quant_mode(it.src_mode), static_cast<const uint8_t*>(it.src),
                          it.src_params, head_dim, x);
    }
    quantize_vector(kv_format(it.dst_fmt), quant_mode(it.dst_mode), x, head_dim, it.dst_row, it.dst_params, it.clip);
    if (it.dst_pos) *it.dst_pos = it.pos;
}

#if defined(__CUDACC__)  // launchers: nvcc only (gpu-emulate.cc runs the kernels on the host)
void launch_convert(const convert_item* items, int n_items, int head_dim, cudaStream_t stream) {
    const size_t smem = size_t(k_convert_threads) * size_t(head_dim + 1) * sizeof(float);
    const int grid = (n_items + k_convert_threads - 1) / k_convert_threads;
    convert_vectors_kernel<<<grid, k_convert_threads, smem, stream>>>(items, n_items, head_dim);
    SKV_CUDA_CHECK_LAUNCH();
}

#endif  // __CUDACC__

}  // namespace

#if defined(__CUDACC__)
void convert_vectors(const convert_item* items, int n_items, int head_dim, cudaStream_t stream) {
    if (n_items <= 0) return;
    launch_convert(items, n_items, head_dim, stream);
}

#endif  // __CUDACC__

}  // namespace smartkv::cuda

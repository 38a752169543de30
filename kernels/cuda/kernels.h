// Public entry points of the CUDA kernel families, one per .cu file:
//   __global__ kernel  ->  launcher taking a stream  ->  this entry.
// Every pointer is a device pointer; descriptor arrays are built on the host
// (gpu-types.h) and uploaded by the caller. Launches are asynchronous on
// `stream`; errors in the launch itself throw engine_error (cuda-check.h).
#pragma once
#include <cuda_runtime.h>

#include "gpu-types.h"

namespace smartkv::cuda {

// Head dims the attention kernels are instantiated for.
inline bool head_dim_supported(int head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

// quantize.cu: dequantise each item's source (f32, fp16 or packed codes) and
// quantise it into the destination format with the shared reference code
// (formats.h), bit for bit what the CPU writes. Append, moves down (from the
// stored row) and moves up (from an uploaded master row) all come here.
void convert_vectors(const convert_item* items, int n_items, int head_dim, cudaStream_t stream);

// slot-copy.cu: raw copies of whole slots (all kv-heads' K/V rows, params,
// position) within buckets of one engine.
void copy_slots(const slot_copy_item* items, int n_items, const block_layout* layouts /*[4], host*/,
                cudaStream_t stream);

// kivi.cu: form KIVI groups from 32 fp16 residual tokens each (keys per
// channel, values per token, both asymmetric), exactly as kivi.h does.
void form_kivi_groups(const kivi_group_item* items, int n_items, const block_layout& fp16_layout, cudaStream_t stream);

// query-prep.cu: q [n_qv][D] f32 -> scaled q, s8 codes, scales and sums,
// with the CPU engine's rounding (cpu-attend.cc prepare_queries).
void prepare_queries(const float* q, int n_qv, int head_dim, float inv_sqrt_d, bool int8, float* qf, int8_t* q8,
                     float* q8_scale, int32_t* q8_sum, float* q_sum, cudaStream_t stream);

// attend.cu: one CTA per work item (request, kv-head, query tile, context
// split) folds its blocks into an online-softmax partial state. q_tile_size
// is the number of query slots a CTA carries (1, 2, 4 or 8).
// head_dim 256 stops at 4 slots: 8 slots' accumulators (64 floats a lane)
// spill at any unroll (ptx-check.sh asserts no spills).
constexpr int attend_max_q_tile(int head_dim) { return head_dim >= 256 ? 4 : 8; }
int attend_q_tile_size(int max_slots_per_head, int head_dim);
void attend_partials(const attend_args& args, int q_tile_size, cudaStream_t stream);

// attend-merge.cu: merge the splits into outputs and the final max/sum, then
// turn stored scores into probabilities averaged over q-heads, written by
// position and folded into importance (I <- gamma*I + (1-gamma)*a, row by row).
void merge_partials(const attend_args& args, int max_slots, cudaStream_t stream);
void score_probabilities(const attend_args& args, int max_n_after, cudaStream_t stream);

// device.cu
bool device_count_positive();

}  // namespace smartkv::cuda

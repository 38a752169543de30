// The attention's block list of one (sequence, layer), kept on the device
// and updated in place rather than rebuilt, sorted and uploaded every call:
//
//   [ KIVI groups, int8/int4/int2 blocks, interleaved  |  fp16 blocks      ]
//     rebuilt (interleaved, uploaded whole) only when    re-described each
//     a plan or a KIVI flush changed them (the store's   call; only entries
//     fixed_version())                                   that changed are
//                                                        uploaded (a decode
//                                                        step: the last one)
//
// Interleaving by relative index (in runs of 4 blocks of one format: a CTA's
// 4 warps share a code path) makes every contiguous range (a context split)
// carry the quantised formats in proportion; the fp16 blocks (sinks, window,
// recent tokens: a few blocks once the allocator has run) go last.
// Columns (slot_base) count tokens in list order.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "device-pool.h"
#include "gpu-types.h"

namespace smartkv::cuda {

class gpu_store;

struct block_list_cache {
    uint64_t version = ~uint64_t(0);  // the store's fixed_version() the fixed part was built for
    std::vector<gpu_block> host;      // mirror of what dev holds: [n_fixed fixed | fp16 tail]
    size_t n_fixed = 0;
    uint32_t fixed_cols = 0;          // tokens in the fixed part
    size_t fixed_kv_bytes = 0;        // bytes the attention reads from it
    size_t dev_valid = 0;             // leading entries of host[] that dev holds
    device_buffer dev;                // [capacity] gpu_block
};

struct block_list_view {
    const gpu_block* blocks = nullptr;  // device (host memory in the host checks)
    int n_blocks = 0;
    uint32_t n_cols = 0;                // tokens in the list
    size_t kv_bytes = 0;                // stored bytes the attention reads (codes, params, positions)
};

// Brings s's cached list up to date (uploads on `stream` through `stage`)
// and returns it. host_memory: the list lives in host memory (host checks).
block_list_view block_list_update(const gpu_store& s, bool host_memory, cudaStream_t stream, pinned_arena& stage);

}  // namespace smartkv::cuda

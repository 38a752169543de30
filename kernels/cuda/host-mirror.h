// A host copy of one gpu_store's device blocks, for the calls that read
// stored values on the host (read_kv, report's error model). It copies the
// whole store: fine for tests and for report()'s every-R-steps cadence at
// modest sizes; a device-side range kernel is the way to scale report().
#pragma once
#include <cuda_runtime.h>

#include <cstring>
#include <unordered_map>
#include <vector>

#include "cuda-check.h"
#include "gpu-store.h"
#include "smartkv/kivi.h"

namespace smartkv::cuda {

class host_mirror {
public:
    host_mirror(const gpu_store& s, const engine_config& cfg, cudaStream_t stream, bool host_memory = false)
        : s_(s), cfg_(cfg), host_memory_(host_memory) {
        for (int f = 0; f < n_formats; ++f) {
            const gpu_bucket& b = s.bucket_of(kv_format(f));
            for (size_t i = 0; i < b.n_blocks(); ++i) fetch(b.block(i), b.layout().bytes, stream);
        }
        for (size_t g = 0; g < s.n_groups(); ++g) fetch(s.group(g), s.group_layout().bytes, stream);
        if (!host_memory_) SKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    }

    // Dequantised key and value of one token for one head (layer_store::read).
    void read(size_t pos, int head, float* k, float* v) const {
        const int D = cfg_.head_dim;
        if (s_.in_group(pos)) {
            const block_layout& L = s_.group_layout();
            const uint8_t* g = host(s_.group(pos / kivi_group));
            const int t = int(pos % kivi_group);
            const half_bits* ch = reinterpret_cast<const half_bits*>(g + L.k_params) + size_t(head) * D * 2;
            kivi_dequantize_key(s_.kivi_format(), g + L.k_codes + L.code_offset(head, t), ch, D, k);
            const half_bits* vp = reinterpret_cast<const half_bits*>(g + L.v_params + L.param_offset(head, t));
            dequantize_vector(s_.kivi_format(), quant_mode::asymmetric, g + L.v_codes + L.code_offset(head, t), vp, D, v);
            return;
        }
        const slot_ref r = s_.where(pos);
        const gpu_bucket& b = s_.bucket_of(r.fmt);
        const block_layout& L = b.layout();
        const uint8_t* blk = blocks_.at(b.block_of(r.slot)).data();
        const int t = b.index_in_block(r.slot);
        dequantize_vector(r.fmt, cfg_.mode, blk + L.k_codes + L.code_offset(head, t),
                          reinterpret_cast<const half_bits*>(blk + L.k_params + L.param_offset(head, t)), D, k);
        dequantize_vector(r.fmt, cfg_.mode, blk + L.v_codes + L.code_offset(head, t),
                          reinterpret_cast<const half_bits*>(blk + L.v_params + L.param_offset(head, t)), D, v);
    }
    // Stored parameters (scale, ...) of a quantised token's K and V for one head.
    const half_bits* k_params(slot_ref r, int head) const { return param_ptr(r, head, true); }
    const half_bits* v_params(slot_ref r, int head) const { return param_ptr(r, head, false); }

private:
    void fetch(const uint8_t* block, size_t bytes, cudaStream_t stream) {
        std::vector<uint8_t>& h = blocks_[block];
        h.resize(bytes);
        if (host_memory_) std::memcpy(h.data(), block, bytes);  // a host test pool's blocks
        else SKV_CUDA_CHECK(cudaMemcpyAsync(h.data(), block, bytes, cudaMemcpyDeviceToHost, stream));
    }
    const uint8_t* host(const uint8_t* block) const { return blocks_.at(block).data(); }
    const half_bits* param_ptr(slot_ref r, int head, bool key) const {
        const gpu_bucket& b = s_.bucket_of(r.fmt);
        const block_layout& L = b.layout();
        const uint8_t* blk = host(b.block_of(r.slot));
        return reinterpret_cast<const half_bits*>(blk + (key ? L.k_params : L.v_params) +
                                                  L.param_offset(head, b.index_in_block(r.slot)));
    }

    const gpu_store& s_;
    const engine_config& cfg_;
    bool host_memory_;
    std::unordered_map<const uint8_t*, std::vector<uint8_t>> blocks_;
};

}  // namespace smartkv::cuda

// The CUDA backend: the same kv_backend as the CPU engine, with host-side
// bookkeeping (gpu_store) and device-side bytes (device_pool blocks). One
// stream per engine; every public call is synchronous on return, like the
// CPU's, and one call runs at a time (mutex).
//
// A call is one "step" on the stream: uploads staged through pinned memory
// (stage_), kernels, downloads into pinned memory, then exactly one
// cudaStreamSynchronize (step_done()), after which outputs are handed to the
// caller and the staging is reset. Growth of a scratch buffer is the only
// other wait (geometric, so O(log size) times in a buffer's life).
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "attend-batch.h"
#include "device-pool.h"
#include "engine/sequence-engine.h"
#include "gpu-store.h"
#include "smartkv/engine.h"

namespace smartkv {
// Defined in cuda-engine.cc; backend-select.cc declares it too.
std::unique_ptr<kv_backend> make_cuda_backend(const engine_config& cfg);
}  // namespace smartkv

namespace smartkv::cuda {

// The registry, argument and memory checks and the accounting come from
// sequence_engine (engine/sequence-engine.h), shared with the CPU backend.
class cuda_engine final : public sequence_engine<gpu_store> {
public:
    explicit cuda_engine(const engine_config& cfg);
    ~cuda_engine() override;

    const char* name() const override { return "cuda"; }
    void append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) override;
    void attend(const attend_request* requests, size_t n_requests) override;
    move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                           size_t n) override;
    void report(uint32_t seq, int layer, const token_report& out) const override;
    void read_kv(uint32_t seq, int layer, float* k, float* v) const override;

    // For the GPU check's timings: the store behind (seq, layer), the stream
    // and the SM count the split heuristic uses.
    const gpu_store& store(uint32_t seq, int layer) const { return get_layer(seq, layer); }
    cudaStream_t stream() const { return stream_; }
    int n_sms() const { return n_sms_; }
    size_t device_reserved_bytes() const { return pool_->reserved_bytes(); }

private:
    std::unique_ptr<gpu_store> make_layer(storage_kind kind, bool reversible) override;
    void flush(gpu_ops& ops);  // uploads and launches the batch, then recycles freed blocks; no wait
    void step_done();          // the step's one synchronisation; staging reset
    void append_rows(std::vector<gpu_store*>& stores, const std::vector<const float*>& k,
                     const std::vector<const float*>& v, const std::vector<int>& rows);
    void move_layer(gpu_store& s, const uint32_t* positions, const uint8_t* formats, size_t n, move_result& r);

    cudaStream_t stream_ = nullptr;
    int n_sms_ = 1;
    std::unique_ptr<device_pool> pool_;  // outlived by no store: ~cuda_engine drops the sequences first
    device_buffer stage_k_, stage_v_, stage_master_, items_convert_, items_kivi_, items_copy_;
    pinned_arena stage_;  // host staging of this step's uploads
    std::unique_ptr<attend_batch> batch_;
};

}  // namespace smartkv::cuda

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

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "attend-batch.h"
#include "device-pool.h"
#include "gpu-store.h"
#include "smartkv/engine.h"

namespace smartkv {
// Defined in cuda-engine.cc; backend-select.cc declares it too.
std::unique_ptr<kv_backend> make_cuda_backend(const engine_config& cfg);
}  // namespace smartkv

namespace smartkv::cuda {

struct gpu_sequence {
    storage_kind kind;
    float gamma;  // importance EMA factor of this sequence
    std::vector<std::unique_ptr<gpu_store>> layers;
};

class cuda_engine final : public kv_backend {
public:
    explicit cuda_engine(const engine_config& cfg);
    ~cuda_engine() override;

    const engine_config& config() const override { return cfg_; }
    const char* name() const override { return "cuda"; }
    using kv_backend::create_sequence;
    uint32_t create_sequence(storage_kind kind, float gamma, precision_mode mode) override;
    void free_sequence(uint32_t seq) override;
    bool has_sequence(uint32_t seq) const override;
    size_t sequence_length(uint32_t seq, int layer) const override;
    void append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) override;
    void attend(const attend_request* requests, size_t n_requests) override;
    move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                           size_t n) override;
    void report(uint32_t seq, int layer, const token_report& out) const override;
    memory_stats stats(uint32_t seq) const override;
    size_t total_held_bytes() const override;
    void read_kv(uint32_t seq, int layer, float* k, float* v) const override;

    // For the GPU check's timings: the store behind (seq, layer), the stream
    // and the SM count the split heuristic uses.
    const gpu_store& store(uint32_t seq, int layer) const { return get_layer(seq, layer); }
    cudaStream_t stream() const { return stream_; }
    int n_sms() const { return n_sms_; }
    size_t device_reserved_bytes() const { return pool_->reserved_bytes(); }

private:
    gpu_sequence& get(uint32_t seq);
    const gpu_sequence& get(uint32_t seq) const;
    gpu_store& get_layer(uint32_t seq, int layer);
    const gpu_store& get_layer(uint32_t seq, int layer) const;
    void check_memory(size_t extra) const;
    size_t held_unlocked() const;
    void flush(gpu_ops& ops);  // uploads and launches the batch, then recycles freed blocks; no wait
    void step_done();          // the step's one synchronisation; staging reset
    void append_rows(std::vector<gpu_store*>& stores, const std::vector<const float*>& k,
                     const std::vector<const float*>& v, const std::vector<int>& rows);
    void move_layer(gpu_store& s, const uint32_t* positions, const uint8_t* formats, size_t n, move_result& r);

    engine_config cfg_;
    mutable std::mutex mutex_;
    cudaStream_t stream_ = nullptr;
    int n_sms_ = 1;
    std::unique_ptr<device_pool> pool_;
    std::map<uint32_t, gpu_sequence> seqs_;
    uint32_t next_id_ = 1;
    device_buffer stage_k_, stage_v_, stage_master_, items_convert_, items_kivi_, items_copy_;
    pinned_arena stage_;  // host staging of this step's uploads
    std::unique_ptr<attend_batch> batch_;
};

}  // namespace smartkv::cuda

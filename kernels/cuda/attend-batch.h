// One batched attention launch over GPU stores: host descriptors, device
// scratch, and the four kernels (query prep, partials, merge, probabilities).
//
//   build()    block lists (each store's, kept on the device and updated in
//              place: block-list.h), work items, split counts; uploads the
//              work, requests and queries through pinned staging
//   run()      the kernels, asynchronously, on the stream
//   download() outputs and probabilities into pinned staging (queued)
//   deliver()  after the caller's synchronisation: staging -> the callers'
//              buffers, staging reset
//   finish()   download(), synchronise, deliver()
//
// The engine builds one per wave of rows and delivers every wave after its
// step's one synchronisation; the benchmark builds one and calls run() under
// CUDA events.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "device-pool.h"
#include "gpu-store.h"
#include "gpu-types.h"

namespace smartkv::cuda {

struct attend_input {
    const gpu_store* store = nullptr;
    const float* q = nullptr;   // host [n_rows][Hq][D] f32
    int n_rows = 0;
    int pos0 = 0;               // position of row 0
    float* out = nullptr;       // host [n_rows][Hq][D] f32
    float* probs = nullptr;     // host [n_rows][store size] f32, or null
    bool importance = true;     // fold probabilities into the store's importance
    float gamma = 0.9f;         // the sequence's importance EMA factor
};

class attend_batch {
public:
    // host_memory: scratch in host memory and no launches in run(); the host
    // checks run the kernels on their emulator over args() (gpu-emulate.cc).
    attend_batch(const engine_config& cfg, int n_sms, bool host_memory = false);
    void build(const std::vector<attend_input>& inputs, cudaStream_t stream);
    void run(cudaStream_t stream);
    void download(cudaStream_t stream);
    void deliver();
    void finish(cudaStream_t stream);

    // What one run() reads and writes, for bandwidth figures.
    size_t kv_bytes() const { return kv_bytes_; }          // the stored KV it reads
    size_t score_bytes() const { return score_bytes_; }    // raw scores written (read again by the probs pass)
    int n_ctas() const { return args_.n_work; }
    int q_tile() const { return q_tile_; }
    const attend_args& args() const { return args_; }
    int max_slots() const { return max_slots_; }
    int max_n_after() const { return max_n_after_; }
    int n_query_vectors() const { return n_qv_; }
    float* raw_queries() const { return static_cast<float*>(q_.data()); }

private:
    void copy_in(void* dst, const void* src, size_t bytes, cudaStream_t stream);
    void copy_out(void* dst, const void* src, size_t bytes, cudaStream_t stream);

    struct delivery {
        void* dst;        // the caller's host buffer
        const void* src;  // pinned staging
        size_t bytes;
    };

    const engine_config& cfg_;
    int n_sms_;
    bool host_;
    std::vector<attend_input> inputs_;
    attend_args args_;
    int q_tile_ = 1, max_slots_ = 0, max_n_after_ = 0, n_qv_ = 0;
    size_t kv_bytes_ = 0, score_bytes_ = 0;
    std::vector<size_t> out_off_, probs_off_;  // per input, floats into out_ / probs_
    size_t out_floats_ = 0, probs_floats_ = 0;
    device_buffer reqs_, work_, q_, qf_, q8_, q8s_, q8sum_, qsum_;
    device_buffer part_m_, part_l_, part_z_, part_acc_, scores_, cols_, out_, fin_m_, fin_l_, probs_;
    pinned_arena stage_;                // uploads and downloads of the waves since the last deliver()
    std::vector<delivery> deliveries_;  // downloads waiting for the caller's synchronisation
};

}  // namespace smartkv::cuda

// The CPU backend: sequences of layer stores, attention over their buckets on
// a thread pool, importance tracking, plans and accounting.
#pragma once
#include <memory>
#include <vector>

#include "attend-kernels.h"
#include "engine/sequence-engine.h"
#include "layer-store.h"
#include "smartkv/engine.h"
#include "thread-pool.h"

namespace smartkv {

// Per-request scratch of one attend call (filled in cpu-attend.cc).
struct attend_prepared {
    const attend_request* req = nullptr;
    layer_store* ls = nullptr;
    int row0 = 0, n_rows = 0, nq = 0;  // rows [row0, row0+n_rows) of the request; nq = n_rows*group
    size_t n_after = 0;                // tokens after the append
    int n_splits = 1;
    std::vector<float> q, q_sum, q8_scale;        // [H][nq][D], [H][nq], [H][nq]
    std::vector<int8_t> q8;                        // [H][nq][D]
    std::vector<int32_t> q8_sum, row_pos;          // [H][nq], [n_rows]
    std::vector<block_ref> blocks;                 // every block of every bucket
    std::vector<const block_layout*> layouts;      // [blocks]
    std::vector<int32_t> slot_pos;                 // [n_after] position of each score column
    std::vector<float> m, l, z, acc;               // [S][H][nq], acc [S][H][nq][D]
    std::vector<float> scores;                     // [H][nq][n_after]
};

// The registry, argument and memory checks and the accounting come from
// sequence_engine (engine/sequence-engine.h), shared with the CUDA backend.
class cpu_engine final : public sequence_engine<layer_store> {
public:
    explicit cpu_engine(const engine_config& cfg);

    const char* name() const override { return "cpu"; }
    void append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) override;
    void attend(const attend_request* requests, size_t n_requests) override;
    move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                           size_t n) override;
    void report(uint32_t seq, int layer, const token_report& out) const override;
    void read_kv(uint32_t seq, int layer, float* k, float* v) const override;

private:
    using prepared = attend_prepared;

    std::unique_ptr<layer_store> make_layer(storage_kind kind, bool reversible) override;

    // cpu-attend.cc
    void prepare_queries(const attend_request& req, prepared& p) const;
    void build_blocks(const layer_store& ls, prepared& p) const;
    void run_attention(std::vector<prepared>& wave, size_t n_wave);
    void update_importance(const attend_request& req, layer_store& ls, prepared& p);

    thread_pool pool_;  // one call at a time (mutex_); attention itself is parallel
    bool use_fast_;
    std::vector<prepared> wave_;                  // reused across calls: no allocation per step
    std::vector<std::vector<float>> scratch_;     // [threads][attend_scratch_floats]
    std::vector<std::vector<float>> prob_bufs_;   // [threads] importance pass
};

}  // namespace smartkv

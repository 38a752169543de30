// The CPU backend: sequences of layer stores, attention over their buckets on
// a thread pool, importance tracking, plans and accounting.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "attend-kernels.h"
#include "layer-store.h"
#include "smartkv/engine.h"
#include "thread-pool.h"

namespace smartkv {

struct cpu_sequence {
    storage_kind kind;
    std::vector<std::unique_ptr<layer_store>> layers;
};

class cpu_engine final : public kv_backend {
public:
    explicit cpu_engine(const engine_config& cfg);

    const engine_config& config() const override { return cfg_; }
    const char* name() const override { return "cpu"; }
    uint32_t create_sequence(storage_kind kind) override;
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

private:
    struct prepared;  // per-request scratch of one attend call (cpu-attend.cc)

    cpu_sequence& get(uint32_t seq);
    const cpu_sequence& get(uint32_t seq) const;
    layer_store& get_layer(uint32_t seq, int layer);
    const layer_store& get_layer(uint32_t seq, int layer) const;
    void check_memory(size_t extra) const;
    size_t held_unlocked() const;

    // cpu-attend.cc
    void prepare_queries(const attend_request& req, prepared& p) const;
    void build_blocks(const layer_store& ls, prepared& p) const;
    void run_attention(std::vector<prepared>& batch);
    void update_importance(const attend_request& req, layer_store& ls, prepared& p);

    engine_config cfg_;
    mutable std::mutex mutex_;  // one operation at a time; attention itself is parallel
    thread_pool pool_;
    std::map<uint32_t, cpu_sequence> seqs_;
    uint32_t next_id_ = 1;
    bool use_fast_;
};

}  // namespace smartkv

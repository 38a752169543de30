// Bookkeeping and bytes of one (sequence, layer): which token is in which
// bucket slot, its importance, and the buckets themselves. No attention here.
//
//   slot_of[pos]    : u32, (format << 28) | slot   where the token lives
//   importance[pos] : f32, the EMA of attention received
//                     (both paged-array.h, 128 entries a page: held bytes
//                     follow the tokens, a short sequence holds ~1 KiB)
//   master[pos]     : [2][H][D] f16, the FP16 copy (K then V) of a reversible
//                     sequence, in its own tier (master-tier.h), not in held()'s hot bytes
//
// KIVI sequences use the same class: tokens enter the fp16 bucket (the
// residual window) and leave it in order, 32 at a time, into group blocks.
#pragma once
#include <cstdint>
#include <vector>

#include "bucket.h"
#include "master-tier.h"
#include "paged-array.h"
#include "smartkv/engine.h"

namespace smartkv {

struct slot_ref {
    kv_format fmt;
    uint32_t slot;
};
inline uint32_t encode_slot(kv_format f, uint32_t slot) { return (uint32_t(f) << 28) | slot; }
inline slot_ref decode_slot(uint32_t v) { return {kv_format(v >> 28), v & 0x0fffffffu}; }

struct held_split {
    size_t payload = 0, params = 0, metadata = 0, master = 0;
    // The hot bytes: what β and the memory limit count. The master tier is apart.
    size_t total() const { return payload + params + metadata; }
};

class layer_store {
public:
    // reversible: keep an FP16 master copy (in cfg.master_dir's tier) for upgrades.
    layer_store(const engine_config& cfg, storage_kind kind, bool reversible);
    ~layer_store();
    layer_store(const layer_store&) = delete;
    layer_store& operator=(const layer_store&) = delete;

    storage_kind kind() const { return kind_; }
    size_t size() const { return n_; }
    const bucket& bucket_of(kv_format f) const { return buckets_[int(f)]; }
    size_t n_groups() const { return groups_.size(); }
    const uint8_t* group(size_t g) const { return groups_[g]; }
    const block_layout& group_layout() const { return group_layout_; }
    slot_ref where(size_t pos) const { return decode_slot(slot_of_[pos]); }
    bool in_group(size_t pos) const { return pos < n_grouped_; }
    float& importance(size_t pos) { return importance_[pos]; }
    float importance(size_t pos) const { return importance_[pos]; }

    bool reversible() const { return master_ != nullptr; }
    // Hot bytes that appending n_rows more tokens would add (for limit checks).
    size_t growth_for_append(int n_rows) const;
    // k, v: [n_rows][H][D] f32. New tokens go to the fp16 bucket.
    void append(int n_rows, const float* k, const float* v);
    // KIVI: move the oldest residual tokens into groups while the residual is
    // at least kivi_residual + 32 long.
    void flush_kivi_groups();

    bool can_move(size_t pos, kv_format to) const;  // false: needs a master copy
    // Hot bytes a plan may add at its peak (move() order: see apply_plan).
    size_t growth_for_moves(const uint32_t* positions, const uint8_t* formats, size_t n) const;
    // Returns bytes written into the target slot (0 when already there).
    size_t move(size_t pos, kv_format to);

    // Dequantised key and value of one token for one head.
    void read(size_t pos, int head, float* k, float* v) const;
    held_split held() const;

private:
    void write_fp16_slot(uint32_t slot, const float* k, const float* v);  // k, v: [H][D]
    size_t bucket_growth(kv_format f, size_t extra) const;

    const engine_config& cfg_;
    storage_kind kind_;
    size_t n_ = 0;
    bucket buckets_[n_formats];
    paged_array<uint32_t> slot_of_;
    paged_array<float> importance_;
    std::unique_ptr<master_tier> master_;  // [n][2][H][D] f16 when reversible, else null
    // KIVI only
    kv_format kivi_fmt_ = kv_format::int2;
    block_layout group_layout_;
    std::vector<uint8_t*> groups_;  // [n_grouped / 32] blocks
    size_t n_grouped_ = 0;
};

}  // namespace smartkv

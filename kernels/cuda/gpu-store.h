// Host-side bookkeeping, device-side bytes: the GPU twin of cpu/layer-store.
//
//   gpu_bucket   one format of one (sequence, layer): device blocks of T token
//                slots (block-layout.h), dense (swap-remove), a host mirror of
//                each slot's position
//   gpu_store    one (sequence, layer): the token map slot_of[pos] (host,
//                same encoding as the CPU), importance[pos] (device f32), the
//                optional FP16 master copy (host), KIVI groups (device)
//
// Mutations never touch device bytes directly: they append work items to a
// gpu_ops batch (conversions, KIVI groups, slot copies) that the engine
// uploads and launches in that order on its one stream.
#pragma once
#include <cstdint>
#include <vector>

#include "block-list.h"
#include "cpu/layer-store.h"  // slot_ref, encode_slot, held_split, paged_array
#include "device-pool.h"
#include "gpu-types.h"
#include "smartkv/engine.h"

namespace smartkv::cuda {

struct gpu_ops {
    std::vector<convert_item> converts;
    std::vector<kivi_group_item> kivi;
    std::vector<slot_copy_item> copies;
    bool empty() const { return converts.empty() && kivi.empty() && copies.empty(); }
};

class gpu_bucket {
public:
    gpu_bucket() = default;
    gpu_bucket(const block_layout& layout, kv_format fmt, device_pool* pool) : layout_(layout), fmt_(fmt), pool_(pool) {}
    ~gpu_bucket() { release(); }
    gpu_bucket(gpu_bucket&& o) noexcept { *this = std::move(o); }
    gpu_bucket& operator=(gpu_bucket&& o) noexcept;
    gpu_bucket(const gpu_bucket&) = delete;
    gpu_bucket& operator=(const gpu_bucket&) = delete;

    const block_layout& layout() const { return layout_; }
    uint32_t size() const { return uint32_t(pos_.size()); }
    size_t n_blocks() const { return blocks_.size(); }
    uint8_t* block(size_t b) const { return blocks_[b]; }
    int block_fill(size_t b) const;
    int32_t position(uint32_t slot) const { return pos_[slot]; }
    uint8_t* block_of(uint32_t slot) const { return blocks_[slot / uint32_t(layout_.block_tokens)]; }
    uint16_t index_in_block(uint32_t slot) const { return uint16_t(slot % uint32_t(layout_.block_tokens)); }
    uint8_t* k_row(uint32_t s, int h) const { return block_of(s) + layout_.k_codes + layout_.code_offset(h, index_in_block(s)); }
    uint8_t* v_row(uint32_t s, int h) const { return block_of(s) + layout_.v_codes + layout_.code_offset(h, index_in_block(s)); }
    half_bits* k_params(uint32_t s, int h) const {
        return reinterpret_cast<half_bits*>(block_of(s) + layout_.k_params + layout_.param_offset(h, index_in_block(s)));
    }
    half_bits* v_params(uint32_t s, int h) const {
        return reinterpret_cast<half_bits*>(block_of(s) + layout_.v_params + layout_.param_offset(h, index_in_block(s)));
    }
    int32_t* pos_word(uint32_t s) const {
        return reinterpret_cast<int32_t*>(block_of(s) + layout_.pos) + index_in_block(s);
    }

    size_t blocks_for(size_t n) const { return (n + layout_.block_tokens - 1) / layout_.block_tokens; }
    // Adds a slot at the end (taking a block from the pool when needed).
    uint32_t push(int32_t pos);
    // Removes the slots listed (as they were numbered before this call) the
    // way repeated swap-removes would, emitting the copies (sources are all
    // beyond the final size) and reporting (position, new slot) of every
    // token that changed slot. Emptied trailing blocks go back to the pool.
    void remove_slots(const std::vector<uint32_t>& slots, gpu_ops& ops,
                      std::vector<std::pair<int32_t, uint32_t>>& relocated);
    size_t table_bytes() const { return blocks_.capacity() * sizeof(uint8_t*); }
    // Block bytes plus table bytes that holding n_blocks blocks would add.
    size_t growth_for_blocks(size_t n_blocks) const;

private:
    void release();

    block_layout layout_;
    kv_format fmt_ = kv_format::fp16;
    device_pool* pool_ = nullptr;
    std::vector<uint8_t*> blocks_;  // device, each layout_.bytes; the table (host) doubles, as on the CPU
    // Host mirror of the positions in the blocks' pos sections. Not counted
    // in held(): it copies bookkeeping the blocks already account for, and
    // counting it would make the same tokens cost more here than on the CPU.
    std::vector<int32_t> pos_;
};

class gpu_store {
public:
    // reversible: keep the FP16 master copy (host memory) so plans may raise precision.
    gpu_store(const engine_config& cfg, storage_kind kind, bool reversible, device_pool& pool, cudaStream_t stream);
    bool reversible() const { return reversible_; }
    ~gpu_store();
    gpu_store(const gpu_store&) = delete;
    gpu_store& operator=(const gpu_store&) = delete;

    storage_kind kind() const { return kind_; }
    const engine_config& config() const { return cfg_; }
    size_t size() const { return n_; }
    const gpu_bucket& bucket_of(kv_format f) const { return buckets_[int(f)]; }
    size_t n_groups() const { return groups_.size(); }
    const uint8_t* group(size_t g) const { return groups_[g]; }
    const block_layout& group_layout() const { return group_layout_; }
    kv_format kivi_format() const { return kivi_fmt_; }
    slot_ref where(size_t pos) const { return decode_slot(slot_of_[pos]); }
    bool in_group(size_t pos) const { return pos < n_grouped_; }
    float* importance() const { return importance_; }  // device [capacity] f32

    // Device memory the next append / moves / KIVI flush would need, as
    // (block bytes, count) pairs for device_pool::reserve, plus accounting.
    size_t growth_for_append(int n_rows) const;
    void reserve_for_append(int n_rows);
    bool can_move(size_t pos, kv_format to) const;
    size_t growth_for_moves(const uint32_t* positions, const uint8_t* formats, size_t n) const;

    // k_dev, v_dev: [n_rows][H][D] f32 on the device (staged by the caller);
    // k_host, v_host: the same on the host (for the master copy).
    void append(int n_rows, const float* k_dev, const float* v_dev, const float* k_host, const float* v_host,
                gpu_ops& ops);
    // One round of moves (each position at most once). Upgrades read master
    // rows from master_dev, which the caller filled via master_rows().
    size_t move_round(const std::vector<std::pair<uint32_t, kv_format>>& moves, const half_bits* master_dev,
                      gpu_ops& ops);
    // [n_up][2][H][D] f16: the master rows of the upgrades in `moves`, in order.
    std::vector<half_bits> master_rows(const std::vector<std::pair<uint32_t, kv_format>>& moves) const;
    void flush_kivi_groups(gpu_ops& ops);

    held_split held() const;

    // Changes whenever KIVI groups or quantised buckets change (plans, KIVI
    // flushes); appends touch only the fp16 bucket and leave it alone.
    uint64_t fixed_version() const { return fixed_version_; }
    // The attention's device block list of this store (block-list.h).
    block_list_cache& block_cache() const { return block_cache_; }

private:
    void ensure_importance(size_t n);

    const engine_config& cfg_;
    storage_kind kind_;
    device_pool& pool_;
    cudaStream_t stream_;
    size_t n_ = 0;
    gpu_bucket buckets_[n_formats];
    paged_array<uint32_t> slot_of_;
    float* importance_ = nullptr;  // device [importance_cap_] f32, whole pages of meta_page_elems, grown geometrically
    size_t importance_cap_ = 0;
    bool reversible_;
    paged_array<half_bits, 16384> master_;  // [n][2][H][D] f16 (pageable host memory) when reversible_
    kv_format kivi_fmt_ = kv_format::int2;
    block_layout group_layout_;
    std::vector<uint8_t*> groups_;  // device group blocks
    size_t n_grouped_ = 0;
    uint64_t fixed_version_ = 0;
    mutable block_list_cache block_cache_;
};

}  // namespace smartkv::cuda

#include "layer-store.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "quantize-fast.h"
#include "smartkv/kivi.h"

namespace smartkv {

layer_store::layer_store(const engine_config& cfg, storage_kind kind, bool reversible) : cfg_(cfg), kind_(kind) {
    if (reversible) master_ = make_master_tier(cfg.master_dir, cfg.n_kv_heads, cfg.head_dim);
    for (int f = 0; f < n_formats; ++f)
        buckets_[f] = bucket(make_format_layout(kv_format(f), cfg.mode, cfg.head_dim, cfg.n_kv_heads, cfg.block_tokens));
    if (kind != storage_kind::mixed) {
        kivi_fmt_ = kivi_format(kind);
        group_layout_ = make_block_layout(kivi_fmt_, quant_mode::asymmetric, cfg.head_dim, cfg.n_kv_heads, kivi_group,
                                          /*kivi_keys=*/true);
    }
}

layer_store::~layer_store() {
    for (uint8_t* g : groups_) std::free(g);
}

size_t layer_store::bucket_growth(kv_format f, size_t extra) const {
    const bucket& b = buckets_[int(f)];
    return b.growth_for_blocks(b.blocks_for(b.size() + extra));
}

size_t layer_store::growth_for_append(int n_rows) const {
    const size_t n_after = n_ + size_t(n_rows);
    size_t g = bucket_growth(kv_format::fp16, size_t(n_rows));
    g += slot_of_.held_bytes_if(n_after) - slot_of_.held_bytes();
    g += importance_.held_bytes_if(n_after) - importance_.held_bytes();
    return g;  // the master tier is not hot memory
}

void layer_store::write_fp16_slot(uint32_t slot, const float* k, const float* v) {
    bucket& b = buckets_[int(kv_format::fp16)];
    const int D = cfg_.head_dim;
    for (int h = 0; h < cfg_.n_kv_heads; ++h) {
        quantize_row(kv_format::fp16, cfg_.mode, k + size_t(h) * D, D, b.k_row(slot, h), nullptr);
        quantize_row(kv_format::fp16, cfg_.mode, v + size_t(h) * D, D, b.v_row(slot, h), nullptr);
    }
}

void layer_store::append(int n_rows, const float* k, const float* v) {
    const size_t hd = size_t(cfg_.n_kv_heads) * cfg_.head_dim;
    slot_of_.resize(n_ + size_t(n_rows));
    importance_.resize(n_ + size_t(n_rows), 0.f);
    if (master_) master_->resize(n_ + size_t(n_rows));
    bucket& b = buckets_[int(kv_format::fp16)];
    for (int r = 0; r < n_rows; ++r) {
        const size_t pos = n_ + size_t(r);
        const uint32_t slot = b.push();
        write_fp16_slot(slot, k + r * hd, v + r * hd);
        b.position(slot) = int32_t(pos);
        slot_of_[pos] = encode_slot(kv_format::fp16, slot);
        if (master_) master_->write(pos, k + r * hd, v + r * hd);
    }
    n_ += size_t(n_rows);
}

void layer_store::read(size_t pos, int head, float* k, float* v) const {
    const int D = cfg_.head_dim;
    if (in_group(pos)) {
        const uint8_t* g = groups_[pos / kivi_group];
        const block_layout& L = group_layout_;
        const int t = int(pos % kivi_group);
        const half_bits* ch = reinterpret_cast<const half_bits*>(g + L.k_params) + size_t(head) * D * 2;
        kivi_dequantize_key(kivi_fmt_, g + L.k_codes + L.code_offset(head, t), ch, D, k);
        const half_bits* vp = reinterpret_cast<const half_bits*>(g + L.v_params + L.param_offset(head, t));
        dequantize_vector(kivi_fmt_, quant_mode::asymmetric, g + L.v_codes + L.code_offset(head, t), vp, D, v);
        return;
    }
    const slot_ref s = where(pos);
    const bucket& b = buckets_[int(s.fmt)];
    dequantize_row(s.fmt, cfg_.mode, b.k_row(s.slot, head), b.k_params(s.slot, head), D, k);
    dequantize_row(s.fmt, cfg_.mode, b.v_row(s.slot, head), b.v_params(s.slot, head), D, v);
}

bool layer_store::can_move(size_t pos, kv_format to) const {
    const kv_format from = where(pos).fmt;
    // More bits than stored need the original values.
    return master_ || format_bits(to) <= format_bits(from);
}

size_t layer_store::growth_for_moves(const uint32_t* positions, const uint8_t* formats, size_t n) const {
    // Replays apply_plan's order (tokens that lose bits first, then those that
    // gain) on the bucket sizes: a move pushes into its target (maybe a new
    // block) and then frees its source slot (the trailing block goes when it
    // empties). The peak of the blocks' bytes over the replay is what the
    // plan needs at most; block tables only grow, to the most blocks seen.
    size_t size[n_formats], most[n_formats];
    size_t now = 0;
    for (int f = 0; f < n_formats; ++f) {
        size[f] = most[f] = buckets_[f].size();
        now += buckets_[f].n_blocks() * buckets_[f].layout().bytes;
    }
    auto bytes = [&](int f) { return buckets_[f].blocks_for(size[f]) * buckets_[f].layout().bytes; };
    size_t cur = now, peak = now;
    for (const bool gaining : {false, true})
        for (size_t i = 0; i < n; ++i) {
            const int from = int(where(positions[i]).fmt), to = formats[i];
            if (from == to || (format_bits(kv_format(to)) > format_bits(kv_format(from))) != gaining) continue;
            cur -= bytes(to);
            ++size[to];
            cur += bytes(to);
            most[to] = std::max(most[to], size[to]);
            peak = std::max(peak, cur);
            cur -= bytes(from);
            --size[from];
            cur += bytes(from);
        }
    size_t table = 0;
    for (int f = 0; f < n_formats; ++f) {
        const bucket& b = buckets_[f];
        const size_t blocks = b.blocks_for(most[f]);
        if (blocks > b.n_blocks()) table += b.growth_for_blocks(blocks) - (blocks - b.n_blocks()) * b.layout().bytes;
    }
    return peak - now + table;
}

size_t layer_store::move(size_t pos, kv_format to) {
    const slot_ref from = where(pos);
    if (from.fmt == to) return 0;
    const int D = cfg_.head_dim, H = cfg_.n_kv_heads;
    const bool upgrade = format_bits(to) > format_bits(from.fmt);
    bucket& src = buckets_[int(from.fmt)];
    bucket& dst = buckets_[int(to)];
    const uint32_t slot = dst.push();
    float k[512], v[512];  // head_dim <= 512 is checked in validate_config
    // rotate_kv: this (SmartKV-format) store holds rotated K and V, near Gaussian.
    const float clip = symmetric_clip(to, cfg_.mode, stores_rotated(cfg_, kind_));
    for (int h = 0; h < H; ++h) {
        if (upgrade) master_->read(pos, h, k, v);
        else read(pos, h, k, v);
        quantize_row(to, cfg_.mode, k, D, dst.k_row(slot, h), dst.k_params(slot, h), clip);
        quantize_row(to, cfg_.mode, v, D, dst.v_row(slot, h), dst.v_params(slot, h), clip);
    }
    dst.position(slot) = int32_t(pos);
    slot_of_[pos] = encode_slot(to, slot);
    const int32_t moved = src.remove(from.slot);
    if (moved >= 0) slot_of_[size_t(moved)] = encode_slot(from.fmt, from.slot);
    return size_t(H) * 2 * (size_t(dst.layout().row) + size_t(dst.layout().n_params) * sizeof(half_bits));
}

void layer_store::flush_kivi_groups() {
    if (kind_ == storage_kind::mixed) return;
    bucket& res = buckets_[int(kv_format::fp16)];
    const int D = cfg_.head_dim, H = cfg_.n_kv_heads;
    const block_layout& L = group_layout_;
    std::vector<float> keys(size_t(kivi_group) * D), vals(D);  // [32][D], [D]
    while (res.size() >= size_t(cfg_.kivi_residual) + kivi_group) {
        void* mem = std::aligned_alloc(64, L.bytes);
        if (!mem) throw std::bad_alloc();
        std::memset(mem, 0, L.bytes);
        uint8_t* g = static_cast<uint8_t*>(mem);
        for (int h = 0; h < H; ++h) {
            for (int t = 0; t < kivi_group; ++t) {
                const slot_ref s = where(n_grouped_ + t);
                dequantize_vector(kv_format::fp16, cfg_.mode, res.k_row(s.slot, h), nullptr, D, &keys[size_t(t) * D]);
                dequantize_vector(kv_format::fp16, cfg_.mode, res.v_row(s.slot, h), nullptr, D, vals.data());
                quantize_vector(kivi_fmt_, quant_mode::asymmetric, vals.data(), D, g + L.v_codes + L.code_offset(h, t),
                                reinterpret_cast<half_bits*>(g + L.v_params + L.param_offset(h, t)));
            }
            kivi_quantize_keys(kivi_fmt_, keys.data(), D, g + L.k_codes + L.code_offset(h, 0), L.row,
                               reinterpret_cast<half_bits*>(g + L.k_params) + size_t(h) * D * 2);
        }
        for (int t = 0; t < kivi_group; ++t) {
            const size_t pos = n_grouped_ + t;
            reinterpret_cast<int32_t*>(g + L.pos)[t] = int32_t(pos);
            const slot_ref s = where(pos);
            const int32_t moved = res.remove(s.slot);
            if (moved >= 0) slot_of_[size_t(moved)] = encode_slot(kv_format::fp16, s.slot);
            slot_of_[pos] = encode_slot(kivi_fmt_, uint32_t(pos));
        }
        groups_.push_back(g);
        n_grouped_ += kivi_group;
    }
}

held_split layer_store::held() const {
    held_split h;
    for (const bucket& b : buckets_) {
        const block_layout& L = b.layout();
        h.payload += b.n_blocks() * L.payload_bytes;
        h.params += b.n_blocks() * L.param_bytes;
        h.metadata += b.n_blocks() * L.meta_bytes + b.table_bytes();
    }
    if (!groups_.empty()) {
        h.payload += groups_.size() * group_layout_.payload_bytes;
        h.params += groups_.size() * group_layout_.param_bytes;
        h.metadata += groups_.size() * group_layout_.meta_bytes + groups_.capacity() * sizeof(void*);
    }
    h.metadata += slot_of_.held_bytes() + importance_.held_bytes();
    if (master_) h.master = master_->held_bytes();
    return h;
}

}  // namespace smartkv

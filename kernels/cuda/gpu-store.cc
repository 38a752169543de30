#include "gpu-store.h"

#include <unordered_map>

#include "cuda-check.h"
#include "smartkv/kivi.h"

namespace smartkv::cuda {

namespace {
// Device importance is one array (kernels index it by position), in whole
// pages of the CPU's bookkeeping, grown geometrically (at least doubling) so
// that a sequence of n tokens reallocates it O(log n) times, not every 4096
// tokens. Held bytes count the real capacity (up to 2x the CPU's pages:
// 4 bytes a token against the hundreds of its KV).
size_t importance_capacity(size_t n, size_t cur) {
    const size_t need = paged_array<float>::pages_for(n) * meta_page_elems;
    return need <= cur ? cur : need > 2 * cur ? need : 2 * cur;
}
}  // namespace

// ---------------------------------------------------------------------------
// gpu_bucket

gpu_bucket& gpu_bucket::operator=(gpu_bucket&& o) noexcept {
    if (this != &o) {
        release();
        layout_ = o.layout_;
        fmt_ = o.fmt_;
        pool_ = o.pool_;
        blocks_ = std::move(o.blocks_);
        pos_ = std::move(o.pos_);
        o.blocks_.clear();
        o.pos_.clear();
    }
    return *this;
}

void gpu_bucket::release() {
    if (pool_) {
        for (uint8_t* b : blocks_) pool_->put(b, layout_.bytes);
        pool_->commit();  // owners release only once their work is queued
    }
    blocks_.clear();
    pos_.clear();
}

int gpu_bucket::block_fill(size_t b) const {
    const size_t start = b * size_t(layout_.block_tokens), n = pos_.size();
    const size_t left = n > start ? n - start : 0;
    return int(left < size_t(layout_.block_tokens) ? left : size_t(layout_.block_tokens));
}

size_t gpu_bucket::growth_for_blocks(size_t n_blocks) const {
    if (n_blocks <= blocks_.size()) return 0;
    const size_t cap = doubled_capacity(n_blocks, blocks_.capacity());
    return (n_blocks - blocks_.size()) * layout_.bytes + (cap - blocks_.capacity()) * sizeof(uint8_t*);
}

uint32_t gpu_bucket::push(int32_t pos) {
    if (pos_.size() == blocks_.size() * size_t(layout_.block_tokens)) {
        if (blocks_.size() == blocks_.capacity())
            blocks_.reserve(doubled_capacity(blocks_.size() + 1, blocks_.capacity()));
        blocks_.push_back(pool_->get(layout_.bytes));
    }
    pos_.push_back(pos);
    return uint32_t(pos_.size() - 1);
}

void gpu_bucket::remove_slots(const std::vector<uint32_t>& slots, gpu_ops& ops,
                              std::vector<std::pair<int32_t, uint32_t>>& relocated) {
    // content[s]: the original slot whose token now sits in slot s; where[o]:
    // the slot original o sits in. Absent keys mean "unchanged".
    std::unordered_map<uint32_t, uint32_t> content, where;
    auto content_of = [&](uint32_t s) { auto it = content.find(s); return it == content.end() ? s : it->second; };
    auto where_of = [&](uint32_t o) { auto it = where.find(o); return it == where.end() ? o : it->second; };
    uint32_t size = uint32_t(pos_.size());
    for (uint32_t s0 : slots) {
        const uint32_t s = where_of(s0), last = size - 1;
        if (s != last) {
            const uint32_t c = content_of(last);
            content[s] = c;
            where[c] = s;
        }
        --size;
    }
    // Every source is >= size: a copy never reads a slot another copy writes.
    relocated.clear();
    for (const auto& [s, c] : content) {
        if (s >= size || c == s) continue;
        ops.copies.push_back({block_of(c), block_of(s), index_in_block(c), index_in_block(s), uint8_t(fmt_)});
        pos_[s] = pos_[c];
        relocated.emplace_back(pos_[s], s);
    }
    pos_.resize(size);
    while (blocks_.size() > blocks_for(size)) {
        pool_->put(blocks_.back(), layout_.bytes);
        blocks_.pop_back();
    }
}

// ---------------------------------------------------------------------------
// gpu_store

gpu_store::gpu_store(const engine_config& cfg, storage_kind kind, bool reversible, device_pool& pool,
                     cudaStream_t stream)
    : cfg_(cfg), kind_(kind), pool_(pool), stream_(stream), reversible_(reversible) {
    for (int f = 0; f < n_formats; ++f)
        buckets_[f] = gpu_bucket(make_format_layout(kv_format(f), cfg.mode, cfg.head_dim, cfg.n_kv_heads, cfg.block_tokens),
                                 kv_format(f), &pool);
    if (kind != storage_kind::mixed) {
        kivi_fmt_ = smartkv::kivi_format(kind);
        group_layout_ = make_block_layout(kivi_fmt_, quant_mode::asymmetric, cfg.head_dim, cfg.n_kv_heads, kivi_group,
                                          /*kivi_keys=*/true);
    }
}

gpu_store::~gpu_store() {
    for (uint8_t* g : groups_) pool_.put(g, group_layout_.bytes);
    pool_.commit();
    if (importance_) pool_.raw_free(importance_);  // stream-ordered: after the work that reads it
}

// Stream-ordered throughout (allocation, copy, clear of the new tail, free of
// the old array): no synchronisation and no device-wide cudaMalloc/cudaFree.
void gpu_store::ensure_importance(size_t n) {
    const size_t cap = importance_capacity(n, importance_cap_);
    if (cap <= importance_cap_) return;
    float* mem = static_cast<float*>(pool_.raw_alloc(cap * sizeof(float)));
    if (importance_) {
        pool_.raw_copy(mem, importance_, importance_cap_ * sizeof(float));
        pool_.raw_free(importance_);
    }
    pool_.raw_zero(mem + importance_cap_, (cap - importance_cap_) * sizeof(float));
    importance_ = mem;
    importance_cap_ = cap;
}

size_t gpu_store::growth_for_append(int n_rows) const {
    const size_t n_after = n_ + size_t(n_rows);
    const gpu_bucket& b = buckets_[int(kv_format::fp16)];
    size_t g = b.growth_for_blocks(b.blocks_for(b.size() + size_t(n_rows)));
    g += slot_of_.held_bytes_if(n_after) - slot_of_.held_bytes();
    const size_t cap = importance_capacity(n_after, importance_cap_);
    g += (cap - importance_cap_) * sizeof(float);
    return g;  // the master copy is host memory: not on the device, not under the limit
}

void gpu_store::reserve_for_append(int n_rows) {
    const gpu_bucket& b = buckets_[int(kv_format::fp16)];
    const size_t need = b.blocks_for(b.size() + size_t(n_rows));
    if (need > b.n_blocks()) pool_.reserve(b.layout().bytes, need - b.n_blocks());
    ensure_importance(n_ + size_t(n_rows));
}

void gpu_store::append(int n_rows, const float* k_dev, const float* v_dev, const float* k_host, const float* v_host,
                       gpu_ops& ops) {
    const int H = cfg_.n_kv_heads, D = cfg_.head_dim;
    const size_t hd = size_t(H) * D;
    reserve_for_append(n_rows);
    slot_of_.resize(n_ + size_t(n_rows));
    if (reversible_) master_.resize((n_ + size_t(n_rows)) * 2 * hd);
    gpu_bucket& b = buckets_[int(kv_format::fp16)];
    for (int r = 0; r < n_rows; ++r) {
        const size_t pos = n_ + size_t(r);
        const uint32_t slot = b.push(int32_t(pos));
        for (int h = 0; h < H; ++h) {
            convert_item k;
            k.src = k_dev + size_t(r) * hd + size_t(h) * D;
            k.dst_row = b.k_row(slot, h);
            k.dst_fmt = uint8_t(kv_format::fp16);
            k.dst_pos = h == 0 ? b.pos_word(slot) : nullptr;
            k.pos = int32_t(pos);
            convert_item v = k;
            v.src = v_dev + size_t(r) * hd + size_t(h) * D;
            v.dst_row = b.v_row(slot, h);
            v.dst_pos = nullptr;
            ops.converts.push_back(k);
            ops.converts.push_back(v);
        }
        slot_of_[pos] = encode_slot(kv_format::fp16, slot);
        if (reversible_) {
            const size_t base = pos * 2 * hd;
            for (size_t i = 0; i < hd; ++i) {
                master_[base + i] = float_to_half(k_host[size_t(r) * hd + i]);
                master_[base + hd + i] = float_to_half(v_host[size_t(r) * hd + i]);
            }
        }
    }
    n_ += size_t(n_rows);
}

bool gpu_store::can_move(size_t pos, kv_format to) const {
    return reversible_ || format_bits(to) <= format_bits(where(pos).fmt);
}

size_t gpu_store::growth_for_moves(const uint32_t* positions, const uint8_t* formats, size_t n) const {
    size_t extra[n_formats] = {0, 0, 0, 0};
    for (size_t i = 0; i < n; ++i)
        if (where(positions[i]).fmt != kv_format(formats[i])) ++extra[formats[i]];
    size_t g = 0;  // sources shrink too, but only after the moves: count the peak
    for (int f = 0; f < n_formats; ++f) {
        const gpu_bucket& b = buckets_[f];
        g += b.growth_for_blocks(b.blocks_for(b.size() + extra[f]));
    }
    return g;
}

std::vector<half_bits> gpu_store::master_rows(const std::vector<std::pair<uint32_t, kv_format>>& moves) const {
    std::vector<half_bits> rows;
    const size_t hd = size_t(cfg_.n_kv_heads) * cfg_.head_dim;
    for (const auto& [pos, to] : moves) {
        if (format_bits(to) <= format_bits(where(pos).fmt)) continue;
        const size_t base = size_t(pos) * 2 * hd;
        for (size_t i = 0; i < 2 * hd; ++i) rows.push_back(master_[base + i]);
    }
    return rows;
}

size_t gpu_store::move_round(const std::vector<std::pair<uint32_t, kv_format>>& moves, const half_bits* master_dev,
                             gpu_ops& ops) {
    const int H = cfg_.n_kv_heads, D = cfg_.head_dim;
    const size_t hd = size_t(H) * D;
    // Blocks first, so running out of device memory changes nothing.
    size_t extra[n_formats] = {0, 0, 0, 0};
    for (const auto& [pos, to] : moves)
        if (where(pos).fmt != to) ++extra[int(to)];
    for (int f = 0; f < n_formats; ++f) {
        const gpu_bucket& b = buckets_[f];
        const size_t need = b.blocks_for(b.size() + extra[f]);
        if (need > b.n_blocks()) pool_.reserve(b.layout().bytes, need - b.n_blocks());
    }
    std::vector<uint32_t> removed[n_formats];
    size_t bytes = 0, n_up = 0;
    ++fixed_version_;  // a quantised bucket may change (fp16-only rounds too: harmless)
    for (const auto& [pos, to] : moves) {
        const slot_ref from = where(pos);
        if (from.fmt == to) continue;
        const bool upgrade = format_bits(to) > format_bits(from.fmt);
        const gpu_bucket& src = buckets_[int(from.fmt)];
        gpu_bucket& dst = buckets_[int(to)];
        const uint32_t slot = dst.push(int32_t(pos));
        for (int h = 0; h < H; ++h) {
            for (int kv = 0; kv < 2; ++kv) {
                convert_item it;
                if (upgrade) {
                    it.src = master_dev + (n_up * 2 + size_t(kv)) * hd + size_t(h) * D;
                    it.src_fmt = uint8_t(kv_format::fp16);
                } else {
                    it.src = kv ? src.v_row(from.slot, h) : src.k_row(from.slot, h);
                    it.src_params = from.fmt == kv_format::fp16 ? nullptr
                                                                : (kv ? src.v_params(from.slot, h) : src.k_params(from.slot, h));
                    it.src_fmt = uint8_t(from.fmt);
                    it.src_mode = uint8_t(cfg_.mode);
                }
                it.dst_row = kv ? dst.v_row(slot, h) : dst.k_row(slot, h);
                it.dst_params = to == kv_format::fp16 ? nullptr : (kv ? dst.v_params(slot, h) : dst.k_params(slot, h));
                it.dst_fmt = uint8_t(to);
                it.dst_mode = uint8_t(cfg_.mode);
                it.clip = symmetric_clip(to, cfg_.mode, stores_rotated(cfg_, kind_));  // rotated: clipped 2-bit
                it.dst_pos = (h == 0 && kv == 0) ? dst.pos_word(slot) : nullptr;
                it.pos = int32_t(pos);
                ops.converts.push_back(it);
            }
        }
        if (upgrade) ++n_up;
        slot_of_[pos] = encode_slot(to, slot);
        removed[int(from.fmt)].push_back(from.slot);
        bytes += size_t(H) * 2 * (size_t(dst.layout().row) + size_t(dst.layout().n_params) * sizeof(half_bits));
    }
    std::vector<std::pair<int32_t, uint32_t>> relocated;
    for (int f = 0; f < n_formats; ++f) {
        if (removed[f].empty()) continue;
        buckets_[f].remove_slots(removed[f], ops, relocated);
        for (const auto& [p, s] : relocated) slot_of_[size_t(p)] = encode_slot(kv_format(f), s);
    }
    return bytes;
}

void gpu_store::flush_kivi_groups(gpu_ops& ops) {
    if (kind_ == storage_kind::mixed) return;
    gpu_bucket& res = buckets_[int(kv_format::fp16)];
    const size_t resid = size_t(cfg_.kivi_residual);
    if (res.size() < resid + kivi_group) return;
    const size_t k = (res.size() - resid) / kivi_group;
    pool_.reserve(group_layout_.bytes, k);
    ++fixed_version_;
    std::vector<uint32_t> removed;
    for (size_t g = 0; g < k; ++g) {
        kivi_group_item it;
        it.pos0 = int32_t(n_grouped_ + g * kivi_group);
        it.fmt = uint8_t(kivi_fmt_);
        for (int t = 0; t < kivi_group; ++t) {
            const slot_ref s = where(size_t(it.pos0) + size_t(t));
            it.src_block[t] = res.block_of(s.slot);
            it.src_slot[t] = res.index_in_block(s.slot);
            removed.push_back(s.slot);
        }
        it.dst_group = pool_.get(group_layout_.bytes);
        groups_.push_back(it.dst_group);
        ops.kivi.push_back(it);
    }
    std::vector<std::pair<int32_t, uint32_t>> relocated;
    res.remove_slots(removed, ops, relocated);
    for (const auto& [p, s] : relocated) slot_of_[size_t(p)] = encode_slot(kv_format::fp16, s);
    for (size_t i = 0; i < k * kivi_group; ++i) {
        const size_t pos = n_grouped_ + i;
        slot_of_[pos] = encode_slot(kivi_fmt_, uint32_t(pos));
    }
    n_grouped_ += k * kivi_group;
}

held_split gpu_store::held() const {
    held_split h;
    for (const gpu_bucket& b : buckets_) {
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
    h.metadata += slot_of_.held_bytes() + importance_cap_ * sizeof(float);
    if (reversible_) h.master = master_.held_bytes();
    return h;
}

}  // namespace smartkv::cuda

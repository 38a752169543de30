#include "block-list.h"

#include <algorithm>
#include <cstring>

#include "gpu-store.h"
#include "smartkv/kivi.h"

namespace smartkv::cuda {

namespace {

// Bytes the attention reads from a block of `fill` tokens.
size_t block_read_bytes(const block_layout& L, int fill, int H, bool kivi) {
    size_t b = size_t(fill) * H * 2 * size_t(L.row) + size_t(fill) * sizeof(int32_t);
    b += kivi ? size_t(H) * L.head_dim * 2 * sizeof(half_bits) + size_t(fill) * H * 2 * sizeof(half_bits)
              : size_t(fill) * H * 2 * size_t(L.n_params) * sizeof(half_bits);
    return b;
}

gpu_block make_block(const uint8_t* data, uint8_t kind, kv_format f, int fill) {
    gpu_block b;
    b.data = data;
    b.n_valid = uint16_t(fill);
    b.kind = kind;
    b.fmt = uint8_t(f);
    return b;
}

// Blocks of one format stay together in runs of this many: the 4 warps of a
// CTA take consecutive blocks, so a run keeps them on one format's code path
// at a time, while runs of the formats still interleave in proportion.
constexpr size_t k_format_run = 4;

// The fixed part: KIVI groups and quantised buckets, interleaved by relative
// index in runs of k_format_run blocks of one format.
void build_fixed(const gpu_store& s, block_list_cache& c) {
    struct keyed {
        double key;
        gpu_block b;
    };
    std::vector<keyed> all;
    const int H = s.config().n_kv_heads;
    c.fixed_kv_bytes = 0;
    auto add = [&](const uint8_t* data, uint8_t kind, kv_format f, int fill, size_t i, size_t n, const block_layout& L,
                   bool kivi) {
        const size_t runs = (n + k_format_run - 1) / k_format_run;
        all.push_back({(double(i / k_format_run) + 0.5) / double(runs), make_block(data, kind, f, fill)});
        c.fixed_kv_bytes += block_read_bytes(L, fill, H, kivi);
    };
    for (size_t g = 0; g < s.n_groups(); ++g)
        add(s.group(g), blk_kivi, s.kivi_format(), kivi_group, g, s.n_groups(), s.group_layout(), true);
    for (int f = int(kv_format::int8); f < n_formats; ++f) {
        const gpu_bucket& b = s.bucket_of(kv_format(f));
        for (size_t i = 0; i < b.n_blocks(); ++i)
            add(b.block(i), blk_quantized, kv_format(f), b.block_fill(i), i, b.n_blocks(), b.layout(), false);
    }
    std::stable_sort(all.begin(), all.end(), [](const keyed& a, const keyed& b) { return a.key < b.key; });
    c.host.clear();
    uint32_t cols = 0;
    for (keyed& k : all) {
        k.b.slot_base = cols;
        cols += k.b.n_valid;
        c.host.push_back(k.b);
    }
    c.n_fixed = c.host.size();
    c.fixed_cols = cols;
    c.dev_valid = 0;  // the fixed part changed: upload it all
}

bool same_block(const gpu_block& a, const gpu_block& b) {
    return a.data == b.data && a.slot_base == b.slot_base && a.n_valid == b.n_valid && a.kind == b.kind && a.fmt == b.fmt;
}

}  // namespace

block_list_view block_list_update(const gpu_store& s, bool host_memory, cudaStream_t stream, pinned_arena& stage) {
    block_list_cache& c = s.block_cache();
    if (host_memory && !c.dev.host_memory()) c.dev.use_host_memory();
    if (c.version != s.fixed_version()) {
        build_fixed(s, c);
        c.version = s.fixed_version();
    }
    // The fp16 tail, compared entry by entry with what the device holds.
    const gpu_bucket& b16 = s.bucket_of(kv_format::fp16);
    const int H = s.config().n_kv_heads;
    size_t first_changed = std::min(c.dev_valid, c.host.size());
    const size_t n_total = c.n_fixed + b16.n_blocks();
    uint32_t cols = c.fixed_cols;
    size_t kv_bytes = c.fixed_kv_bytes;
    for (size_t i = 0; i < b16.n_blocks(); ++i) {
        const int fill = b16.block_fill(i);
        gpu_block blk = make_block(b16.block(i), blk_fp16, kv_format::fp16, fill);
        blk.slot_base = cols;
        cols += uint32_t(fill);
        kv_bytes += block_read_bytes(b16.layout(), fill, H, false);
        const size_t at = c.n_fixed + i;
        if (at < c.host.size()) {
            if (!same_block(c.host[at], blk)) {
                c.host[at] = blk;
                first_changed = std::min(first_changed, at);
            }
        } else {
            c.host.push_back(blk);
        }
    }
    c.host.resize(n_total);
    // Upload [first_changed, n_total); all of it when the buffer had to grow
    // (device_buffer::ensure does not keep contents).
    const size_t cap_before = c.dev.capacity();
    gpu_block* dev = static_cast<gpu_block*>(c.dev.ensure(std::max<size_t>(n_total, 1) * sizeof(gpu_block)));
    if (c.dev.capacity() != cap_before) first_changed = 0;
    if (first_changed < n_total) {
        const size_t bytes = (n_total - first_changed) * sizeof(gpu_block);
        if (host_memory) std::memcpy(dev + first_changed, c.host.data() + first_changed, bytes);
        else upload_bytes(dev + first_changed, c.host.data() + first_changed, bytes, stream, stage);
    }
    c.dev_valid = n_total;
    return {dev, int(n_total), cols, kv_bytes};
}

}  // namespace smartkv::cuda

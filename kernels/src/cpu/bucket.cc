#include "bucket.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "paged-array.h"  // doubled_capacity

namespace smartkv {

bucket::~bucket() { release(); }

bucket::bucket(bucket&& other) noexcept
    : layout_(other.layout_), blocks_(std::move(other.blocks_)), size_(other.size_) {
    other.blocks_.clear();
    other.size_ = 0;
}

bucket& bucket::operator=(bucket&& other) noexcept {
    if (this != &other) {
        release();
        layout_ = other.layout_;
        blocks_ = std::move(other.blocks_);
        size_ = other.size_;
        other.blocks_.clear();
        other.size_ = 0;
    }
    return *this;
}

void bucket::release() {
    for (uint8_t* b : blocks_) std::free(b);
    blocks_.clear();
    size_ = 0;
}

int bucket::block_fill(size_t b) const {
    const size_t start = b * size_t(layout_.block_tokens);
    const size_t left = size_ > start ? size_ - start : 0;
    return int(left < size_t(layout_.block_tokens) ? left : size_t(layout_.block_tokens));
}

uint8_t* bucket::k_row(uint32_t s, int head) {
    const int t = layout_.block_tokens;
    return blocks_[s / t] + layout_.k_codes + layout_.code_offset(head, int(s % t));
}
uint8_t* bucket::v_row(uint32_t s, int head) {
    const int t = layout_.block_tokens;
    return blocks_[s / t] + layout_.v_codes + layout_.code_offset(head, int(s % t));
}
half_bits* bucket::k_params(uint32_t s, int head) {
    const int t = layout_.block_tokens;
    return reinterpret_cast<half_bits*>(blocks_[s / t] + layout_.k_params + layout_.param_offset(head, int(s % t)));
}
half_bits* bucket::v_params(uint32_t s, int head) {
    const int t = layout_.block_tokens;
    return reinterpret_cast<half_bits*>(blocks_[s / t] + layout_.v_params + layout_.param_offset(head, int(s % t)));
}
int32_t& bucket::position(uint32_t s) {
    const int t = layout_.block_tokens;
    return reinterpret_cast<int32_t*>(blocks_[s / t] + layout_.pos)[s % t];
}

size_t bucket::growth_for_blocks(size_t n_blocks) const {
    if (n_blocks <= blocks_.size()) return 0;
    const size_t cap = doubled_capacity(n_blocks, blocks_.capacity());
    return (n_blocks - blocks_.size()) * layout_.bytes + (cap - blocks_.capacity()) * sizeof(uint8_t*);
}

uint32_t bucket::push() {
    if (size_ == blocks_.size() * size_t(layout_.block_tokens)) {
        if (blocks_.size() == blocks_.capacity())
            blocks_.reserve(doubled_capacity(blocks_.size() + 1, blocks_.capacity()));
        void* mem = std::aligned_alloc(64, layout_.bytes);
        if (!mem) throw std::bad_alloc();
        std::memset(mem, 0, layout_.bytes);
        blocks_.push_back(static_cast<uint8_t*>(mem));
    }
    return size_++;
}

void bucket::copy_slot(uint32_t from, uint32_t to) {
    const size_t param_bytes = size_t(layout_.n_params) * sizeof(half_bits);
    for (int h = 0; h < layout_.n_kv_heads; ++h) {
        std::memcpy(k_row(to, h), k_row(from, h), size_t(layout_.row));
        std::memcpy(v_row(to, h), v_row(from, h), size_t(layout_.row));
        if (param_bytes) {
            std::memcpy(k_params(to, h), k_params(from, h), param_bytes);
            std::memcpy(v_params(to, h), v_params(from, h), param_bytes);
        }
    }
    position(to) = position(from);
}

int32_t bucket::remove(uint32_t s) {
    const uint32_t last = size_ - 1;
    int32_t moved = -1;
    if (s != last) {
        copy_slot(last, s);
        moved = position(s);
    }
    --size_;
    if (size_ <= (blocks_.size() - 1) * size_t(layout_.block_tokens)) {
        std::free(blocks_.back());
        blocks_.pop_back();
    }
    return moved;
}

}  // namespace smartkv

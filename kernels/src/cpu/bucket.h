// A bucket: every token of one format in one (sequence, layer), packed densely
// in fixed-size blocks of token slots (see block-layout.h).
//
//   slot s lives in block s / T at index s % T; slots 0 .. size-1 are in use.
//
// Removal moves the last slot into the hole, so a bucket never has gaps:
// attention reads whole blocks, freed slots are reused at once, the trailing
// block is released when it empties, and held bytes stay ceil(size/T) blocks.
// The bucket knows positions (stored in each slot) but not the token map; the
// caller updates that from remove()'s return value.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "smartkv/block-layout.h"

namespace smartkv {

class bucket {
public:
    bucket() = default;
    explicit bucket(const block_layout& layout) : layout_(layout) {}
    ~bucket();
    bucket(bucket&& other) noexcept;
    bucket& operator=(bucket&& other) noexcept;
    bucket(const bucket&) = delete;
    bucket& operator=(const bucket&) = delete;

    const block_layout& layout() const { return layout_; }
    uint32_t size() const { return size_; }
    size_t n_blocks() const { return blocks_.size(); }
    uint8_t* block(size_t b) { return blocks_[b]; }
    const uint8_t* block(size_t b) const { return blocks_[b]; }
    // Tokens used in block b (the last block may be partly filled).
    int block_fill(size_t b) const;

    // Slot accessors: pointers into the block holding slot s.
    uint8_t* k_row(uint32_t s, int head);
    uint8_t* v_row(uint32_t s, int head);
    half_bits* k_params(uint32_t s, int head);
    half_bits* v_params(uint32_t s, int head);
    int32_t& position(uint32_t s);
    const uint8_t* k_row(uint32_t s, int head) const { return const_cast<bucket*>(this)->k_row(s, head); }
    const uint8_t* v_row(uint32_t s, int head) const { return const_cast<bucket*>(this)->v_row(s, head); }
    const half_bits* k_params(uint32_t s, int head) const { return const_cast<bucket*>(this)->k_params(s, head); }
    const half_bits* v_params(uint32_t s, int head) const { return const_cast<bucket*>(this)->v_params(s, head); }
    int32_t position(uint32_t s) const { return const_cast<bucket*>(this)->position(s); }

    // Adds a slot at the end (allocating a block when needed) and returns it.
    uint32_t push();
    // Frees slot s by moving the last slot into it. Returns the position of
    // the token now in slot s, or -1 when s was the last slot.
    int32_t remove(uint32_t s);

    // Blocks that size n would need, for memory checks before growing.
    size_t blocks_for(size_t n) const { return (n + layout_.block_tokens - 1) / layout_.block_tokens; }
    size_t held_bytes() const { return blocks_.size() * layout_.bytes + table_bytes(); }
    size_t table_bytes() const { return blocks_.capacity() * sizeof(uint8_t*); }
    // Block bytes plus table bytes that holding n_blocks blocks would add.
    size_t growth_for_blocks(size_t n_blocks) const;

private:
    void copy_slot(uint32_t from, uint32_t to);
    void release();

    block_layout layout_;
    std::vector<uint8_t*> blocks_;  // each layout_.bytes, 64-byte aligned; capacity doubles (push)
    uint32_t size_ = 0;
};

}  // namespace smartkv

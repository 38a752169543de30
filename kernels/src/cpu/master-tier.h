// The FP16 master copy of a reversible sequence, behind one small interface so
// that where it lives is the choice of one class. A master copy is what lets a
// plan raise a token's precision again; it is not compression, so it is kept
// out of the hot cache (and out of β and the memory limit) and reported as its
// own number (memory_stats::master).
//
//   row(pos) : [2][H][D] f16, K then V of one token in one layer
//
// Implementations: `mmap_file_tier` (CPU cache: a memory-mapped file in a
// directory, so RAM holds only the hot cache and the OS may page the copy out).
// A pinned-host or remote-host tier would be another subclass of master_tier.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "smartkv/half.h"

namespace smartkv {

class master_tier {
public:
    virtual ~master_tier() = default;
    // Grows to hold n_rows token rows; rows already there keep their values.
    virtual void resize(size_t n_rows) = 0;
    // Bytes the tier holds for n_rows rows (what resize(n_rows) would hold).
    virtual size_t held_bytes_if(size_t n_rows) const = 0;
    virtual size_t held_bytes() const = 0;
    // k, v: [H][D] f32 of token `pos` (< the size resized to).
    virtual void write(size_t pos, const float* k, const float* v) = 0;
    // One head's K and V of token `pos` as f32: [D] each.
    virtual void read(size_t pos, int head, float* k, float* v) const = 0;
};

// A file in `dir`, created and unlinked at once (nothing is left behind if the
// process dies), grown in chunks with ftruncate + mremap, closed with the tier.
// held bytes = the file's size. Throws engine_error(internal) when the file
// cannot be made or grown (a full or missing directory).
class mmap_file_tier final : public master_tier {
public:
    mmap_file_tier(const std::string& dir, int n_kv_heads, int head_dim);
    ~mmap_file_tier() override;
    mmap_file_tier(const mmap_file_tier&) = delete;
    mmap_file_tier& operator=(const mmap_file_tier&) = delete;

    void resize(size_t n_rows) override;
    size_t held_bytes_if(size_t n_rows) const override;
    size_t held_bytes() const override { return bytes_; }
    void write(size_t pos, const float* k, const float* v) override;
    void read(size_t pos, int head, float* k, float* v) const override;

    // Rows per growth step: 64 KiB-aligned chunks keep mremap calls rare
    // without holding much more than the tokens need.
    static constexpr size_t chunk_bytes = 64 * 1024;

private:
    size_t row_elems_;          // 2 * H * D halves per row
    int head_dim_;
    int fd_ = -1;
    half_bits* map_ = nullptr;  // [bytes_ / 2] f16, rows back to back
    size_t bytes_ = 0;          // file size = mapping size
};

// The tier a CPU sequence uses: a file under dir (empty: $TMPDIR or /tmp).
std::unique_ptr<master_tier> make_master_tier(const std::string& dir, int n_kv_heads, int head_dim);

}  // namespace smartkv

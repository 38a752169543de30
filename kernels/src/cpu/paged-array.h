// A growable array stored in fixed pages, so growing never copies what is
// already there (appends stay O(1), references stay valid) and the bytes held
// are exact: whole pages plus the page table.
//
//   table [capacity] T*  -->  page [PageElems] T    only the last page is partly used
//
// Pages are small because every (sequence, layer) pays for a partly used last
// page of each array: 128 entries (512 bytes of u32 / f32) keep a one-token
// sequence under 1.1 KiB of token map and importance, while the table stays
// 1/64 of the pages' bytes (1/32 just after it doubles).
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

namespace smartkv {

// Entries per page of the per-token bookkeeping (token map, importance). The
// CUDA backend rounds its device importance array to the same unit, so both
// backends report the same bookkeeping bytes for the same tokens.
constexpr size_t meta_page_elems = 128;

// Capacity of a table that doubles (from one entry) until it holds `need`.
// Block tables and page tables grow by this rule, reserved explicitly rather
// than left to std::vector, so that memory checks can predict them exactly.
inline size_t doubled_capacity(size_t need, size_t cap) {
    if (need <= cap) return cap;
    if (cap == 0) cap = 1;
    while (cap < need) cap *= 2;
    return cap;
}

template <typename T, size_t PageElems = meta_page_elems>
class paged_array {
    static_assert(PageElems > 0 && (PageElems & (PageElems - 1)) == 0, "indexing is a shift and a mask");

public:
    size_t size() const { return size_; }
    T& operator[](size_t i) { return pages_[i / PageElems][i % PageElems]; }
    const T& operator[](size_t i) const { return pages_[i / PageElems][i % PageElems]; }

    // Grows to n elements (new ones set to fill); never gives pages back.
    void resize(size_t n, const T& fill = T()) {
        const size_t pages = pages_for(n);
        if (pages > pages_.capacity()) pages_.reserve(doubled_capacity(pages, pages_.capacity()));
        while (pages_.size() < pages) pages_.emplace_back(new T[PageElems]);
        for (size_t i = size_; i < n; ++i) (*this)[i] = fill;
        size_ = n;
    }
    // Bytes allocated for element storage and the page table.
    size_t held_bytes() const { return pages_.size() * page_bytes + pages_.capacity() * sizeof(pages_[0]); }
    // What resize(n) would hold, for memory checks before growing.
    size_t held_bytes_if(size_t n) const {
        const size_t pages = pages_for(n) > pages_.size() ? pages_for(n) : pages_.size();
        return pages * page_bytes + doubled_capacity(pages, pages_.capacity()) * sizeof(pages_[0]);
    }

    static constexpr size_t page_bytes = PageElems * sizeof(T);
    static constexpr size_t pages_for(size_t n) { return (n + PageElems - 1) / PageElems; }

private:
    std::vector<std::unique_ptr<T[]>> pages_;
    size_t size_ = 0;
};

}  // namespace smartkv

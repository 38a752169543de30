// A growable array stored in fixed pages, so growing never copies what is
// already there (appends stay O(1)) and the bytes held are exact: whole pages
// plus the page table.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

namespace smartkv {

template <typename T, size_t PageElems = 4096>
class paged_array {
public:
    size_t size() const { return size_; }
    T& operator[](size_t i) { return pages_[i / PageElems][i % PageElems]; }
    const T& operator[](size_t i) const { return pages_[i / PageElems][i % PageElems]; }

    void resize(size_t n, const T& fill = T()) {
        while (pages_.size() * PageElems < n) pages_.emplace_back(new T[PageElems]);
        for (size_t i = size_; i < n; ++i) (*this)[i] = fill;
        size_ = n;
    }
    // Bytes allocated for element storage and the page table.
    size_t held_bytes() const { return pages_.size() * PageElems * sizeof(T) + pages_.capacity() * sizeof(void*); }
    // What resize(n) would hold, for memory checks before growing.
    size_t held_bytes_if(size_t n) const {
        const size_t pages = (n + PageElems - 1) / PageElems;
        const size_t cap = pages > pages_.capacity() ? pages : pages_.capacity();
        return (pages > pages_.size() ? pages : pages_.size()) * PageElems * sizeof(T) + cap * sizeof(void*);
    }

private:
    std::vector<std::unique_ptr<T[]>> pages_;
    size_t size_ = 0;
};

}  // namespace smartkv

// Device memory for the CUDA backend: plain cudaMalloc in slabs, handed out
// as fixed-size blocks (one free list per block size), never managed memory.
//
//   slab = cudaMalloc(max(1, 4 MiB / bytes) * bytes)  ->  blocks of `bytes`
//
// Blocks come back zeroed (an async memset on the engine's stream). A block
// given back goes on a pending list until commit(), called once the work
// that still reads it has been queued on that same stream, so a reused block
// is never cleared under a queued reader. reserve() grows the free lists up
// front: out of device memory throws engine_error(resource_exhausted)
// before any bookkeeping changes.
//
// A pool built with host_memory = true hands out host memory instead, so the
// bookkeeping above it (gpu-store) can be checked without a GPU: the work
// items it emits are then run by host_execute() (gpu-check).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

namespace smartkv::cuda {

class device_pool {
public:
    explicit device_pool(cudaStream_t stream, bool host_memory = false) : stream_(stream), host_(host_memory) {}
    ~device_pool();
    device_pool(const device_pool&) = delete;
    device_pool& operator=(const device_pool&) = delete;

    void reserve(size_t bytes, size_t count);  // at least `count` free blocks of `bytes`
    uint8_t* get(size_t bytes);                // a zeroed block
    void put(uint8_t* block, size_t bytes);    // pending until commit()
    void commit();
    size_t reserved_bytes() const { return reserved_; }  // all slabs
    bool host_memory() const { return host_; }

    // Plain buffers outside the block lists (importance arrays), same memory kind.
    void* raw_alloc(size_t bytes);
    void raw_free(void* p);
    void raw_zero(void* p, size_t bytes);
    void raw_copy(void* dst, const void* src, size_t bytes);

private:
    void grow(size_t bytes, size_t min_blocks);

    cudaStream_t stream_;
    bool host_;
    std::map<size_t, std::vector<uint8_t*>> free_;
    std::vector<std::pair<uint8_t*, size_t>> pending_;
    std::vector<void*> slabs_;
    size_t reserved_ = 0;
};

// A grow-only device buffer for staging and scratch (never shrinks); host
// memory instead after use_host_memory() (host checks of attend_batch).
class device_buffer {
public:
    device_buffer() = default;
    void use_host_memory() { host_ = true; }
    bool host_memory() const { return host_; }
    ~device_buffer();
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    void* ensure(size_t bytes);  // contents are not kept when it grows
    void* data() const { return ptr_; }
    size_t capacity() const { return cap_; }

private:
    void* ptr_ = nullptr;
    size_t cap_ = 0;
    bool host_ = false;
};

// Uploads a host vector into a device_buffer on `stream` (pageable copy:
// cudaMemcpyAsync returns once the source has been staged).
template <typename T>
T* upload(device_buffer& buf, const std::vector<T>& v, cudaStream_t stream);

}  // namespace smartkv::cuda

// Device memory for the CUDA backend: plain cudaMalloc in slabs, handed out
// as fixed-size blocks (one free list per block size), never managed memory.
//
//   slab = cudaMalloc(max(1, 4 MiB / bytes) * bytes)  ->  blocks of `bytes`
//
// Blocks come back zeroed: a new slab is cleared whole by one async memset,
// so its blocks need nothing more; only a recycled block gets its own memset
// when it is handed out again. A block given back goes on a pending list
// until commit(), called once the work that still reads it has been queued
// on that same stream, so a reused block is never cleared under a queued
// reader. reserve() grows the free lists up front: out of device memory
// throws engine_error(resource_exhausted) before any bookkeeping changes.
//
// Plain buffers (importance arrays) are stream-ordered: cudaMallocAsync and
// cudaFreeAsync on the engine's stream, so growing one never waits for the
// device.
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
    explicit device_pool(cudaStream_t stream, bool host_memory = false);
    ~device_pool();
    device_pool(const device_pool&) = delete;
    device_pool& operator=(const device_pool&) = delete;

    void reserve(size_t bytes, size_t count);  // at least `count` free blocks of `bytes`
    uint8_t* get(size_t bytes);                // a zeroed block
    void put(uint8_t* block, size_t bytes);    // pending until commit()
    void commit();
    size_t reserved_bytes() const { return reserved_; }  // all slabs
    bool host_memory() const { return host_; }

    // Plain buffers outside the block lists (importance arrays), same memory
    // kind, stream-ordered on the device (no synchronisation).
    void* raw_alloc(size_t bytes);
    void raw_free(void* p);
    void raw_zero(void* p, size_t bytes);
    void raw_copy(void* dst, const void* src, size_t bytes);

private:
    void grow(size_t bytes, size_t min_blocks);
    void* slab_alloc(size_t bytes);
    void slab_free(void* p);

    cudaStream_t stream_;
    bool host_;
    bool async_alloc_ = false;  // the device has memory pools (cudaMallocAsync); else plain cudaMalloc
    std::map<size_t, std::vector<uint8_t*>> free_;      // zeroed (from a cleared slab)
    std::map<size_t, std::vector<uint8_t*>> recycled_;  // given back: cleared when handed out
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

// Page-locked host staging for one engine call (a "step"): uploads are copied
// into it and sent with cudaMemcpyAsync (truly asynchronous, unlike a copy
// from pageable memory, which the driver stages synchronously); downloads
// land in it. What take() returns stays valid until reset(), which the owner
// calls after the step's one synchronisation. Grows geometrically; an
// outgrown chunk is kept until reset(), so no queued copy loses its source.
// Host-memory mode (the host checks): plain malloc.
class pinned_arena {
public:
    pinned_arena() = default;
    ~pinned_arena();
    pinned_arena(const pinned_arena&) = delete;
    pinned_arena& operator=(const pinned_arena&) = delete;
    void use_host_memory() { host_ = true; }
    void* take(size_t bytes);  // 256-byte aligned
    void reset();              // only once every copy from or into it has completed
    size_t capacity() const { return cap_; }

private:
    void* alloc(size_t bytes);
    void release(void* p);

    uint8_t* base_ = nullptr;
    size_t cap_ = 0, used_ = 0;
    std::vector<void*> outgrown_;
    bool host_ = false;
};

// Uploads a host vector into a device_buffer on `stream`, staged through
// `stage` (pinned; valid until the caller's synchronisation). Host buffers:
// a plain copy.
template <typename T>
T* upload(device_buffer& buf, const std::vector<T>& v, cudaStream_t stream, pinned_arena& stage);
// Host bytes -> device, staged the same way.
void upload_bytes(void* dst, const void* src, size_t bytes, cudaStream_t stream, pinned_arena& stage);

}  // namespace smartkv::cuda

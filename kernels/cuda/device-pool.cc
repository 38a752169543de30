#include "device-pool.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda-check.h"
#include "gpu-types.h"

namespace smartkv::cuda {

device_pool::device_pool(cudaStream_t stream, bool host_memory) : stream_(stream), host_(host_memory) {
    if (host_) return;
    int device = 0, pools = 0;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) == cudaSuccess)
        async_alloc_ = pools != 0;
    cudaGetLastError();
}

device_pool::~device_pool() {
    if (!host_) cudaStreamSynchronize(stream_);
    for (void* s : slabs_) slab_free(s);
}

namespace {
void* host_alloc(size_t bytes, const char* what) {
    void* p = std::aligned_alloc(256, (bytes + 255) & ~size_t(255));
    if (!p) throw engine_error(error_code::resource_exhausted, std::string(what) + ": out of memory");
    return p;
}
}  // namespace

void* device_pool::slab_alloc(size_t bytes) {
    if (host_) return host_alloc(bytes, "host test pool");
    void* p = nullptr;
    SKV_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}

void device_pool::slab_free(void* p) {
    if (host_) std::free(p);
    else cudaFree(p);
}

void* device_pool::raw_alloc(size_t bytes) {
    if (host_) return host_alloc(bytes, "host test pool");
    void* p = nullptr;
    if (async_alloc_) SKV_CUDA_CHECK(cudaMallocAsync(&p, bytes, stream_));
    else SKV_CUDA_CHECK(cudaMalloc(&p, bytes));  // no memory pools (rare): synchronising fallback
    return p;
}

void device_pool::raw_free(void* p) {
    if (host_) std::free(p);
    else if (async_alloc_) cudaFreeAsync(p, stream_);
    else cudaFree(p);
}

void device_pool::raw_zero(void* p, size_t bytes) {
    if (host_) std::memset(p, 0, bytes);
    else SKV_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
}

void device_pool::raw_copy(void* dst, const void* src, size_t bytes) {
    if (host_) std::memcpy(dst, src, bytes);
    else SKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void device_pool::grow(size_t bytes, size_t min_blocks) {
    constexpr size_t slab_target = size_t(4) << 20;
    size_t n = slab_target / bytes;
    if (n < min_blocks) n = min_blocks;
    if (n == 0) n = 1;
    void* mem = slab_alloc(n * bytes);
    slabs_.push_back(mem);
    reserved_ += n * bytes;
    raw_zero(mem, n * bytes);  // one memset for the slab: its blocks are handed out as they are
    std::vector<uint8_t*>& list = free_[bytes];
    // Reversed, so that get() (from the back) hands out the slab in address order.
    for (size_t i = n; i-- > 0;) list.push_back(static_cast<uint8_t*>(mem) + i * bytes);
}

void device_pool::reserve(size_t bytes, size_t count) {
    const size_t have = free_[bytes].size() + recycled_[bytes].size();
    if (have < count) grow(bytes, count - have);
}

uint8_t* device_pool::get(size_t bytes) {
    std::vector<uint8_t*>& clean = free_[bytes];
    std::vector<uint8_t*>& used = recycled_[bytes];
    if (clean.empty() && used.empty()) grow(bytes, 1);
    if (!clean.empty()) {
        uint8_t* b = clean.back();
        clean.pop_back();
        return b;
    }
    uint8_t* b = used.back();
    used.pop_back();
    raw_zero(b, bytes);  // queued after every reader of its last use (commit())
    return b;
}

void device_pool::put(uint8_t* block, size_t bytes) { pending_.emplace_back(block, bytes); }

void device_pool::commit() {
    for (const auto& [b, bytes] : pending_) recycled_[bytes].push_back(b);
    pending_.clear();
}

device_buffer::~device_buffer() {
    if (ptr_ && host_) std::free(ptr_);
    else if (ptr_) cudaFree(ptr_);
}

void* device_buffer::ensure(size_t bytes) {
    if (bytes <= cap_) return ptr_;
    size_t cap = cap_ ? cap_ : 4096;
    while (cap < bytes) cap *= 2;
    if (host_) {
        std::free(ptr_);
        ptr_ = std::aligned_alloc(256, cap);
        if (!ptr_) throw engine_error(error_code::resource_exhausted, "host test buffer: out of memory");
        cap_ = cap;
        return ptr_;
    }
    void* mem = nullptr;
    SKV_CUDA_CHECK(cudaMalloc(&mem, cap));  // allocate first: a failure leaves the old buffer in place
    if (ptr_) {
        cudaDeviceSynchronize();  // the old buffer may still be read by queued work
        cudaFree(ptr_);
    }
    ptr_ = mem;
    cap_ = cap;
    return ptr_;
}

pinned_arena::~pinned_arena() {
    reset();
    release(base_);
}

void* pinned_arena::alloc(size_t bytes) {
    if (host_) return host_alloc(bytes, "host staging");
    void* p = nullptr;
    SKV_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return p;
}

void pinned_arena::release(void* p) {
    if (!p) return;
    if (host_) std::free(p);
    else cudaFreeHost(p);
}

void* pinned_arena::take(size_t bytes) {
    const size_t at = (used_ + 255) & ~size_t(255);
    if (at + bytes > cap_) {
        size_t cap = cap_ ? 2 * cap_ : size_t(1) << 20;
        while (cap < bytes) cap *= 2;
        uint8_t* mem = static_cast<uint8_t*>(alloc(cap));  // first: a failure leaves the arena as it was
        if (base_) outgrown_.push_back(base_);
        base_ = mem;
        cap_ = cap;
        used_ = bytes;
        return base_;
    }
    used_ = at + bytes;
    return base_ + at;
}

void pinned_arena::reset() {
    for (void* p : outgrown_) release(p);
    outgrown_.clear();
    used_ = 0;
}

void upload_bytes(void* dst, const void* src, size_t bytes, cudaStream_t stream, pinned_arena& stage) {
    if (bytes == 0) return;
    void* s = stage.take(bytes);
    std::memcpy(s, src, bytes);
    SKV_CUDA_CHECK(cudaMemcpyAsync(dst, s, bytes, cudaMemcpyHostToDevice, stream));
}

template <typename T>
T* upload(device_buffer& buf, const std::vector<T>& v, cudaStream_t stream, pinned_arena& stage) {
    if (v.empty()) return nullptr;
    T* d = static_cast<T*>(buf.ensure(v.size() * sizeof(T)));
    if (buf.host_memory()) std::memcpy(d, v.data(), v.size() * sizeof(T));
    else upload_bytes(d, v.data(), v.size() * sizeof(T), stream, stage);
    return d;
}

template convert_item* upload(device_buffer&, const std::vector<convert_item>&, cudaStream_t, pinned_arena&);
template slot_copy_item* upload(device_buffer&, const std::vector<slot_copy_item>&, cudaStream_t, pinned_arena&);
template kivi_group_item* upload(device_buffer&, const std::vector<kivi_group_item>&, cudaStream_t, pinned_arena&);
template gpu_block* upload(device_buffer&, const std::vector<gpu_block>&, cudaStream_t, pinned_arena&);
template gpu_request* upload(device_buffer&, const std::vector<gpu_request>&, cudaStream_t, pinned_arena&);
template gpu_work* upload(device_buffer&, const std::vector<gpu_work>&, cudaStream_t, pinned_arena&);
template float* upload(device_buffer&, const std::vector<float>&, cudaStream_t, pinned_arena&);
template half_bits* upload(device_buffer&, const std::vector<half_bits>&, cudaStream_t, pinned_arena&);

}  // namespace smartkv::cuda

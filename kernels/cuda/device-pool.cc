#include "device-pool.h"

#include <cstdlib>
#include <cstring>

#include "cuda-check.h"
#include "gpu-types.h"

namespace smartkv::cuda {

device_pool::~device_pool() {
    if (!host_) cudaStreamSynchronize(stream_);
    for (void* s : slabs_) raw_free(s);
}

void* device_pool::raw_alloc(size_t bytes) {
    if (host_) {
        void* p = std::aligned_alloc(256, (bytes + 255) & ~size_t(255));
        if (!p) throw engine_error(error_code::resource_exhausted, "host test pool: out of memory");
        return p;
    }
    void* p = nullptr;
    SKV_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}

void device_pool::raw_free(void* p) {
    if (host_) std::free(p);
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
    void* mem = raw_alloc(n * bytes);
    slabs_.push_back(mem);
    reserved_ += n * bytes;
    std::vector<uint8_t*>& list = free_[bytes];
    for (size_t i = 0; i < n; ++i) list.push_back(static_cast<uint8_t*>(mem) + i * bytes);
}

void device_pool::reserve(size_t bytes, size_t count) {
    const size_t have = free_[bytes].size();
    if (have < count) grow(bytes, count - have);
}

uint8_t* device_pool::get(size_t bytes) {
    std::vector<uint8_t*>& list = free_[bytes];
    if (list.empty()) {
        grow(bytes, 1);
    }
    std::vector<uint8_t*>& l = free_[bytes];
    uint8_t* b = l.back();
    l.pop_back();
    raw_zero(b, bytes);
    return b;
}

void device_pool::put(uint8_t* block, size_t bytes) { pending_.emplace_back(block, bytes); }

void device_pool::commit() {
    for (const auto& [b, bytes] : pending_) free_[bytes].push_back(b);
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

template <typename T>
T* upload(device_buffer& buf, const std::vector<T>& v, cudaStream_t stream) {
    if (v.empty()) return nullptr;
    T* d = static_cast<T*>(buf.ensure(v.size() * sizeof(T)));
    if (buf.host_memory()) std::memcpy(d, v.data(), v.size() * sizeof(T));
    else SKV_CUDA_CHECK(cudaMemcpyAsync(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
    return d;
}

template convert_item* upload(device_buffer&, const std::vector<convert_item>&, cudaStream_t);
template slot_copy_item* upload(device_buffer&, const std::vector<slot_copy_item>&, cudaStream_t);
template kivi_group_item* upload(device_buffer&, const std::vector<kivi_group_item>&, cudaStream_t);
template gpu_block* upload(device_buffer&, const std::vector<gpu_block>&, cudaStream_t);
template gpu_request* upload(device_buffer&, const std::vector<gpu_request>&, cudaStream_t);
template gpu_work* upload(device_buffer&, const std::vector<gpu_work>&, cudaStream_t);
template float* upload(device_buffer&, const std::vector<float>&, cudaStream_t);
template half_bits* upload(device_buffer&, const std::vector<half_bits>&, cudaStream_t);

}  // namespace smartkv::cuda

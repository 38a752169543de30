// Every CUDA runtime call goes through SKV_CUDA_CHECK, which names the file
// and line. Out of device memory is a normal condition for a cache service
// (engine_error resource_exhausted); anything else is a broken invariant.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "smartkv/engine.h"

namespace smartkv::cuda {

[[noreturn]] inline void cuda_fail(cudaError_t e, const char* what, const char* file, int line) {
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    const std::string msg = std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                            cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    throw engine_error(e == cudaErrorMemoryAllocation ? error_code::resource_exhausted : error_code::internal, msg);
}

}  // namespace smartkv::cuda

#define SKV_CUDA_CHECK(call)                                                      \
    do {                                                                          \
        const cudaError_t skv_err_ = (call);                                      \
        if (skv_err_ != cudaSuccess) ::smartkv::cuda::cuda_fail(skv_err_, #call, __FILE__, __LINE__); \
    } while (0)

// After a kernel launch: catches bad launch configurations at once.
#define SKV_CUDA_CHECK_LAUNCH() SKV_CUDA_CHECK(cudaGetLastError())

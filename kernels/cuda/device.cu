// Device discovery. A machine with no GPU or no driver answers "none", never
// an error: the CPU backend is the fallback.
#include "kernels.h"

namespace smartkv::cuda {

bool device_count_positive() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();  // clear it: "no driver" is an answer, not a failure
        return false;
    }
    return n > 0;
}

}  // namespace smartkv::cuda

namespace smartkv {
bool cuda_device_count_positive() { return cuda::device_count_positive(); }
}  // namespace smartkv

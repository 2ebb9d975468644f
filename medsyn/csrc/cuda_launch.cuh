// medsyn: small launch helpers shared by the CUDA kernels (bias_act.cu, upfirdn2d.cu).
#pragma once
#include <c10/cuda/CUDAException.h>

namespace medsyn_cuda {

// Number of streaming multiprocessors on the current device (grid sizes are a multiple of it).
inline int sm_count() {
    int dev = 0, sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
}

}  // namespace medsyn_cuda

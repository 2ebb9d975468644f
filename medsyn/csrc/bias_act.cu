// medsyn: CUDA kernel for bias_act (forward, first and second derivative), one thread per element
// with a grid-stride loop; half precision is computed in float (at::opmath_type).
// The elementwise formula is shared with the CPU kernel (bias_act.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda_launch.cuh"

#include "bias_act.h"

namespace {

using medsyn_cuda::sm_count;

template <typename T>
struct BiasActParams {
    const T* x; const T* b; const T* xref; const T* yref; const T* dy; T* y;
    int64_t n, step_b, size_b;
    double alpha, gain, clamp;
};

template <typename T, int A, int G>
__global__ void bias_act_kernel(BiasActParams<T> p) {
    using acc = at::opmath_type<T>;
    const acc alpha = (acc)p.alpha, gain = (acc)p.gain, clamp = (acc)p.clamp;
    const bool clamp_mask = p.clamp >= 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (int64_t)blockDim.x * gridDim.x) {
        const acc x = (acc)p.x[i];
        const acc b = p.b ? (acc)p.b[(i / p.step_b) % p.size_b] : acc(0);
        const acc xr = p.xref ? (acc)p.xref[i] : acc(0);
        const acc yr = p.yref ? (acc)p.yref[i] : acc(0);
        const acc dy = p.dy ? (acc)p.dy[i] : acc(1);
        p.y[i] = (T)medsyn::bias_act_elem<acc, A, G>(x, b, xr, yr, dy, alpha, gain, clamp, clamp_mask);
    }
}

template <typename T, int A>
void launch_act(const BiasActParams<T>& p, int64_t grad, int blocks, int threads, cudaStream_t stream) {
    if (grad == 0) bias_act_kernel<T, A, 0><<<blocks, threads, 0, stream>>>(p);
    else if (grad == 1) bias_act_kernel<T, A, 1><<<blocks, threads, 0, stream>>>(p);
    else bias_act_kernel<T, A, 2><<<blocks, threads, 0, stream>>>(p);
}

template <typename T>
void launch(const BiasActParams<T>& p, int64_t act, int64_t grad) {
    const int threads = 256;
    const int max_blocks = sm_count() * 16;
    const int blocks = (int)std::min<int64_t>((p.n + threads - 1) / threads, max_blocks);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    switch (act) {
        case 1: launch_act<T, 1>(p, grad, blocks, threads, stream); break;
        case 2: launch_act<T, 2>(p, grad, blocks, threads, stream); break;
        case 3: launch_act<T, 3>(p, grad, blocks, threads, stream); break;
        case 4: launch_act<T, 4>(p, grad, blocks, threads, stream); break;
        case 5: launch_act<T, 5>(p, grad, blocks, threads, stream); break;
        case 6: launch_act<T, 6>(p, grad, blocks, threads, stream); break;
        case 7: launch_act<T, 7>(p, grad, blocks, threads, stream); break;
        case 8: launch_act<T, 8>(p, grad, blocks, threads, stream); break;
        case 9: launch_act<T, 9>(p, grad, blocks, threads, stream); break;
        default: TORCH_CHECK(false, "medsyn_cuda.bias_act: unknown activation id ", act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
    if (t.numel() == 0) return;
    TORCH_CHECK(t.device() == x.device() && t.dtype() == x.dtype(), name, " must have the device and dtype of x");
    TORCH_CHECK(t.sizes() == x.sizes() && t.strides() == x.strides(), name, " must have the shape and layout of x");
}

}  // namespace

at::Tensor medsyn_bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& xref, const at::Tensor& yref,
                                const at::Tensor& dy, int64_t grad, int64_t dim, int64_t act, double alpha, double gain,
                                double clamp) {
    TORCH_CHECK(x.is_cuda(), "medsyn_cuda.bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "medsyn_cuda.bias_act: x must be dense (contiguous or channels-last)");
    TORCH_CHECK(b.numel() == 0 || (b.dim() == 1 && b.is_contiguous() && b.device() == x.device() && dim >= 0 &&
                                   dim < x.dim() && b.size(0) == x.size(dim) && b.dtype() == x.dtype()),
                "medsyn_cuda.bias_act: b must be a contiguous 1D tensor matching x.shape[dim]");
    TORCH_CHECK(grad >= 0 && grad <= 2, "medsyn_cuda.bias_act: grad must be 0, 1 or 2");
    check_like(xref, x, "xref"); check_like(yref, x, "yref"); check_like(dy, x, "dy");
    TORCH_CHECK(grad == 0 || clamp < 0 || yref.numel() > 0, "medsyn_cuda.bias_act: the gradient of a clamped op needs yref");
    const at::cuda::OptionalCUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);
    if (x.numel() == 0) return y;
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "medsyn_cuda.bias_act", [&] {
        BiasActParams<scalar_t> p;
        p.x = x.const_data_ptr<scalar_t>();
        p.b = b.numel() ? b.const_data_ptr<scalar_t>() : nullptr;
        p.xref = xref.numel() ? xref.const_data_ptr<scalar_t>() : nullptr;
        p.yref = yref.numel() ? yref.const_data_ptr<scalar_t>() : nullptr;
        p.dy = dy.numel() ? dy.const_data_ptr<scalar_t>() : nullptr;
        p.y = y.mutable_data_ptr<scalar_t>();
        p.n = x.numel();
        p.step_b = b.numel() ? x.stride(dim) : 1;
        p.size_b = b.numel() ? x.size(dim) : 1;
        p.alpha = alpha; p.gain = gain; p.clamp = clamp;
        launch<scalar_t>(p, act, grad);
    });
    return y;
}

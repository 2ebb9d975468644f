// medsyn: CUDA kernel for the modulation epilogue of a StyleGAN2 synthesis layer, registered as
// torch.ops.medsyn_cuda.demod_bias_act and torch.ops.medsyn_cuda.demod_bias_act_grad (ops_cuda.cpp).
// Same schemas and semantics as demod_bias_act_cpu.cpp:
//
//   forward:  y = clamp(gain * act(x * d[n,c] + noise[n,0,h,w] + b[c]), -clamp, clamp)
//   backward: g = dy * gain * act'(.) * [|y| < clamp]   (from the saved output y; bias_act.h with G = 1)
//             dx = g * d[n,c]      dd[n,c] = sum_hw g * x      dnoise[n,0,h,w] = sum_c g      db[c] = sum_nhw g
//
// d, noise and b are each optional (an empty tensor: d = 1, noise = 0, b = 0); activations linear, relu, lrelu.
// Layouts: contiguous NCHW and channels-last NHWC. Storage float16 / float32 / float64, computed and summed in
// at::opmath_type (float for float16).
//
// Forward: one thread per element (grid-stride loop). Backward: two passes over (dy, y):
//   1. one block per (n, c) plane: dx, and the plane's sums of g*x (dd) and g (per-sample bias sums);
//   2. one thread per (n, h, w) pixel: the sum of g over channels (dnoise), only when asked for;
// then db = the per-sample bias sums added over samples. Every sum has a fixed order (a shared-memory tree
// in a block, sequential loops otherwise), so the backward is deterministic, as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>

#include "cuda_launch.cuh"

#include "bias_act.h"
#include "demod_bias_act.h"

namespace {

using medsyn_cuda::sm_count;

constexpr int kPlaneThreads = 256;   // threads of a block of the plane pass (a power of two, for the tree sum)

// Where element (n, c, j) lives, j = h * W + w: NCHW or NHWC (the shape checked by medsyn::epilogue_shape).
struct Layout : medsyn::EpilogueShape {
    __device__ __forceinline__ int64_t at(int64_t n, int64_t c, int64_t j) const {
        return cl ? (n * HW + j) * C + c : (n * C + c) * HW + j;
    }
};

template <typename T>
struct EpilogueParams {
    const T* x; const T* d; const T* noise; const T* b; const T* y; const T* dy;
    T* out; T* dd; T* dn; at::opmath_type<T>* dbn;
    Layout s;
    double alpha, gain, clamp;
};

// The activation's scalars in the accumulation type, read once per thread.
template <typename acc>
struct ActScalars {
    acc alpha, gain, clamp;
    bool cm;   // clamp >= 0: clamp the output / mask the gradient
    template <typename T>
    __device__ __forceinline__ explicit ActScalars(const EpilogueParams<T>& p)
        : alpha((acc)p.alpha), gain((acc)p.gain), clamp((acc)p.clamp), cm(p.clamp >= 0) {}
};

// g = dy * gain * act'(.) * [|y| < clamp], from the saved output (bias_act_elem's first derivative).
template <typename acc, int A>
__device__ __forceinline__ acc epilogue_grad(acc dy, acc y, const ActScalars<acc>& k) {
    return medsyn::bias_act_elem<acc, A, 1>(dy, acc(0), acc(0), y, acc(1), k.alpha, k.gain, k.clamp, k.cm);
}

template <typename T, int A>
__global__ void forward_kernel(EpilogueParams<T> p) {
    using acc = at::opmath_type<T>;
    const ActScalars<acc> k(p);
    const Layout s = p.s;
    const int64_t total = s.N * s.C * s.HW;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)blockDim.x * gridDim.x) {
        int64_t n, c, j;
        if (s.cl) { c = i % s.C; j = (i / s.C) % s.HW; n = i / (s.C * s.HW); }
        else      { j = i % s.HW; c = (i / s.HW) % s.C; n = i / (s.C * s.HW); }
        acc z = (acc)p.x[i];
        if (p.d) z *= (acc)p.d[n * s.C + c];
        if (p.noise) z += (acc)p.noise[n * s.HW + j];
        const acc bv = p.b ? (acc)p.b[c] : acc(0);
        p.out[i] = (T)medsyn::bias_act_elem<acc, A, 0>(z, bv, acc(0), acc(0), acc(1), k.alpha, k.gain, k.clamp, k.cm);
    }
}

// Pass 1: block (n, c) = blockIdx.x walks its plane; writes dx = g * d, dd[n, c] = sum g * x, dbn[n, c] = sum g.
template <typename T, int A, bool DX, bool DD>
__global__ void plane_grad_kernel(EpilogueParams<T> p) {
    using acc = at::opmath_type<T>;
    __shared__ acc s_gx[kPlaneThreads];
    __shared__ acc s_g[kPlaneThreads];
    const ActScalars<acc> k(p);
    const Layout s = p.s;
    const int64_t plane = blockIdx.x, n = plane / s.C, c = plane % s.C;
    const acc dv = p.d ? (acc)p.d[plane] : acc(1);
    acc sgx = acc(0), sg = acc(0);
    for (int64_t j = threadIdx.x; j < s.HW; j += blockDim.x) {
        const int64_t i = s.at(n, c, j);
        const acc g = epilogue_grad<acc, A>((acc)p.dy[i], (acc)p.y[i], k);
        if (DX) p.out[i] = (T)(g * dv);
        if (DD) sgx += g * (acc)p.x[i];
        sg += g;
    }
    s_gx[threadIdx.x] = sgx;
    s_g[threadIdx.x] = sg;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {   // fixed-order tree: deterministic
        if (threadIdx.x < half) {
            s_gx[threadIdx.x] += s_gx[threadIdx.x + half];
            s_g[threadIdx.x] += s_g[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (DD) p.dd[plane] = (T)s_gx[0];
        p.dbn[plane] = s_g[0];
    }
}

// Pass 2: one thread per pixel (n, j): dnoise[n, 0, j] = sum over channels of g.
template <typename T, int A>
__global__ void noise_grad_kernel(EpilogueParams<T> p) {
    using acc = at::opmath_type<T>;
    const ActScalars<acc> k(p);
    const Layout s = p.s;
    for (int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; q < s.N * s.HW; q += (int64_t)blockDim.x * gridDim.x) {
        const int64_t n = q / s.HW, j = q % s.HW;
        acc t = acc(0);
        for (int64_t c = 0; c < s.C; ++c) {
            const int64_t i = s.at(n, c, j);
            t += epilogue_grad<acc, A>((acc)p.dy[i], (acc)p.y[i], k);
        }
        p.dn[q] = (T)t;
    }
}

int grid_for(int64_t work, int threads) {
    return (int)std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, (int64_t)sm_count() * 16));
}

Layout check_x(const at::Tensor& x, const char* who) {
    TORCH_CHECK(x.is_cuda(), who, ": x must be a CUDA tensor");
    return Layout{medsyn::epilogue_shape(x, who)};
}

// Runtime activation id -> template argument.
template <template <int> class Launch, typename... Args>
void by_act(int64_t act, Args&&... args) {
    if (act == medsyn::ACT_LINEAR) Launch<medsyn::ACT_LINEAR>::run(args...);
    else if (act == medsyn::ACT_RELU) Launch<medsyn::ACT_RELU>::run(args...);
    else Launch<medsyn::ACT_LRELU>::run(args...);
}

template <typename T>
struct LaunchForward {
    template <int A> struct With {
        static void run(const EpilogueParams<T>& p, cudaStream_t stream) {
            const int threads = 256;
            forward_kernel<T, A><<<grid_for(p.s.N * p.s.C * p.s.HW, threads), threads, 0, stream>>>(p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
    };
};

template <typename T>
struct LaunchGrad {
    template <int A> struct With {
        static void run(const EpilogueParams<T>& p, bool need_dx, bool need_dd, bool need_dn, cudaStream_t stream) {
            const int64_t planes = p.s.N * p.s.C;
            if (need_dx && need_dd)  plane_grad_kernel<T, A, true, true><<<planes, kPlaneThreads, 0, stream>>>(p);
            else if (need_dx)        plane_grad_kernel<T, A, true, false><<<planes, kPlaneThreads, 0, stream>>>(p);
            else if (need_dd)        plane_grad_kernel<T, A, false, true><<<planes, kPlaneThreads, 0, stream>>>(p);
            else                     plane_grad_kernel<T, A, false, false><<<planes, kPlaneThreads, 0, stream>>>(p);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            if (need_dn) {
                const int threads = 256;
                noise_grad_kernel<T, A><<<grid_for(p.s.N * p.s.HW, threads), threads, 0, stream>>>(p);
                C10_CUDA_KERNEL_LAUNCH_CHECK();
            }
        }
    };
};

}  // namespace

at::Tensor medsyn_demod_bias_act_cuda(const at::Tensor& x, const at::Tensor& d, const at::Tensor& noise, const at::Tensor& b,
                                      int64_t act, double alpha, double gain, double clamp) {
    const char* who = "medsyn_cuda.demod_bias_act";
    const Layout s = check_x(x, who);
    medsyn::check_epilogue_arg(d, x, {s.N, s.C}, "d", who);
    medsyn::check_epilogue_arg(noise, x, {s.N, 1, x.size(2), x.size(3)}, "noise", who);
    medsyn::check_epilogue_arg(b, x, {s.C}, "b", who);
    medsyn::check_epilogue_act(act, who);
    const at::cuda::OptionalCUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);
    if (x.numel() == 0) return y;
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "medsyn_cuda.demod_bias_act", [&] {
        EpilogueParams<scalar_t> p{};
        p.x = x.const_data_ptr<scalar_t>();
        p.d = d.numel() ? d.const_data_ptr<scalar_t>() : nullptr;
        p.noise = noise.numel() ? noise.const_data_ptr<scalar_t>() : nullptr;
        p.b = b.numel() ? b.const_data_ptr<scalar_t>() : nullptr;
        p.out = y.mutable_data_ptr<scalar_t>();
        p.s = s;
        p.alpha = alpha; p.gain = gain; p.clamp = clamp;
        by_act<LaunchForward<scalar_t>::template With>(act, p, c10::cuda::getCurrentCUDAStream().stream());
    });
    return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> medsyn_demod_bias_act_grad_cuda(
        const at::Tensor& dy, const at::Tensor& x, const at::Tensor& d, const at::Tensor& y, bool need_dx, bool need_dd,
        bool need_dnoise, bool need_db, int64_t act, double alpha, double gain, double clamp) {
    const char* who = "medsyn_cuda.demod_bias_act_grad";
    const Layout s = check_x(y, who);
    medsyn::check_epilogue_grad_args(dy, x, d, y, need_dd, act, s, who);
    const at::cuda::OptionalCUDAGuard guard(y.device());
    at::Tensor dx, dd, dn, db;
    std::tie(dx, dd, dn, db) = medsyn::alloc_epilogue_grads(y, s, need_dx, need_dd, need_dnoise, need_db);
    if (y.numel() == 0) return {dx, dd, dn, db};
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(y.scalar_type(), "medsyn_cuda.demod_bias_act_grad", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // per-sample bias sums in the accumulation type; summed over samples below
        at::Tensor dbn = at::empty({s.N, s.C}, y.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        EpilogueParams<scalar_t> p{};
        p.x = need_dd ? x.const_data_ptr<scalar_t>() : nullptr;
        p.d = d.numel() ? d.const_data_ptr<scalar_t>() : nullptr;
        p.y = y.const_data_ptr<scalar_t>();
        p.dy = dy.const_data_ptr<scalar_t>();
        p.out = need_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr;
        p.dd = need_dd ? dd.mutable_data_ptr<scalar_t>() : nullptr;
        p.dn = need_dnoise ? dn.mutable_data_ptr<scalar_t>() : nullptr;
        p.dbn = dbn.mutable_data_ptr<acc_t>();
        p.s = s;
        p.alpha = alpha; p.gain = gain; p.clamp = clamp;
        by_act<LaunchGrad<scalar_t>::template With>(act, p, need_dx, need_dd, need_dnoise, c10::cuda::getCurrentCUDAStream().stream());
        if (need_db) db.copy_(dbn.sum(0));
    });
    return {dx, dd, dn, db};
}

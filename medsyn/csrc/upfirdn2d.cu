// medsyn: CUDA kernel for upfirdn2d. One thread per output pixel (grid-stride loop), polyphase:
// output (oy, ox) reads the zero-inserted, padded input at (oy*down - pad0 + ky, ox*down - pad0 + kx)
// and only the taps with (. + k) % up == 0 meet a real input pixel, so the loops step k by `up`.
// The filter is flipped (unless flip_filter), scaled by gain and converted to the accumulation type
// on the host; a 1D (separable) filter runs as a horizontal and a vertical pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda_launch.cuh"

namespace {

using medsyn_cuda::sm_count;

struct UfdParams {
    int64_t n_planes, ih, iw, oh, ow;
    int fh, fw, upx, upy, downx, downy, padx0, pady0;
};

__device__ __forceinline__ int pos_mod(int a, int b) { int r = a % b; return r < 0 ? r + b : r; }

template <typename T>
__global__ void upfirdn2d_kernel(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ w, T* __restrict__ y,
                                 UfdParams p) {
    using acc = at::opmath_type<T>;
    const int64_t total = p.n_planes * p.oh * p.ow;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)blockDim.x * gridDim.x) {
        const int ox = (int)(idx % p.ow);
        const int oy = (int)((idx / p.ow) % p.oh);
        const int64_t plane = idx / (p.ow * p.oh);
        const T* xp = x + plane * p.ih * p.iw;
        const int u0 = ox * p.downx - p.padx0;
        const int v0 = oy * p.downy - p.pady0;
        const int phx = pos_mod(-u0, p.upx);
        const int phy = pos_mod(-v0, p.upy);
        acc s = acc(0);
        for (int ky = phy; ky < p.fh; ky += p.upy) {
            const int iy = (v0 + ky) / p.upy;  // exact division
            if (iy < 0 || iy >= p.ih) continue;
            const T* row = xp + (int64_t)iy * p.iw;
            const acc* wrow = w + ky * p.fw;
            for (int kx = phx; kx < p.fw; kx += p.upx) {
                const int ix = (u0 + kx) / p.upx;
                if (ix < 0 || ix >= p.iw) continue;
                s += (acc)row[ix] * wrow[kx];
            }
        }
        y[idx] = (T)s;
    }
}

// One pass with a 2D correlation-weight tensor `w` (already flipped and scaled).
at::Tensor upfirdn2d_pass(const at::Tensor& x, const at::Tensor& w, int upx, int upy, int downx, int downy,
                          int padx0, int padx1, int pady0, int pady1) {
    const int64_t n = x.size(0), c = x.size(1), ih = x.size(2), iw = x.size(3);
    const int fh = (int)w.size(0), fw = (int)w.size(1);
    const int64_t oh = (ih * upy + pady0 + pady1 - fh) / downy + 1;
    const int64_t ow = (iw * upx + padx0 + padx1 - fw) / downx + 1;
    TORCH_CHECK(ih * upy + pady0 + pady1 >= fh && iw * upx + padx0 + padx1 >= fw && oh >= 1 && ow >= 1,
                "medsyn_cuda.upfirdn2d: the padded input is smaller than the filter");
    TORCH_CHECK(ih * iw < (1LL << 31) && oh * ow < (1LL << 31), "medsyn_cuda.upfirdn2d: image too large");
    at::Tensor y = at::empty({n, c, oh, ow}, x.options());
    if (y.numel() == 0) return y;
    UfdParams p{n * c, ih, iw, oh, ow, fh, fw, upx, upy, downx, downy, padx0, pady0};
    const int threads = 256;
    const int max_blocks = sm_count() * 16;
    const int blocks = (int)std::min<int64_t>((y.numel() + threads - 1) / threads, max_blocks);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "medsyn_cuda.upfirdn2d", [&] {
        using acc = at::opmath_type<scalar_t>;
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), w.const_data_ptr<acc>(), y.mutable_data_ptr<scalar_t>(), p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}

}  // namespace

at::Tensor medsyn_upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                                 int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                                 double gain) {
    TORCH_CHECK(x.is_cuda() && f.device() == x.device(), "medsyn_cuda.upfirdn2d: x and f must be on the same CUDA device");
    TORCH_CHECK(x.dim() == 4, "medsyn_cuda.upfirdn2d: x must be [N, C, H, W]");
    TORCH_CHECK((f.dim() == 1 || f.dim() == 2) && f.numel() > 0, "medsyn_cuda.upfirdn2d: f must be a 1D or 2D tensor");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "medsyn_cuda.upfirdn2d: up/down must be >= 1");
    const at::cuda::OptionalCUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous();
    const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    if (f.dim() == 2) {
        at::Tensor w = (flip ? f : f.flip({0, 1})).to(acc_dtype).mul(gain).contiguous();
        return upfirdn2d_pass(xc, w, (int)upx, (int)upy, (int)downx, (int)downy, (int)padx0, (int)padx1, (int)pady0, (int)pady1);
    }
    // Separable: horizontal pass (gain 1), then vertical pass (gain).
    at::Tensor w1 = (flip ? f : f.flip({0})).to(acc_dtype);
    at::Tensor t = upfirdn2d_pass(xc, w1.unsqueeze(0).contiguous(), (int)upx, 1, (int)downx, 1, (int)padx0, (int)padx1, 0, 0);
    return upfirdn2d_pass(t, w1.mul(gain).unsqueeze(1).contiguous(), 1, (int)upy, 1, (int)downy, 0, 0, (int)pady0, (int)pady1);
}

// medsyn: CPU kernel for bias_act, registered as torch.ops.medsyn_cpu.bias_act
//
// The reference runs bias add, activation, gain and clamp as separate passes (forward and backward),
// each allocating a temporary; this kernel does one pass. Parallelism: at::parallel_for (OpenMP).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "bias_act.h"

namespace {

//----------------------------------------------------------------------------------------------
// bias_act

// Which saved tensors the formula reads, known at compile time, so the loops have no per-element
// pointer tests (and compile to few, vectorizable versions). yref is also read for the clamp mask
// when clamp >= 0; when clamp < 0 its value is unused and any valid pointer will do.
template <int A, int G> constexpr bool reads_xref() { return G > 0 && A == medsyn::ACT_SWISH; }
template <int A, int G> constexpr bool reads_dy() { return G == 2; }
template <int A> constexpr bool has_2nd_grad() { return A >= medsyn::ACT_TANH; }

// linear / relu / lrelu, forward and first derivative, written for the vectorizer: the same values as
// medsyn::bias_act_elem, but max/min instead of ternaries on the data (gcc compiles `x > 0 ? x : alpha * x`
// to a branch that mispredicts on half of the elements: about 10x slower on AVX2) and no division by the gain
// (the sign of act's input is the sign of yref times the sign of the gain). The clamp propagates NaN as torch.clamp.
template <int A, int G> constexpr bool piecewise_linear() { return A <= medsyn::ACT_LRELU && G < 2; }

template <typename C, int A, int G>
inline C piecewise_linear_elem(C x, C bv, C yref, C alpha, C gain, C sg, C clamp, bool cm) {
    if constexpr (G == 0) {
        const C z = x + bv;
        C a = z;
        if constexpr (A == medsyn::ACT_RELU) a = std::max(z, C(0));
        if constexpr (A == medsyn::ACT_LRELU) a = std::max(z, C(0)) + alpha * std::min(z, C(0));
        C y = a * gain;
        if (cm) y = std::min(std::max(y, -clamp), clamp);
        return y;
    } else {
        C slope = C(1);
        if constexpr (A == medsyn::ACT_RELU) slope = sg * yref > C(0) ? C(1) : C(0);
        if constexpr (A == medsyn::ACT_LRELU) slope = sg * yref > C(0) ? C(1) : alpha;
        C g = x * gain * slope;
        if (cm) g = std::abs(yref) < clamp ? g : C(0);
        return g;
    }
}

// Apply the formula to a span of n elements; the bias is one value (VB=false) or a vector (VB=true).
// T is the storage type, C the compute type (float for bfloat16: load, compute in float, round once on store).
template <typename T, int A, int G, bool VB, typename C = at::opmath_type<T>>
void bias_act_span(const T* __restrict x, const T* __restrict b, const T* __restrict xr, const T* __restrict yr,
                   const T* __restrict dy, T* __restrict y, int64_t n, C alpha, C gain, C clamp) {
    const bool cm = clamp >= C(0);
    const C b0 = VB ? C(0) : C(b[0]);
    if constexpr (piecewise_linear<A, G>()) {
        const C sg = gain < C(0) ? C(-1) : C(1);
        for (int64_t j = 0; j < n; ++j) {
            const C bv = VB ? C(b[j]) : b0;
            const C yv = G > 0 ? C(yr[j]) : C(0);
            y[j] = T(piecewise_linear_elem<C, A, G>(C(x[j]), bv, yv, alpha, gain, sg, clamp, cm));
        }
        return;
    }
    for (int64_t j = 0; j < n; ++j) {
        const C bv = VB ? C(b[j]) : b0;
        const C xv = reads_xref<A, G>() ? C(xr[j]) : C(0);
        const C yv = G > 0 ? C(yr[j]) : C(0);
        const C dv = reads_dy<A, G>() ? C(dy[j]) : C(1);
        y[j] = T(medsyn::bias_act_elem<C, A, G>(C(x[j]), bv, xv, yv, dv, alpha, gain, clamp, cm));
    }
}

template <typename T, int A, int G, typename C = at::opmath_type<T>>
void bias_act_loop(const T* x, const T* b, const T* xr, const T* yr, const T* dy, T* y, int64_t N,
                   int64_t stepB, int64_t sizeB, C alpha, C gain, C clamp) {
    const T zero = T(0);
    // Stand-ins for tensors the formula does not read in this configuration (see reads_*).
    if (!xr) xr = x;
    if (!yr) yr = x;
    if (!dy) dy = x;
    at::parallel_for(0, N, 32768, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
        while (i < end) {
            int64_t stop;
            if (!b) {  // no bias: one span
                stop = end;
                bias_act_span<T, A, G, false>(x + i, &zero, xr + i, yr + i, dy + i, y + i, stop - i, alpha, gain, clamp);
            } else if (stepB == 1) {  // channels innermost (channels-last, [N, C]): bias is a vector
                const int64_t c = i % sizeB;
                stop = std::min(end, i + (sizeB - c));
                bias_act_span<T, A, G, true>(x + i, b + c, xr + i, yr + i, dy + i, y + i, stop - i, alpha, gain, clamp);
            } else {  // runs of stepB elements share one bias value
                const int64_t run = i / stepB;
                stop = std::min(end, (run + 1) * stepB);
                bias_act_span<T, A, G, false>(x + i, b + (run % sizeB), xr + i, yr + i, dy + i, y + i, stop - i,
                                              alpha, gain, clamp);
            }
            i = stop;
        }
    });
}

template <typename T, int A, typename C = at::opmath_type<T>>
void bias_act_grad_dispatch(int64_t grad, const T* x, const T* b, const T* xr, const T* yr, const T* dy, T* y,
                            int64_t N, int64_t stepB, int64_t sizeB, C alpha, C gain, C clamp) {
    if (grad == 0) bias_act_loop<T, A, 0>(x, b, xr, yr, dy, y, N, stepB, sizeB, alpha, gain, clamp);
    else if (grad == 1) bias_act_loop<T, A, 1>(x, b, xr, yr, dy, y, N, stepB, sizeB, alpha, gain, clamp);
    else if constexpr (has_2nd_grad<A>()) bias_act_loop<T, A, 2>(x, b, xr, yr, dy, y, N, stepB, sizeB, alpha, gain, clamp);
    else TORCH_CHECK(false, "medsyn_cpu.bias_act: activation ", A, " has a zero second derivative (grad=2 not needed)");
}

template <typename T, typename C = at::opmath_type<T>>
void bias_act_typed(int64_t act, int64_t grad, const T* x, const T* b, const T* xr, const T* yr, const T* dy, T* y,
                    int64_t N, int64_t stepB, int64_t sizeB, C a, C g, C c) {
#define MEDSYN_ACT_CASE(ID) case ID: bias_act_grad_dispatch<T, ID>(grad, x, b, xr, yr, dy, y, N, stepB, sizeB, a, g, c); break;
    switch (act) {
        MEDSYN_ACT_CASE(1) MEDSYN_ACT_CASE(2) MEDSYN_ACT_CASE(3) MEDSYN_ACT_CASE(4) MEDSYN_ACT_CASE(5)
        MEDSYN_ACT_CASE(6) MEDSYN_ACT_CASE(7) MEDSYN_ACT_CASE(8) MEDSYN_ACT_CASE(9)
        default: TORCH_CHECK(false, "medsyn_cpu.bias_act: unknown activation id ", act);
    }
#undef MEDSYN_ACT_CASE
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
    if (t.numel() == 0) return;
    TORCH_CHECK(t.device() == x.device() && t.dtype() == x.dtype(), name, " must have the device and dtype of x");
    TORCH_CHECK(t.sizes() == x.sizes() && t.strides() == x.strides(), name, " must have the shape and layout of x");
}

at::Tensor bias_act_cpu(const at::Tensor& x, const at::Tensor& b, const at::Tensor& xref, const at::Tensor& yref,
                        const at::Tensor& dy, int64_t grad, int64_t dim, int64_t act, double alpha, double gain,
                        double clamp) {
    TORCH_CHECK(x.device().is_cpu(), "medsyn_cpu.bias_act: x must be a CPU tensor");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "medsyn_cpu.bias_act: x must be dense (contiguous or channels-last)");
    TORCH_CHECK(b.numel() == 0 || (b.dim() == 1 && b.is_contiguous() && dim >= 0 && dim < x.dim() &&
                                   b.size(0) == x.size(dim) && b.dtype() == x.dtype()),
                "medsyn_cpu.bias_act: b must be a contiguous 1D tensor matching x.shape[dim]");
    TORCH_CHECK(grad >= 0 && grad <= 2 && act >= 1 && act <= 9, "medsyn_cpu.bias_act: bad grad/act id");
    check_like(xref, x, "xref"); check_like(yref, x, "yref"); check_like(dy, x, "dy");
    TORCH_CHECK(grad == 0 || clamp < 0 || yref.numel() > 0, "medsyn_cpu.bias_act: the gradient of a clamped op needs yref");
    TORCH_CHECK(grad == 0 || act == medsyn::ACT_LINEAR || act == medsyn::ACT_SWISH || yref.numel() > 0,
                "medsyn_cpu.bias_act: the gradient of this activation needs yref");
    TORCH_CHECK(grad == 0 || act != medsyn::ACT_SWISH || xref.numel() > 0, "medsyn_cpu.bias_act: the gradient of swish needs xref");
    TORCH_CHECK(grad < 2 || dy.numel() > 0, "medsyn_cpu.bias_act: the second derivative needs dy");
    at::Tensor y = at::empty_like(x);
    const int64_t N = x.numel();
    if (N == 0) return y;
    const int64_t stepB = b.numel() ? x.stride(dim) : 1;
    const int64_t sizeB = b.numel() ? x.size(dim) : 1;
    // float32 / float64, and bfloat16 (stored as bf16, computed in float: see bias_act_span)
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "medsyn_cpu.bias_act", [&] {
        using T = scalar_t;
        using C = at::opmath_type<T>;
        bias_act_typed<T>(act, grad, x.const_data_ptr<T>(), b.numel() ? b.const_data_ptr<T>() : nullptr,
                          xref.numel() ? xref.const_data_ptr<T>() : nullptr,
                          yref.numel() ? yref.const_data_ptr<T>() : nullptr,
                          dy.numel() ? dy.const_data_ptr<T>() : nullptr, y.mutable_data_ptr<T>(), N, stepB, sizeB,
                          C(alpha), C(gain), C(clamp));
    });
    return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medsyn_cpu, m) {
    m.def("bias_act(Tensor x, Tensor b, Tensor xref, Tensor yref, Tensor dy, int grad, int dim, int act, "
          "float alpha, float gain, float clamp) -> Tensor");
}

TORCH_LIBRARY_IMPL(medsyn_cpu, CPU, m) {
    m.impl("bias_act", &bias_act_cpu);
}

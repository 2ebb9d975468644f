// medsyn: argument checks of the modulation epilogue (demod_bias_act), shared by the CPU kernel
// (demod_bias_act_cpu.cpp) and the CUDA kernel (demod_bias_act.cu). Host code only.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "bias_act.h"

namespace medsyn {

// Shape of the activation: N samples, C channels, HW pixels per plane; `cl`: channels-last (NHWC) storage.
struct EpilogueShape { int64_t N, C, HW; bool cl; };

// x must be 4D, contiguous NCHW or channels-last (the device is the caller's check).
inline EpilogueShape epilogue_shape(const at::Tensor& x, const char* who) {
    TORCH_CHECK(x.dim() == 4, who, ": x must be 4D [N, C, H, W]");
    const bool cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK(x.is_contiguous() || cl, who, ": x must be contiguous or channels-last");
    return EpilogueShape{x.size(0), x.size(1), x.size(2) * x.size(3), cl};
}

// An optional argument (empty = not given) must be a contiguous tensor of `shape` with x's device and dtype.
inline void check_epilogue_arg(const at::Tensor& t, const at::Tensor& x, std::vector<int64_t> shape, const char* name, const char* who) {
    if (t.numel() == 0) return;
    TORCH_CHECK(t.device() == x.device() && t.dtype() == x.dtype(), who, ": ", name, " must have the device and dtype of x");
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape) && t.is_contiguous(), who, ": ", name, " must be a contiguous tensor of shape ",
                at::IntArrayRef(shape));
}

// Only activations whose second derivative is zero: their derivative is read from the output.
inline void check_epilogue_act(int64_t act, const char* who) {
    TORCH_CHECK(act == ACT_LINEAR || act == ACT_RELU || act == ACT_LRELU,
                who, ": only linear, relu and lrelu (zero second derivative) are supported, got activation id ", act);
}

// The backward's inputs: dy like y; x like y when d needs a gradient (and then d given); d, act as above.
inline void check_epilogue_grad_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& d, const at::Tensor& y,
                                     bool need_dd, int64_t act, const EpilogueShape& s, const char* who) {
    TORCH_CHECK(dy.sizes() == y.sizes() && dy.strides() == y.strides() && dy.dtype() == y.dtype() && dy.device() == y.device(),
                who, ": dy must have the shape, layout, dtype and device of y");
    TORCH_CHECK(!need_dd || (x.sizes() == y.sizes() && x.strides() == y.strides() && x.dtype() == y.dtype() && x.device() == y.device()),
                who, ": the gradient of d needs x with the shape, layout, dtype and device of y");
    TORCH_CHECK(!need_dd || d.numel() > 0, who, ": the gradient of d was asked for but d is not given");
    check_epilogue_arg(d, y, {s.N, s.C}, "d", who);
    check_epilogue_act(act, who);
}

// The four gradients (dx, dd, dnoise, db), allocated like y (empty where not asked for); for an empty y the asked-for sums
// are zeros, which the kernels then need not handle.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alloc_epilogue_grads(
        const at::Tensor& y, const EpilogueShape& s, bool need_dx, bool need_dd, bool need_dnoise, bool need_db) {
    auto opts = y.options();
    at::Tensor dx = need_dx ? at::empty_like(y) : at::empty({0}, opts);
    at::Tensor dd = need_dd ? at::empty({s.N, s.C}, opts) : at::empty({0}, opts);
    at::Tensor dn = need_dnoise ? at::empty({s.N, 1, y.size(2), y.size(3)}, opts) : at::empty({0}, opts);
    at::Tensor db = at::empty({need_db ? s.C : 0}, opts);
    if (y.numel() == 0) {
        if (need_dd) dd.zero_();
        if (need_dnoise) dn.zero_();
        if (need_db) db.zero_();
    }
    return {dx, dd, dn, db};
}

}  // namespace medsyn

// medsyn: CPU kernel for the modulation epilogue of a StyleGAN2 synthesis layer, registered as
// torch.ops.medsyn_cpu.demod_bias_act (forward) and torch.ops.medsyn_cpu.demod_bias_act_grad (backward).
//
//   forward:  y = clamp(gain * act(x * d[n,c] + noise[n,0,h,w] + b[c]), -clamp, clamp)
//   backward: g = dy * gain * act'(.) * [|y| < clamp]   (from the saved output y, see bias_act.h)
//             dx = g * d[n,c]      dd[n,c] = sum_hw g * x      dnoise[n,0,h,w] = sum_c g      db[c] = sum_nhw g
//
// d, noise and b are each optional (an empty tensor means "not given": d = 1, noise = 0, b = 0). Only
// activations whose derivative is a function of the output and whose second derivative is zero are
// supported here (linear, relu, lrelu): the backward then needs y but not the pre-activation, and the
// second-order gradient (medsyn.ops builds it from torch ops) has no act'' term.
//
// The reference (medsyn.ops.demod_bias_act_ref) makes 4-6 passes over the activation forward and as many
// backward, each allocating a temporary; this kernel makes one pass each way. Layouts: contiguous NCHW and
// channels-last NHWC. Storage float32 / float64 / bfloat16; bfloat16 is computed in float and rounded once
// on store, and all sums are accumulated in float (double for float64). The backward parallelises over
// samples and reduces db over samples in a fixed order, so it is deterministic for any thread count.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "bias_act.h"
#include "demod_bias_act.h"

namespace {

// The three activations, written for the vectorizer (no division, min/max for the clamp). Same values as
// medsyn::bias_act_elem (bias_act.h) for G = 0 and G = 1; the clamp propagates NaN as torch.clamp does.
template <typename C, int A>
inline C fwd_elem(C z, C alpha, C gain, C clamp, bool cm) {
    // max/min rather than a ternary on z: gcc turns `z > 0 ? z : alpha * z` into a branch here, which
    // mispredicts on half of the elements (measured 10x slower than the bandwidth bound on AVX2)
    C a = z;
    if (A == medsyn::ACT_RELU) a = std::max(z, C(0));
    if (A == medsyn::ACT_LRELU) a = std::max(z, C(0)) + alpha * std::min(z, C(0));
    C y = a * gain;
    if (cm) y = std::min(std::max(y, -clamp), clamp);
    return y;
}
// g = dy * gain * act'(z) * [|y| < clamp], with the sign of z read from the output y (sg = sign of the gain: y = gain *
// act(z) and act keeps the sign, so z > 0 iff sg * y > 0; a zero gain gives g = 0 either way).
template <typename C, int A>
inline C grad_elem(C dy, C y, C alpha, C gain, C sg, C clamp, bool cm) {
    C slope = C(1);
    if (A == medsyn::ACT_RELU) slope = sg * y > C(0) ? C(1) : C(0);
    if (A == medsyn::ACT_LRELU) slope = sg * y > C(0) ? C(1) : alpha;
    C g = dy * gain * slope;
    if (cm) g = std::abs(y) < clamp ? g : C(0);
    return g;
}

using Dims = medsyn::EpilogueShape;

Dims check_x(const at::Tensor& x, const char* who) {
    TORCH_CHECK(x.device().is_cpu(), who, ": x must be a CPU tensor");
    return medsyn::epilogue_shape(x, who);
}

//----------------------------------------------------------------------------------------------
// forward

template <typename T, int A, typename C = at::opmath_type<T>>
void fwd_typed(const T* x, const T* d, const T* nz, const T* b, T* y, Dims s, C alpha, C gain, C clamp) {
    const bool cm = clamp >= C(0);
    const int64_t N = s.N, Cc = s.C, HW = s.HW;
    if (!s.cl) {  // NCHW: one (n, c) plane per task, per-plane scalars d and b, noise a row over hw
        at::parallel_for(0, N * Cc, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)), [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t n = p / Cc, c = p % Cc;
                const C dv = d ? C(d[p]) : C(1), bv = b ? C(b[c]) : C(0);
                const T* __restrict xp = x + p * HW;
                T* __restrict yp = y + p * HW;
                if (nz) {
                    const T* __restrict np = nz + n * HW;
#pragma omp simd
                    for (int64_t j = 0; j < HW; ++j) yp[j] = T(fwd_elem<C, A>(C(xp[j]) * dv + C(np[j]) + bv, alpha, gain, clamp, cm));
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < HW; ++j) yp[j] = T(fwd_elem<C, A>(C(xp[j]) * dv + bv, alpha, gain, clamp, cm));
                }
            }
        });
    } else {  // NHWC: one pixel per task, noise a scalar, d[n, :] and b[:] vectors over c (as float, 1 / 0 when absent)
        at::parallel_for(0, N * HW, std::max<int64_t>(1, 16384 / std::max<int64_t>(Cc, 1)), [&](int64_t q0, int64_t q1) {
            std::vector<C> dvec(Cc, C(1)), bvec(Cc, C(0));
            if (b) for (int64_t c = 0; c < Cc; ++c) bvec[c] = C(b[c]);
            int64_t cur = -1;
            const C* __restrict dv = dvec.data();
            const C* __restrict bv = bvec.data();
            for (int64_t q = q0; q < q1; ++q) {
                const int64_t n = q / HW;
                if (d && n != cur) { for (int64_t c = 0; c < Cc; ++c) dvec[c] = C(d[n * Cc + c]); cur = n; }
                const C nv = nz ? C(nz[q]) : C(0);
                const T* __restrict xp = x + q * Cc;
                T* __restrict yp = y + q * Cc;
#pragma omp simd
                for (int64_t c = 0; c < Cc; ++c) yp[c] = T(fwd_elem<C, A>(C(xp[c]) * dv[c] + nv + bv[c], alpha, gain, clamp, cm));
            }
        });
    }
}

at::Tensor demod_bias_act_cpu(const at::Tensor& x, const at::Tensor& d, const at::Tensor& noise, const at::Tensor& b,
                              int64_t act, double alpha, double gain, double clamp) {
    const char* who = "medsyn_cpu.demod_bias_act";
    Dims s = check_x(x, who);
    medsyn::check_epilogue_arg(d, x, {s.N, s.C}, "d", who);
    medsyn::check_epilogue_arg(noise, x, {s.N, 1, x.size(2), x.size(3)}, "noise", who);
    medsyn::check_epilogue_arg(b, x, {s.C}, "b", who);
    medsyn::check_epilogue_act(act, who);
    at::Tensor y = at::empty_like(x);
    if (x.numel() == 0) return y;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "medsyn_cpu.demod_bias_act", [&] {
        using T = scalar_t;
        using C = at::opmath_type<T>;
        const T* dp = d.numel() ? d.const_data_ptr<T>() : nullptr;
        const T* np = noise.numel() ? noise.const_data_ptr<T>() : nullptr;
        const T* bp = b.numel() ? b.const_data_ptr<T>() : nullptr;
        T* yp = y.mutable_data_ptr<T>();
        if (act == medsyn::ACT_LINEAR) fwd_typed<T, medsyn::ACT_LINEAR>(x.const_data_ptr<T>(), dp, np, bp, yp, s, C(alpha), C(gain), C(clamp));
        else if (act == medsyn::ACT_RELU) fwd_typed<T, medsyn::ACT_RELU>(x.const_data_ptr<T>(), dp, np, bp, yp, s, C(alpha), C(gain), C(clamp));
        else fwd_typed<T, medsyn::ACT_LRELU>(x.const_data_ptr<T>(), dp, np, bp, yp, s, C(alpha), C(gain), C(clamp));
    });
    return y;
}

//----------------------------------------------------------------------------------------------
// backward: one pass over (dy, y[, x]) per sample; every output that is asked for in that pass

// One (n, c) plane of the NCHW backward; which outputs are written is known at compile time, so each variant is
// one vectorized loop (the sums are SIMD reductions: a fixed order for a given build, hence deterministic).
template <typename T, int A, bool DX, bool DD, bool DN, typename C>
inline void grad_plane(const T* __restrict dy, const T* __restrict x, const T* __restrict y, T* __restrict dx, C* __restrict acc,
                       int64_t HW, C dv, C alpha, C gain, C sg, C clamp, bool cm, C& sx_out, C& sb_out) {
    C sx = C(0), sb = C(0);
#pragma omp simd reduction(+ : sx, sb)
    for (int64_t j = 0; j < HW; ++j) {
        const C g = grad_elem<C, A>(C(dy[j]), C(y[j]), alpha, gain, sg, clamp, cm);
        if (DX) dx[j] = T(g * dv);
        if (DD) sx += g * C(x[j]);
        if (DN) acc[j] += g;
        sb += g;
    }
    sx_out = sx; sb_out = sb;
}

template <typename T, int A, bool DX, bool DD, bool DN, typename C = at::opmath_type<T>>
void grad_typed(const T* dy, const T* x, const T* d, const T* y, T* dx, T* dd, T* dn, C* dbn, Dims s,
                C alpha, C gain, C clamp) {
    const bool cm = clamp >= C(0);
    const C sg = gain < C(0) ? C(-1) : C(1);
    const int64_t N = s.N, Cc = s.C, HW = s.HW;
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
        std::vector<C> acc(DN && !s.cl ? HW : 0);   // dnoise row of one sample (NCHW: summed over planes)
        std::vector<C> ddv(s.cl ? Cc : 0), dbv(s.cl ? Cc : 0), dvec(s.cl ? Cc : 0);
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t off = n * Cc * HW;
            if (!s.cl) {
                std::fill(acc.begin(), acc.end(), C(0));
                for (int64_t c = 0; c < Cc; ++c) {
                    const int64_t p = off + c * HW;
                    const C dv = d ? C(d[n * Cc + c]) : C(1);
                    C sx, sb;
                    grad_plane<T, A, DX, DD, DN, C>(dy + p, DD ? x + p : nullptr, y + p, DX ? dx + p : nullptr, DN ? acc.data() : nullptr,
                                                    HW, dv, alpha, gain, sg, clamp, cm, sx, sb);
                    if (DD) dd[n * Cc + c] = T(sx);
                    dbn[n * Cc + c] = sb;
                }
                if (DN) for (int64_t j = 0; j < HW; ++j) dn[n * HW + j] = T(acc[j]);
            } else {
                std::fill(ddv.begin(), ddv.end(), C(0));
                std::fill(dbv.begin(), dbv.end(), C(0));
                for (int64_t c = 0; c < Cc; ++c) dvec[c] = d ? C(d[n * Cc + c]) : C(1);
                const C* __restrict dp = dvec.data();
                C* __restrict ddp = ddv.data();
                C* __restrict dbp = dbv.data();
                for (int64_t j = 0; j < HW; ++j) {
                    const int64_t p = off + j * Cc;
                    const T* __restrict dyp = dy + p;
                    const T* __restrict yp = y + p;
                    const T* __restrict xp = DD ? x + p : nullptr;
                    T* __restrict dxp = DX ? dx + p : nullptr;
                    C sn = C(0);
#pragma omp simd reduction(+ : sn)
                    for (int64_t c = 0; c < Cc; ++c) {
                        const C g = grad_elem<C, A>(C(dyp[c]), C(yp[c]), alpha, gain, sg, clamp, cm);
                        if (DX) dxp[c] = T(g * dp[c]);
                        if (DD) ddp[c] += g * C(xp[c]);
                        dbp[c] += g;
                        sn += g;
                    }
                    if (DN) dn[n * HW + j] = T(sn);
                }
                for (int64_t c = 0; c < Cc; ++c) {
                    if (DD) dd[n * Cc + c] = T(ddv[c]);
                    dbn[n * Cc + c] = dbv[c];
                }
            }
        }
    });
}

// Runtime flags -> template arguments.
template <typename T, int A, typename C = at::opmath_type<T>>
void grad_dispatch(bool ndx, bool ndd, bool ndn, const T* dy, const T* x, const T* d, const T* y, T* dx, T* dd, T* dn, C* dbn,
                   Dims s, C alpha, C gain, C clamp) {
    const int k = (ndx ? 4 : 0) | (ndd ? 2 : 0) | (ndn ? 1 : 0);
#define MEDSYN_K(K) case K: grad_typed<T, A, bool(K & 4), bool(K & 2), bool(K & 1)>(dy, x, d, y, dx, dd, dn, dbn, s, alpha, gain, clamp); break;
    switch (k) { MEDSYN_K(0) MEDSYN_K(1) MEDSYN_K(2) MEDSYN_K(3) MEDSYN_K(4) MEDSYN_K(5) MEDSYN_K(6) MEDSYN_K(7) }
#undef MEDSYN_K
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> demod_bias_act_grad_cpu(
        const at::Tensor& dy, const at::Tensor& x, const at::Tensor& d, const at::Tensor& y, bool need_dx, bool need_dd,
        bool need_dnoise, bool need_db, int64_t act, double alpha, double gain, double clamp) {
    const char* who = "medsyn_cpu.demod_bias_act_grad";
    Dims s = check_x(y, who);
    medsyn::check_epilogue_grad_args(dy, x, d, y, need_dd, act, s, who);
    at::Tensor dx, dd, dn, db;
    std::tie(dx, dd, dn, db) = medsyn::alloc_epilogue_grads(y, s, need_dx, need_dd, need_dnoise, need_db);
    if (y.numel() == 0) return {dx, dd, dn, db};
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "medsyn_cpu.demod_bias_act_grad", [&] {
        using T = scalar_t;
        using C = at::opmath_type<T>;
        std::vector<C> dbn(s.N * s.C);   // per-sample bias sums (always computed: one add per element)
        const T* dp = d.numel() ? d.const_data_ptr<T>() : nullptr;
        const T* xp = need_dd ? x.const_data_ptr<T>() : nullptr;
        T* dxp = need_dx ? dx.mutable_data_ptr<T>() : nullptr;
        T* ddp = need_dd ? dd.mutable_data_ptr<T>() : nullptr;
        T* dnp = need_dnoise ? dn.mutable_data_ptr<T>() : nullptr;
        const T* dyp = dy.const_data_ptr<T>();
        const T* yp = y.const_data_ptr<T>();
        if (act == medsyn::ACT_LINEAR)
            grad_dispatch<T, medsyn::ACT_LINEAR>(need_dx, need_dd, need_dnoise, dyp, xp, dp, yp, dxp, ddp, dnp, dbn.data(), s, C(alpha), C(gain), C(clamp));
        else if (act == medsyn::ACT_RELU)
            grad_dispatch<T, medsyn::ACT_RELU>(need_dx, need_dd, need_dnoise, dyp, xp, dp, yp, dxp, ddp, dnp, dbn.data(), s, C(alpha), C(gain), C(clamp));
        else
            grad_dispatch<T, medsyn::ACT_LRELU>(need_dx, need_dd, need_dnoise, dyp, xp, dp, yp, dxp, ddp, dnp, dbn.data(), s, C(alpha), C(gain), C(clamp));
        if (need_db) {  // fixed-order reduction over samples: deterministic
            T* out = db.mutable_data_ptr<T>();
            for (int64_t c = 0; c < s.C; ++c) {
                C t = C(0);
                for (int64_t n = 0; n < s.N; ++n) t += dbn[n * s.C + c];
                out[c] = T(t);
            }
        }
    });
    return {dx, dd, dn, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medsyn_cpu, m) {
    m.def("demod_bias_act(Tensor x, Tensor d, Tensor noise, Tensor b, int act, float alpha, float gain, float clamp) -> Tensor");
    m.def("demod_bias_act_grad(Tensor dy, Tensor x, Tensor d, Tensor y, bool need_dx, bool need_dd, bool need_dnoise, "
          "bool need_db, int act, float alpha, float gain, float clamp) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(medsyn_cpu, CPU, m) {
    m.impl("demod_bias_act", &demod_bias_act_cpu);
    m.impl("demod_bias_act_grad", &demod_bias_act_grad_cpu);
}

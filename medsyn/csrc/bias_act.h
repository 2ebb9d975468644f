// medsyn: fused bias + activation + gain + clamp, shared by the CPU and CUDA kernels.
//
// One elementwise formula evaluated in three modes (`G`):
//   G = 0  forward:             y  = clamp(gain * act(x + b))
//   G = 1  first derivative:    dx = dy * gain * act'(xref + b)          (x holds dy)
//   G = 2  second derivative:   dx = d_dx * dy * gain * act''(xref + b)  (x holds d_dx, dy the saved dy)
// For activations whose derivative is a function of the output, act' and act'' are computed from
// yy = yref / gain (the saved output divided by the gain); clamped
// outputs (|yref| >= clamp) pass no gradient.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define MEDSYN_HD __host__ __device__ __forceinline__
#else
#define MEDSYN_HD inline
#endif

namespace medsyn {

// Activation ids (must match medsyn.ops.activation_funcs[...].kernel_idx).
enum ActId { ACT_LINEAR = 1, ACT_RELU = 2, ACT_LRELU = 3, ACT_TANH = 4, ACT_SIGMOID = 5,
             ACT_ELU = 6, ACT_SELU = 7, ACT_SOFTPLUS = 8, ACT_SWISH = 9 };

#if defined(__CUDACC__)
template <typename T> MEDSYN_HD T m_exp(T v) { return exp(v); }
template <typename T> MEDSYN_HD T m_expm1(T v) { return expm1(v); }
template <typename T> MEDSYN_HD T m_log1p(T v) { return log1p(v); }
template <typename T> MEDSYN_HD T m_tanh(T v) { return tanh(v); }
#else
template <typename T> MEDSYN_HD T m_exp(T v) { return std::exp(v); }
template <typename T> MEDSYN_HD T m_expm1(T v) { return std::expm1(v); }
template <typename T> MEDSYN_HD T m_log1p(T v) { return std::log1p(v); }
template <typename T> MEDSYN_HD T m_tanh(T v) { return std::tanh(v); }
#endif
template <typename T> MEDSYN_HD T m_abs(T v) { return v < T(0) ? -v : v; }

// x: input (G=0), dy (G=1) or d_dx (G=2); bv: bias; xref/yref: saved forward input/output;
// dy: saved incoming gradient (G=2 only, else 1).
template <typename T, int A, int G>
MEDSYN_HD T bias_act_elem(T x, T bv, T xref, T yref, T dy, T alpha, T gain, T clamp, bool use_clamp_mask) {
    const T one = T(1), two = T(2);
    const T half_exp_range = T(40);
    const T selu_scale = T(1.0507009873554804934193349852946);
    const T selu_alpha = T(1.6732632423543772848170429916717);
    T yy = (gain != T(0)) ? yref / gain : T(0);
    T y = T(0);
    if (G == 0) x += bv; else xref += bv;

    if (A == ACT_LINEAR) { y = x; }
    if (A == ACT_RELU) {
        if (G == 0) y = (x > T(0)) ? x : T(0);
        if (G == 1) y = (yy > T(0)) ? x : T(0);
    }
    if (A == ACT_LRELU) {
        if (G == 0) y = (x > T(0)) ? x : x * alpha;
        if (G == 1) y = (yy > T(0)) ? x : x * alpha;
    }
    if (A == ACT_TANH) {
        if (G == 0) y = m_tanh(x);
        if (G == 1) y = x * (one - yy * yy);
        if (G == 2) y = x * (one - yy * yy) * (-two * yy);
    }
    if (A == ACT_SIGMOID) {
        if (G == 0) y = one / (one + m_exp(-x));
        if (G == 1) y = x * yy * (one - yy);
        if (G == 2) y = x * yy * (one - yy) * (one - two * yy);
    }
    if (A == ACT_ELU) {
        if (G == 0) y = (x > T(0)) ? x : m_expm1(x);
        if (G == 1) y = (yy >= T(0)) ? x : x * (yy + one);
        if (G == 2) y = (yy >= T(0)) ? T(0) : x * (yy + one);
    }
    if (A == ACT_SELU) {
        if (G == 0) y = (x > T(0)) ? selu_scale * x : (selu_scale * selu_alpha) * m_expm1(x);
        if (G == 1) y = (yy >= T(0)) ? x * selu_scale : x * (yy + selu_scale * selu_alpha);
        if (G == 2) y = (yy >= T(0)) ? T(0) : x * (yy + selu_scale * selu_alpha);
    }
    if (A == ACT_SOFTPLUS) {
        if (G == 0) y = (x > T(20)) ? x : m_log1p(m_exp(x));
        if (G == 1) y = x * (one - m_exp(-yy));
        if (G == 2) { T c = m_exp(-yy); y = x * c * (one - c); }
    }
    if (A == ACT_SWISH) {
        if (G == 0) y = x / (one + m_exp(-x));
        else {
            T c = m_exp(xref > half_exp_range ? T(0) : xref);
            T d = c + one;
            if (G == 1) y = (xref > half_exp_range) ? x : x * c * (xref + d) / (d * d);
            else        y = (xref > half_exp_range) ? T(0) : x * c * (xref * (two - d) + two * d) / (d * d * d);
        }
    }

    y *= gain * dy;
    if (use_clamp_mask) {  // clamp >= 0
        if (G == 0) y = (y > -clamp && y < clamp) ? y : ((y >= T(0)) ? clamp : -clamp);
        else        y = (m_abs(yref) < clamp) ? y : T(0);
    }
    return y;
}

}  // namespace medsyn

// medsyn: CPU kernel for upfirdn2d, registered as torch.ops.medsyn_cpu.upfirdn2d
//
// The reference inserts zeros, pads, runs a depthwise conv2d and throws away outputs; this kernel
// computes only the outputs that are kept, from only the filter taps that meet real input pixels
// (polyphase filtering), and filters rank-one 2D filters as two 1D passes.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {

//----------------------------------------------------------------------------------------------
// upfirdn2d
//
// Output pixel o of one dimension reads the zero-inserted, padded input at u0 + k (k < taps) where
// u0 = o * down - pad0, with correlation weight w[k]. Only k with (u0 + k) % up == 0 meet a real
// input pixel i = (u0 + k) / up. Outputs o = c + L*j (L = up / gcd(up, down)) share the same
// weights, and their input index advances by D = down / gcd(up, down) per step of j: each
// (phase c, tap k) pair is one strided multiply-add over a row.

inline int64_t floor_div(int64_t a, int64_t b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }
inline int64_t pos_mod(int64_t a, int64_t b) { int64_t r = a % b; return r < 0 ? r + b : r; }

template <typename T, int L, int D>
inline void strided_axpy(T* __restrict o, const T* __restrict p, T w, int64_t jlo, int64_t jhi, int64_t Ld, int64_t Dd) {
    const int64_t Lx = L > 0 ? L : Ld, Dx = D > 0 ? D : Dd;
    for (int64_t j = jlo; j < jhi; ++j) o[Lx * j] += w * p[Dx * j];
}

// out[0:ow] += polyphase filter of in[0:iw] with correlation weights w[0:fw] (scaled by s).
template <typename T>
void row_filter(const T* __restrict in, int64_t iw, T* __restrict out, int64_t ow, const T* w, int64_t fw,
                int64_t up, int64_t down, int64_t pad0, T s) {
    const int64_t g = std::gcd(up, down), L = up / g, D = down / g;
    for (int64_t c = 0; c < std::min(L, ow); ++c) {
        const int64_t u0 = c * down - pad0;
        const int64_t ph = pos_mod(-u0, up);
        const int64_t ix0 = (u0 + ph) / up;  // exact
        const int64_t nj = (ow - c + L - 1) / L;
        for (int64_t k = ph, t = 0; k < fw; k += up, ++t) {
            const int64_t ixb = ix0 + t;  // input index at j = 0
            const int64_t jlo = ixb >= 0 ? 0 : -floor_div(ixb, D);            // ceil(-ixb / D)
            const int64_t jhi = ixb <= iw - 1 ? std::min(nj, (iw - 1 - ixb) / D + 1) : 0;
            if (jlo >= jhi) continue;
            const T wk = w[k] * s;
            T* o = out + c;
            const T* p = in + ixb;
            if (L == 1 && D == 1) strided_axpy<T, 1, 1>(o, p, wk, jlo, jhi, 1, 1);
            else if (L == 2 && D == 1) strided_axpy<T, 2, 1>(o, p, wk, jlo, jhi, 2, 1);
            else if (L == 1 && D == 2) strided_axpy<T, 1, 2>(o, p, wk, jlo, jhi, 1, 2);
            else strided_axpy<T, 0, 0>(o, p, wk, jlo, jhi, L, D);
        }
    }
}

// The input rows (i) and correlation-weight indices (k) that output row o reads.
inline void col_taps(int64_t o, int64_t in_size, int64_t fsize, int64_t up, int64_t down, int64_t pad0,
                     std::vector<std::pair<int64_t, int64_t>>& taps) {
    taps.clear();
    const int64_t v0 = o * down - pad0;
    for (int64_t k = pos_mod(-v0, up); k < fsize; k += up) {
        const int64_t i = (v0 + k) / up;
        if (i >= 0 && i < in_size) taps.emplace_back(i, k);
    }
}

struct Ufd {
    int64_t upx, upy, downx, downy, px0, px1, py0, py1;
};

// Which input rows each output row reads (and with which weight index): the same for every plane,
// so it is worked out once per call. `needed[i]` marks the input rows some output row reads.
struct RowPlan {
    std::vector<std::vector<std::pair<int64_t, int64_t>>> taps;  // per output row: (input row, weight index)
    std::vector<int64_t> needed;                                 // input rows read by some output row
};

inline RowPlan plan_rows(int64_t oh, int64_t ih, int64_t fh, int64_t up, int64_t down, int64_t pad0) {
    RowPlan plan;
    plan.taps.resize((size_t)oh);
    std::vector<char> mark((size_t)ih, 0);
    for (int64_t oy = 0; oy < oh; ++oy) {
        col_taps(oy, ih, fh, up, down, pad0, plan.taps[(size_t)oy]);
        for (auto& t : plan.taps[(size_t)oy]) mark[(size_t)t.first] = 1;
    }
    for (int64_t iy = 0; iy < ih; ++iy)
        if (mark[(size_t)iy]) plan.needed.push_back(iy);
    return plan;
}

template <typename T>
void upfirdn2d_plane_2d(const T* in, int64_t iw, T* out, int64_t ow, const std::vector<T>& w, int64_t fw,
                        const Ufd& p, const RowPlan& plan) {
    for (size_t oy = 0; oy < plan.taps.size(); ++oy) {
        T* orow = out + (int64_t)oy * ow;
        std::fill(orow, orow + ow, T(0));
        for (auto& t : plan.taps[oy])
            row_filter<T>(in + t.first * iw, iw, orow, ow, w.data() + t.second * fw, fw, p.upx, p.downx, p.px0, T(1));
    }
}

// Separable filter: a horizontal pass into `tmp` (ih x ow, only the rows some output row reads),
// then a vertical pass of contiguous multiply-adds of whole rows.
template <typename T>
void upfirdn2d_plane_sep(const T* in, int64_t iw, T* out, int64_t ow, const std::vector<T>& wx,
                         const std::vector<T>& wy, const Ufd& p, const RowPlan& plan, T* tmp) {
    const int64_t fw = (int64_t)wx.size();
    for (int64_t iy : plan.needed) {
        T* trow = tmp + iy * ow;
        std::fill(trow, trow + ow, T(0));
        row_filter<T>(in + iy * iw, iw, trow, ow, wx.data(), fw, p.upx, p.downx, p.px0, T(1));
    }
    for (size_t oy = 0; oy < plan.taps.size(); ++oy) {
        T* __restrict orow = out + (int64_t)oy * ow;
        const auto& taps = plan.taps[oy];
        if (taps.empty()) { std::fill(orow, orow + ow, T(0)); continue; }
        {   // the first tap initializes the row: no separate zero-fill pass
            const T* __restrict trow = tmp + taps[0].first * ow;
            const T wk = wy[(size_t)taps[0].second];
            for (int64_t j = 0; j < ow; ++j) orow[j] = wk * trow[j];
        }
        for (size_t t = 1; t < taps.size(); ++t) {
            const T* __restrict trow = tmp + taps[t].first * ow;
            const T wk = wy[(size_t)taps[t].second];
            for (int64_t j = 0; j < ow; ++j) orow[j] += wk * trow[j];
        }
    }
}

// Factor a 2D correlation filter w = outer(wy, wx) when it is (numerically) rank one.
template <typename T>
bool factor_rank1(const std::vector<T>& w, int64_t fh, int64_t fw, std::vector<T>& wx, std::vector<T>& wy) {
    int64_t r = 0, c = 0; T best = T(0);
    for (int64_t i = 0; i < fh; ++i)
        for (int64_t j = 0; j < fw; ++j)
            if (std::abs(w[i * fw + j]) > best) { best = std::abs(w[i * fw + j]); r = i; c = j; }
    if (best == T(0)) return false;
    wx.assign(w.begin() + r * fw, w.begin() + (r + 1) * fw);
    wy.resize((size_t)fh);
    for (int64_t i = 0; i < fh; ++i) wy[(size_t)i] = w[i * fw + c] / w[r * fw + c];
    const double tol = (sizeof(T) == 4 ? 1e-6 : 1e-13) * (double)best;
    for (int64_t i = 0; i < fh; ++i)
        for (int64_t j = 0; j < fw; ++j)
            if (std::abs((double)wy[(size_t)i] * (double)wx[(size_t)j] - (double)w[i * fw + j]) > tol) return false;
    return true;
}

at::Tensor upfirdn2d_cpu(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                         double gain) {
    TORCH_CHECK(x.device().is_cpu() && f.device().is_cpu(), "medsyn_cpu.upfirdn2d: x and f must be CPU tensors");
    TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "medsyn_cpu.upfirdn2d: x must be a contiguous [N, C, H, W] tensor");
    TORCH_CHECK((f.dim() == 1 || f.dim() == 2) && f.is_contiguous() && f.dtype() == x.dtype() && f.numel() > 0,
                "medsyn_cpu.upfirdn2d: f must be a contiguous 1D or 2D tensor of x's dtype");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "medsyn_cpu.upfirdn2d: up/down must be >= 1");
    const bool separable_input = f.dim() == 1;
    const int64_t fw = f.size(-1), fh = f.size(0);
    const int64_t n = x.size(0), ch = x.size(1), ih = x.size(2), iw = x.size(3);
    const int64_t oh = (ih * upy + pady0 + pady1 - fh) / downy + 1;
    const int64_t ow = (iw * upx + padx0 + padx1 - fw) / downx + 1;
    TORCH_CHECK(ih * upy + pady0 + pady1 >= fh && iw * upx + padx0 + padx1 >= fw && oh >= 1 && ow >= 1,
                "medsyn_cpu.upfirdn2d: the padded input is smaller than the filter");
    at::Tensor y = at::empty({n, ch, oh, ow}, x.options());
    if (y.numel() == 0) return y;
    const Ufd p{upx, upy, downx, downy, padx0, padx1, pady0, pady1};
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "medsyn_cpu.upfirdn2d", [&] {
        using T = scalar_t;
        const T* pf = f.const_data_ptr<T>();
        const T g = T(gain);
        // Correlation weights: a true convolution flips the filter, flip_filter=True does not.
        std::vector<T> w, wx, wy;
        bool sep;
        if (separable_input) {
            wx.resize((size_t)fw); wy.resize((size_t)fh);
            for (int64_t k = 0; k < fw; ++k) wx[(size_t)k] = pf[flip ? k : fw - 1 - k] * g;
            for (int64_t k = 0; k < fh; ++k) wy[(size_t)k] = pf[flip ? k : fh - 1 - k];
            sep = true;
        } else {
            w.resize((size_t)(fh * fw));
            for (int64_t i = 0; i < fh; ++i)
                for (int64_t j = 0; j < fw; ++j)
                    w[(size_t)(i * fw + j)] = pf[(flip ? i : fh - 1 - i) * fw + (flip ? j : fw - 1 - j)] * g;
            sep = fh > 1 && fw > 1 && factor_rank1<T>(w, fh, fw, wx, wy);
        }
        const T* px = x.const_data_ptr<T>();
        T* py = y.mutable_data_ptr<T>();
        const int64_t planes = n * ch, in_plane = ih * iw, out_plane = oh * ow;
        const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, out_plane + in_plane));
        const RowPlan plan = plan_rows(oh, ih, fh, upy, downy, pady0);   // wy has fh taps too
        at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
            std::vector<T> tmp(sep ? (size_t)(ih * ow) : 0);   // one scratch plane per chunk, not per plane
            for (int64_t q = begin; q < end; ++q) {
                if (sep) upfirdn2d_plane_sep<T>(px + q * in_plane, iw, py + q * out_plane, ow, wx, wy, p, plan, tmp.data());
                else upfirdn2d_plane_2d<T>(px + q * in_plane, iw, py + q * out_plane, ow, w, fw, p, plan);
            }
        });
    });
    return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medsyn_cpu, m) {
    m.def("upfirdn2d(Tensor x, Tensor f, int upx, int upy, int downx, int downy, int padx0, int padx1, "
          "int pady0, int pady1, bool flip, float gain) -> Tensor");
}

TORCH_LIBRARY_IMPL(medsyn_cpu, CPU, m) {
    m.impl("upfirdn2d", &upfirdn2d_cpu);
}

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
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <type_traits>
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

// I: input type (the tensor's, or the float scratch), A: accumulation type (float for bfloat16).
template <typename A, typename I, int L, int D>
inline void strided_axpy(A* __restrict o, const I* __restrict p, A w, int64_t jlo, int64_t jhi, int64_t Ld, int64_t Dd) {
    const int64_t Lx = L > 0 ? L : Ld, Dx = D > 0 ? D : Dd;
    for (int64_t j = jlo; j < jhi; ++j) o[Lx * j] += w * A(p[Dx * j]);
}

// out[0:ow] += polyphase filter of in[0:iw] with correlation weights w[0:fw] (scaled by s).
template <typename A, typename I>
void row_filter(const I* __restrict in, int64_t iw, A* __restrict out, int64_t ow, const A* w, int64_t fw,
                int64_t up, int64_t down, int64_t pad0, A s) {
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
            const A wk = w[k] * s;
            A* o = out + c;
            const I* p = in + ixb;
            if (L == 1 && D == 1) strided_axpy<A, I, 1, 1>(o, p, wk, jlo, jhi, 1, 1);
            else if (L == 2 && D == 1) strided_axpy<A, I, 2, 1>(o, p, wk, jlo, jhi, 2, 1);
            else if (L == 1 && D == 2) strided_axpy<A, I, 1, 2>(o, p, wk, jlo, jhi, 1, 2);
            else strided_axpy<A, I, 0, 0>(o, p, wk, jlo, jhi, L, D);
        }
    }
}

// Store a row of accumulators (rounding once when T is narrower than A).
template <typename T, typename A>
inline void store_row(const A* __restrict acc, T* __restrict out, int64_t n) {
    for (int64_t j = 0; j < n; ++j) out[j] = T(acc[j]);
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

// Scratch buffers of one worker (reused over its planes), in the accumulation type.
template <typename A>
struct Scratch {
    std::vector<A> tmp, row, pad, q, r;
};

template <typename T, typename A>
void upfirdn2d_plane_2d(const T* in, int64_t iw, T* out, int64_t ow, const std::vector<A>& w, int64_t fw,
                        const Ufd& p, const RowPlan& plan, Scratch<A>& sc) {
    constexpr bool same = std::is_same<T, A>::value;
    if (!same) sc.row.resize((size_t)ow);
    for (size_t oy = 0; oy < plan.taps.size(); ++oy) {
        T* orow = out + (int64_t)oy * ow;
        A* acc = same ? reinterpret_cast<A*>(orow) : sc.row.data();
        std::fill(acc, acc + ow, A(0));
        for (auto& t : plan.taps[oy])
            row_filter<A, T>(in + t.first * iw, iw, acc, ow, w.data() + t.second * fw, fw, p.upx, p.downx, p.px0, A(1));
        if (!same) store_row<T, A>(acc, orow, ow);
    }
}

// Separable filter: a horizontal pass into `tmp` (ih x ow, only the rows some output row reads),
// then a vertical pass of contiguous multiply-adds of whole rows.
template <typename T, typename A>
void upfirdn2d_plane_sep(const T* in, int64_t iw, T* out, int64_t ow, const std::vector<A>& wx,
                         const std::vector<A>& wy, const Ufd& p, const RowPlan& plan, Scratch<A>& sc) {
    constexpr bool same = std::is_same<T, A>::value;
    const int64_t fw = (int64_t)wx.size();
    A* tmp = sc.tmp.data();
    if (!same) sc.row.resize((size_t)ow);
    for (int64_t iy : plan.needed) {
        A* trow = tmp + iy * ow;
        std::fill(trow, trow + ow, A(0));
        row_filter<A, T>(in + iy * iw, iw, trow, ow, wx.data(), fw, p.upx, p.downx, p.px0, A(1));
    }
    for (size_t oy = 0; oy < plan.taps.size(); ++oy) {
        T* orow_t = out + (int64_t)oy * ow;
        A* __restrict orow = same ? reinterpret_cast<A*>(orow_t) : sc.row.data();
        const auto& taps = plan.taps[oy];
        if (taps.empty()) { std::fill(orow_t, orow_t + ow, T(0)); continue; }
        {   // the first tap initializes the row: no separate zero-fill pass
            const A* __restrict trow = tmp + taps[0].first * ow;
            const A wk = wy[(size_t)taps[0].second];
            for (int64_t j = 0; j < ow; ++j) orow[j] = wk * trow[j];
        }
        for (size_t t = 1; t < taps.size(); ++t) {
            const A* __restrict trow = tmp + taps[t].first * ow;
            const A wk = wy[(size_t)taps[t].second];
            for (int64_t j = 0; j < ow; ++j) orow[j] += wk * trow[j];
        }
        if (!same) store_row<T, A>(orow, orow_t, ow);
    }
}

// out[0:n] = sum_k w[k] * in[k * stride : k * stride + n]: one long contiguous multiply-add per tap.
template <typename A>
inline void taps_axpy(const A* __restrict in, A* __restrict out, int64_t n, const A* w, int64_t taps, int64_t stride) {
    {
        const A w0 = w[0];
        for (int64_t i = 0; i < n; ++i) out[i] = w0 * in[i];
    }
    for (int64_t k = 1; k < taps; ++k) {
        const A wk = w[k];
        const A* __restrict src = in + k * stride;
        for (int64_t i = 0; i < n; ++i) out[i] += wk * src[i];
    }
}

// up = down = 1 with a separable filter (filter2d and its gradient): pad the plane once into a
// (ph x pw) buffer, then filter the flattened buffer, horizontally (tap stride 1) and vertically
// (tap stride pw), each tap one long contiguous loop over the whole plane. Rows of the flattened
// result are pw long; their last fw - 1 entries straddle two rows and are dropped.
template <typename T, typename A>
void upfirdn2d_plane_sep_flat(const T* in, int64_t ih, int64_t iw, T* out, int64_t oh, int64_t ow,
                              const std::vector<A>& wx, const std::vector<A>& wy, const Ufd& p, Scratch<A>& sc) {
    const int64_t fw = (int64_t)wx.size(), fh = (int64_t)wy.size();
    const int64_t pw = iw + p.px0 + p.px1, ph = ih + p.py0 + p.py1;
    A* pad = sc.pad.data();
    for (int64_t y = 0; y < ph; ++y) {
        const int64_t sy = y - p.py0;
        A* prow = pad + y * pw;
        if (sy < 0 || sy >= ih) { std::fill(prow, prow + pw, A(0)); continue; }
        const T* irow = in + sy * iw;
        const int64_t x0 = std::max<int64_t>(0, p.px0), x1 = std::min<int64_t>(pw, iw + p.px0);  // columns holding input
        std::fill(prow, prow + x0, A(0));
        const int64_t off = x0 - p.px0;
        for (int64_t x = x0; x < x1; ++x) prow[x] = A(irow[off + x - x0]);
        std::fill(prow + x1, prow + pw, A(0));
    }
    const int64_t nq = ph * pw - (fw - 1);           // horizontal pass: Q[i] = sum_k wx[k] pad[i + k]
    taps_axpy<A>(pad, sc.q.data(), nq, wx.data(), fw, 1);
    const int64_t nr = (oh - 1) * pw + ow;           // vertical pass: R[i] = sum_t wy[t] Q[i + t pw]
    taps_axpy<A>(sc.q.data(), sc.r.data(), nr, wy.data(), fh, pw);
    for (int64_t oy = 0; oy < oh; ++oy) store_row<T, A>(sc.r.data() + oy * pw, out + oy * ow, ow);
}

// Factor a 2D correlation filter w = outer(wy, wx) when it is (numerically) rank one.
template <typename T>
bool factor_rank1(const std::vector<T>& w, int64_t fh, int64_t fw, std::vector<T>& wx, std::vector<T>& wy) {
    static_assert(std::is_floating_point<T>::value, "factor_rank1 works on the accumulation type");
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
    TORCH_CHECK((f.dim() == 1 || f.dim() == 2) && f.is_contiguous() && f.numel() > 0 &&
                    (f.dtype() == x.dtype() || f.scalar_type() == at::kFloat),
                "medsyn_cpu.upfirdn2d: f must be a contiguous 1D or 2D tensor of x's dtype (or float32)");
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
    // float32 / float64, and bfloat16 (read and written as bf16, filtered with float accumulators)
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "medsyn_cpu.upfirdn2d", [&] {
        using T = scalar_t;
        using A = at::opmath_type<T>;
        const at::Tensor fa = f.to(c10::CppTypeToScalarType<A>::value).contiguous();
        const A* pf = fa.const_data_ptr<A>();
        const A g = A(gain);
        // Correlation weights: a true convolution flips the filter, flip_filter=True does not.
        std::vector<A> w, wx, wy;
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
            sep = fh > 1 && fw > 1 && factor_rank1<A>(w, fh, fw, wx, wy);
        }
        const bool flat = sep && upx == 1 && upy == 1 && downx == 1 && downy == 1;   // filter2d: see upfirdn2d_plane_sep_flat
        const T* px = x.const_data_ptr<T>();
        T* py = y.mutable_data_ptr<T>();
        const int64_t planes = n * ch, in_plane = ih * iw, out_plane = oh * ow;
        const int64_t pw = iw + padx0 + padx1, ph = ih + pady0 + pady1;
        const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, out_plane + in_plane));
        const RowPlan plan = flat ? RowPlan{} : plan_rows(oh, ih, fh, upy, downy, pady0);   // wy has fh taps too
        at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
            Scratch<A> sc;   // one set of scratch buffers per chunk, not per plane
            if (flat) { sc.pad.resize((size_t)(ph * pw)); sc.q.resize((size_t)(ph * pw)); sc.r.resize((size_t)(oh * pw)); }
            else if (sep) sc.tmp.resize((size_t)(ih * ow));
            for (int64_t q = begin; q < end; ++q) {
                const T* pin = px + q * in_plane;
                T* pout = py + q * out_plane;
                if (flat) upfirdn2d_plane_sep_flat<T, A>(pin, ih, iw, pout, oh, ow, wx, wy, p, sc);
                else if (sep) upfirdn2d_plane_sep<T, A>(pin, iw, pout, ow, wx, wy, p, plan, sc);
                else upfirdn2d_plane_2d<T, A>(pin, iw, pout, ow, w, fw, p, plan, sc);
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

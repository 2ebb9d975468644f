// medsyn: registration of the CUDA kernels as torch.ops.medsyn_cuda.* (kernels in bias_act.cu, upfirdn2d.cu,
// demod_bias_act.cu). Same schemas and semantics as the CPU kernels in bias_act_cpu.cpp / upfirdn2d_cpu.cpp /
// demod_bias_act_cpu.cpp.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

at::Tensor medsyn_bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& xref, const at::Tensor& yref,
                                const at::Tensor& dy, int64_t grad, int64_t dim, int64_t act, double alpha, double gain,
                                double clamp);
at::Tensor medsyn_upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                                 int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                                 double gain);
at::Tensor medsyn_demod_bias_act_cuda(const at::Tensor& x, const at::Tensor& d, const at::Tensor& noise, const at::Tensor& b,
                                      int64_t act, double alpha, double gain, double clamp);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> medsyn_demod_bias_act_grad_cuda(
        const at::Tensor& dy, const at::Tensor& x, const at::Tensor& d, const at::Tensor& y, bool need_dx, bool need_dd,
        bool need_dnoise, bool need_db, int64_t act, double alpha, double gain, double clamp);

TORCH_LIBRARY(medsyn_cuda, m) {
    m.def("bias_act(Tensor x, Tensor b, Tensor xref, Tensor yref, Tensor dy, int grad, int dim, int act, "
          "float alpha, float gain, float clamp) -> Tensor");
    m.def("upfirdn2d(Tensor x, Tensor f, int upx, int upy, int downx, int downy, int padx0, int padx1, "
          "int pady0, int pady1, bool flip, float gain) -> Tensor");
    m.def("demod_bias_act(Tensor x, Tensor d, Tensor noise, Tensor b, int act, float alpha, float gain, float clamp) -> Tensor");
    m.def("demod_bias_act_grad(Tensor dy, Tensor x, Tensor d, Tensor y, bool need_dx, bool need_dd, bool need_dnoise, "
          "bool need_db, int act, float alpha, float gain, float clamp) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(medsyn_cuda, CUDA, m) {
    m.impl("bias_act", &medsyn_bias_act_cuda);
    m.impl("upfirdn2d", &medsyn_upfirdn2d_cuda);
    m.impl("demod_bias_act", &medsyn_demod_bias_act_cuda);
    m.impl("demod_bias_act_grad", &medsyn_demod_bias_act_grad_cuda);
}

// The torch ops puffctl::gelu and puffctl::gelu_backward (CPU, float32): the exact GELU x * Phi(x)
// and its derivative Phi(x) + x phi(x), computed from one exponential per element with the
// Abramowitz-Stegun 7.1.26 erf (absolute error below 1.5e-7, float32's own rounding) so the
// compiler turns each loop into whole AVX vectors. torch's own backward kernel took three times
// as long as its forward: the MLP policy's GELU was a fifth of its training phase on CPU.
// Built with -fno-trapping-math -fno-math-errno (puffctl/build.py): without them gcc keeps the
// clamp and the sign select as branches and vectorizes nothing (fastmath.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstdint>

#include "fastmath.h"

namespace puff {
namespace {

constexpr int64_t kGrain = 16384;

struct CdfPdf {
    float cdf, pdf;  // Phi(x) and phi(x) of the standard normal
};

inline CdfPdf cdf_pdf(float x) {
    const float z = (x < 0.0f ? -x : x) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float e = exp_nonpositive(-z * z);
    const float tail =
        t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f)))) * e;
    const float erf = x < 0.0f ? tail - 1.0f : 1.0f - tail;
    return {0.5f * (1.0f + erf), e * 0.39894228040143268f};
}

void forward_range(const float* __restrict__ x, float* __restrict__ y, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = x[i] * cdf_pdf(x[i]).cdf;
}

void backward_range(const float* __restrict__ grad, const float* __restrict__ x, float* __restrict__ out,
                    int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
        const CdfPdf c = cdf_pdf(x[i]);
        out[i] = grad[i] * (c.cdf + x[i] * c.pdf);
    }
}

void check(const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat, "puffctl.gelu: ", name,
                      " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

at::Tensor gelu(const at::Tensor& x) {
    check(x, "x");
    const at::Tensor xc = x.contiguous();
    at::Tensor y = at::empty_like(xc);
    const float* in = xc.const_data_ptr<float>();
    float* out = y.data_ptr<float>();
    at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) { forward_range(in, out, begin, end); });
    return y;
}

at::Tensor gelu_backward(const at::Tensor& grad, const at::Tensor& x) {
    check(grad, "grad");
    check(x, "x");
    TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), "puffctl.gelu_backward: grad ", grad.sizes(), " and x ", x.sizes(),
                      " differ in shape");
    const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
    at::Tensor out = at::empty_like(xc);
    const float* g = gc.const_data_ptr<float>();
    const float* in = xc.const_data_ptr<float>();
    float* o = out.data_ptr<float>();
    at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) { backward_range(g, in, o, begin, end); });
    return out;
}

}  // namespace
}  // namespace puff

TORCH_LIBRARY_FRAGMENT(puffctl, m) {
    m.def("gelu(Tensor x) -> Tensor");
    m.def("gelu_backward(Tensor grad, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(puffctl, CPU, m) {
    m.impl("gelu", &puff::gelu);
    m.impl("gelu_backward", &puff::gelu_backward);
}

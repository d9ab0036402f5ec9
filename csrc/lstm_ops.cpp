// The torch ops puffctl::lstm_forward and puffctl::lstm_backward (CPU, float32): one LSTM layer
// (torch's gate order i, f, g, o) over a time-major segment [T, B, I], for training. The work is
// GEMMs plus one fused elementwise pass per step: the input projections of every step in one GEMM,
// one [B, H] x [H, 4H] GEMM per step, and after the backward loop the weight and input gradients
// in three GEMMs over all steps. oneDNN's LSTM (what nn.LSTM runs on CPU) took about 1.5x the
// GEMMs' own time forward and backward at B 256, T 64, H 128; its elementwise work is the rest.
// Built with -fno-trapping-math -fno-math-errno (puffctl/build.py): the gate loops vectorize.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "fastmath.h"

namespace puff {
namespace {

constexpr int64_t kRowGrain = 64;  // batch rows per task of the elementwise passes

void check(const at::Tensor& t, const char* name, int64_t dim) {
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat, "puffctl.lstm: ", name,
                      " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
    TORCH_CHECK_VALUE(t.dim() == dim, "puffctl.lstm: ", name, " must have ", dim, " dimensions, got ", t.sizes());
}

// One step's gates for rows [begin, end): `gates` holds the pre-activations on entry and the
// activated i, f, g, o on exit; writes the new cell and hidden state.
void step_forward(float* __restrict__ gates, const float* __restrict__ c_prev, float* __restrict__ c,
                  float* __restrict__ h, int64_t H, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
        float* g = gates + b * 4 * H;
        const float* cp = c_prev + b * H;
        float* cb = c + b * H;
        float* hb = h + b * H;
        for (int64_t j = 0; j < H; ++j) {
            const float i = fast_sigmoid(g[j]), f = fast_sigmoid(g[H + j]);
            const float gg = fast_tanh(g[2 * H + j]), o = fast_sigmoid(g[3 * H + j]);
            const float cell = f * cp[j] + i * gg;
            g[j] = i;
            g[H + j] = f;
            g[2 * H + j] = gg;
            g[3 * H + j] = o;
            cb[j] = cell;
            hb[j] = o * fast_tanh(cell);
        }
    }
}

// One step back for rows [begin, end): from dh (the gradient reaching h_t, dout included) and dc
// (reaching c_t from later steps), the gate pre-activation gradients; dc becomes c_{t-1}'s.
void step_backward(const float* __restrict__ gates, const float* __restrict__ c_prev, const float* __restrict__ c,
                   const float* __restrict__ dh, float* __restrict__ dc, float* __restrict__ dgates, int64_t H,
                   int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
        const float* g = gates + b * 4 * H;
        float* dg = dgates + b * 4 * H;
        for (int64_t j = 0; j < H; ++j) {
            const float i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
            const float tc = fast_tanh(c[b * H + j]);
            const float dhv = dh[b * H + j];
            const float dcv = dc[b * H + j] + dhv * o * (1.0f - tc * tc);
            dg[j] = dcv * gg * i * (1.0f - i);
            dg[H + j] = dcv * c_prev[b * H + j] * f * (1.0f - f);
            dg[2 * H + j] = dcv * i * (1.0f - gg * gg);
            dg[3 * H + j] = dhv * tc * o * (1.0f - o);
            dc[b * H + j] = dcv * f;
        }
    }
}

// -> (out [T, B, H], cells [T, B, H], gates [T, B, 4H] activated): what the backward needs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0,
                                                            const at::Tensor& c0, const at::Tensor& w_ih,
                                                            const at::Tensor& w_hh, const at::Tensor& bias) {
    check(x, "x", 3);
    check(h0, "h0", 2);
    check(c0, "c0", 2);
    check(w_ih, "w_ih", 2);
    check(w_hh, "w_hh", 2);
    check(bias, "bias", 1);
    const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
    TORCH_CHECK_VALUE(w_ih.size(0) == 4 * H && w_ih.size(1) == I && w_hh.size(0) == 4 * H && bias.size(0) == 4 * H &&
                          h0.size(0) == B && h0.size(1) == H && c0.sizes() == h0.sizes(),
                      "puffctl.lstm: shapes disagree: x ", x.sizes(), ", h0 ", h0.sizes(), ", c0 ", c0.sizes(),
                      ", w_ih ", w_ih.sizes(), ", w_hh ", w_hh.sizes(), ", bias ", bias.sizes());
    const at::Tensor h_first = h0.contiguous(), c_first = c0.contiguous();
    at::Tensor gates = at::addmm(bias, x.reshape({T * B, I}), w_ih.t()).view({T, B, 4 * H});
    at::Tensor out = at::empty({T, B, H}, x.options()), cells = at::empty({T, B, H}, x.options());
    const at::Tensor w_hh_t = w_hh.t();
    for (int64_t t = 0; t < T; ++t) {
        at::Tensor g = gates[t];
        g.addmm_(t == 0 ? h_first : out[t - 1], w_hh_t);
        float* gp = g.data_ptr<float>();
        const float* cp = (t == 0 ? c_first : cells[t - 1]).const_data_ptr<float>();
        float* cn = cells[t].data_ptr<float>();
        float* hn = out[t].data_ptr<float>();
        at::parallel_for(0, B, kRowGrain, [&](int64_t begin, int64_t end) { step_forward(gp, cp, cn, hn, H, begin, end); });
    }
    return {out, cells, gates};
}

// -> (dx, dh0, dc0, dw_ih, dw_hh, dbias) from the gradient of `out`.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& out, const at::Tensor& cells, const at::Tensor& gates) {
    check(dout, "dout", 3);
    const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
    TORCH_CHECK_VALUE(dout.sizes() == out.sizes(), "puffctl.lstm_backward: dout ", dout.sizes(), " and out ",
                      out.sizes(), " differ in shape");
    const at::Tensor d_out = dout.contiguous(), c_first = c0.contiguous();
    at::Tensor dgates = at::empty({T, B, 4 * H}, x.options());
    at::Tensor dh = at::zeros({B, H}, x.options()), dc = at::zeros({B, H}, x.options());
    for (int64_t t = T - 1; t >= 0; --t) {
        dh.add_(d_out[t]);
        const float* gp = gates[t].const_data_ptr<float>();
        const float* cp = (t == 0 ? c_first : cells[t - 1]).const_data_ptr<float>();
        const float* cn = cells[t].const_data_ptr<float>();
        const float* dhp = dh.const_data_ptr<float>();
        float* dcp = dc.data_ptr<float>();
        float* dgp = dgates[t].data_ptr<float>();
        at::parallel_for(0, B, kRowGrain,
                         [&](int64_t begin, int64_t end) { step_backward(gp, cp, cn, dhp, dcp, dgp, H, begin, end); });
        at::mm_out(dh, dgates[t], w_hh);
    }
    const at::Tensor flat = dgates.view({T * B, 4 * H});
    at::Tensor dx = at::mm(flat, w_ih).view({T, B, I});
    at::Tensor dw_ih = at::mm(flat.t(), x.reshape({T * B, I}));
    at::Tensor dw_hh = at::mm(dgates[0].t(), h0.contiguous());
    if (T > 1) dw_hh.addmm_(dgates.slice(0, 1).reshape({(T - 1) * B, 4 * H}).t(), out.slice(0, 0, T - 1).reshape({(T - 1) * B, H}));
    return {dx, dh, dc, dw_ih, dw_hh, flat.sum(0)};
}

}  // namespace
}  // namespace puff

TORCH_LIBRARY_FRAGMENT(puffctl, m) {
    m.def("lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor bias) -> (Tensor, Tensor, Tensor)");
    m.def("lstm_backward(Tensor dout, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor out, "
          "Tensor cells, Tensor gates) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(puffctl, CPU, m) {
    m.impl("lstm_forward", &puff::lstm_forward);
    m.impl("lstm_backward", &puff::lstm_backward);
}

// The torch ops puffctl::gae, puffctl::puff_advantage and puffctl::vtrace: input checks,
// contiguity, and dispatch to the CPU or CUDA kernel. Outputs are preallocated by the caller.
#include "advantage.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace puff {
namespace {

using OptTensor = std::optional<at::Tensor>;

void check_matrix(const char* op, const char* name, const at::Tensor& t, const at::Tensor& values) {
    TORCH_CHECK_VALUE(t.dim() == 2, "puffctl.", op, ": ", name, " must be 2-D [rows, horizon], got shape ",
                      t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "puffctl.", op, ": ", name, " must be float32, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.sizes() == values.sizes(), "puffctl.", op, ": ", name, " has shape ", t.sizes(),
                      " but values has shape ", values.sizes());
    TORCH_CHECK_VALUE(t.device() == values.device(), "puffctl.", op, ": ", name, " is on ", t.device(),
                      " but values is on ", values.device());
}

void check_row_vector(const char* op, const char* name, const at::Tensor& t, const at::Tensor& values) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == values.size(0), "puffctl.", op, ": ", name,
                      " must be 1-D [rows] = [", values.size(0), "], got shape ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "puffctl.", op, ": ", name, " must be float32, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == values.device(), "puffctl.", op, ": ", name, " is on ", t.device(),
                      " but values is on ", values.device());
}

// Holds contiguous copies of whatever the caller passed as a strided view, so the kernels
// only ever see dense rows, and writes results back into non-contiguous outputs at the end.
struct Call {
    const char* op;
    Problem pb{};
    std::vector<at::Tensor> keep;  // contiguous inputs, alive until the kernel is done
    std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (caller's output, dense result)

    const float* input(const at::Tensor& t) {
        keep.push_back(t.contiguous());
        return keep.back().data_ptr<float>();
    }

    float* output(const char* name, const at::Tensor& out, const at::Tensor& values) {
        check_matrix(op, name, out, values);
        for (const at::Tensor& in : keep) at::assert_no_overlap(out, in);
        if (out.is_contiguous()) return out.data_ptr<float>();
        at::Tensor dense = at::empty_like(out, at::MemoryFormat::Contiguous);
        write_back.emplace_back(out, dense);
        return dense.data_ptr<float>();
    }
};

Call prepare(const char* op, Estimator estimator, const at::Tensor& values, const at::Tensor& rewards,
             const at::Tensor& dones, const OptTensor& importance, const OptTensor& bootstrap_rewards,
             const OptTensor& bootstrap_values, const OptTensor& bootstrap_dones, Params params) {
    check_matrix(op, "values", values, values);
    check_matrix(op, "rewards", rewards, values);
    check_matrix(op, "dones", dones, values);
    TORCH_CHECK_VALUE(values.size(1) >= 1, "puffctl.", op, ": horizon (values.shape[1]) must be at least 1");
    if (importance) check_matrix(op, "importance", *importance, values);
    const int given = int(bootstrap_rewards.has_value()) + int(bootstrap_values.has_value()) +
                      int(bootstrap_dones.has_value());
    TORCH_CHECK_VALUE(given == 0 || given == 3, "puffctl.", op,
                      ": pass bootstrap_rewards, bootstrap_values and bootstrap_dones together, or none");
    if (given == 3) {
        check_row_vector(op, "bootstrap_rewards", *bootstrap_rewards, values);
        check_row_vector(op, "bootstrap_values", *bootstrap_values, values);
        check_row_vector(op, "bootstrap_dones", *bootstrap_dones, values);
    }

    Call call{op};
    Problem& pb = call.pb;
    pb.rows = values.size(0);
    pb.horizon = values.size(1);
    pb.estimator = estimator;
    pb.params = params;
    pb.values = call.input(values);
    pb.rewards = call.input(rewards);
    pb.dones = call.input(dones);
    pb.importance = importance ? call.input(*importance) : nullptr;
    if (given == 3) {
        pb.bootstrap_rewards = call.input(*bootstrap_rewards);
        pb.bootstrap_values = call.input(*bootstrap_values);
        pb.bootstrap_dones = call.input(*bootstrap_dones);
    }
    return call;
}

void run(Call& call, const at::Tensor& values) {
    if (values.is_cuda()) {
#ifdef PUFFCTL_WITH_CUDA
        // Device-generic guard and stream: this file needs no CUDA headers, so it compiles (and is
        // tested) against CPU builds of torch too.
        const c10::DeviceGuard guard(values.device());
        void* stream = c10::impl::VirtualGuardImpl(values.device().type()).getStream(values.device()).native_handle();
        const int err = launch_cuda(call.pb, stream);
        TORCH_CHECK(err == 0, "puffctl.", call.op, ": CUDA launch failed: ", cuda_error_string(err));
#else
        TORCH_CHECK(false, "puffctl.", call.op, ": this build has no CUDA kernels (run `puffctl build`)");
#endif
    } else {
        run_cpu(call.pb);
    }
    for (auto& [out, dense] : call.write_back) out.copy_(dense);
}

void gae(const at::Tensor& values, const at::Tensor& rewards, const at::Tensor& dones, double gamma,
         double gae_lambda, const at::Tensor& advantages, const OptTensor& bootstrap_rewards,
         const OptTensor& bootstrap_values, const OptTensor& bootstrap_dones) {
    const Params params{float(gamma), float(gae_lambda), 1.0f, 1.0f};
    Call call = prepare("gae", Estimator::GAE, values, rewards, dones, std::nullopt, bootstrap_rewards,
                        bootstrap_values, bootstrap_dones, params);
    call.pb.out = call.output("advantages", advantages, values);
    run(call, values);
}

void puff_advantage(const at::Tensor& values, const at::Tensor& rewards, const at::Tensor& dones,
                    const OptTensor& importance, double gamma, double gae_lambda, double rho_clip,
                    double c_clip, const at::Tensor& advantages, const OptTensor& bootstrap_rewards,
                    const OptTensor& bootstrap_values, const OptTensor& bootstrap_dones) {
    const Params params{float(gamma), float(gae_lambda), float(rho_clip), float(c_clip)};
    Call call = prepare("puff_advantage", Estimator::PUFF, values, rewards, dones, importance,
                        bootstrap_rewards, bootstrap_values, bootstrap_dones, params);
    call.pb.out = call.output("advantages", advantages, values);
    run(call, values);
}

void vtrace(const at::Tensor& values, const at::Tensor& rewards, const at::Tensor& dones,
            const OptTensor& importance, double gamma, double rho_clip, double c_clip, const at::Tensor& vs,
            const at::Tensor& pg_advantages, const OptTensor& bootstrap_rewards,
            const OptTensor& bootstrap_values, const OptTensor& bootstrap_dones) {
    const Params params{float(gamma), 1.0f, float(rho_clip), float(c_clip)};
    Call call = prepare("vtrace", Estimator::VTRACE, values, rewards, dones, importance, bootstrap_rewards,
                        bootstrap_values, bootstrap_dones, params);
    call.pb.out = call.output("vs", vs, values);
    call.pb.out_pg = call.output("pg_advantages", pg_advantages, values);
    at::assert_no_overlap(vs, pg_advantages);
    run(call, values);
}

}  // namespace
}  // namespace puff

TORCH_LIBRARY(puffctl, m) {
    m.def("gae(Tensor values, Tensor rewards, Tensor dones, float gamma, float gae_lambda, "
          "Tensor(a!) advantages, Tensor? bootstrap_rewards=None, Tensor? bootstrap_values=None, "
          "Tensor? bootstrap_dones=None) -> ()");
    m.def("puff_advantage(Tensor values, Tensor rewards, Tensor dones, Tensor? importance, float gamma, "
          "float gae_lambda, float rho_clip, float c_clip, Tensor(a!) advantages, "
          "Tensor? bootstrap_rewards=None, Tensor? bootstrap_values=None, Tensor? bootstrap_dones=None) -> ()");
    m.def("vtrace(Tensor values, Tensor rewards, Tensor dones, Tensor? importance, float gamma, "
          "float rho_clip, float c_clip, Tensor(a!) vs, Tensor(b!) pg_advantages, "
          "Tensor? bootstrap_rewards=None, Tensor? bootstrap_values=None, Tensor? bootstrap_dones=None) -> ()");
}

TORCH_LIBRARY_IMPL(puffctl, CPU, m) {
    m.impl("gae", &puff::gae);
    m.impl("puff_advantage", &puff::puff_advantage);
    m.impl("vtrace", &puff::vtrace);
}

#ifdef PUFFCTL_WITH_CUDA
TORCH_LIBRARY_IMPL(puffctl, CUDA, m) {
    m.impl("gae", &puff::gae);
    m.impl("puff_advantage", &puff::puff_advantage);
    m.impl("vtrace", &puff::vtrace);
}
#endif

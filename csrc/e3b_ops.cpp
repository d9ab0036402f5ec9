// The torch op puffctl::e3b_step: input checks and dispatch to the CPU or CUDA kernel. C_inv (packed,
// e3b.h) and the bonus are updated in place, so they must be contiguous; phi and first may be any layout.
#include "e3b.h"

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

namespace puff {
namespace {

void check(bool ok, const at::Tensor& t, const char* name, const char* want) {
    TORCH_CHECK_VALUE(ok, "puffctl.e3b_step: ", name, " must be ", want, ", got shape ", t.sizes(), " ",
                      t.scalar_type(), " on ", t.device());
}

void e3b_step(const at::Tensor& c_inv, const at::Tensor& phi, const at::Tensor& first, double ridge, double decay,
              bool reset, const at::Tensor& bonus) {
    check(phi.dim() == 2 && (phi.scalar_type() == at::kFloat || phi.scalar_type() == at::kDouble), phi, "phi",
          "float32 or float64 [envs, dim]");
    const int64_t envs = phi.size(0), dim = phi.size(1);
    const auto same = [&](const at::Tensor& t) { return t.device() == phi.device(); };
    check(c_inv.dim() == 2 && c_inv.size(0) == envs && c_inv.size(1) == packed_size(dim) &&
              c_inv.is_contiguous() && c_inv.scalar_type() == phi.scalar_type() && same(c_inv),
          c_inv, "c_inv", "a contiguous tiled upper triangle [envs, packed_size(dim)] of phi's dtype and device");
    check(first.dim() == 1 && first.size(0) == envs && first.scalar_type() == at::kBool && same(first), first,
          "first", "bool [envs] on phi's device");
    check(bonus.dim() == 1 && bonus.size(0) == envs && bonus.is_contiguous() &&
              bonus.scalar_type() == phi.scalar_type() && same(bonus),
          bonus, "bonus", "a contiguous [envs] of phi's dtype and device");
    TORCH_CHECK_VALUE(ridge > 0 && decay > 0 && decay <= 1, "puffctl.e3b_step: need ridge > 0 and decay in (0, 1]");
    at::assert_no_overlap(c_inv, bonus);
    const at::Tensor phi_c = phi.contiguous(), first_c = first.contiguous();
    AT_DISPATCH_FLOATING_TYPES(c_inv.scalar_type(), "puffctl.e3b_step", [&] {
        E3BProblem<scalar_t> pb{envs,
                                dim,
                                c_inv.data_ptr<scalar_t>(),
                                phi_c.data_ptr<scalar_t>(),
                                first_c.data_ptr<bool>(),
                                bonus.data_ptr<scalar_t>(),
                                scalar_t(1.0 / ridge),
                                scalar_t(decay),
                                reset};
        if (c_inv.is_cuda()) {
#ifdef PUFFCTL_WITH_CUDA
            TORCH_CHECK_VALUE(2 * tiles_per_side(dim) * kTile * int64_t(sizeof(scalar_t)) <= 48 * 1024,
                              "puffctl.e3b_step: dim ", dim, " is too wide for the CUDA kernel's shared memory");
            const c10::DeviceGuard guard(c_inv.device());
            void* stream =
                c10::impl::VirtualGuardImpl(c_inv.device().type()).getStream(c_inv.device()).native_handle();
            const int err = launch_e3b_cuda(pb, stream);
            TORCH_CHECK(err == 0, "puffctl.e3b_step: CUDA launch failed: ", cuda_error_string(err));
#else
            TORCH_CHECK(false, "puffctl.e3b_step: this build has no CUDA kernels (run `puffctl build`)");
#endif
        } else {
            e3b_cpu(pb);
        }
    });
}

}  // namespace
}  // namespace puff

TORCH_LIBRARY_FRAGMENT(puffctl, m) {
    m.def("e3b_step(Tensor(a!) c_inv, Tensor phi, Tensor first, float ridge, float decay, bool reset, "
          "Tensor(b!) bonus) -> ()");
}

TORCH_LIBRARY_IMPL(puffctl, CPU, m) { m.impl("e3b_step", &puff::e3b_step); }

#ifdef PUFFCTL_WITH_CUDA
TORCH_LIBRARY_IMPL(puffctl, CUDA, m) { m.impl("e3b_step", &puff::e3b_step); }
#endif

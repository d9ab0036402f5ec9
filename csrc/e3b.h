// E3B's per-env step (DOMAIN.md section 4), fused: for each env, optionally reset C_inv to I/ridge,
// then u = C_inv phi, b = phi . u, and the Sherman-Morrison update of (d C + phi phi^T)^-1:
//   C_inv <- C_inv / d - u u^T / (d (d + b))     (d = the decay, 1 without one)
// in one pass over the env's H x H matrix right after the matvec, while it is still in cache.
// C_inv is symmetric, so row j of C_inv is its column j: the matvec reads rows (u += C[j,:] phi[j]).
//
// This header has no torch dependency so nvcc can compile the CUDA kernel against any torch.
#pragma once

#include <cstdint>

namespace puff {

// One call's tensors as raw pointers, all contiguous: c_inv [envs, dim, dim], phi [envs, dim],
// first [envs] (bool), bonus [envs] (out). T is float or double.
template <class T>
struct E3BProblem {
    int64_t envs;
    int64_t dim;
    T* c_inv;
    const T* phi;
    const bool* first;
    T* bonus;     // b, or 0 where `first`: an episode's first observation earns nothing
    T inv_ridge;  // the reset value of C_inv's diagonal
    T decay;      // d; 1 for the per-episode reset variant
    bool reset;   // reset C_inv where `first` (the decay variant never resets)
};

// Backends. Both expect a validated problem; launch_e3b_cuda returns a cudaError_t as int.
template <class T>
void e3b_cpu(const E3BProblem<T>& pb);
template <class T>
int launch_e3b_cuda(const E3BProblem<T>& pb, void* stream);
const char* cuda_error_string(int error);

}  // namespace puff

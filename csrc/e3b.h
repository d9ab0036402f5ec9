// E3B's per-env step (DOMAIN.md section 4), fused: for each env, optionally reset C_inv to I/ridge,
// then u = C_inv phi, b = phi . u, and the Sherman-Morrison update of (d C + phi phi^T)^-1:
//   C_inv <- C_inv / d - u u^T / (d (d + b))     (d = the decay, 1 without one)
// in one pass over the env's matrix right after the matvec, while it is still in cache.
//
// C_inv is symmetric, so each env keeps only its upper triangle, row after row (torch.triu_indices
// order): row i holds C[i, i..H-1] and starts at packed_row(i, H). That halves the memory the step
// streams through, which is what bounds it on a CPU (64 KB per env at H = 128 in float32 -> 33 KB).
// The update writes s * (u_i u_j) at (i, j), the one number both triangles would get.
//
// This header has no torch dependency so nvcc can compile the CUDA kernel against any torch.
#pragma once

#include <cstdint>

namespace puff {

#if defined(__CUDACC__)
#define PUFF_E3B_HD __host__ __device__ __forceinline__
#else
#define PUFF_E3B_HD inline
#endif

// Where row i of a packed upper triangle of a dim x dim matrix starts.
PUFF_E3B_HD int64_t packed_row(int64_t i, int64_t dim) { return i * dim - i * (i - 1) / 2; }

// One call's tensors as raw pointers, all contiguous: c_inv [envs, dim (dim + 1) / 2] (packed), phi [envs, dim],
// first [envs] (bool), bonus [envs] (out). T is float or double.
template <class T>
struct E3BProblem {
    int64_t envs;
    int64_t dim;
    T* c_inv;     // packed upper triangles
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

// E3B's per-env step (DOMAIN.md section 4), fused: for each env, optionally reset C_inv to I/ridge,
// then u = C_inv phi, b = phi . u, and the Sherman-Morrison update of (d C + phi phi^T)^-1:
//   C_inv <- C_inv / d - u u^T / (d (d + b))     (d = the decay, 1 without one)
// in one pass over the env's matrix right after the matvec, while it is still in cache.
//
// C_inv is symmetric, so each env keeps only the tiles on and above the diagonal: the matrix,
// padded with zeros to a multiple of kTile, is cut into kTile x kTile tiles (I, J), I <= J, stored
// row of tiles after row of tiles (tile_index), each tile row-major; diagonal tiles are whole.
// That about halves the memory the step streams through (what bounds it on a CPU: 64 KB per env
// at H = 128 in float32 -> 34 KB), and every inner loop is one fixed-length tile row: no remainders.
// The padding stays exactly zero (zero rows, zero columns, zero phi). The update writes
// s * (u_i u_j) at (i, j), the one number both triangles would get.
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

constexpr int64_t kTile = 8;

// Tiles per side of a dim x dim matrix, and where tile (I, J), I <= J, starts among an env's tiles.
PUFF_E3B_HD int64_t tiles_per_side(int64_t dim) { return (dim + kTile - 1) / kTile; }
PUFF_E3B_HD int64_t tile_index(int64_t I, int64_t J, int64_t n) { return I * n - I * (I - 1) / 2 + (J - I); }
// Where C[i, i] sits among an env's tiles.
PUFF_E3B_HD int64_t diagonal_slot(int64_t i, int64_t n) {
    return tile_index(i / kTile, i / kTile, n) * kTile * kTile + (i % kTile) * (kTile + 1);
}
// Floats (or doubles) per env: every stored tile.
PUFF_E3B_HD int64_t packed_size(int64_t dim) {
    const int64_t n = tiles_per_side(dim);
    return n * (n + 1) / 2 * kTile * kTile;
}

// One call's tensors as raw pointers, all contiguous: c_inv [envs, packed_size(dim)] (tiled), phi [envs, dim],
// first [envs] (bool), bonus [envs] (out). T is float or double.
template <class T>
struct E3BProblem {
    int64_t envs;
    int64_t dim;
    T* c_inv;     // tiled upper triangles
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

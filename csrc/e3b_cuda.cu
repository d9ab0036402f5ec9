// CUDA kernel: one block per env, a warp per stored tile: the matvec (u in shared memory), the
// block's sum b = phi . u, then the update tile by tile.
// No torch headers here, so this file compiles with nvcc against any torch build.
#include "e3b.h"

#include <cuda_runtime.h>

namespace puff {
namespace {

constexpr int kThreads = 128;

template <class T>
__device__ T warp_sum(T value) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    return value;
}

template <class T>
__device__ T block_sum(T value) {
    __shared__ T warp_sums[kThreads / 32];
    value = warp_sum(value);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = value;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    return total;
}

// Tile t of an env's stored tiles as its (I, J).
__device__ void tile_at(int64_t t, int64_t n, int64_t& I, int64_t& J) {
    I = 0;
    while (t >= n - I) t -= n - I++;
    J = I + t;
}

template <class T>
__global__ void e3b_kernel(E3BProblem<T> pb) {
    extern __shared__ unsigned char shared[];
    const int64_t H = pb.dim, n = tiles_per_side(H), Hp = n * kTile, tiles = n * (n + 1) / 2;
    T* phi = reinterpret_cast<T*>(shared);
    T* u = phi + Hp;
    const int64_t env = blockIdx.x;
    T* c = pb.c_inv + env * packed_size(H);
    const bool first = pb.first[env];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t i = threadIdx.x; i < Hp; i += kThreads) {
        phi[i] = i < H ? pb.phi[env * H + i] : T(0);
        u[i] = T(0);
    }
    if (first && pb.reset) {
        for (int64_t k = threadIdx.x; k < packed_size(H); k += kThreads) c[k] = T(0);
        __syncthreads();
        for (int64_t i = threadIdx.x; i < H; i += kThreads) c[diagonal_slot(i, n)] = pb.inv_ridge;
    }
    __syncthreads();
    // A warp per tile (I, J): C[I, J] phi[J] into u[I] and, for the tile (J, I) below the
    // diagonal, C[I, J]^T phi[I] into u[J] (shared-memory atomics).
    for (int64_t t = warp; t < tiles; t += kThreads / 32) {
        int64_t I, J;
        tile_at(t, n, I, J);
        const T* tile = c + t * kTile * kTile;
        for (int64_t e = lane; e < kTile * kTile; e += 32) {
            const int64_t r = e / kTile, q = e % kTile;
            const T v = tile[e];
            atomicAdd(&u[I * kTile + r], v * phi[J * kTile + q]);
            if (J > I) atomicAdd(&u[J * kTile + q], v * phi[I * kTile + r]);
        }
    }
    __syncthreads();
    T partial = 0;
    for (int64_t i = threadIdx.x; i < Hp; i += kThreads) partial += phi[i] * u[i];
    const T b = block_sum(partial);
    const T d = pb.decay;
    const T inv_d = T(1) / d;
    const T s = T(1) / (d * (d + b));
    for (int64_t t = warp; t < tiles; t += kThreads / 32) {
        int64_t I, J;
        tile_at(t, n, I, J);
        T* tile = c + t * kTile * kTile;
        for (int64_t e = lane; e < kTile * kTile; e += 32) {
            tile[e] = tile[e] * inv_d - s * (u[I * kTile + e / kTile] * u[J * kTile + e % kTile]);
        }
    }
    if (threadIdx.x == 0) pb.bonus[env] = first ? T(0) : b;
}

}  // namespace

template <class T>
int launch_e3b_cuda(const E3BProblem<T>& pb, void* stream) {
    if (pb.envs == 0) return static_cast<int>(cudaSuccess);
    const size_t shared = 2 * tiles_per_side(pb.dim) * kTile * sizeof(T);
    e3b_kernel<T><<<static_cast<unsigned>(pb.envs), kThreads, shared, static_cast<cudaStream_t>(stream)>>>(pb);
    return static_cast<int>(cudaGetLastError());
}

template int launch_e3b_cuda<float>(const E3BProblem<float>&, void*);
template int launch_e3b_cuda<double>(const E3BProblem<double>&, void*);

}  // namespace puff

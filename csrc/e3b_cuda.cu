// CUDA kernel: one block per env, a warp per packed row: the matvec (u in shared memory), the
// block's sum b = phi . u, then the update along the same rows.
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

template <class T>
__global__ void e3b_kernel(E3BProblem<T> pb) {
    extern __shared__ unsigned char shared[];
    const int64_t H = pb.dim;
    T* phi = reinterpret_cast<T*>(shared);
    T* u = phi + H;
    const int64_t env = blockIdx.x;
    T* c = pb.c_inv + env * packed_row(H, H);
    const bool first = pb.first[env];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t i = threadIdx.x; i < H; i += kThreads) {
        phi[i] = pb.phi[env * H + i];
        u[i] = T(0);
    }
    if (first && pb.reset) {
        for (int64_t k = threadIdx.x; k < packed_row(H, H); k += kThreads) c[k] = T(0);
        __syncthreads();
        for (int64_t i = threadIdx.x; i < H; i += kThreads) c[packed_row(i, H)] = pb.inv_ridge;
    }
    __syncthreads();
    // A warp per packed row i (coalesced along the row): its dot with phi[i..] goes to u[i], and
    // C[i, j] phi[i] to u[j] for j > i, the lower triangle's share.
    for (int64_t i = warp; i < H; i += kThreads / 32) {
        const T* row = c + packed_row(i, H);
        const T p = phi[i];
        T dot = 0;
        for (int64_t k = lane; k < H - i; k += 32) {
            dot += row[k] * phi[i + k];
            if (k > 0) atomicAdd(&u[i + k], row[k] * p);
        }
        dot = warp_sum(dot);
        if (lane == 0) atomicAdd(&u[i], dot);
    }
    __syncthreads();
    T partial = 0;
    for (int64_t i = threadIdx.x; i < H; i += kThreads) partial += phi[i] * u[i];
    const T b = block_sum(partial);
    const T d = pb.decay;
    const T inv_d = T(1) / d;
    const T s = T(1) / (d * (d + b));
    for (int64_t i = warp; i < H; i += kThreads / 32) {
        T* row = c + packed_row(i, H);
        const T ui = u[i];
        for (int64_t k = lane; k < H - i; k += 32) row[k] = row[k] * inv_d - s * (ui * u[i + k]);
    }
    if (threadIdx.x == 0) pb.bonus[env] = first ? T(0) : b;
}

}  // namespace

template <class T>
int launch_e3b_cuda(const E3BProblem<T>& pb, void* stream) {
    if (pb.envs == 0) return static_cast<int>(cudaSuccess);
    const size_t shared = 2 * pb.dim * sizeof(T);
    e3b_kernel<T><<<static_cast<unsigned>(pb.envs), kThreads, shared, static_cast<cudaStream_t>(stream)>>>(pb);
    return static_cast<int>(cudaGetLastError());
}

template int launch_e3b_cuda<float>(const E3BProblem<float>&, void*);
template int launch_e3b_cuda<double>(const E3BProblem<double>&, void*);

}  // namespace puff

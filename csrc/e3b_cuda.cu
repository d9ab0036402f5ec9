// CUDA kernel: one block per env. Thread i computes u[i] as C's column i (coalesced across the
// warp), the block reduces b = phi . u, then the threads sweep the matrix in order for the update.
// No torch headers here, so this file compiles with nvcc against any torch build.
#include "e3b.h"

#include <cuda_runtime.h>

namespace puff {
namespace {

constexpr int kThreads = 128;

template <class T>
__device__ T block_sum(T value) {
    __shared__ T warp_sums[kThreads / 32];
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
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
    T* c = pb.c_inv + env * H * H;
    const bool first = pb.first[env];
    for (int64_t i = threadIdx.x; i < H; i += kThreads) phi[i] = pb.phi[env * H + i];
    if (first && pb.reset) {
        for (int64_t k = threadIdx.x; k < H * H; k += kThreads) c[k] = (k / H == k % H) ? pb.inv_ridge : T(0);
    }
    __syncthreads();
    T partial = 0;
    for (int64_t i = threadIdx.x; i < H; i += kThreads) {
        T acc = 0;
        for (int64_t j = 0; j < H; ++j) acc += c[j * H + i] * phi[j];
        u[i] = acc;
        partial += phi[i] * acc;
    }
    const T b = block_sum(partial);  // its __syncthreads also publishes u
    const T d = pb.decay;
    const T inv_d = T(1) / d;
    const T s = T(1) / (d * (d + b));
    for (int64_t k = threadIdx.x; k < H * H; k += kThreads) {
        const int64_t i = k / H;
        c[k] = c[k] * inv_d - s * (u[i] * u[k - i * H]);
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

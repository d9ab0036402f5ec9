// CUDA kernel: one thread per row, the per-row scan of advantage.h. No torch headers here, so
// this file compiles with nvcc against any torch build (the tests compile it on CPU machines).
#include "advantage.h"

#include <cuda_runtime.h>

namespace puff {

template <Estimator E>
__global__ void advantage_kernel(Problem pb) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (row >= pb.rows) return;  // minibatches often have fewer rows than a block
    scan_row<E>(pb, row);
}

int launch_cuda(const Problem& pb, void* stream) {
    if (pb.rows == 0) return static_cast<int>(cudaSuccess);
    constexpr int kThreads = 128;
    const unsigned blocks = static_cast<unsigned>((pb.rows + kThreads - 1) / kThreads);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (pb.estimator) {
        case Estimator::GAE: advantage_kernel<Estimator::GAE><<<blocks, kThreads, 0, s>>>(pb); break;
        case Estimator::PUFF: advantage_kernel<Estimator::PUFF><<<blocks, kThreads, 0, s>>>(pb); break;
        case Estimator::VTRACE: advantage_kernel<Estimator::VTRACE><<<blocks, kThreads, 0, s>>>(pb); break;
    }
    return static_cast<int>(cudaGetLastError());
}

const char* cuda_error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

}  // namespace puff

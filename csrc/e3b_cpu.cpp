// CPU kernel: envs in parallel (at::parallel_for); per env, the matvec pulls the H x H matrix
// into cache (64 KB at H = 128 in float32, well inside L2) and the update pass rewrites it there.
// Every inner loop runs along a contiguous row, so the compiler vectorises it.
#include "e3b.h"

#include <ATen/Parallel.h>

#include <vector>

namespace puff {
namespace {

template <class T>
void step_env(const E3BProblem<T>& pb, int64_t env, T* u) {
    const int64_t H = pb.dim;
    T* c = pb.c_inv + env * H * H;
    const T* phi = pb.phi + env * H;
    const bool first = pb.first[env];
    if (first && pb.reset) {
        for (int64_t i = 0; i < H; ++i) {
            T* row = c + i * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) row[j] = T(0);
            row[i] = pb.inv_ridge;
        }
    }
    // u = C phi, as a sum of C's rows (= its columns: C is symmetric) weighted by phi.
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) u[i] = T(0);
    for (int64_t j = 0; j < H; ++j) {
        const T* row = c + j * H;
        const T p = phi[j];
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) u[i] += row[i] * p;
    }
    T b = 0;
#pragma omp simd reduction(+ : b)
    for (int64_t i = 0; i < H; ++i) b += phi[i] * u[i];
    const T d = pb.decay;
    const T inv_d = T(1) / d;
    const T s = T(1) / (d * (d + b));
    // s * (u_i u_j) is the same number at (i, j) and (j, i), so C stays exactly symmetric.
    for (int64_t i = 0; i < H; ++i) {
        T* row = c + i * H;
        const T ui = u[i];
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) row[j] = row[j] * inv_d - s * (ui * u[j]);
    }
    pb.bonus[env] = first ? T(0) : b;
}

}  // namespace

template <class T>
void e3b_cpu(const E3BProblem<T>& pb) {
    at::parallel_for(0, pb.envs, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> u(pb.dim);
        for (int64_t env = begin; env < end; ++env) step_env(pb, env, u.data());
    });
}

template void e3b_cpu<float>(const E3BProblem<float>&);
template void e3b_cpu<double>(const E3BProblem<double>&);

}  // namespace puff

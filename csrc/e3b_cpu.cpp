// CPU kernel: envs in parallel (at::parallel_for); per env, the matvec pulls the packed triangle
// into cache (33 KB at H = 128 in float32, inside L2) and the update pass rewrites it there.
// Every inner loop runs along a contiguous packed row, so the compiler vectorises it.
#include "e3b.h"

#include <ATen/Parallel.h>

#include <vector>

namespace puff {
namespace {

template <class T>
void step_env(const E3BProblem<T>& pb, int64_t env, T* __restrict__ u) {
    const int64_t H = pb.dim;
    T* c = pb.c_inv + env * packed_row(H, H);
    const T* __restrict__ phi = pb.phi + env * H;
    const bool first = pb.first[env];
    if (first && pb.reset) {
#pragma omp simd
        for (int64_t k = 0; k < packed_row(H, H); ++k) c[k] = T(0);
        for (int64_t i = 0; i < H; ++i) c[packed_row(i, H)] = pb.inv_ridge;
    }
    // u = C phi from the upper triangle: row i gives u[i] its dot product with phi[i..] and,
    // standing in for column i below the diagonal, adds C[i, j] phi[i] to every u[j], j > i.
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) u[i] = T(0);
    for (int64_t i = 0; i < H; ++i) {
        const T* __restrict__ row = c + packed_row(i, H);
        const T p = phi[i];
        const int64_t n = H - 1 - i;
        const T* __restrict__ rest = row + 1;
        const T* __restrict__ phi_rest = phi + i + 1;
        T* __restrict__ u_rest = u + i + 1;
        T dot = row[0] * p;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < n; ++k) {
            dot += rest[k] * phi_rest[k];
            u_rest[k] += rest[k] * p;
        }
        u[i] += dot;
    }
    T b = 0;
#pragma omp simd reduction(+ : b)
    for (int64_t i = 0; i < H; ++i) b += phi[i] * u[i];
    const T d = pb.decay;
    const T inv_d = T(1) / d;
    const T s = T(1) / (d * (d + b));
    for (int64_t i = 0; i < H; ++i) {
        T* __restrict__ row = c + packed_row(i, H);
        const T* __restrict__ u_row = u + i;
        const T ui = u[i];
        const int64_t n = H - i;
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) row[k] = row[k] * inv_d - s * (ui * u_row[k]);
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

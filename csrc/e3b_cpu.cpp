// CPU kernel: envs in parallel (at::parallel_for); per env, the matvec pulls the env's tiles into
// cache (34 KB at H = 128 in float32, inside L2) and the update pass rewrites them there. Every
// inner loop is one kTile-wide tile row, which the compiler turns into whole vectors.
#include "e3b.h"

#include <ATen/Parallel.h>

#include <vector>

namespace puff {
namespace {

template <class T>
void step_env(const E3BProblem<T>& pb, int64_t env, T* __restrict__ phi, T* __restrict__ u) {
    const int64_t H = pb.dim, n = tiles_per_side(H), Hp = n * kTile;
    T* __restrict__ c = pb.c_inv + env * packed_size(H);
    const bool first = pb.first[env];
    for (int64_t i = 0; i < Hp; ++i) {
        phi[i] = i < H ? pb.phi[env * H + i] : T(0);
        u[i] = T(0);
    }
    if (first && pb.reset) {
        for (int64_t k = 0; k < packed_size(H); ++k) c[k] = T(0);
        for (int64_t i = 0; i < H; ++i) c[diagonal_slot(i, n)] = pb.inv_ridge;
    }
    // u = C phi over the stored tiles: tile (I, J) adds C[I, J] phi[J] to u[I] and, standing in for
    // the tile (J, I) below the diagonal, C[I, J]^T phi[I] to u[J].
    const T* tile = c;
    for (int64_t I = 0; I < n; ++I) {
        T acc[kTile][kTile] = {};
        const T* phi_i = phi + I * kTile;
        for (int64_t J = I; J < n; ++J, tile += kTile * kTile) {
            const T* phi_j = phi + J * kTile;
            T* u_j = u + J * kTile;
            for (int64_t r = 0; r < kTile; ++r) {
                const T* row = tile + r * kTile;
#pragma omp simd
                for (int64_t q = 0; q < kTile; ++q) acc[r][q] += row[q] * phi_j[q];
                if (J > I) {
                    const T p = phi_i[r];
#pragma omp simd
                    for (int64_t q = 0; q < kTile; ++q) u_j[q] += row[q] * p;
                }
            }
        }
        for (int64_t r = 0; r < kTile; ++r) {
            T sum = 0;
            for (int64_t q = 0; q < kTile; ++q) sum += acc[r][q];
            u[I * kTile + r] += sum;
        }
    }
    T b = 0;
#pragma omp simd reduction(+ : b)
    for (int64_t i = 0; i < Hp; ++i) b += phi[i] * u[i];
    const T d = pb.decay;
    const T inv_d = T(1) / d;
    const T s = T(1) / (d * (d + b));
    T* out = c;
    for (int64_t I = 0; I < n; ++I) {
        for (int64_t J = I; J < n; ++J) {
            for (int64_t r = 0; r < kTile; ++r, out += kTile) {
                const T ui = u[I * kTile + r];
                const T* u_j = u + J * kTile;
#pragma omp simd
                for (int64_t q = 0; q < kTile; ++q) out[q] = out[q] * inv_d - s * (ui * u_j[q]);
            }
        }
    }
    pb.bonus[env] = first ? T(0) : b;
}

}  // namespace

template <class T>
void e3b_cpu(const E3BProblem<T>& pb) {
    at::parallel_for(0, pb.envs, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(2 * tiles_per_side(pb.dim) * kTile);  // phi padded with zeros, and u
        for (int64_t env = begin; env < end; ++env)
            step_env(pb, env, scratch.data(), scratch.data() + tiles_per_side(pb.dim) * kTile);
    });
}

template void e3b_cpu<float>(const E3BProblem<float>&);
template void e3b_cpu<double>(const E3BProblem<double>&);

}  // namespace puff

// The advantage estimators of DOMAIN.md section 2, written once for the CPU and CUDA kernels.
//
// Layout: one row holds one agent's `horizon` consecutive steps. At column t, rewards[t] and
// dones[t] arrived with obs[t], so the transition of action t ends in column t+1:
//   nd[t]    = 1 - dones[t+1]
//   delta[t] = rho[t] * (rewards[t+1] + gamma * values[t+1] * nd[t] - values[t])
// The last column has no successor unless the caller passes a per-row bootstrap (the reward,
// value and done that arrive with the step after the segment).
//
// This header has no torch dependency so nvcc can compile the CUDA kernel against any torch.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PUFF_HD __host__ __device__ __forceinline__
#else
#define PUFF_HD inline
#endif

namespace puff {

enum class Estimator : int { GAE = 0, PUFF = 1, VTRACE = 2 };

struct Params {
    float gamma;
    float lambda;    // unused by V-trace
    float rho_clip;  // unused by GAE
    float c_clip;    // unused by GAE
};

// One call's tensors as raw pointers: inputs and outputs are contiguous [rows, horizon];
// importance may be null (on-policy: all ones); the bootstrap pointers are all null or all set.
struct Problem {
    int64_t rows;
    int64_t horizon;
    Estimator estimator;
    Params params;
    const float* values;
    const float* rewards;
    const float* dones;
    const float* importance;
    const float* bootstrap_rewards;
    const float* bootstrap_values;
    const float* bootstrap_dones;
    float* out;      // advantages (GAE, puff) or value targets vs (V-trace)
    float* out_pg;   // V-trace policy advantages; null otherwise
};

// A float broadcast to T: T is float (CUDA, scalar code) or a CPU SIMD vector of floats.
template <class T>
PUFF_HD T fill(float x) {
    return T{} + x;
}

// min(w, clip) that keeps a NaN ratio NaN (torch.clamp does the same), so a bad row shows.
template <class T>
PUFF_HD T clip_ratio(T w, T clip) {
    return w > clip ? clip : w;
}

// What column t contributes to the backward scan: carry[t] = delta + coef * carry[t+1].
template <class T>
struct Column {
    T delta;
    T coef;
    T rho;  // kept for the V-trace policy advantage
    T nd;
};

template <Estimator E, class T>
PUFF_HD Column<T> column(T value, T w, T next_reward, T next_value, T next_done, const Params& p) {
    Column<T> col;
    const T one = fill<T>(1.0f);
    col.nd = one - next_done;
    T c = one;
    col.rho = one;
    if (E != Estimator::GAE) {
        col.rho = clip_ratio(w, fill<T>(p.rho_clip));
        c = clip_ratio(w, fill<T>(p.c_clip));
    }
    col.delta = col.rho * (next_reward + p.gamma * next_value * col.nd - value);
    const float trace = (E == Estimator::VTRACE) ? 1.0f : p.lambda;
    col.coef = (p.gamma * trace) * c * col.nd;
    return col;
}

// V-trace policy advantage pg[t] = rho[t] * (rewards[t+1] + gamma * nd[t] * vs[t+1] - values[t]).
template <class T>
PUFF_HD T vtrace_pg(const Column<T>& col, T value, T next_reward, T next_vs, const Params& p) {
    return col.rho * (next_reward + p.gamma * col.nd * next_vs - value);
}

// One whole row, scanned backwards; `stride` is the distance between a row's columns (1 for a
// contiguous row). Used by the CUDA kernel (one thread per row) and for the CPU's tail rows.
template <Estimator E>
PUFF_HD void scan_row(const Problem& pb, int64_t row) {
    const int64_t H = pb.horizon;
    const int64_t base = row * H;
    const float* v = pb.values + base;
    const float* r = pb.rewards + base;
    const float* d = pb.dones + base;
    const float* w = pb.importance ? pb.importance + base : nullptr;
    float* out = pb.out + base;
    float* pg = pb.out_pg ? pb.out_pg + base : nullptr;

    float carry = 0.0f;  // A[t+1] (GAE, puff) or vs[t+1] - values[t+1] (V-trace)
    float next_vs = 0.0f;
    int64_t t = H - 1;
    if (pb.bootstrap_values) {
        next_vs = pb.bootstrap_values[row];
    } else {
        // No successor: advantage 0, V-trace target values[H-1] (PufferLib's convention).
        out[t] = (E == Estimator::VTRACE) ? v[t] : 0.0f;
        if (pg) pg[t] = 0.0f;
        next_vs = v[t];
        --t;
    }
    for (; t >= 0; --t) {
        const bool last = (t == H - 1);
        const float next_reward = last ? pb.bootstrap_rewards[row] : r[t + 1];
        const float next_value = last ? pb.bootstrap_values[row] : v[t + 1];
        const float next_done = last ? pb.bootstrap_dones[row] : d[t + 1];
        const Column<float> col =
            column<E, float>(v[t], w ? w[t] : 1.0f, next_reward, next_value, next_done, pb.params);
        carry = col.delta + col.coef * carry;
        if (E == Estimator::VTRACE) {
            pg[t] = vtrace_pg(col, v[t], next_reward, next_vs, pb.params);
            next_vs = v[t] + carry;
            out[t] = next_vs;
        } else {
            out[t] = carry;
        }
    }
}

// Backends. Both expect a validated Problem; launch_cuda returns a cudaError_t as int, which
// cuda_error_string describes (so callers need no CUDA headers).
void run_cpu(const Problem& pb);
int launch_cuda(const Problem& pb, void* stream);
const char* cuda_error_string(int error);

}  // namespace puff

// CPU kernel: rows in parallel (at::parallel_for); within a row, columns in SIMD chunks of kLanes.
//
// The backward recurrence carry[t] = delta[t] + coef[t] * carry[t+1] is a chain of affine maps,
// so a chunk is solved in registers by composing neighbouring maps in log2(kLanes) steps (a
// suffix scan); only one multiply-add per chunk then waits on the previous chunk's carry.
#include "advantage.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace puff {
namespace {

// 8 floats: one AVX2 register (measured faster than 16 on Zen 4, where AVX-512 is double-pumped).
constexpr int kLanes = 8;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
    Vec x;
    std::memcpy(&x, p, sizeof x);
    return x;
}

inline void store(float* p, Vec x) { std::memcpy(p, &x, sizeof x); }

template <int K, int... I>
inline Vec shift_down_impl(Vec a, Vec fill_vec, std::integer_sequence<int, I...>) {
    return __builtin_shufflevector(a, fill_vec, (I + K)...);
}

// Lane j takes lane j + K of `a`; the top K lanes take `fill_value`.
template <int K>
inline Vec shift_down(Vec a, float fill_value) {
    return shift_down_impl<K>(a, fill<Vec>(fill_value), std::make_integer_sequence<int, kLanes>{});
}

template <int K>
inline void compose_step(Vec& delta, Vec& coef) {
    delta += coef * shift_down<K>(delta, 0.0f);
    coef *= shift_down<K>(coef, 1.0f);
    if constexpr (2 * K < kLanes) compose_step<2 * K>(delta, coef);
}

// Compose each lane's map with those of all higher lanes: afterwards lane j maps the carry
// entering the chunk's top to carry[j]. Identity (0 + 1 * x) fills past the top.
inline void suffix_compose(Vec& delta, Vec& coef) { compose_step<1>(delta, coef); }

// One row's scan: the last column, then full chunks backwards, then the columns left at the start.
template <Estimator E, bool HasImportance, bool HasBootstrap>
struct RowScan {
    const Params p;
    const float* v;
    const float* r;
    const float* d;
    const float* w;
    float* out;
    float* pg;
    float carry = 0.0f;

    RowScan(const Problem& pb, int64_t row)
        : p(pb.params),
          v(pb.values + row * pb.horizon),
          r(pb.rewards + row * pb.horizon),
          d(pb.dones + row * pb.horizon),
          w(HasImportance ? pb.importance + row * pb.horizon : nullptr),
          out(pb.out + row * pb.horizon),
          pg(E == Estimator::VTRACE ? pb.out_pg + row * pb.horizon : nullptr) {
        // The last column: bootstrapped from the step after the segment, or PufferLib's zero.
        const int64_t t = pb.horizon - 1;
        if (HasBootstrap) {
            const float next_reward = pb.bootstrap_rewards[row];
            const float next_value = pb.bootstrap_values[row];
            const Column<float> col = column<E, float>(v[t], HasImportance ? w[t] : 1.0f, next_reward, next_value,
                                                       pb.bootstrap_dones[row], p);
            carry = col.delta;
            if (E == Estimator::VTRACE) pg[t] = vtrace_pg(col, v[t], next_reward, next_value, p);
        } else if (E == Estimator::VTRACE) {
            pg[t] = 0.0f;
        }
        out[t] = (E == Estimator::VTRACE) ? v[t] + carry : carry;
    }

    // Columns [s, s + kLanes), all below the last column.
    inline void chunk(int64_t s) {
        const Vec value = load(v + s);
        const Vec next_value = load(v + s + 1);
        const Vec next_reward = load(r + s + 1);
        const Column<Vec> col = column<E, Vec>(value, HasImportance ? load(w + s) : fill<Vec>(1.0f), next_reward,
                                               next_value, load(d + s + 1), p);
        Vec delta = col.delta;
        Vec coef = col.coef;
        suffix_compose(delta, coef);
        const Vec scanned = delta + coef * carry;
        if (E == Estimator::VTRACE) {
            store(out + s, value + scanned);
            const Vec next_vs = next_value + shift_down<1>(scanned, carry);
            store(pg + s, vtrace_pg(col, value, next_reward, next_vs, p));
        } else {
            store(out + s, scanned);
        }
        carry = scanned[0];
    }

    // Columns [0, end) one at a time: the start of a row that does not fill a chunk.
    inline void head(int64_t end) {
        for (int64_t t = end - 1; t >= 0; --t) {
            const Column<float> col =
                column<E, float>(v[t], HasImportance ? w[t] : 1.0f, r[t + 1], v[t + 1], d[t + 1], p);
            if (E == Estimator::VTRACE) pg[t] = vtrace_pg(col, v[t], r[t + 1], v[t + 1] + carry, p);
            carry = col.delta + col.coef * carry;
            out[t] = (E == Estimator::VTRACE) ? v[t] + carry : carry;
        }
    }
};

// Rows [begin, end); each row's chunks run from its end backwards.
template <Estimator E, bool HasImportance, bool HasBootstrap>
void scan_rows(const Problem& pb, int64_t begin, int64_t end) {
    const int64_t first_chunk = pb.horizon - 1 - kLanes;
    const int64_t head = (pb.horizon - 1) % kLanes;
    for (int64_t row = begin; row < end; ++row) {
        RowScan<E, HasImportance, HasBootstrap> scan(pb, row);
        for (int64_t s = first_chunk; s >= 0; s -= kLanes) scan.chunk(s);
        scan.head(head);
    }
}

template <Estimator E, bool HasImportance, bool HasBootstrap>
void run_rows(const Problem& pb) {
    // Enough work per task that waking a thread does not dominate small minibatches.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / pb.horizon);
    at::parallel_for(0, pb.rows, grain, [&](int64_t begin, int64_t end) {
        scan_rows<E, HasImportance, HasBootstrap>(pb, begin, end);
    });
}

// The CUDA kernel's per-row scan (advantage.h) run on the CPU: with PUFFCTL_PORTABLE_KERNEL=1 the
// tests hold that code to the reference on machines without a GPU, and users can rule out the
// SIMD kernel when chasing a wrong number.
template <Estimator E>
void run_portable(const Problem& pb) {
    at::parallel_for(0, pb.rows, 1, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) scan_row<E>(pb, row);
    });
}

template <Estimator E>
void run_estimator(const Problem& pb, bool portable) {
    const bool w = pb.importance != nullptr;
    const bool boot = pb.bootstrap_values != nullptr;
    if (portable) run_portable<E>(pb);
    else if (w && boot) run_rows<E, true, true>(pb);
    else if (w) run_rows<E, true, false>(pb);
    else if (boot) run_rows<E, false, true>(pb);
    else run_rows<E, false, false>(pb);
}

}  // namespace

void run_cpu(const Problem& pb) {
    if (pb.rows == 0) return;
    static const bool portable = std::getenv("PUFFCTL_PORTABLE_KERNEL") != nullptr;
    switch (pb.estimator) {
        case Estimator::GAE: run_estimator<Estimator::GAE>(pb, portable); break;
        case Estimator::PUFF: run_estimator<Estimator::PUFF>(pb, portable); break;
        case Estimator::VTRACE: run_estimator<Estimator::VTRACE>(pb, portable); break;
    }
}

}  // namespace puff

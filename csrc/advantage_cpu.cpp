// CPU kernel: rows in parallel (at::parallel_for); within a thread, blocks of kBlock rows are
// scanned together so their backward recurrences overlap instead of waiting on each other.
#include "advantage.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace puff {
namespace {

constexpr int64_t kBlock = 16;

// Three passes over a block of rows, with column-major scratch [horizon][kBlock]:
// 1. per row, forward and vectorizable: each column's delta and coefficient;
// 2. all rows at once, backward: carry = delta + coef * carry (kBlock independent chains);
// 3. per row, forward: write the results (and V-trace's policy advantages).
template <Estimator E, bool HasImportance, bool HasBootstrap>
void scan_block(const Problem& pb, int64_t row0, int64_t nb, float* delta, float* coef, float* acc) {
    const int64_t H = pb.horizon;
    const Params p = pb.params;

    for (int64_t b = 0; b < nb; ++b) {
        const int64_t row = row0 + b;
        const float* v = pb.values + row * H;
        const float* r = pb.rewards + row * H;
        const float* d = pb.dones + row * H;
        const float* w = HasImportance ? pb.importance + row * H : nullptr;
        for (int64_t t = 0; t + 1 < H; ++t) {
            const Column col = column<E>(v[t], HasImportance ? w[t] : 1.0f, r[t + 1], v[t + 1], d[t + 1], p);
            delta[t * kBlock + b] = col.delta;
            coef[t * kBlock + b] = col.coef;
        }
        const int64_t t = H - 1;
        if (HasBootstrap) {
            const Column col = column<E>(v[t], HasImportance ? w[t] : 1.0f, pb.bootstrap_rewards[row],
                                         pb.bootstrap_values[row], pb.bootstrap_dones[row], p);
            delta[t * kBlock + b] = col.delta;
            coef[t * kBlock + b] = col.coef;
        } else {
            delta[t * kBlock + b] = 0.0f;
            coef[t * kBlock + b] = 0.0f;
        }
    }
    for (int64_t t = 0; nb < kBlock && t < H; ++t) {
        std::fill(delta + t * kBlock + nb, delta + (t + 1) * kBlock, 0.0f);
        std::fill(coef + t * kBlock + nb, coef + (t + 1) * kBlock, 0.0f);
    }

    float carry[kBlock] = {};
    for (int64_t t = H - 1; t >= 0; --t) {
        const float* dt = delta + t * kBlock;
        const float* ct = coef + t * kBlock;
        float* at = acc + t * kBlock;
        for (int64_t b = 0; b < kBlock; ++b) {
            carry[b] = dt[b] + ct[b] * carry[b];
            at[b] = carry[b];
        }
    }

    for (int64_t b = 0; b < nb; ++b) {
        const int64_t row = row0 + b;
        float* out = pb.out + row * H;
        if (E != Estimator::VTRACE) {
            for (int64_t t = 0; t < H; ++t) out[t] = acc[t * kBlock + b];
            continue;
        }
        const float* v = pb.values + row * H;
        const float* r = pb.rewards + row * H;
        const float* d = pb.dones + row * H;
        const float* w = HasImportance ? pb.importance + row * H : nullptr;
        float* pg = pb.out_pg + row * H;
        for (int64_t t = 0; t < H; ++t) out[t] = v[t] + acc[t * kBlock + b];
        for (int64_t t = 0; t + 1 < H; ++t) {
            const Column col = column<E>(v[t], HasImportance ? w[t] : 1.0f, r[t + 1], v[t + 1], d[t + 1], p);
            pg[t] = vtrace_pg(col, v[t], r[t + 1], out[t + 1], p);
        }
        const int64_t t = H - 1;
        if (HasBootstrap) {
            const Column col = column<E>(v[t], HasImportance ? w[t] : 1.0f, pb.bootstrap_rewards[row],
                                         pb.bootstrap_values[row], pb.bootstrap_dones[row], p);
            pg[t] = vtrace_pg(col, v[t], pb.bootstrap_rewards[row], pb.bootstrap_values[row], p);
        } else {
            pg[t] = 0.0f;
        }
    }
}

template <Estimator E, bool HasImportance, bool HasBootstrap>
void run_rows(const Problem& pb) {
    const int64_t blocks = (pb.rows + kBlock - 1) / kBlock;
    // Enough work per task that thread start-up does not dominate small minibatches.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (pb.horizon * kBlock));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(3 * pb.horizon * kBlock);
        float* delta = scratch.data();
        float* coef = delta + pb.horizon * kBlock;
        float* acc = coef + pb.horizon * kBlock;
        for (int64_t block = begin; block < end; ++block) {
            const int64_t row0 = block * kBlock;
            const int64_t nb = std::min(kBlock, pb.rows - row0);
            scan_block<E, HasImportance, HasBootstrap>(pb, row0, nb, delta, coef, acc);
        }
    });
}

template <Estimator E>
void run_estimator(const Problem& pb) {
    const bool w = pb.importance != nullptr;
    const bool boot = pb.bootstrap_values != nullptr;
    if (w && boot) run_rows<E, true, true>(pb);
    else if (w) run_rows<E, true, false>(pb);
    else if (boot) run_rows<E, false, true>(pb);
    else run_rows<E, false, false>(pb);
}

}  // namespace

void run_cpu(const Problem& pb) {
    if (pb.rows == 0) return;
    switch (pb.estimator) {
        case Estimator::GAE: run_estimator<Estimator::GAE>(pb); break;
        case Estimator::PUFF: run_estimator<Estimator::PUFF>(pb); break;
        case Estimator::VTRACE: run_estimator<Estimator::VTRACE>(pb); break;
    }
}

}  // namespace puff

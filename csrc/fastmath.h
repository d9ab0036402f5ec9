// Branch-free float32 exponentials for the CPU ops' elementwise loops (gelu_ops.cpp, lstm_ops.cpp):
// written so gcc turns each loop into whole AVX vectors, which it does only when the source is
// built with -fno-trapping-math -fno-math-errno (puffctl/build.py SOURCE_FLAGS).
#pragma once

#include <bit>
#include <cstdint>

namespace puff {

// exp(x) for x <= 0: 2^n * p(r) with n = round(x / ln 2), r = x - n ln 2, Cephes' polynomial.
inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// 1 / (1 + exp(-x)), from exp(-|x|) so nothing overflows.
inline float fast_sigmoid(float x) {
    const float e = exp_nonpositive(x < 0.0f ? x : -x);
    const float s = 1.0f / (1.0f + e);
    return x < 0.0f ? e * s : s;
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|).
inline float fast_tanh(float x) {
    const float e = exp_nonpositive(x < 0.0f ? 2.0f * x : -2.0f * x);
    const float t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : t;
}

}  // namespace puff

// exp of a float, branch-free so that CPU loops calling it vectorise (libm's expf is a scalar call
// that GCC vectorises only under -ffast-math). CPU only: CUDA code keeps the device exp.
//
// Method (Cephes expf): k = nearest integer to x / ln 2, r = x - k ln 2 in two parts (the first has
// 9 significant bits, so k * part is exact for |k| < 2^15), a degree-7 polynomial for exp(r) on
// |r| <= ln2 / 2, and 2^k applied as two factors 2^(k/2) and 2^(k - k/2), each a normal float, so
// that results down to the subnormals and up to the overflow are rounded once. x is clamped to
// [-104, 89] first (exp is 0 below, +inf above, in float); NaN stays NaN. Error at most 1 float ulp
// from the correctly rounded exp, measured on every float (with and without FMA contraction);
// tests/test_sdf_volume_render.py::test_cpu_exp_within_one_ulp checks 4 million of them.
#pragma once

#include <stdint.h>

#include "float_bits.h"

namespace stylesdf_fast {

// Inlined wherever called, so that the caller's loop vectorises (and a multiversioned caller compiles
// it for its own instruction set).
#if defined(__GNUC__)
#define SSDF_EXP_INLINE inline __attribute__((always_inline))
#else
#define SSDF_EXP_INLINE inline
#endif

// x clamped to [-104, 89], NaN kept. Selected on the bit pattern: GCC if-converts integer selects
// for SSE2/AVX2 but keeps a float comparison conditional (-ftrapping-math), which stops vectorisation.
SSDF_EXP_INLINE float clamp_exp_argument(float x) {
  constexpr int32_t kInfinityBits = 0x7f800000;
  constexpr int32_t kHighBits = 0x42b20000;   // 89.0f
  constexpr int32_t kLowBits = 0x42d00000;    // 104.0f (the magnitude of the lower bound)
  const uint32_t bits = float_bits(x);
  const int32_t magnitude = static_cast<int32_t>(bits & 0x7fffffffu);
  const uint32_t negative = 0u - (bits >> 31);   // all ones when the sign bit is set
  const uint32_t number = 0u - static_cast<uint32_t>(magnitude <= kInfinityBits);   // not NaN
  const uint32_t above = number & ~negative & (0u - static_cast<uint32_t>(magnitude > kHighBits));
  const uint32_t below = number & negative & (0u - static_cast<uint32_t>(magnitude > kLowBits));
  const uint32_t kept = bits & ~(above | below);
  return bits_float(kept | (static_cast<uint32_t>(kHighBits) & above) |
                        ((0x80000000u | static_cast<uint32_t>(kLowBits)) & below));
}

SSDF_EXP_INLINE float exp_fast(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRoundingShift = 12582912.0f;   // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kLn2Part1 = 0.693359375f;       // ln 2 = part1 + part2
  constexpr float kLn2Part2 = -2.12194440e-4f;
  x = clamp_exp_argument(x);
  const float shifted = x * kLog2e + kRoundingShift;
  // k in the low mantissa bits of `shifted` (two's complement, |k| <= 150)
  const int32_t k = static_cast<int32_t>(float_bits(shifted) - float_bits(kRoundingShift));
  const float kf = shifted - kRoundingShift;
  const float r = (x - kf * kLn2Part1) - kf * kLn2Part2;
  const float p = 1.9875691500e-4f;
  const float poly = ((((((p * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                        1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r) + 1.0f;
  const int32_t k1 = k >> 1, k2 = k - k1;   // each in [-75, 64]: 2^k1, 2^k2 are normal floats
  const float scale1 = bits_float(static_cast<uint32_t>(k1 + 127) << 23);
  const float scale2 = bits_float(static_cast<uint32_t>(k2 + 127) << 23);
  return (poly * scale1) * scale2;
}

}  // namespace stylesdf_fast

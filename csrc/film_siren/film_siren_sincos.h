// Sine and cosine of one float phase, branch-free so that the CPU loops of film_siren_cpu.cpp
// vectorise them (the libm sinf/cosf are scalar calls; ATen's vectorised SLEEF kernels need a
// separate pass over a buffer). CPU only: the CUDA kernel keeps the device sinf/cosf.
//
// Method (Cody-Waite): j = nearest integer to u 2/pi, r = u - j pi/2 in three parts (the first two
// have 8 and 11 significant bits, so j * part is exact for |j| < 2^13), then minimax polynomials for
// sin and cos on |r| <= pi/4 (the Cephes sinf/cosf coefficients) and the quadrant j mod 4 picks and
// signs them. Error within about 2 float ulps of 1 for |u| <= kFastPhaseLimit; beyond it, or for a
// non-finite u, film_phase_out_of_range is true and the caller recomputes with sinf/cosf.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../common/float_bits.h"

namespace stylesdf_fast {

constexpr float kFastPhaseLimit = 8192.0f;   // |j| <= 5216 < 2^13: the reduction above is exact

struct FilmSinCos {
  float s;  // sin(u)
  float c;  // cos(u)
};

// The quadrant's choice and signs are integer bit operations rather than ?: on floats, which GCC
// does not if-convert for SSE2/AVX2 (the loop then stays scalar).
inline FilmSinCos film_sincos_fast(float u) {
  constexpr float kTwoOverPi = 0.636619772367581343f;
  constexpr float kRoundingShift = 12582912.0f;   // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kPio2Part1 = 1.5703125f;        // pi/2 = part1 + part2 + part3
  constexpr float kPio2Part2 = 4.837512969970703125e-4f;
  constexpr float kPio2Part3 = 7.54978995489188216e-8f;
  const float shifted = u * kTwoOverPi + kRoundingShift;
  const uint32_t quadrant = float_bits(shifted);   // j mod 4 sits in the two low mantissa bits
  const float j = shifted - kRoundingShift;
  const float r = ((u - j * kPio2Part1) - j * kPio2Part2) - j * kPio2Part3;   // |r| <= pi/4
  const float r2 = r * r;
  const float sin_r = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
  const float cos_r =
      1.0f - 0.5f * r2 + r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
  // sin(r + j pi/2) and cos(r + j pi/2) by quadrant: (s, c), (c, -s), (-s, -c), (-c, s)
  const uint32_t odd = 0u - (quadrant & 1u);   // all ones in odd quadrants
  const uint32_t sin_bits = float_bits(sin_r), cos_bits = float_bits(cos_r);
  const uint32_t s = (cos_bits & odd) | (sin_bits & ~odd);
  const uint32_t c = (sin_bits & odd) | (cos_bits & ~odd);
  const uint32_t sin_sign = (quadrant & 2u) << 30, cos_sign = ((quadrant + 1u) & 2u) << 30;
  return {bits_float(s ^ sin_sign), bits_float(c ^ cos_sign)};
}

// True where film_sincos_fast is not accurate (|u| > kFastPhaseLimit) or u is NaN; compared as
// integers (the bits of |u| order like its value, NaN above infinity) so that the loop vectorises.
inline bool film_phase_out_of_range(float u) {
  return (float_bits(u) & 0x7fffffffu) > float_bits(kFastPhaseLimit);
}

}  // namespace stylesdf_fast

// A float's bit pattern and back (memcpy: no aliasing questions; in registers once inlined). The
// branch-free CPU math (cpu_exp.h, film_siren_sincos.h) selects and scales floats with integer bit
// operations, which GCC if-converts and vectorises where it keeps float comparisons as branches.
#pragma once

#include <stdint.h>
#include <string.h>

namespace stylesdf_fast {

#if defined(__GNUC__)
#define SSDF_BITS_INLINE inline __attribute__((always_inline))
#else
#define SSDF_BITS_INLINE inline
#endif

SSDF_BITS_INLINE uint32_t float_bits(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

SSDF_BITS_INLINE float bits_float(uint32_t bits) {
  float v;
  memcpy(&v, &bits, sizeof v);
  return v;
}

}  // namespace stylesdf_fast

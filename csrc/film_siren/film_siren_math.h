// Per-element math of the fused FiLM-SIREN activation, shared by the CPU loop and the CUDA kernel.
// One element is (b, n, c) of x [B, N, C]; gamma and beta are the [B, C] values of its (b, c).
//   forward          u = gamma x + beta,  y = sin(u)
//   vjp              with c = cos(u):  dx = g c gamma,  dgamma += g c x,  dbeta += g c
//   double vjp       with s = sin(u), t = gg_x gamma + gg_gamma x + gg_beta (the cotangents of
//                    dx, dgamma, dbeta; absent ones are zero):
//                      d_grad = c t,  d_x = g (gg_gamma c - s gamma t),
//                      d_gamma += g (gg_x c - s x t),  d_beta += -g s t
// (derivation: the backward's pairing with its cotangents is sum g c t; differentiate that in g,
// x, gamma and beta, where u depends on all but g, and t on x through gg_gamma x.)
// The "+=" terms are summed over n by the callers, in a fixed order.
#pragma once

#include <math.h>

#include "../common/host_device.h"

namespace stylesdf_fast {

// sin and cos overloaded on the accumulation type (float for float/half/bfloat16 storage, double),
// spelled with the C functions, which both the host compiler and nvcc provide.
SSDF_HOST_DEVICE inline float film_sin(float v) { return ::sinf(v); }
SSDF_HOST_DEVICE inline double film_sin(double v) { return ::sin(v); }
SSDF_HOST_DEVICE inline float film_cos(float v) { return ::cosf(v); }
SSDF_HOST_DEVICE inline double film_cos(double v) { return ::cos(v); }

template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t film_siren_forward(acc_t x, acc_t gamma, acc_t beta) {
  return film_sin(gamma * x + beta);
}

template <typename acc_t>
struct FilmSirenVjp {
  acc_t dx;      // gradient of x at this element
  acc_t dgamma;  // this element's term of gamma's gradient (summed over n)
  acc_t dbeta;   // this element's term of beta's gradient (summed over n)
};

// The vjp given c = cos(gamma x + beta) (the CPU loop computes the cosines of a block of elements
// with ATen's vectorised cos first; the CUDA kernel calls film_siren_vjp below).
template <typename acc_t>
SSDF_HOST_DEVICE inline FilmSirenVjp<acc_t> film_siren_vjp_given_cos(acc_t grad, acc_t x, acc_t gamma, acc_t c) {
  const acc_t gc = grad * c;
  return {gc * gamma, gc * x, gc};
}

template <typename acc_t>
SSDF_HOST_DEVICE inline FilmSirenVjp<acc_t> film_siren_vjp(acc_t grad, acc_t x, acc_t gamma, acc_t beta) {
  return film_siren_vjp_given_cos(grad, x, gamma, film_cos(gamma * x + beta));
}

template <typename acc_t>
struct FilmSirenDoubleVjp {
  acc_t d_grad;   // gradient of the backward's input `grad` at this element
  acc_t d_x;      // gradient of x at this element
  acc_t d_gamma;  // this element's term of gamma's gradient (summed over n)
  acc_t d_beta;   // this element's term of beta's gradient (summed over n)
};

// gg_x, gg_gamma, gg_beta: the cotangents of the backward's outputs dx, dgamma, dbeta (zero when
// absent); s, c: sin and cos of u = gamma x + beta.
template <typename acc_t>
SSDF_HOST_DEVICE inline FilmSirenDoubleVjp<acc_t> film_siren_double_vjp_given_sincos(acc_t gg_x, acc_t gg_gamma,
                                                                                      acc_t gg_beta, acc_t grad,
                                                                                      acc_t x, acc_t gamma, acc_t s,
                                                                                      acc_t c) {
  const acc_t t = gg_x * gamma + gg_gamma * x + gg_beta;
  const acc_t gst = grad * s * t;
  return {c * t, grad * gg_gamma * c - gst * gamma, grad * gg_x * c - gst * x, -gst};
}

template <typename acc_t>
SSDF_HOST_DEVICE inline FilmSirenDoubleVjp<acc_t> film_siren_double_vjp(acc_t gg_x, acc_t gg_gamma, acc_t gg_beta,
                                                                         acc_t grad, acc_t x, acc_t gamma,
                                                                         acc_t beta) {
  const acc_t u = gamma * x + beta;
  return film_siren_double_vjp_given_sincos(gg_x, gg_gamma, gg_beta, grad, x, gamma, film_sin(u), film_cos(u));
}

}  // namespace stylesdf_fast

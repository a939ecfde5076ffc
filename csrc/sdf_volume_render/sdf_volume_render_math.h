// Per-sample and per-ray math of the volume aggregation (docs/kernels.md section 1), shared by the CPU
// loop and the CUDA kernel. acc_t is float (also for half/bfloat16 colours) or double.
//
//   delta_i = (z_{i+1} - z_i) |d|  (i < S-1),   delta_{S-1} = 1e10 |d|
//   sigma_i = sigmoid(-s_i / beta) / beta   (SDF mode)   or given (density mode)
//   alpha_i = 1 - exp(-sigma_i delta_i),  T_i = prod_{j<i} (1 - alpha_j + 1e-10),  w_i = alpha_i T_i
//   force_background: w_{S-1} = 1 - sum_{i<S-1} w_i
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/host_device.h"

namespace stylesdf_fast {

// Colour activations, in the order of RGB_ACTIVATIONS in stylesdf_fast/reference/sdf_volume_render.py.
enum RgbActivation : int64_t { kSigmoidPm1 = 0, kSigmoid = 1, kIdentity = 2 };

template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t sigmoid_of(acc_t x) {
  return acc_t(1) / (acc_t(1) + std::exp(-x));
}

// The colour a sample contributes per unit weight, before the final affine map (-1 + 2 * sum for
// sigmoid_pm1).
template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t activated_color(acc_t logit, int64_t activation) {
  return activation == kIdentity ? logit : sigmoid_of(logit);
}

// d(rgb_map)/d(sum_i w_i color_i): 2 for sigmoid_pm1, else 1.
template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t color_gain(int64_t activation) {
  return activation == kSigmoidPm1 ? acc_t(2) : acc_t(1);
}

template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t activated_color_derivative(acc_t logit, int64_t activation) {
  if (activation == kIdentity) return acc_t(1);
  const acc_t s = sigmoid_of(logit);
  return s * (acc_t(1) - s);
}

// One ray's samples: density (sdf or sigma) and depths, with their strides along S.
template <typename scalar_t>
struct RaySamples {
  const scalar_t* density;
  int64_t density_stride;
  const scalar_t* z;
  int64_t z_stride;
  int64_t count;  // S
};

template <typename acc_t, typename scalar_t>
SSDF_HOST_DEVICE inline acc_t sample_interval(const RaySamples<scalar_t>& ray, int64_t i, acc_t ray_norm) {
  if (i + 1 < ray.count) {
    return (static_cast<acc_t>(ray.z[(i + 1) * ray.z_stride]) - static_cast<acc_t>(ray.z[i * ray.z_stride])) * ray_norm;
  }
  return acc_t(1e10) * ray_norm;
}

// q = sigmoid(-s / beta) of an SDF sample (SDF mode): sigma = q / beta.
template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t sdf_occupancy(acc_t sdf, acc_t beta) {
  return sigmoid_of(-sdf / beta);
}

// sigma from the raw density input: sigmoid(-s / beta) / beta in SDF mode, the input itself otherwise.
template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t sample_sigma(acc_t raw, acc_t beta, bool sdf_mode) {
  return sdf_mode ? sdf_occupancy(raw, beta) / beta : raw;
}

// T_{i+1} = T_i (1 - alpha_i + 1e-10).
template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t next_transmittance(acc_t t, acc_t alpha) {
  return t * ((acc_t(1) - alpha) + acc_t(1e-10));
}

// Forward scan of one ray: alpha_i, T_i and the final weights w_i (after force_background).
// alpha/transmittance may be null when the caller needs only the weights.
template <typename acc_t, typename scalar_t>
SSDF_HOST_DEVICE inline void ray_weights(const RaySamples<scalar_t>& ray, acc_t ray_norm, acc_t beta, bool sdf_mode,
                                         bool force_background, acc_t* weights, acc_t* alpha, acc_t* transmittance) {
  acc_t t = acc_t(1);
  acc_t sum_but_last = acc_t(0);
  for (int64_t i = 0; i < ray.count; ++i) {
    const acc_t sigma = sample_sigma(static_cast<acc_t>(ray.density[i * ray.density_stride]), beta, sdf_mode);
    const acc_t a = acc_t(1) - std::exp(-sigma * sample_interval(ray, i, ray_norm));
    const acc_t w = a * t;
    if (alpha) alpha[i] = a;
    if (transmittance) transmittance[i] = t;
    weights[i] = w;
    if (i + 1 < ray.count) sum_but_last += w;
    t = next_transmittance(t, a);
  }
  if (force_background) weights[ray.count - 1] = acc_t(1) - sum_but_last;
}

// Reverse scan (division-free): on entry v[i] = dL/dw_i for the final weights; on exit
// v[i] = dL/dalpha_i. With force_background the last weight is 1 - sum of the others, so its
// gradient is pushed onto them first.
template <typename acc_t>
SSDF_HOST_DEVICE inline void ray_alpha_gradients(int64_t count, const acc_t* alpha, const acc_t* transmittance,
                                                 bool force_background, acc_t* v) {
  if (force_background) {
    const acc_t last = v[count - 1];
    for (int64_t i = 0; i + 1 < count; ++i) v[i] -= last;
    v[count - 1] = acc_t(0);
  }
  acc_t later = acc_t(0);  // U_k = sum_{i>k} v_i alpha_i prod_{k<j<i} (1 - alpha_j + 1e-10)
  for (int64_t k = count - 1; k >= 0; --k) {
    const acc_t vk = v[k];
    v[k] = transmittance[k] * (vk - later);
    later = vk * alpha[k] + ((acc_t(1) - alpha[k]) + acc_t(1e-10)) * later;
  }
}

// Gradients of one sample's raw density input (and its contribution to dL/dbeta) from dL/dalpha.
template <typename acc_t>
struct DensityGradient {
  acc_t density;
  acc_t beta;
};

// The same from the forward's q = sdf_occupancy(raw, beta) (SDF mode; unused otherwise) and
// e = exp(-sigma delta) = 1 - alpha, for callers that kept them from the scan.
template <typename acc_t>
SSDF_HOST_DEVICE inline DensityGradient<acc_t> density_gradient_from(acc_t grad_alpha, acc_t raw, acc_t delta,
                                                                     acc_t beta, acc_t q, acc_t e, bool sdf_mode) {
  const acc_t grad_sigma = grad_alpha * delta * e;  // dalpha/dsigma = delta exp(-sigma delta)
  if (!sdf_mode) return {grad_sigma, acc_t(0)};
  const acc_t q_slope = q * (acc_t(1) - q);
  const acc_t beta2 = beta * beta;
  // dsigma/ds = -q(1-q)/beta^2;  dsigma/dbeta = -q/beta^2 + q(1-q) s / beta^3
  return {-grad_sigma * q_slope / beta2, grad_sigma * (-q / beta2 + q_slope * raw / (beta2 * beta))};
}

template <typename acc_t>
SSDF_HOST_DEVICE inline DensityGradient<acc_t> sample_density_gradient(acc_t grad_alpha, acc_t raw, acc_t delta,
                                                                       acc_t beta, bool sdf_mode) {
  const acc_t sigma = sample_sigma(raw, beta, sdf_mode);
  const acc_t q = sdf_mode ? sdf_occupancy(raw, beta) : acc_t(0);
  return density_gradient_from(grad_alpha, raw, delta, beta, q, std::exp(-sigma * delta), sdf_mode);
}

// Raw pointers and strides of the inputs, for the hot loops.
template <typename scalar_t, typename color_t>
struct RayData {
  const scalar_t* density;
  int64_t density_ray_stride, density_sample_stride;
  const scalar_t* z;
  int64_t z_ray_stride, z_sample_stride;
  const scalar_t* ray_norm;
  int64_t ray_norm_stride;
  const color_t* rgb;
  int64_t rgb_ray_stride, rgb_sample_stride;
  const color_t* features;  // null when absent
  int64_t feature_ray_stride, feature_sample_stride;
  int64_t samples, channels;

  SSDF_HOST_DEVICE RaySamples<scalar_t> ray(int64_t r) const {
    return {density + r * density_ray_stride, density_sample_stride, z + r * z_ray_stride, z_sample_stride, samples};
  }
  SSDF_HOST_DEVICE const color_t* rgb_at(int64_t r, int64_t i) const { return rgb + r * rgb_ray_stride + i * rgb_sample_stride; }
  SSDF_HOST_DEVICE const color_t* features_at(int64_t r, int64_t i) const {
    return features + r * feature_ray_stride + i * feature_sample_stride;
  }
};

struct RenderOptions {
  bool sdf_mode;
  bool force_background;
  int64_t activation;
};


// Upstream gradients (null when absent) and the input gradients to write (null when not wanted).
// The input gradients may be strided views (one [R, S, K] buffer for the packed layout), with a unit
// stride along their channels.
template <typename scalar_t, typename color_t>
struct GradientPointers {
  const color_t* grad_rgb_map;      // [R, 3]
  const color_t* grad_feature_map;  // [R, C]
  const scalar_t* grad_weights;     // [R, S]
  scalar_t* grad_density;           // [R, S]
  int64_t density_ray_stride, density_sample_stride;
  color_t* grad_rgb;                // [R, S, 3]
  int64_t rgb_ray_stride, rgb_sample_stride;
  color_t* grad_features;           // [R, S, C]
  int64_t feature_ray_stride, feature_sample_stride;
  bool want_beta;

  SSDF_HOST_DEVICE scalar_t* density_at(int64_t r, int64_t i) const {
    return grad_density + r * density_ray_stride + i * density_sample_stride;
  }
  SSDF_HOST_DEVICE color_t* rgb_at(int64_t r, int64_t i) const {
    return grad_rgb + r * rgb_ray_stride + i * rgb_sample_stride;
  }
  SSDF_HOST_DEVICE color_t* features_at(int64_t r, int64_t i) const {
    return grad_features + r * feature_ray_stride + i * feature_sample_stride;
  }
};

}  // namespace stylesdf_fast

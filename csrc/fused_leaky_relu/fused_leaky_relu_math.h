// Per-element math of the fused bias + leaky ReLU, shared by the CPU loop and the CUDA kernel.
//   y  = scale * leaky_relu(x + b, negative_slope)
//   dx = scale * (y > 0 ? dy : negative_slope * dy)
// The backward mask is read from the saved output y: with negative_slope >= 0 and scale > 0
// (checked by the callers) y > 0 exactly when x + b > 0, so x never has to be kept.
#pragma once

#include "../common/host_device.h"

namespace stylesdf_fast {

template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t bias_leaky_relu(acc_t x, acc_t bias, acc_t negative_slope, acc_t scale) {
  const acc_t v = x + bias;
  return v > acc_t(0) ? v * scale : v * (negative_slope * scale);
}

// The vector-Jacobian product of bias_leaky_relu, written in terms of the forward output.
template <typename acc_t>
SSDF_HOST_DEVICE inline acc_t bias_leaky_relu_vjp(acc_t grad, acc_t output, acc_t negative_slope, acc_t scale) {
  return output > acc_t(0) ? grad * scale : grad * (negative_slope * scale);
}

}  // namespace stylesdf_fast

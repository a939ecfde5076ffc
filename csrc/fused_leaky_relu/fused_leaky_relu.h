// fused_leaky_relu: StyleGAN2's bias + leaky ReLU in one pass (docs/kernels.md section 2).
//
//   y = scale * leaky_relu(input + bias, negative_slope)     bias [C] broadcast along dim 1
//   backward: grad_input = scale * (y > 0 ? grad : negative_slope * grad), grad_bias = sum over all but dim 1
//   The backward is linear in grad with a mask from y, so it is its own derivative in grad (no
//   second-order term through y): the registered backward op is differentiated by calling it again.
//
// Host API, one CPU and (built with CUDA) one CUDA function per op; registered with the dispatcher
// beside each implementation (TORCH_LIBRARY_IMPL at the end of the _cpu.cpp / _cuda.cu files).
// Inputs: input [B, C, ...] (rank >= 2, any dense layout), bias [C] or none.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace stylesdf_fast {

at::Tensor fused_leaky_relu_cpu(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                double negative_slope, double scale);
// Returns (grad_input, grad_bias); grad_bias has shape [C] when bias_grad, else [0].
std::tuple<at::Tensor, at::Tensor> fused_leaky_relu_backward_cpu(const at::Tensor& grad_output,
                                                                 const at::Tensor& output, double negative_slope,
                                                                 double scale, bool bias_grad);
#ifdef WITH_CUDA
at::Tensor fused_leaky_relu_cuda(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                 double negative_slope, double scale);
std::tuple<at::Tensor, at::Tensor> fused_leaky_relu_backward_cuda(const at::Tensor& grad_output,
                                                                  const at::Tensor& output, double negative_slope,
                                                                  double scale, bool bias_grad);
#endif

}  // namespace stylesdf_fast

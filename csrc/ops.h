// Host entry points of every op, one CPU and (when built with CUDA) one CUDA function each.
// Registered with the dispatcher in ops.cpp; Python never calls these directly.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace stylesdf_fast {

// fused_leaky_relu: y = scale * leaky_relu(input + bias[broadcast on dim 1], negative_slope)
at::Tensor fused_leaky_relu_cpu(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                double negative_slope, double scale);
// Returns (grad_input, grad_bias); grad_bias has shape [C] when bias_grad, else [0].
std::tuple<at::Tensor, at::Tensor> fused_leaky_relu_backward_cpu(const at::Tensor& grad_output,
                                                                 const at::Tensor& output, double negative_slope,
                                                                 double scale, bool bias_grad);

// upfirdn2d: input [N, C, H, W], kernel [KH, KW]
at::Tensor upfirdn2d_cpu(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                         int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                         int64_t pad_y1);

// sdf_volume_render: density [R, S] (sdf when beta is given, sigma otherwise), rgb [R, S, 3],
// features [R, S, C] or none, z_vals [R, S], ray_norm [R], beta [1] or none.
// Returns (rgb_map [R, 3], feature_map [R, C], weights [R, S]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_cpu(
    const at::Tensor& density, const at::Tensor& rgb, const std::optional<at::Tensor>& features,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const std::optional<at::Tensor>& beta,
    bool force_background, int64_t rgb_activation);
// Returns (grad_density, grad_rgb, grad_features, grad_beta); an entry not asked for by output_mask
// (density, rgb, features, beta) has shape [0].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_backward_cpu(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& density, const at::Tensor& rgb,
    const std::optional<at::Tensor>& features, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const std::optional<at::Tensor>& beta, bool force_background, int64_t rgb_activation,
    std::array<bool, 4> output_mask);

// sdf_volume_render_packed: the same with sdf/rgb/features given as channel ranges of one
// raw [R, S, K] buffer (the network output); the backward returns (grad_raw [R, S, K], grad_beta).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_packed_cpu(
    const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset, int64_t feature_offset, int64_t channels,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const at::Tensor& beta, bool force_background);
std::tuple<at::Tensor, at::Tensor> sdf_volume_render_packed_backward_cpu(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset,
    int64_t feature_offset, int64_t channels, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const at::Tensor& beta, bool force_background, std::array<bool, 2> output_mask);

// film_siren: y = sin(gamma[b, c] * x[b, n, c] + beta[b, c]); x [B, ..., C] (rank >= 2, seen as
// [B, N, C]), gamma and beta [B, C] of x's dtype (or float32 when x is float16/bfloat16).
at::Tensor film_siren_cpu(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta);
// Returns (grad_x, grad_gamma, grad_beta), each in its input's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> film_siren_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                       const at::Tensor& gamma,
                                                                       const at::Tensor& beta);
// The vector-Jacobian product of film_siren_backward with the cotangents gg_x [B, ..., C],
// gg_gamma, gg_beta [B, C] of its outputs (absent = zero). Returns (d_grad, d_x, d_gamma, d_beta).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_siren_double_backward_cpu(
    const std::optional<at::Tensor>& gg_x, const std::optional<at::Tensor>& gg_gamma,
    const std::optional<at::Tensor>& gg_beta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta);

#ifdef WITH_CUDA
at::Tensor fused_leaky_relu_cuda(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                 double negative_slope, double scale);
std::tuple<at::Tensor, at::Tensor> fused_leaky_relu_backward_cuda(const at::Tensor& grad_output,
                                                                  const at::Tensor& output, double negative_slope,
                                                                  double scale, bool bias_grad);
at::Tensor upfirdn2d_cuda(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                          int64_t pad_y1);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_cuda(
    const at::Tensor& density, const at::Tensor& rgb, const std::optional<at::Tensor>& features,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const std::optional<at::Tensor>& beta,
    bool force_background, int64_t rgb_activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_backward_cuda(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& density, const at::Tensor& rgb,
    const std::optional<at::Tensor>& features, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const std::optional<at::Tensor>& beta, bool force_background, int64_t rgb_activation,
    std::array<bool, 4> output_mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_packed_cuda(
    const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset, int64_t feature_offset, int64_t channels,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const at::Tensor& beta, bool force_background);
std::tuple<at::Tensor, at::Tensor> sdf_volume_render_packed_backward_cuda(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset,
    int64_t feature_offset, int64_t channels, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const at::Tensor& beta, bool force_background, std::array<bool, 2> output_mask);
at::Tensor film_siren_cuda(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta);
std::tuple<at::Tensor, at::Tensor, at::Tensor> film_siren_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                        const at::Tensor& gamma,
                                                                        const at::Tensor& beta);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_siren_double_backward_cuda(
    const std::optional<at::Tensor>& gg_x, const std::optional<at::Tensor>& gg_gamma,
    const std::optional<at::Tensor>& gg_beta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta);
#endif

}  // namespace stylesdf_fast

// Host entry points of every op, one CPU and (when built with CUDA) one CUDA function each.
// Registered with the dispatcher in ops.cpp; Python never calls these directly.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace stylesdf_fast {

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

#ifdef WITH_CUDA
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
#endif

}  // namespace stylesdf_fast

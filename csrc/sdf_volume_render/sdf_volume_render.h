// sdf_volume_render: StyleSDF's volume integration, fused (docs/kernels.md section 1).
//
//   delta_i = (z_{i+1} - z_i) |d|  (i < S-1),   delta_{S-1} = 1e10 |d|
//   sigma_i = sigmoid(-s_i / beta) / beta   (SDF mode)   or given (density mode)
//   alpha_i = 1 - exp(-sigma_i delta_i),  T_i = prod_{j<i} (1 - alpha_j + 1e-10),  w_i = alpha_i T_i
//   force_background: w_{S-1} = 1 - sum_{i<S-1} w_i
//   rgb_map = -1 + 2 sum_i w_i sigmoid(c_i) (or sum_i w_i sigmoid(c_i), or sum_i w_i c_i),  feature_map = sum_i w_i f_i
//   The backward re-reads the inputs, recomputes each ray's alpha and transmittance and runs a
//   division-free reverse scan (alpha = 1 at the last sample); nothing of size R x S x C is kept.
//
// Host API, one CPU and (built with CUDA) one CUDA function per op; registered with the dispatcher
// beside each implementation (TORCH_LIBRARY_IMPL at the end of the _cpu.cpp / _cuda.cu files).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
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

// Host-side argument checks and views shared by the CPU and CUDA volume aggregation. Inputs arrive
// flattened to rays by the Python wrapper: density [R, S], rgb [R, S, 3], features [R, S, C] or
// none, z_vals [R, S], ray_norm [R], beta [1] (SDF mode) or none (density mode). Density, depths and
// ray norms may have any strides (views of the network output); rgb and features need a unit stride
// along their last dim and are copied only when they lack it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <array>

#include <optional>
#include <utility>

#include "../common/huge_pages.h"
#include "sdf_volume_render_math.h"

namespace stylesdf_fast {

struct VolumeRenderInputs {
  at::Tensor density, rgb, features, z_vals, ray_norm, beta;  // features/beta undefined when absent
  int64_t rays, samples, channels;
};

inline at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

inline VolumeRenderInputs make_volume_render_inputs(const at::Tensor& density, const at::Tensor& rgb,
                                                    const std::optional<at::Tensor>& features,
                                                    const at::Tensor& z_vals, const at::Tensor& ray_norm,
                                                    const std::optional<at::Tensor>& beta) {
  TORCH_CHECK(density.dim() == 2 && density.size(1) >= 1, "sdf_volume_render: density must be [R, S], got ",
              density.sizes());
  const int64_t rays = density.size(0), samples = density.size(1);
  TORCH_CHECK(rgb.dim() == 3 && rgb.size(0) == rays && rgb.size(1) == samples && rgb.size(2) == 3,
              "sdf_volume_render: rgb must be [R, S, 3] = [", rays, ", ", samples, ", 3], got ", rgb.sizes());
  TORCH_CHECK(z_vals.sizes() == density.sizes(), "sdf_volume_render: z_vals must be [R, S], got ", z_vals.sizes());
  TORCH_CHECK(ray_norm.dim() == 1 && ray_norm.size(0) == rays, "sdf_volume_render: ray_norm must be [R], got ",
              ray_norm.sizes());
  const auto scalar = density.scalar_type();
  TORCH_CHECK(scalar == at::kFloat || scalar == at::kDouble, "sdf_volume_render: density must be float32/float64");
  TORCH_CHECK(z_vals.scalar_type() == scalar && ray_norm.scalar_type() == scalar,
              "sdf_volume_render: z_vals and ray_norm must have the density's dtype");
  const auto color = rgb.scalar_type();
  TORCH_CHECK(color == scalar || (scalar == at::kFloat && (color == at::kHalf || color == at::kBFloat16)),
              "sdf_volume_render: rgb must have the density's dtype or float16/bfloat16, got ", color);
  VolumeRenderInputs in{density, unit_last_stride(rgb), at::Tensor(), z_vals, ray_norm, at::Tensor(), rays, samples, 0};
  if (features.has_value() && features->defined()) {
    TORCH_CHECK(features->dim() == 3 && features->size(0) == rays && features->size(1) == samples,
                "sdf_volume_render: features must be [R, S, C], got ", features->sizes());
    TORCH_CHECK(features->scalar_type() == color, "sdf_volume_render: features must have rgb's dtype");
    in.features = unit_last_stride(*features);
    in.channels = features->size(2);
  }
  if (beta.has_value() && beta->defined()) {
    TORCH_CHECK(beta->numel() == 1 && beta->scalar_type() == scalar,
                "sdf_volume_render: beta must be one element of the density's dtype");
    in.beta = *beta;
  }
  for (const at::Tensor* t : {&in.rgb, &in.features, &in.z_vals, &in.ray_norm, &in.beta}) {
    TORCH_CHECK(!t->defined() || t->device() == density.device(), "sdf_volume_render: all inputs must be on ",
                density.device());
  }
  return in;
}

// An optional upstream gradient as a contiguous tensor, or undefined when absent.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

template <typename scalar_t, typename color_t>
inline RayData<scalar_t, color_t> ray_data_of(const VolumeRenderInputs& in) {
  const bool has_features = in.features.defined();
  return {in.density.const_data_ptr<scalar_t>(),
          in.density.stride(0),
          in.density.stride(1),
          in.z_vals.const_data_ptr<scalar_t>(),
          in.z_vals.stride(0),
          in.z_vals.stride(1),
          in.ray_norm.const_data_ptr<scalar_t>(),
          in.ray_norm.stride(0),
          in.rgb.const_data_ptr<color_t>(),
          in.rgb.stride(0),
          in.rgb.stride(1),
          has_features ? in.features.const_data_ptr<color_t>() : nullptr,
          has_features ? in.features.stride(0) : 0,
          has_features ? in.features.stride(1) : 0,
          in.samples,
          in.channels};
}

// Runs Impl<scalar_t, color_t>::run(args...) for the dtype pair of the inputs: float or double
// depths/densities, colours and features in that dtype or (with float) half / bfloat16.
template <template <typename, typename> class Impl, typename... Args>
inline void dispatch_dtypes(const VolumeRenderInputs& in, Args&&... args) {
  const at::ScalarType color = in.rgb.scalar_type();
  if (in.density.scalar_type() == at::kDouble) {
    Impl<double, double>::run(std::forward<Args>(args)...);
  } else if (color == at::kHalf) {
    Impl<float, at::Half>::run(std::forward<Args>(args)...);
  } else if (color == at::kBFloat16) {
    Impl<float, at::BFloat16>::run(std::forward<Args>(args)...);
  } else {
    Impl<float, float>::run(std::forward<Args>(args)...);
  }
}

// The backward's upstream gradients (undefined when absent) and outputs, with what to write.
struct BackwardTensors {
  at::Tensor grad_rgb_map, grad_feature_map, grad_weights;
  at::Tensor grad_density, grad_rgb, grad_features, grad_beta;
  bool write_density, write_rgb, write_features, want_beta;
};

template <typename scalar_t, typename color_t>
inline GradientPointers<scalar_t, color_t> gradient_pointers_of(const BackwardTensors& t) {
  GradientPointers<scalar_t, color_t> g{};
  g.grad_rgb_map = t.grad_rgb_map.defined() ? t.grad_rgb_map.const_data_ptr<color_t>() : nullptr;
  g.grad_feature_map = t.grad_feature_map.defined() ? t.grad_feature_map.const_data_ptr<color_t>() : nullptr;
  g.grad_weights = t.grad_weights.defined() ? t.grad_weights.const_data_ptr<scalar_t>() : nullptr;
  if (t.write_density) {
    g.grad_density = t.grad_density.mutable_data_ptr<scalar_t>();
    g.density_ray_stride = t.grad_density.stride(0);
    g.density_sample_stride = t.grad_density.stride(1);
  }
  if (t.write_rgb) {
    g.grad_rgb = t.grad_rgb.mutable_data_ptr<color_t>();
    g.rgb_ray_stride = t.grad_rgb.stride(0);
    g.rgb_sample_stride = t.grad_rgb.stride(1);
  }
  if (t.write_features) {
    g.grad_features = t.grad_features.mutable_data_ptr<color_t>();
    g.feature_ray_stride = t.grad_features.stride(0);
    g.feature_sample_stride = t.grad_features.stride(1);
  }
  g.want_beta = t.want_beta;
  return g;
}

// The upstream gradients (contiguous, undefined when absent) and the zero-size, zero-filled or
// uninitialised outputs: an output that is wanted but has no upstream gradient is all zeros.
inline BackwardTensors make_backward_tensors(const VolumeRenderInputs& in,
                                             const std::optional<at::Tensor>& grad_rgb_map,
                                             const std::optional<at::Tensor>& grad_feature_map,
                                             const std::optional<at::Tensor>& grad_weights,
                                             std::array<bool, 4> output_mask) {
  BackwardTensors t;
  t.grad_rgb_map = contiguous_or_undefined(grad_rgb_map);
  t.grad_feature_map = in.features.defined() ? contiguous_or_undefined(grad_feature_map) : at::Tensor();
  t.grad_weights = contiguous_or_undefined(grad_weights);
  const bool want_features = output_mask[2] && in.features.defined();
  t.want_beta = output_mask[3] && in.beta.defined();
  t.write_density = output_mask[0];
  t.write_rgb = output_mask[1] && t.grad_rgb_map.defined();
  t.write_features = want_features && t.grad_feature_map.defined();
  const auto sized = [](bool wanted, bool written, at::IntArrayRef shape, const at::TensorOptions& options) {
    if (!wanted) return at::empty({0}, options);
    return written ? empty_output(shape, options) : at::zeros(shape, options);
  };
  t.grad_density = sized(output_mask[0], true, {in.rays, in.samples}, in.density.options());
  t.grad_rgb = sized(output_mask[1], t.write_rgb, {in.rays, in.samples, 3}, in.rgb.options());
  t.grad_features = sized(want_features, t.write_features, {in.rays, in.samples, in.channels},
                          in.features.defined() ? in.features.options() : in.rgb.options());
  t.grad_beta = at::zeros({t.want_beta ? 1 : 0}, in.density.options());
  return t;
}

// The forward's outputs: rgb_map [R, 3], feature_map [R, C] (C = 0 without features), weights [R, S].
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> make_forward_outputs(const VolumeRenderInputs& in,
                                                                           int64_t rgb_activation) {
  TORCH_CHECK(rgb_activation >= kSigmoidPm1 && rgb_activation <= kIdentity,
              "sdf_volume_render: unknown rgb_activation ", rgb_activation);
  return {at::empty({in.rays, 3}, in.rgb.options()),
          at::empty({in.rays, in.channels}, in.features.defined() ? in.features.options() : in.rgb.options()),
          at::empty({in.rays, in.samples}, in.density.options())};
}

// The backward over all rays for one device; the outputs in `t` are already allocated.
void run_volume_render_backward_cpu(const VolumeRenderInputs& in, const RenderOptions& opt, const BackwardTensors& t);
#ifdef WITH_CUDA
void run_volume_render_backward_cuda(const VolumeRenderInputs& in, const RenderOptions& opt, const BackwardTensors& t);
#endif

// --- the packed layout: one [R, S, K] buffer (the network output) holding rgb logits at channels
// [rgb_offset, +3), the sdf at sdf_offset and features at [feature_offset, +channels). Taking the
// buffer itself (not three slices of it) lets the backward write one [R, S, K] gradient, instead of
// autograd materialising a full-size zero gradient per slice and summing them.

struct PackedLayout {
  int64_t rgb_offset, sdf_offset, feature_offset, channels;
};

inline void check_packed_layout(const at::Tensor& raw, const PackedLayout& p) {
  TORCH_CHECK(raw.dim() == 3 && raw.stride(2) == 1, "sdf_volume_render_packed: raw must be [R, S, K] with unit channel stride");
  const int64_t k = raw.size(2);
  const auto inside = [k](int64_t start, int64_t count) { return start >= 0 && count >= 0 && start + count <= k; };
  TORCH_CHECK(inside(p.rgb_offset, 3) && inside(p.sdf_offset, 1) && inside(p.feature_offset, p.channels),
              "sdf_volume_render_packed: channel ranges outside raw's ", k, " channels");
  // The backward writes each range's gradient into one buffer: ranges sharing a channel would
  // overwrite each other's gradients instead of adding them.
  const auto apart = [](int64_t a, int64_t a_count, int64_t b, int64_t b_count) {
    return a_count == 0 || b_count == 0 || a + a_count <= b || b + b_count <= a;
  };
  TORCH_CHECK(apart(p.rgb_offset, 3, p.sdf_offset, 1) && apart(p.rgb_offset, 3, p.feature_offset, p.channels) &&
                  apart(p.sdf_offset, 1, p.feature_offset, p.channels),
              "sdf_volume_render_packed: the rgb [", p.rgb_offset, ", +3), sdf [", p.sdf_offset, "] and features [",
              p.feature_offset, ", +", p.channels, ") channel ranges overlap");
}

// (sdf, rgb, features) views of the packed buffer (features undefined when channels == 0).
inline std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> packed_views(const at::Tensor& raw,
                                                                                 const PackedLayout& p) {
  std::optional<at::Tensor> features;
  if (p.channels > 0) features = raw.narrow(2, p.feature_offset, p.channels);
  return {raw.select(2, p.sdf_offset), raw.narrow(2, p.rgb_offset, 3), features};
}

using VolumeRenderForward = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, bool, int64_t);
using VolumeRenderBackwardRunner = void (*)(const VolumeRenderInputs&, const RenderOptions&, const BackwardTensors&);

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> packed_forward(VolumeRenderForward forward,
                                                                     const at::Tensor& raw, const PackedLayout& p,
                                                                     const at::Tensor& z_vals,
                                                                     const at::Tensor& ray_norm,
                                                                     const at::Tensor& beta, bool force_background) {
  check_packed_layout(raw, p);
  const auto [sdf, rgb, features] = packed_views(raw, p);
  return forward(sdf, rgb, features, z_vals, ray_norm, beta, force_background, kSigmoidPm1);
}

// Returns (grad_raw [R, S, K], grad_beta [1] or [0]); channels outside the three ranges get zeros.
inline std::tuple<at::Tensor, at::Tensor> packed_backward(
    VolumeRenderBackwardRunner run, const std::optional<at::Tensor>& grad_rgb_map,
    const std::optional<at::Tensor>& grad_feature_map, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& raw, const PackedLayout& p, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const at::Tensor& beta, bool force_background, std::array<bool, 2> output_mask) {
  check_packed_layout(raw, p);
  const auto [sdf, rgb, features] = packed_views(raw, p);
  const VolumeRenderInputs in = make_volume_render_inputs(sdf, rgb, features, z_vals, ray_norm, beta);
  BackwardTensors t = make_backward_tensors(in, grad_rgb_map, grad_feature_map, grad_weights,
                                            {false, false, false, output_mask[1]});
  at::Tensor grad_raw = at::empty({0}, raw.options());
  if (output_mask[0]) {
    const bool covered = 4 + p.channels == raw.size(2) && t.grad_rgb_map.defined() &&
                         (p.channels == 0 || t.grad_feature_map.defined());
    grad_raw = covered ? empty_output(raw.sizes(), raw.options()) : at::zeros(raw.sizes(), raw.options());
    const auto [grad_sdf, grad_rgb, grad_features] = packed_views(grad_raw, p);
    t.grad_density = grad_sdf;
    t.write_density = true;
    t.grad_rgb = grad_rgb;
    t.write_rgb = t.grad_rgb_map.defined();
    if (grad_features.has_value()) {
      t.grad_features = *grad_features;
      t.write_features = t.grad_feature_map.defined();
    }
  }
  if (in.rays > 0 && (output_mask[0] || t.want_beta)) run(in, RenderOptions{true, force_background, kSigmoidPm1}, t);
  return {grad_raw, t.grad_beta};
}

}  // namespace stylesdf_fast

// Host-side argument checks and views shared by the CPU and CUDA volume aggregation. Inputs arrive
// flattened to rays by the Python wrapper: density [R, S], rgb [R, S, 3], features [R, S, C] or
// none, z_vals [R, S], ray_norm [R], beta [1] (SDF mode) or none (density mode). Density, depths and
// ray norms may have any strides (views of the network output); rgb and features need a unit stride
// along their last dim and are copied only when they lack it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>

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

}  // namespace stylesdf_fast

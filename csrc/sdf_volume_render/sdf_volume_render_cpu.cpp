// CPU volume aggregation: parallel over rays; per ray the scalar scan of sdf_volume_render_math.h,
// then the colour and feature sums vectorised over channels. Nothing of size R x S x C is allocated
// besides the gradients themselves; the beta gradient is summed over fixed blocks of rays in a fixed
// order, so it does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../common/cpu_multiversion.h"
#include "sdf_volume_render.h"
#include "sdf_volume_render_args.h"
#include "sdf_volume_render_math.h"

namespace stylesdf_fast {
namespace {

constexpr int64_t kLanes = 16;  // independent partial sums so the channel dot product vectorises exactly

template <typename scalar_t, typename color_t>
SSDF_CPU_MULTIVERSION void forward_rays(const RayData<scalar_t, color_t>& d, scalar_t beta, RenderOptions opt,
                                        color_t* rgb_map, color_t* feature_map, scalar_t* weights_out,
                                        int64_t begin, int64_t end) {
  using acc_t = scalar_t;
  const int64_t S = d.samples, C = d.channels;
  std::vector<acc_t> w(S), feature_sum(C);
  for (int64_t r = begin; r < end; ++r) {
    ray_weights<acc_t>(d.ray(r), static_cast<acc_t>(d.ray_norm[r * d.ray_norm_stride]), beta, opt.sdf_mode,
                       opt.force_background, w.data(), nullptr, nullptr);
    std::copy(w.begin(), w.end(), weights_out + r * S);
    for (int64_t c = 0; c < 3; ++c) {
      acc_t sum = acc_t(0);
      for (int64_t i = 0; i < S; ++i) sum += w[i] * activated_color(static_cast<acc_t>(d.rgb_at(r, i)[c]), opt.activation);
      rgb_map[r * 3 + c] = static_cast<color_t>(opt.activation == kSigmoidPm1 ? acc_t(-1) + acc_t(2) * sum : sum);
    }
    if (!d.features) continue;
    std::fill(feature_sum.begin(), feature_sum.end(), acc_t(0));
    acc_t* __restrict__ acc = feature_sum.data();
    for (int64_t i = 0; i < S; ++i) {
      const color_t* __restrict__ f = d.features_at(r, i);
      const acc_t wi = w[i];
      for (int64_t c = 0; c < C; ++c) acc[c] += wi * static_cast<acc_t>(f[c]);
    }
    color_t* out = feature_map + r * C;
    for (int64_t c = 0; c < C; ++c) out[c] = static_cast<color_t>(acc[c]);
  }
}

template <typename acc_t, typename color_t>
inline acc_t dot_and_scale(const color_t* __restrict__ f, const color_t* __restrict__ g, acc_t w,
                           color_t* __restrict__ grad_f, int64_t C) {
  acc_t lanes[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const acc_t gc = static_cast<acc_t>(g[c + j]);
      lanes[j] += gc * static_cast<acc_t>(f[c + j]);
      if (grad_f) grad_f[c + j] = static_cast<color_t>(w * gc);
    }
  }
  for (; c < C; ++c) {
    const acc_t gc = static_cast<acc_t>(g[c]);
    lanes[0] += gc * static_cast<acc_t>(f[c]);
    if (grad_f) grad_f[c] = static_cast<color_t>(w * gc);
  }
  acc_t total = acc_t(0);
  for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

// Rays [begin, end): writes the wanted input gradients and returns this range's dL/dbeta.
template <typename scalar_t, typename color_t>
SSDF_CPU_MULTIVERSION scalar_t backward_rays(const RayData<scalar_t, color_t>& d, scalar_t beta, RenderOptions opt,
                                             const GradientPointers<scalar_t, color_t>& b, int64_t begin, int64_t end) {
  using acc_t = scalar_t;
  const int64_t S = d.samples, C = d.channels;
  const acc_t gain = color_gain<acc_t>(opt.activation);
  std::vector<acc_t> w(S), alpha(S), transmittance(S), v(S);
  acc_t grad_beta = acc_t(0);
  for (int64_t r = begin; r < end; ++r) {
    const RaySamples<scalar_t> ray = d.ray(r);
    const acc_t norm = static_cast<acc_t>(d.ray_norm[r * d.ray_norm_stride]);
    ray_weights<acc_t>(ray, norm, beta, opt.sdf_mode, opt.force_background, w.data(), alpha.data(),
                       transmittance.data());
    // v_i = dL/dw_i, and the colour / feature gradients, which need only w_i.
    for (int64_t i = 0; i < S; ++i) v[i] = b.grad_weights ? static_cast<acc_t>(b.grad_weights[r * S + i]) : acc_t(0);
    if (b.grad_rgb_map) {
      const color_t* g = b.grad_rgb_map + r * 3;
      for (int64_t i = 0; i < S; ++i) {
        const color_t* logits = d.rgb_at(r, i);
        for (int64_t c = 0; c < 3; ++c) {
          const acc_t logit = static_cast<acc_t>(logits[c]);
          const acc_t gc = gain * static_cast<acc_t>(g[c]);
          v[i] += gc * activated_color(logit, opt.activation);
          if (b.grad_rgb) {
            b.rgb_at(r, i)[c] =
                static_cast<color_t>(gc * w[i] * activated_color_derivative(logit, opt.activation));
          }
        }
      }
    }
    if (d.features && b.grad_feature_map) {
      const color_t* g = b.grad_feature_map + r * C;
      for (int64_t i = 0; i < S; ++i) {
        color_t* grad_f = b.grad_features ? b.features_at(r, i) : nullptr;
        v[i] += dot_and_scale<acc_t, color_t>(d.features_at(r, i), g, w[i], grad_f, C);
      }
    }
    if (!b.grad_density && !b.want_beta) continue;
    ray_alpha_gradients<acc_t>(S, alpha.data(), transmittance.data(), opt.force_background, v.data());
    for (int64_t i = 0; i < S; ++i) {
      const DensityGradient<acc_t> g = sample_density_gradient<acc_t>(
          v[i], static_cast<acc_t>(ray.density[i * ray.density_stride]), sample_interval(ray, i, norm), beta,
          opt.sdf_mode);
      if (b.grad_density) *b.density_at(r, i) = static_cast<scalar_t>(g.density);
      grad_beta += g.beta;
    }
  }
  return grad_beta;
}

int64_t rays_per_task(int64_t samples, int64_t channels) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, samples * (channels + 4)));
}

template <typename scalar_t, typename color_t>
struct ForwardImpl {
  static void run(const VolumeRenderInputs& in, RenderOptions opt, at::Tensor& rgb_map, at::Tensor& feature_map,
                  at::Tensor& weights) {
    const RayData<scalar_t, color_t> d = ray_data_of<scalar_t, color_t>(in);
    const scalar_t beta = in.beta.defined() ? *in.beta.const_data_ptr<scalar_t>() : scalar_t(1);
    color_t* rgb_out = rgb_map.mutable_data_ptr<color_t>();
    color_t* feature_out = in.features.defined() ? feature_map.mutable_data_ptr<color_t>() : nullptr;
    scalar_t* weights_out = weights.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, in.rays, rays_per_task(in.samples, in.channels), [&](int64_t begin, int64_t end) {
      forward_rays<scalar_t, color_t>(d, beta, opt, rgb_out, feature_out, weights_out, begin, end);
    });
  }
};

template <typename scalar_t, typename color_t>
struct BackwardImpl {
  static void run(const VolumeRenderInputs& in, RenderOptions opt, const BackwardTensors& t) {
    const RayData<scalar_t, color_t> d = ray_data_of<scalar_t, color_t>(in);
    const scalar_t beta = in.beta.defined() ? *in.beta.const_data_ptr<scalar_t>() : scalar_t(1);
    const GradientPointers<scalar_t, color_t> b = gradient_pointers_of<scalar_t, color_t>(t);
    // Fixed blocks (independent of the thread count) keep dL/dbeta bitwise reproducible.
    const int64_t num_blocks = std::min<int64_t>(in.rays, 256);
    const int64_t rays_per_block = (in.rays + num_blocks - 1) / num_blocks;
    std::vector<scalar_t> partial(num_blocks, scalar_t(0));
    at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t begin = block * rays_per_block, end = std::min(in.rays, begin + rays_per_block);
        partial[block] = backward_rays<scalar_t, color_t>(d, beta, opt, b, begin, end);
      }
    });
    if (t.want_beta) {
      scalar_t total = scalar_t(0);
      for (scalar_t p : partial) total += p;
      *t.grad_beta.mutable_data_ptr<scalar_t>() = total;
    }
  }
};

}  // namespace

void run_volume_render_backward_cpu(const VolumeRenderInputs& in, const RenderOptions& opt, const BackwardTensors& t) {
  dispatch_dtypes<BackwardImpl>(in, in, opt, t);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_cpu(
    const at::Tensor& density, const at::Tensor& rgb, const std::optional<at::Tensor>& features,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const std::optional<at::Tensor>& beta,
    bool force_background, int64_t rgb_activation) {
  const VolumeRenderInputs in = make_volume_render_inputs(density, rgb, features, z_vals, ray_norm, beta);
  auto [rgb_map, feature_map, weights] = make_forward_outputs(in, rgb_activation);
  if (in.rays == 0) return {rgb_map, feature_map, weights};
  const RenderOptions opt{in.beta.defined(), force_background, rgb_activation};
  dispatch_dtypes<ForwardImpl>(in, in, opt, rgb_map, feature_map, weights);
  return {rgb_map, feature_map, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_backward_cpu(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& density, const at::Tensor& rgb,
    const std::optional<at::Tensor>& features, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const std::optional<at::Tensor>& beta, bool force_background, int64_t rgb_activation,
    std::array<bool, 4> output_mask) {
  const VolumeRenderInputs in = make_volume_render_inputs(density, rgb, features, z_vals, ray_norm, beta);
  const BackwardTensors t = make_backward_tensors(in, grad_rgb_map, grad_feature_map, grad_weights, output_mask);
  if (in.rays == 0) return {t.grad_density, t.grad_rgb, t.grad_features, t.grad_beta};
  run_volume_render_backward_cpu(in, RenderOptions{in.beta.defined(), force_background, rgb_activation}, t);
  return {t.grad_density, t.grad_rgb, t.grad_features, t.grad_beta};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_packed_cpu(
    const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset, int64_t feature_offset, int64_t channels,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const at::Tensor& beta, bool force_background) {
  return packed_forward(&sdf_volume_render_cpu, raw, {rgb_offset, sdf_offset, feature_offset, channels}, z_vals,
                        ray_norm, beta, force_background);
}

std::tuple<at::Tensor, at::Tensor> sdf_volume_render_packed_backward_cpu(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset,
    int64_t feature_offset, int64_t channels, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const at::Tensor& beta, bool force_background, std::array<bool, 2> output_mask) {
  return packed_backward(&run_volume_render_backward_cpu, grad_rgb_map, grad_feature_map, grad_weights, raw,
                         {rgb_offset, sdf_offset, feature_offset, channels}, z_vals, ray_norm, beta, force_background,
                         output_mask);
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CPU, m) {
  m.impl("sdf_volume_render", &stylesdf_fast::sdf_volume_render_cpu);
  m.impl("sdf_volume_render_backward", &stylesdf_fast::sdf_volume_render_backward_cpu);
  m.impl("sdf_volume_render_packed", &stylesdf_fast::sdf_volume_render_packed_cpu);
  m.impl("sdf_volume_render_packed_backward", &stylesdf_fast::sdf_volume_render_packed_backward_cpu);
}

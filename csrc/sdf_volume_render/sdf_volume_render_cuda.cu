// CUDA volume aggregation: one warp per ray (grid-stride over rays). Lane 0 runs the ray's scalar
// scans of sdf_volume_render_math.h into shared memory (S values per array); the 32 lanes then
// stride the channels of each sample row (coalesced), and the samples for per-sample work. The
// beta gradient is reduced per block into partial sums, then summed once (deterministic).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "sdf_volume_render.h"
#include "sdf_volume_render_args.h"
#include "sdf_volume_render_math.h"

namespace stylesdf_fast {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxWarpsPerBlock = 4;
constexpr size_t kSharedBudget = 48 * 1024;  // default dynamic shared memory limit

struct LaunchShape {
  int warps_per_block;
  int blocks;
  size_t shared_bytes;
};

// Warps per block chosen so `arrays` per-sample arrays of every warp fit in shared memory.
LaunchShape launch_shape(int64_t rays, int64_t samples, int arrays, size_t element_size) {
  const size_t per_warp = static_cast<size_t>(arrays) * samples * element_size;
  TORCH_CHECK(per_warp <= kSharedBudget, "sdf_volume_render (CUDA): S = ", samples,
              " samples per ray need more shared memory than one block has; use at most ",
              kSharedBudget / (arrays * element_size), " samples per ray");
  const int warps = static_cast<int>(std::min<size_t>(kMaxWarpsPerBlock, kSharedBudget / per_warp));
  const int64_t blocks = std::min<int64_t>((rays + warps - 1) / warps, 65535LL * 4);
  return {warps, static_cast<int>(std::max<int64_t>(blocks, 1)), per_warp * warps};
}

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;  // complete in lane 0
}

template <typename scalar_t, typename color_t>
__global__ void forward_kernel(RayData<scalar_t, color_t> d, const scalar_t* beta_ptr, RenderOptions opt,
                               int64_t rays, color_t* rgb_map, color_t* feature_map, scalar_t* weights_out) {
  using acc_t = scalar_t;
  extern __shared__ unsigned char shared_bytes[];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t S = d.samples, C = d.channels;
  acc_t* w = reinterpret_cast<acc_t*>(shared_bytes) + warp * S;
  const acc_t beta = beta_ptr ? static_cast<acc_t>(*beta_ptr) : acc_t(1);
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + warp; r < rays; r += warps_total) {
    if (lane == 0) {
      ray_weights<acc_t>(d.ray(r), static_cast<acc_t>(d.ray_norm[r * d.ray_norm_stride]), beta, opt.sdf_mode,
                         opt.force_background, w, nullptr, nullptr);
    }
    __syncwarp();
    for (int64_t i = lane; i < S; i += kWarpSize) weights_out[r * S + i] = static_cast<scalar_t>(w[i]);
    if (lane < 3) {
      acc_t sum = acc_t(0);
      for (int64_t i = 0; i < S; ++i) sum += w[i] * activated_color(static_cast<acc_t>(d.rgb_at(r, i)[lane]), opt.activation);
      rgb_map[r * 3 + lane] = static_cast<color_t>(opt.activation == kSigmoidPm1 ? acc_t(-1) + acc_t(2) * sum : sum);
    }
    if (d.features) {
      for (int64_t c = lane; c < C; c += kWarpSize) {
        acc_t sum = acc_t(0);
        for (int64_t i = 0; i < S; ++i) sum += w[i] * static_cast<acc_t>(d.features_at(r, i)[c]);
        feature_map[r * C + c] = static_cast<color_t>(sum);
      }
    }
    __syncwarp();  // the next ray overwrites w
  }
}

template <typename scalar_t, typename color_t>
__global__ void backward_kernel(RayData<scalar_t, color_t> d, const scalar_t* beta_ptr, RenderOptions opt,
                                int64_t rays, GradientPointers<scalar_t, color_t> b,
                                scalar_t* beta_partials) {
  using acc_t = scalar_t;
  extern __shared__ unsigned char shared_bytes[];
  __shared__ acc_t warp_beta[kMaxWarpsPerBlock];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t S = d.samples, C = d.channels;
  acc_t* w = reinterpret_cast<acc_t*>(shared_bytes) + warp * 4 * S;
  acc_t* alpha = w + S;
  acc_t* transmittance = alpha + S;
  acc_t* v = transmittance + S;
  const acc_t beta = beta_ptr ? static_cast<acc_t>(*beta_ptr) : acc_t(1);
  const acc_t gain = color_gain<acc_t>(opt.activation);
  acc_t lane_beta = acc_t(0);
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + warp; r < rays; r += warps_total) {
    const RaySamples<scalar_t> ray = d.ray(r);
    const acc_t norm = static_cast<acc_t>(d.ray_norm[r * d.ray_norm_stride]);
    if (lane == 0) ray_weights<acc_t>(ray, norm, beta, opt.sdf_mode, opt.force_background, w, alpha, transmittance);
    __syncwarp();
    // v_i = dL/dw_i: the weights' own gradient plus the colour part; colour gradients (one lane per sample)
    for (int64_t i = lane; i < S; i += kWarpSize) {
      acc_t vi = b.grad_weights ? static_cast<acc_t>(b.grad_weights[r * S + i]) : acc_t(0);
      if (b.grad_rgb_map) {
        const color_t* logits = d.rgb_at(r, i);
        for (int c = 0; c < 3; ++c) {
          const acc_t logit = static_cast<acc_t>(logits[c]);
          const acc_t gc = gain * static_cast<acc_t>(b.grad_rgb_map[r * 3 + c]);
          vi += gc * activated_color(logit, opt.activation);
          if (b.grad_rgb) {
            b.rgb_at(r, i)[c] =
                static_cast<color_t>(gc * w[i] * activated_color_derivative(logit, opt.activation));
          }
        }
      }
      v[i] = vi;
    }
    __syncwarp();
    // the feature part of v_i (lanes over channels, one warp sum per sample) and the feature gradients
    if (d.features && b.grad_feature_map) {
      const color_t* g = b.grad_feature_map + r * C;
      for (int64_t i = 0; i < S; ++i) {
        const color_t* f = d.features_at(r, i);
        color_t* grad_f = b.grad_features ? b.features_at(r, i) : nullptr;
        const acc_t wi = w[i];
        acc_t partial = acc_t(0);
        for (int64_t c = lane; c < C; c += kWarpSize) {
          const acc_t gc = static_cast<acc_t>(g[c]);
          partial += gc * static_cast<acc_t>(f[c]);
          if (grad_f) grad_f[c] = static_cast<color_t>(wi * gc);
        }
        partial = warp_sum(partial);
        if (lane == 0) v[i] += partial;
      }
      __syncwarp();
    }
    if (b.grad_density || b.want_beta) {
      if (lane == 0) ray_alpha_gradients<acc_t>(S, alpha, transmittance, opt.force_background, v);
      __syncwarp();
      for (int64_t i = lane; i < S; i += kWarpSize) {
        const DensityGradient<acc_t> g = sample_density_gradient<acc_t>(
            v[i], static_cast<acc_t>(ray.density[i * ray.density_stride]), sample_interval(ray, i, norm), beta,
            opt.sdf_mode);
        if (b.grad_density) *b.density_at(r, i) = static_cast<scalar_t>(g.density);
        lane_beta += g.beta;
      }
    }
    __syncwarp();  // the next ray overwrites the shared arrays
  }
  if (!b.want_beta) return;
  const acc_t warp_total = warp_sum(lane_beta);
  if (lane == 0) warp_beta[warp] = warp_total;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t total = acc_t(0);
    for (int i = 0; i < static_cast<int>(blockDim.x / kWarpSize); ++i) total += warp_beta[i];
    beta_partials[blockIdx.x] = static_cast<scalar_t>(total);
  }
}

template <typename scalar_t, typename color_t>
struct ForwardLaunch {
  static void run(const VolumeRenderInputs& in, RenderOptions opt, at::Tensor& rgb_map, at::Tensor& feature_map,
                  at::Tensor& weights) {
    const LaunchShape shape = launch_shape(in.rays, in.samples, 1, sizeof(scalar_t));
    forward_kernel<scalar_t, color_t>
        <<<shape.blocks, shape.warps_per_block * kWarpSize, shape.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
            ray_data_of<scalar_t, color_t>(in), in.beta.defined() ? in.beta.const_data_ptr<scalar_t>() : nullptr, opt,
            in.rays, rgb_map.mutable_data_ptr<color_t>(),
            in.features.defined() ? feature_map.mutable_data_ptr<color_t>() : nullptr,
            weights.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <typename scalar_t, typename color_t>
struct BackwardLaunch {
  static void run(const VolumeRenderInputs& in, RenderOptions opt, const BackwardTensors& t) {
    const LaunchShape shape = launch_shape(in.rays, in.samples, 4, sizeof(scalar_t));
    at::Tensor partials = at::empty({t.want_beta ? shape.blocks : 0}, in.density.options());
    backward_kernel<scalar_t, color_t>
        <<<shape.blocks, shape.warps_per_block * kWarpSize, shape.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
            ray_data_of<scalar_t, color_t>(in), in.beta.defined() ? in.beta.const_data_ptr<scalar_t>() : nullptr, opt,
            in.rays, gradient_pointers_of<scalar_t, color_t>(t),
            t.want_beta ? partials.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (t.want_beta) {
      at::Tensor grad_beta = t.grad_beta;  // shares storage with the returned tensor
      grad_beta.copy_(partials.sum().reshape({1}));
    }
  }
};

}  // namespace

void run_volume_render_backward_cuda(const VolumeRenderInputs& in, const RenderOptions& opt, const BackwardTensors& t) {
  dispatch_dtypes<BackwardLaunch>(in, in, opt, t);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_cuda(
    const at::Tensor& density, const at::Tensor& rgb, const std::optional<at::Tensor>& features,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const std::optional<at::Tensor>& beta,
    bool force_background, int64_t rgb_activation) {
  const c10::cuda::CUDAGuard device_guard(density.device());
  const VolumeRenderInputs in = make_volume_render_inputs(density, rgb, features, z_vals, ray_norm, beta);
  auto [rgb_map, feature_map, weights] = make_forward_outputs(in, rgb_activation);
  if (in.rays == 0) return {rgb_map, feature_map, weights};
  const RenderOptions opt{in.beta.defined(), force_background, rgb_activation};
  dispatch_dtypes<ForwardLaunch>(in, in, opt, rgb_map, feature_map, weights);
  return {rgb_map, feature_map, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_backward_cuda(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& density, const at::Tensor& rgb,
    const std::optional<at::Tensor>& features, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const std::optional<at::Tensor>& beta, bool force_background, int64_t rgb_activation,
    std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard device_guard(density.device());
  const VolumeRenderInputs in = make_volume_render_inputs(density, rgb, features, z_vals, ray_norm, beta);
  const BackwardTensors t = make_backward_tensors(in, grad_rgb_map, grad_feature_map, grad_weights, output_mask);
  if (in.rays > 0) {
    run_volume_render_backward_cuda(in, RenderOptions{in.beta.defined(), force_background, rgb_activation}, t);
  }
  return {t.grad_density, t.grad_rgb, t.grad_features, t.grad_beta};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_volume_render_packed_cuda(
    const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset, int64_t feature_offset, int64_t channels,
    const at::Tensor& z_vals, const at::Tensor& ray_norm, const at::Tensor& beta, bool force_background) {
  return packed_forward(&sdf_volume_render_cuda, raw, {rgb_offset, sdf_offset, feature_offset, channels}, z_vals,
                        ray_norm, beta, force_background);
}

std::tuple<at::Tensor, at::Tensor> sdf_volume_render_packed_backward_cuda(
    const std::optional<at::Tensor>& grad_rgb_map, const std::optional<at::Tensor>& grad_feature_map,
    const std::optional<at::Tensor>& grad_weights, const at::Tensor& raw, int64_t rgb_offset, int64_t sdf_offset,
    int64_t feature_offset, int64_t channels, const at::Tensor& z_vals, const at::Tensor& ray_norm,
    const at::Tensor& beta, bool force_background, std::array<bool, 2> output_mask) {
  const c10::cuda::CUDAGuard device_guard(raw.device());
  return packed_backward(&run_volume_render_backward_cuda, grad_rgb_map, grad_feature_map, grad_weights, raw,
                         {rgb_offset, sdf_offset, feature_offset, channels}, z_vals, ray_norm, beta, force_background,
                         output_mask);
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CUDA, m) {
  m.impl("sdf_volume_render", &stylesdf_fast::sdf_volume_render_cuda);
  m.impl("sdf_volume_render_backward", &stylesdf_fast::sdf_volume_render_backward_cuda);
  m.impl("sdf_volume_render_packed", &stylesdf_fast::sdf_volume_render_packed_cuda);
  m.impl("sdf_volume_render_packed_backward", &stylesdf_fast::sdf_volume_render_packed_backward_cuda);
}

// CPU volume aggregation: parallel over rays. Per ray, the scan of sdf_volume_render_math.h with its
// exponentials in loops over the samples that vectorise (float: the branch-free exp of cpu_exp.h),
// keeping q = sigmoid(-s / beta), e = exp(-sigma delta) and the activated colours for the backward;
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
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "../common/cpu_exp.h"
#include "../common/cpu_multiversion.h"
#include "sdf_volume_render.h"
#include "sdf_volume_render_args.h"
#include "sdf_volume_render_math.h"

namespace stylesdf_fast {
namespace {

constexpr int64_t kDotLanes = 64;      // partial sums of a channel dot product: 4 AVX-512 registers
constexpr int64_t kChannelBlock = 128;  // feature channels summed at once: 8 AVX-512 registers of sums

// Helpers of the multiversioned ray loops are inlined into each clone, so they are compiled for its
// instruction set (a helper GCC leaves out of line runs the baseline SSE2 code).
#define SSDF_INLINE inline __attribute__((always_inline))

// exp and sigmoid of the per-ray loops: float through exp_fast (vectorises; within 1 ulp of expf),
// double through libm (the float64 path serves tests and gradcheck, not speed).
SSDF_INLINE float exp_of(float x) { return exp_fast(x); }
inline double exp_of(double x) { return std::exp(x); }

template <typename acc_t>
SSDF_INLINE acc_t sigmoid_vec(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_of(-x));  // sigmoid_of of the shared math
}

// One ray's per-sample values, kept from the forward scan for the colour, feature and density
// phases. Allocated once per task.
template <typename acc_t>
struct RayScratch {
  explicit RayScratch(int64_t samples)
      : density(samples), delta(samples), q(samples), e(samples), alpha(samples), transmittance(samples),
        w(samples), v(samples), grad_density(samples), grad_beta(samples), logit(3 * samples),
        color(3 * samples) {}
  std::vector<acc_t> density, delta;          // raw input, interval
  std::vector<acc_t> q, e;                    // sigmoid(-s / beta) (SDF mode), exp(-sigma delta)
  std::vector<acc_t> alpha, transmittance, w;
  std::vector<acc_t> v;                       // dL/dw, then dL/dalpha
  std::vector<acc_t> grad_density, grad_beta;
  std::vector<acc_t> logit, color;            // [S, 3]: colour inputs and their activation
};

// alpha_i, T_i and the final weights w_i of ray_weights (sdf_volume_render_math.h), keeping q_i and
// e_i: the exponentials first, in loops without dependences, then the sequential product.
template <typename acc_t, typename scalar_t>
SSDF_INLINE void scan_ray(const RaySamples<scalar_t>& ray, acc_t norm, acc_t beta, const RenderOptions& opt,
                          RayScratch<acc_t>& s) {
  const int64_t S = ray.count;
  acc_t* __restrict__ density = s.density.data();
  acc_t* __restrict__ delta = s.delta.data();
  acc_t* __restrict__ q = s.q.data();
  acc_t* __restrict__ e = s.e.data();
  acc_t* __restrict__ alpha = s.alpha.data();
  for (int64_t i = 0; i < S; ++i) {
    density[i] = static_cast<acc_t>(ray.density[i * ray.density_stride]);
    delta[i] = sample_interval(ray, i, norm);
  }
  if (opt.sdf_mode) {
    for (int64_t i = 0; i < S; ++i) q[i] = sigmoid_vec(-density[i] / beta);  // sdf_occupancy
    for (int64_t i = 0; i < S; ++i) e[i] = exp_of(-(q[i] / beta) * delta[i]);
  } else {
    for (int64_t i = 0; i < S; ++i) e[i] = exp_of(-density[i] * delta[i]);
  }
  for (int64_t i = 0; i < S; ++i) alpha[i] = acc_t(1) - e[i];
  acc_t t = acc_t(1), sum_but_last = acc_t(0);
  for (int64_t i = 0; i < S; ++i) {
    s.transmittance[i] = t;
    s.w[i] = alpha[i] * t;
    if (i + 1 < S) sum_but_last += s.w[i];
    t = next_transmittance(t, alpha[i]);
  }
  if (opt.force_background) s.w[S - 1] = acc_t(1) - sum_but_last;
}

// The activated colour of every sample (activated_color of the shared math), once per ray.
template <typename acc_t, typename color_t>
SSDF_INLINE void activate_colors(const color_t* rgb, int64_t sample_stride, int64_t samples, int64_t activation,
                                 RayScratch<acc_t>& s) {
  acc_t* __restrict__ logit = s.logit.data();
  acc_t* __restrict__ color = s.color.data();
  for (int64_t i = 0; i < samples; ++i) {
    for (int64_t c = 0; c < 3; ++c) logit[i * 3 + c] = static_cast<acc_t>(rgb[i * sample_stride + c]);
  }
  const int64_t n = 3 * samples;
  if (activation == kIdentity) {
    std::copy(logit, logit + n, color);
  } else {
    for (int64_t j = 0; j < n; ++j) color[j] = sigmoid_vec(logit[j]);
  }
}

// Asks the memory for sample i of ray r ahead of use, into L1: its colour, density and the first
// `lines` cache lines of its feature row. The backward prefetches the next ray's rows a sample at a
// time while working on the current one: its scan reads one element of every row first (a stride of
// 4 + C elements in the packed layout) and its writes compete with the reads. Measured: ~25% slower
// with the hardware prefetcher alone or a burst of all the rows at the start of a ray, ~7% slower
// prefetching into L2 only.
template <typename scalar_t, typename color_t>
SSDF_INLINE void prefetch_sample(const RayData<scalar_t, color_t>& d, int64_t r, int64_t i, int64_t lines) {
  __builtin_prefetch(d.rgb_at(r, i), 0, 3);
  __builtin_prefetch(d.ray(r).density + i * d.density_sample_stride, 0, 3);
  if (!d.features) return;
  const char* row = reinterpret_cast<const char*>(d.features_at(r, i));
  for (int64_t line = 0; line < lines; ++line) __builtin_prefetch(row + 64 * line, 0, 3);
}

// Cache lines of a feature row of C channels.
template <typename color_t>
inline int64_t row_lines(int64_t C) {
  return (C * static_cast<int64_t>(sizeof(color_t)) + 63) / 64;
}

// out[c] = sum_i w_i f_ic, a block of channels at a time so that the partial sums stay in registers
// across the samples (per channel, the additions are in sample order as in a row-by-row loop).
// Blocks of 128 channels (8 AVX-512 registers; on AVX2 16, all of them) read the rows in long runs,
// which the hardware prefetcher follows (software prefetching measured no better here, unlike in the
// backward; blocks of 64 were ~8% slower).
template <typename acc_t, typename scalar_t, typename color_t>
SSDF_INLINE void weighted_feature_sum(const RayData<scalar_t, color_t>& d, int64_t r, const acc_t* w, color_t* out) {
  const int64_t S = d.samples, C = d.channels;
  for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
    acc_t acc[kChannelBlock] = {};
    if (c0 + kChannelBlock <= C) {
      for (int64_t i = 0; i < S; ++i) {
        const color_t* __restrict__ f = d.features_at(r, i) + c0;
        const acc_t wi = w[i];
        for (int64_t j = 0; j < kChannelBlock; ++j) acc[j] += wi * static_cast<acc_t>(f[j]);
      }
      for (int64_t j = 0; j < kChannelBlock; ++j) out[c0 + j] = static_cast<color_t>(acc[j]);
    } else {  // the last, partial block
      const int64_t n = C - c0;
      for (int64_t i = 0; i < S; ++i) {
        const color_t* __restrict__ f = d.features_at(r, i) + c0;
        const acc_t wi = w[i];
        for (int64_t j = 0; j < n; ++j) acc[j] += wi * static_cast<acc_t>(f[j]);
      }
      for (int64_t j = 0; j < n; ++j) out[c0 + j] = static_cast<color_t>(acc[j]);
    }
  }
}

template <typename scalar_t, typename color_t>
SSDF_CPU_MULTIVERSION void forward_rays(const RayData<scalar_t, color_t>& d, scalar_t beta, RenderOptions opt,
                                        color_t* rgb_map, color_t* feature_map, scalar_t* weights_out,
                                        int64_t begin, int64_t end) {
  using acc_t = scalar_t;
  const int64_t S = d.samples, C = d.channels;
  RayScratch<acc_t> s(S);
  const acc_t* w = s.w.data();
  for (int64_t r = begin; r < end; ++r) {
    scan_ray<acc_t>(d.ray(r), static_cast<acc_t>(d.ray_norm[r * d.ray_norm_stride]), beta, opt, s);
    std::copy(w, w + S, weights_out + r * S);
    activate_colors<acc_t>(d.rgb_at(r, 0), d.rgb_sample_stride, S, opt.activation, s);
    for (int64_t c = 0; c < 3; ++c) {
      acc_t sum = acc_t(0);
      for (int64_t i = 0; i < S; ++i) sum += w[i] * s.color[i * 3 + c];
      rgb_map[r * 3 + c] = static_cast<color_t>(opt.activation == kSigmoidPm1 ? acc_t(-1) + acc_t(2) * sum : sum);
    }
    if (d.features) weighted_feature_sum<acc_t>(d, r, w, feature_map + r * C);
  }
}

// The sum of the kBytes / sizeof(acc_t) values at x, added pairwise (x[j] + x[j + n/2], then the same
// on the n/2 sums, ...): a fixed order, so bitwise the same result for every instruction set. Written
// with GCC vector types so that each step is one vector addition (the auto-vectoriser leaves the
// narrow steps of such a tree in scalar shuffles); memcpy moves between the widths, in registers.
template <typename acc_t, int64_t kBytes>
SSDF_INLINE acc_t fold_pairwise(const acc_t* x) {
  constexpr int64_t kHalf = kBytes / 2 / static_cast<int64_t>(sizeof(acc_t));
  if constexpr (kHalf == 1) {
    return x[0] + x[1];
  } else {
    typedef acc_t Half __attribute__((vector_size(kBytes / 2)));
    Half low, high;
    memcpy(&low, x, sizeof low);
    memcpy(&high, x + kHalf, sizeof high);
    const Half sum = low + high;
    acc_t folded[kHalf];
    memcpy(folded, &sum, sizeof sum);
    return fold_pairwise<acc_t, kBytes / 2>(folded);
  }
}

template <typename acc_t>
SSDF_INLINE acc_t fold_lanes(const acc_t* lanes) {
  return fold_pairwise<acc_t, kDotLanes * static_cast<int64_t>(sizeof(acc_t))>(lanes);
}

// sum_c g_c f_c in kDotLanes partial sums: the loop vectorises exactly, with several independent
// accumulator registers.
template <typename acc_t, typename color_t>
SSDF_INLINE acc_t dot(const color_t* __restrict__ f, const color_t* __restrict__ g, int64_t C) {
  acc_t lanes[kDotLanes] = {};
  int64_t c = 0;
  for (; c + kDotLanes <= C; c += kDotLanes) {
    for (int64_t j = 0; j < kDotLanes; ++j) lanes[j] += static_cast<acc_t>(g[c + j]) * static_cast<acc_t>(f[c + j]);
  }
  for (int64_t j = 0; c + j < C; ++j) lanes[j] += static_cast<acc_t>(g[c + j]) * static_cast<acc_t>(f[c + j]);
  return fold_lanes(lanes);
}

// dot(f, g) and grad_f = w g in one pass over the row (the same sums as dot).
template <typename acc_t, typename color_t>
SSDF_INLINE acc_t dot_and_scale(const color_t* __restrict__ f, const color_t* __restrict__ g, acc_t w,
                                color_t* __restrict__ grad_f, int64_t C) {
  acc_t lanes[kDotLanes] = {};
  int64_t c = 0;
  for (; c + kDotLanes <= C; c += kDotLanes) {
    for (int64_t j = 0; j < kDotLanes; ++j) {
      const acc_t gc = static_cast<acc_t>(g[c + j]);
      lanes[j] += gc * static_cast<acc_t>(f[c + j]);
      grad_f[c + j] = static_cast<color_t>(w * gc);
    }
  }
  for (int64_t j = 0; c + j < C; ++j) {
    const acc_t gc = static_cast<acc_t>(g[c + j]);
    lanes[j] += gc * static_cast<acc_t>(f[c + j]);
    grad_f[c + j] = static_cast<color_t>(w * gc);
  }
  return fold_lanes(lanes);
}

// v_i += dL/dw_i through the colour map; gc = dL/d(sum_i w_i color_i) per channel, for the colour
// gradients.
template <typename acc_t, typename scalar_t, typename color_t>
SSDF_INLINE void add_colour_terms(const RayData<scalar_t, color_t>& d, const GradientPointers<scalar_t, color_t>& b,
                                  int64_t r, const RenderOptions& opt, RayScratch<acc_t>& s, acc_t* gc) {
  activate_colors<acc_t>(d.rgb_at(r, 0), d.rgb_sample_stride, d.samples, opt.activation, s);
  const acc_t gain = color_gain<acc_t>(opt.activation);
  for (int64_t c = 0; c < 3; ++c) gc[c] = gain * static_cast<acc_t>(b.grad_rgb_map[r * 3 + c]);
  for (int64_t i = 0; i < d.samples; ++i) {
    const acc_t* color = &s.color[i * 3];
    s.v[i] += gc[0] * color[0] + gc[1] * color[1] + gc[2] * color[2];
  }
}

// v_i += dL/dw_i through the feature map (row i dotted with the map's gradient g), writing the
// feature gradients w_i g (when wanted) in the same pass over each row; meanwhile prefetches the
// next ray's rows (prefetch_lines of each; 0: none).
template <typename acc_t, typename scalar_t, typename color_t>
SSDF_INLINE void add_feature_terms(const RayData<scalar_t, color_t>& d, const GradientPointers<scalar_t, color_t>& b,
                                   int64_t r, int64_t prefetch_lines, RayScratch<acc_t>& s) {
  const int64_t C = d.channels;
  const color_t* g = b.grad_feature_map + r * C;
  for (int64_t i = 0; i < d.samples; ++i) {
    if (prefetch_lines > 0) prefetch_sample(d, r + 1, i, prefetch_lines);
    s.v[i] += b.grad_features ? dot_and_scale<acc_t, color_t>(d.features_at(r, i), g, s.w[i], b.features_at(r, i), C)
                              : dot<acc_t, color_t>(d.features_at(r, i), g, C);
  }
}

// From v = dL/dw: the reverse scan (v becomes dL/dalpha), each sample's density gradient into
// s.grad_density, and the ray's dL/dbeta, summed in sample order.
template <typename acc_t>
SSDF_INLINE acc_t density_terms(int64_t samples, acc_t beta, const RenderOptions& opt, RayScratch<acc_t>& s) {
  ray_alpha_gradients<acc_t>(samples, s.alpha.data(), s.transmittance.data(), opt.force_background, s.v.data());
  for (int64_t i = 0; i < samples; ++i) {
    const DensityGradient<acc_t> g =
        density_gradient_from<acc_t>(s.v[i], s.density[i], s.delta[i], beta, s.q[i], s.e[i], opt.sdf_mode);
    s.grad_density[i] = g.density;
    s.grad_beta[i] = g.beta;
  }
  acc_t grad_beta = acc_t(0);
  for (int64_t i = 0; i < samples; ++i) grad_beta += s.grad_beta[i];
  return grad_beta;
}

// The colour and density gradients of each sample of ray r (in the packed layout the first cache
// line of each row, still in cache from the feature pass).
template <typename acc_t, typename scalar_t, typename color_t>
SSDF_INLINE void write_colour_and_density_gradients(const GradientPointers<scalar_t, color_t>& b, int64_t r,
                                                    int64_t samples, const RenderOptions& opt, const acc_t* gc,
                                                    const RayScratch<acc_t>& s) {
  for (int64_t i = 0; i < samples; ++i) {
    if (b.grad_rgb) {
      color_t* out = b.rgb_at(r, i);
      for (int64_t c = 0; c < 3; ++c) {
        const acc_t color = s.color[i * 3 + c];
        const acc_t slope = opt.activation == kIdentity ? acc_t(1) : color * (acc_t(1) - color);
        out[c] = static_cast<color_t>(gc[c] * s.w[i] * slope);  // activated_color_derivative
      }
    }
    if (b.grad_density) *b.density_at(r, i) = static_cast<scalar_t>(s.grad_density[i]);
  }
}

// Rays [begin, end): writes the wanted input gradients and returns this range's dL/dbeta. Per ray:
// the scan, v_i = dL/dw_i (colour terms, then the channel dot products, which also write the feature
// gradients: they need only w_i), the density gradients, then the colour and density gradients.
// Every gradient element is written once.
template <typename scalar_t, typename color_t>
SSDF_CPU_MULTIVERSION scalar_t backward_rays(const RayData<scalar_t, color_t>& d, scalar_t beta, RenderOptions opt,
                                             const GradientPointers<scalar_t, color_t>& b, int64_t begin, int64_t end) {
  using acc_t = scalar_t;
  const int64_t S = d.samples;
  const bool features = d.features && b.grad_feature_map;
  const int64_t lines = features ? row_lines<color_t>(d.channels) : 0;
  RayScratch<acc_t> s(S);
  acc_t grad_beta = acc_t(0);
  for (int64_t r = begin; r < end; ++r) {
    const bool prefetch_next = r + 1 < end;
    if (prefetch_next && !features) {
      for (int64_t i = 0; i < S; ++i) prefetch_sample(d, r + 1, i, 0);
    }
    scan_ray<acc_t>(d.ray(r), static_cast<acc_t>(d.ray_norm[r * d.ray_norm_stride]), beta, opt, s);
    for (int64_t i = 0; i < S; ++i) {
      s.v[i] = b.grad_weights ? static_cast<acc_t>(b.grad_weights[r * S + i]) : acc_t(0);
    }
    acc_t gc[3] = {};
    if (b.grad_rgb_map) add_colour_terms<acc_t>(d, b, r, opt, s, gc);
    if (features) add_feature_terms<acc_t>(d, b, r, prefetch_next ? lines : 0, s);
    if (b.grad_density || b.want_beta) grad_beta += density_terms<acc_t>(S, beta, opt, s);
    write_colour_and_density_gradients<acc_t>(b, r, S, opt, gc, s);
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

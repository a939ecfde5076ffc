// Host-side layout handling shared by the CPU and CUDA fused_leaky_relu: both kernels walk a dense
// tensor in memory order and find the channel of element e as (e / channel_stride) % C.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "../common/memory_format.h"

namespace stylesdf_fast {

struct ChannelLayout {
  at::MemoryFormat format;  // contiguous or channels_last(_3d); the output gets the same one
  int64_t channels;         // size of dim 1
  int64_t channel_stride;   // memory stride of dim 1 in that format (1 for channels_last)
};

inline ChannelLayout channel_layout_of(const at::Tensor& reference) {
  const at::MemoryFormat format = preferred_memory_format(reference);
  const int64_t channels = reference.size(1);
  int64_t channel_stride = 1;
  if (format == at::MemoryFormat::Contiguous) {  // otherwise channels are innermost
    for (int64_t d = 2; d < reference.dim(); ++d) channel_stride *= reference.size(d);
  }
  return {format, channels, channel_stride};
}

// `t` as a dense tensor in `format` (a no-op when it already is one).
inline at::Tensor dense_in(const at::Tensor& t, at::MemoryFormat format) {
  return t.is_contiguous(format) ? t : t.contiguous(format);
}

inline void check_fused_leaky_relu_args(const at::Tensor& input, double negative_slope, double scale) {
  TORCH_CHECK(input.dim() >= 2, "fused_leaky_relu: input must have at least 2 dims, got ", input.dim());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "fused_leaky_relu: input must be floating point, got ",
              input.scalar_type());
  TORCH_CHECK(negative_slope >= 0.0, "fused_leaky_relu: negative_slope must be >= 0, got ", negative_slope);
  TORCH_CHECK(scale > 0.0, "fused_leaky_relu: scale must be > 0, got ", scale);
}

inline void check_backward_args(const at::Tensor& grad_output, const at::Tensor& output, double negative_slope,
                                double scale) {
  check_fused_leaky_relu_args(output, negative_slope, scale);
  TORCH_CHECK(grad_output.sizes() == output.sizes(), "fused_leaky_relu_backward: grad_output shape ",
              grad_output.sizes(), " differs from output shape ", output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == output.scalar_type(),
              "fused_leaky_relu_backward: grad_output dtype differs from output dtype");
}

inline void check_bias(const at::Tensor& input, const at::Tensor& bias) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == input.size(1), "fused_leaky_relu: bias must have shape [",
              input.size(1), "], got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == input.scalar_type(), "fused_leaky_relu: bias dtype ", bias.scalar_type(),
              " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(bias.device() == input.device(), "fused_leaky_relu: bias is on ", bias.device(), ", input on ",
              input.device());
}

// The forward's operands, checked and dense in the input's layout, and its (uninitialised) output.
struct ForwardArgs {
  ChannelLayout layout;
  at::Tensor input;   // dense in layout.format
  at::Tensor bias;    // [C] contiguous, or undefined
  at::Tensor output;  // like input
};

inline ForwardArgs prepare_forward(const at::Tensor& input_arg, const std::optional<at::Tensor>& bias_arg,
                                   double negative_slope, double scale) {
  check_fused_leaky_relu_args(input_arg, negative_slope, scale);
  ForwardArgs a{channel_layout_of(input_arg), {}, {}, {}};
  a.input = dense_in(input_arg, a.layout.format);
  if (bias_arg.has_value() && bias_arg->defined()) {
    check_bias(a.input, *bias_arg);
    a.bias = bias_arg->contiguous();
  }
  a.output = at::empty(a.input.sizes(), a.input.options().memory_format(a.layout.format));
  return a;
}

}  // namespace stylesdf_fast

// CPU fused bias + leaky ReLU: one pass forward; one pass backward that also reduces the bias
// gradient (deterministic: fixed row blocks, summed in a fixed order).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/cpu_multiversion.h"
#include "fused_leaky_relu.h"
#include "fused_leaky_relu_layout.h"
#include "fused_leaky_relu_math.h"

namespace stylesdf_fast {
namespace {

// A dense tensor seen as `rows` rows of `row_length` elements in memory order. When the channel
// stride is 1 (channels_last, rank-2 inputs) a row is one pixel's C channels; otherwise a row is
// one channel's plane and row r has channel r % C.
struct RowView {
  int64_t rows;
  int64_t row_length;
  bool channel_per_element;
};

RowView row_view_of(const at::Tensor& t, const ChannelLayout& layout) {
  if (layout.channel_stride == 1) return {t.numel() / layout.channels, layout.channels, true};
  return {t.numel() / layout.channel_stride, layout.channel_stride, false};
}

// Rows [begin, end) of the forward pass.
template <typename scalar_t, typename acc_t>
SSDF_CPU_MULTIVERSION void forward_row_range(const scalar_t* x, const scalar_t* bias, scalar_t* y, const RowView& view,
                                             int64_t channels, acc_t slope, acc_t gain, int64_t begin, int64_t end) {
  const int64_t n = view.row_length;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* __restrict__ xr = x + r * n;
    scalar_t* __restrict__ yr = y + r * n;
    if (view.channel_per_element) {
      for (int64_t i = 0; i < n; ++i) {
        const acc_t b = bias ? static_cast<acc_t>(bias[i]) : acc_t(0);
        yr[i] = static_cast<scalar_t>(bias_leaky_relu(static_cast<acc_t>(xr[i]), b, slope, gain));
      }
    } else {
      const acc_t b = bias ? static_cast<acc_t>(bias[r % channels]) : acc_t(0);
      for (int64_t i = 0; i < n; ++i) {
        yr[i] = static_cast<scalar_t>(bias_leaky_relu(static_cast<acc_t>(xr[i]), b, slope, gain));
      }
    }
  }
}

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* bias, scalar_t* y, const RowView& view, int64_t channels,
                  double negative_slope, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, view.row_length));
  at::parallel_for(0, view.rows, grain, [&](int64_t begin, int64_t end) {
    forward_row_range<scalar_t, acc_t>(x, bias, y, view, channels, static_cast<acc_t>(negative_slope),
                                       static_cast<acc_t>(scale), begin, end);
  });
}

constexpr int64_t kLanes = 16;  // independent partial sums, so the row reduction vectorises exactly

// Rows [begin, end) of the backward pass; adds each row's bias-gradient contribution to block_sum[C].
template <typename scalar_t, typename acc_t>
SSDF_CPU_MULTIVERSION void backward_row_range(const scalar_t* grad, const scalar_t* out, scalar_t* grad_input,
                                              acc_t* block_sum, const RowView& view, int64_t channels, acc_t slope,
                                              acc_t gain, int64_t begin, int64_t end) {
  const int64_t n = view.row_length;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* __restrict__ gr = grad + r * n;
    const scalar_t* __restrict__ yr = out + r * n;
    scalar_t* __restrict__ dr = grad_input + r * n;
    if (view.channel_per_element) {
      for (int64_t i = 0; i < n; ++i) {
        const acc_t d = bias_leaky_relu_vjp(static_cast<acc_t>(gr[i]), static_cast<acc_t>(yr[i]), slope, gain);
        dr[i] = static_cast<scalar_t>(d);
        if (block_sum) block_sum[i] += d;
      }
      continue;
    }
    acc_t lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        const acc_t d =
            bias_leaky_relu_vjp(static_cast<acc_t>(gr[i + j]), static_cast<acc_t>(yr[i + j]), slope, gain);
        dr[i + j] = static_cast<scalar_t>(d);
        lanes[j] += d;
      }
    }
    for (; i < n; ++i) {
      const acc_t d = bias_leaky_relu_vjp(static_cast<acc_t>(gr[i]), static_cast<acc_t>(yr[i]), slope, gain);
      dr[i] = static_cast<scalar_t>(d);
      lanes[0] += d;
    }
    if (block_sum) {
      acc_t row_sum = acc_t(0);
      for (int64_t j = 0; j < kLanes; ++j) row_sum += lanes[j];
      block_sum[r % channels] += row_sum;
    }
  }
}

// Writes grad_input and, per block of rows, the partial bias gradient partial[block][C].
template <typename scalar_t>
void backward_rows(const scalar_t* grad, const scalar_t* out, scalar_t* grad_input,
                   at::opmath_type<scalar_t>* partial, int64_t rows_per_block, int64_t num_blocks,
                   const RowView& view, int64_t channels, double negative_slope, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t row_end = std::min(view.rows, (block + 1) * rows_per_block);
      backward_row_range<scalar_t, acc_t>(grad, out, grad_input, partial ? partial + block * channels : nullptr,
                                          view, channels, static_cast<acc_t>(negative_slope),
                                          static_cast<acc_t>(scale), block * rows_per_block, row_end);
    }
  });
}

}  // namespace

at::Tensor fused_leaky_relu_cpu(const at::Tensor& input_arg, const std::optional<at::Tensor>& bias_arg,
                                double negative_slope, double scale) {
  const ForwardArgs a = prepare_forward(input_arg, bias_arg, negative_slope, scale);
  const ChannelLayout& layout = a.layout;
  const at::Tensor &input = a.input, &bias = a.bias, &output = a.output;
  if (input.numel() == 0) return output;
  const RowView view = row_view_of(input, layout);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fused_leaky_relu_cpu", [&] {
    forward_rows<scalar_t>(input.const_data_ptr<scalar_t>(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                           output.mutable_data_ptr<scalar_t>(), view, layout.channels, negative_slope, scale);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> fused_leaky_relu_backward_cpu(const at::Tensor& grad_output_arg,
                                                                 const at::Tensor& output_arg, double negative_slope,
                                                                 double scale, bool bias_grad) {
  check_backward_args(grad_output_arg, output_arg, negative_slope, scale);
  const ChannelLayout layout = channel_layout_of(output_arg);
  const at::Tensor output = dense_in(output_arg, layout.format);
  const at::Tensor grad_output = dense_in(grad_output_arg, layout.format);
  at::Tensor grad_input = at::empty(output.sizes(), output.options().memory_format(layout.format));
  at::Tensor grad_bias = at::zeros({bias_grad ? layout.channels : 0}, output.options());
  if (output.numel() == 0) return {grad_input, grad_bias};

  const RowView view = row_view_of(output, layout);
  // Fixed blocks (independent of the thread count) keep the bias gradient bitwise reproducible.
  const int64_t num_blocks = std::min<int64_t>(view.rows, 256);
  const int64_t rows_per_block = (view.rows + num_blocks - 1) / num_blocks;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "fused_leaky_relu_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> partial(bias_grad ? num_blocks * layout.channels : 0, acc_t(0));
    backward_rows<scalar_t>(grad_output.const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(),
                            grad_input.mutable_data_ptr<scalar_t>(), bias_grad ? partial.data() : nullptr,
                            rows_per_block, num_blocks, view, layout.channels, negative_slope, scale);
    if (bias_grad) {
      scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < layout.channels; ++c) {
        acc_t total = acc_t(0);
        for (int64_t block = 0; block < num_blocks; ++block) total += partial[block * layout.channels + c];
        gb[c] = static_cast<scalar_t>(total);
      }
    }
  });
  return {grad_input, grad_bias};
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CPU, m) {
  m.impl("fused_leaky_relu", &stylesdf_fast::fused_leaky_relu_cpu);
  m.impl("fused_leaky_relu_backward", &stylesdf_fast::fused_leaky_relu_backward_cpu);
}

// CUDA fused bias + leaky ReLU: grid-stride elementwise kernels over the dense tensor in memory
// order; the bias gradient is a channel reduction of grad_input done by ATen's tuned sum.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/index_width.h"
#include "fused_leaky_relu.h"
#include "fused_leaky_relu_layout.h"
#include "fused_leaky_relu_math.h"

namespace stylesdf_fast {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(blocks, 65535LL * 8));
}

// Index math is 32-bit when the tensor fits (common/index_width.h); `index_t` is int64_t otherwise.
template <typename scalar_t, typename index_t>
__global__ void fused_leaky_relu_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                                                scalar_t* __restrict__ y, index_t n, index_t channels,
                                                index_t channel_stride, at::opmath_type<scalar_t> negative_slope,
                                                at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const acc_t b = bias ? static_cast<acc_t>(bias[(e / channel_stride) % channels]) : acc_t(0);
    y[e] = static_cast<scalar_t>(bias_leaky_relu(static_cast<acc_t>(x[e]), b, negative_slope, scale));
  }
}

template <typename scalar_t, typename index_t>
__global__ void fused_leaky_relu_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ out,
                                                 scalar_t* __restrict__ grad_input, index_t n,
                                                 at::opmath_type<scalar_t> negative_slope,
                                                 at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    grad_input[e] = static_cast<scalar_t>(
        bias_leaky_relu_vjp(static_cast<acc_t>(grad[e]), static_cast<acc_t>(out[e]), negative_slope, scale));
  }
}

std::vector<int64_t> all_dims_but_channel(int64_t rank) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < rank; ++d)
    if (d != 1) dims.push_back(d);
  return dims;
}

}  // namespace

at::Tensor fused_leaky_relu_cuda(const at::Tensor& input_arg, const std::optional<at::Tensor>& bias_arg,
                                 double negative_slope, double scale) {
  const c10::cuda::CUDAGuard device_guard(input_arg.device());
  const ForwardArgs a = prepare_forward(input_arg, bias_arg, negative_slope, scale);
  const ChannelLayout& layout = a.layout;
  const at::Tensor &input = a.input, &bias = a.bias, &output = a.output;
  const int64_t n = input.numel();
  if (n == 0) return output;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fused_leaky_relu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bias_ptr = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    if (fits_int32_index(n)) {
      fused_leaky_relu_forward_kernel<scalar_t, int32_t><<<blocks_for(n), kThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), bias_ptr, output.mutable_data_ptr<scalar_t>(), static_cast<int32_t>(n),
          static_cast<int32_t>(layout.channels), static_cast<int32_t>(layout.channel_stride),
          static_cast<acc_t>(negative_slope), static_cast<acc_t>(scale));
    } else {
      fused_leaky_relu_forward_kernel<scalar_t, int64_t><<<blocks_for(n), kThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), bias_ptr, output.mutable_data_ptr<scalar_t>(), n, layout.channels,
          layout.channel_stride, static_cast<acc_t>(negative_slope), static_cast<acc_t>(scale));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> fused_leaky_relu_backward_cuda(const at::Tensor& grad_output_arg,
                                                                  const at::Tensor& output_arg, double negative_slope,
                                                                  double scale, bool bias_grad) {
  check_backward_args(grad_output_arg, output_arg, negative_slope, scale);
  const c10::cuda::CUDAGuard device_guard(output_arg.device());
  const ChannelLayout layout = channel_layout_of(output_arg);
  const at::Tensor output = dense_in(output_arg, layout.format);
  const at::Tensor grad_output = dense_in(grad_output_arg, layout.format);
  at::Tensor grad_input = at::empty(output.sizes(), output.options().memory_format(layout.format));
  const int64_t n = output.numel();
  if (n == 0) return {grad_input, at::zeros({bias_grad ? layout.channels : 0}, output.options())};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "fused_leaky_relu_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (fits_int32_index(n)) {
      fused_leaky_relu_backward_kernel<scalar_t, int32_t><<<blocks_for(n), kThreads, 0, stream>>>(
          grad_output.const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), static_cast<int32_t>(n), static_cast<acc_t>(negative_slope),
          static_cast<acc_t>(scale));
    } else {
      fused_leaky_relu_backward_kernel<scalar_t, int64_t><<<blocks_for(n), kThreads, 0, stream>>>(
          grad_output.const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), n, static_cast<acc_t>(negative_slope), static_cast<acc_t>(scale));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor grad_bias = bias_grad ? grad_input.sum(all_dims_but_channel(grad_input.dim()))
                                   : at::zeros({0}, output.options());
  return {grad_input, grad_bias};
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CUDA, m) {
  m.impl("fused_leaky_relu", &stylesdf_fast::fused_leaky_relu_cuda);
  m.impl("fused_leaky_relu_backward", &stylesdf_fast::fused_leaky_relu_backward_cuda);
}

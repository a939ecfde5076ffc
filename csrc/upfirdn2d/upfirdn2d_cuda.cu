// CUDA upfirdn2d: one thread per output element (grid-stride), each calling the shared
// upfirdn2d_output_element. Threads walk the output in its memory order (x fastest for NCHW,
// channel fastest for channels_last) so stores coalesce. Index math is 32-bit whenever the call's
// offsets fit (nearly always), 64-bit otherwise.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>

#include "upfirdn2d.h"
#include "../common/index_width.h"
#include "../common/memory_format.h"
#include "upfirdn2d_args.h"
#include "upfirdn2d_math.h"

namespace stylesdf_fast {
namespace {

constexpr int kThreads = 256;

template <typename index_t>
struct Strides4 {
  index_t n, c, y, x;
};

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ input, const acc_t* __restrict__ kernel,
                                 scalar_t* __restrict__ output, Strides4<index_t> in_s, Strides4<index_t> out_s,
                                 index_t channels, index_t total, bool channels_last, UpfirdnAxisT<index_t> ax,
                                 UpfirdnAxisT<index_t> ay) {
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    index_t n, c, oy, ox, rest = e;
    if (channels_last) {
      c = rest % channels; rest /= channels;
      ox = rest % ax.out_size; rest /= ax.out_size;
      oy = rest % ay.out_size; n = rest / ay.out_size;
    } else {
      ox = rest % ax.out_size; rest /= ax.out_size;
      oy = rest % ay.out_size; rest /= ay.out_size;
      c = rest % channels; n = rest / channels;
    }
    const scalar_t* plane = input + n * in_s.n + c * in_s.c;
    const acc_t value =
        upfirdn2d_output_element<scalar_t, acc_t, index_t>(plane, in_s.y, in_s.x, kernel, ax, ay, oy, ox);
    output[n * out_s.n + c * out_s.c + oy * out_s.y + ox * out_s.x] = static_cast<scalar_t>(value);
  }
}

bool fits_int32(const at::Tensor& input, const at::Tensor& output, const UpfirdnProblem& p) {
  // positions in the upsampled, padded signal (o * down + k - pad0) stay under these
  const int64_t padded_x = p.x.in_size * p.x.up + p.x.taps + std::abs(p.x.pad0) + p.x.out_size * p.x.down;
  const int64_t padded_y = p.y.in_size * p.y.up + p.y.taps + std::abs(p.y.pad0) + p.y.out_size * p.y.down;
  return fits_int32_index(offset_extent(input)) && fits_int32_index(offset_extent(output)) &&
         fits_int32_index(output.numel()) && fits_int32_index(padded_x) && fits_int32_index(padded_y);
}

template <typename scalar_t, typename index_t>
void launch_upfirdn2d(const at::Tensor& input, const at::Tensor& kernel_acc, at::Tensor& output,
                      const UpfirdnProblem& p, bool channels_last, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4<index_t> in_s{static_cast<index_t>(input.stride(0)), static_cast<index_t>(input.stride(1)),
                               static_cast<index_t>(input.stride(2)), static_cast<index_t>(input.stride(3))};
  const Strides4<index_t> out_s{static_cast<index_t>(output.stride(0)), static_cast<index_t>(output.stride(1)),
                                static_cast<index_t>(output.stride(2)), static_cast<index_t>(output.stride(3))};
  const int64_t total = output.numel();
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
  upfirdn2d_kernel<scalar_t, acc_t, index_t><<<blocks, kThreads, 0, stream>>>(
      input.const_data_ptr<scalar_t>(), kernel_acc.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(),
      in_s, out_s, static_cast<index_t>(input.size(1)), static_cast<index_t>(total), channels_last,
      p.x.as<index_t>(), p.y.as<index_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                          int64_t pad_y1) {
  const UpfirdnProblem p =
      make_upfirdn_problem(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::MemoryFormat format = preferred_memory_format(input);
  at::Tensor output =
      at::empty({input.size(0), input.size(1), p.y.out_size, p.x.out_size}, input.options().memory_format(format));
  if (output.numel() == 0) return output;
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const bool narrow = fits_int32(input, output, p);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor kernel_acc = kernel.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    if (narrow) {
      launch_upfirdn2d<scalar_t, int32_t>(input, kernel_acc, output, p, channels_last, stream);
    } else {
      launch_upfirdn2d<scalar_t, int64_t>(input, kernel_acc, output, p, channels_last, stream);
    }
  });
  return output;
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CUDA, m) {
  m.impl("upfirdn2d", &stylesdf_fast::upfirdn2d_cuda);
}

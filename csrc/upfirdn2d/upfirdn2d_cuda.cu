// CUDA upfirdn2d: one thread per output element (grid-stride), each calling the shared
// upfirdn2d_output_element. Threads walk the output in its memory order (x fastest for NCHW,
// channel fastest for channels_last) so stores coalesce.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../ops.h"
#include "../common/memory_format.h"
#include "upfirdn2d_args.h"
#include "upfirdn2d_math.h"

namespace stylesdf_fast {
namespace {

constexpr int kThreads = 256;

struct Strides4 {
  int64_t n, c, y, x;
};

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ input, const acc_t* __restrict__ kernel,
                                 scalar_t* __restrict__ output, Strides4 in_s, Strides4 out_s, int64_t channels,
                                 int64_t total, bool channels_last, UpfirdnAxis ax, UpfirdnAxis ay) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, oy, ox, rest = e;
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
    const acc_t value = upfirdn2d_output_element<scalar_t, acc_t>(plane, in_s.y, in_s.x, kernel, ax, ay, oy, ox);
    output[n * out_s.n + c * out_s.c + oy * out_s.y + ox * out_s.x] = static_cast<scalar_t>(value);
  }
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
  const int64_t total = output.numel();
  if (total == 0) return output;
  const Strides4 in_s{input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
  const Strides4 out_s{output.stride(0), output.stride(1), output.stride(2), output.stride(3)};
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor kernel_acc = kernel.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    upfirdn2d_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), kernel_acc.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(),
        in_s, out_s, input.size(1), total, format == at::MemoryFormat::ChannelsLast, p.x, p.y);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

}  // namespace stylesdf_fast

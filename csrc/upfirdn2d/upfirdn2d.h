// upfirdn2d: StyleGAN2's upsample, FIR filter, downsample (docs/kernels.md section 3).
//
//   zero-insertion upsampling by (up_x, up_y), padding (pad_x0, pad_x1, pad_y0, pad_y1; negative
//   crops), true 2-D convolution with the FIR kernel [KH, KW], then every (down_x, down_y)-th sample:
//   out = (in * up + pad0 + pad1 - k) / down + 1 per axis (integer division)
//   The input gradient is the same op with the flipped kernel, up and down swapped and pads derived
//   from the shapes, so derivatives of any order call this op again; the kernel gets no gradient.
//
// Host API, registered with the dispatcher beside each implementation (TORCH_LIBRARY_IMPL at the end
// of the _cpu.cpp / _cuda.cu files). input [N, C, H, W] (any dense layout), kernel [KH, KW].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace stylesdf_fast {

at::Tensor upfirdn2d_cpu(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                         int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                         int64_t pad_y1);
#ifdef WITH_CUDA
at::Tensor upfirdn2d_cuda(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                          int64_t pad_y1);
#endif

}  // namespace stylesdf_fast

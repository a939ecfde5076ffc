// Host-side argument checks and axis descriptions shared by the CPU and CUDA upfirdn2d.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "upfirdn2d_math.h"

namespace stylesdf_fast {

struct UpfirdnProblem {
  UpfirdnAxis x;
  UpfirdnAxis y;
};

inline UpfirdnProblem make_upfirdn_problem(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x,
                                           int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                                           int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  TORCH_CHECK(input.dim() == 4, "upfirdn2d: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(kernel.dim() == 2 && kernel.numel() > 0, "upfirdn2d: kernel must be a non-empty 2-D filter, got ",
              kernel.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "upfirdn2d: input must be floating point, got ",
              input.scalar_type());
  TORCH_CHECK(at::isFloatingType(kernel.scalar_type()), "upfirdn2d: kernel must be floating point, got ",
              kernel.scalar_type());
  TORCH_CHECK(kernel.device() == input.device(), "upfirdn2d: kernel is on ", kernel.device(), ", input on ",
              input.device());
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up and down must be >= 1");
  const int64_t in_h = input.size(2), in_w = input.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t out_w = upfirdn_output_size(in_w, up_x, down_x, pad_x0, pad_x1, kw);
  const int64_t out_h = upfirdn_output_size(in_h, up_y, down_y, pad_y0, pad_y1, kh);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "upfirdn2d: the output would be empty (", out_h, "x", out_w,
              "); the pads crop more than the upsampled input holds");
  return {UpfirdnAxis{in_w, out_w, up_x, down_x, pad_x0, kw}, UpfirdnAxis{in_h, out_h, up_y, down_y, pad_y0, kh}};
}

}  // namespace stylesdf_fast

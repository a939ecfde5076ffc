// The output memory format rule of every op, mirrored by stylesdf_fast/ops/_layout.py (the fake
// kernels must predict the real strides): channels_last(_3d) when the input is densely stored that
// way (and not also plain contiguous), otherwise contiguous.
#pragma once

#include <ATen/core/Tensor.h>

namespace stylesdf_fast {

inline at::MemoryFormat preferred_memory_format(const at::Tensor& t) {
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

}  // namespace stylesdf_fast

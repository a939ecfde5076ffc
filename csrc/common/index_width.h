// When a CUDA kernel may do its index math in 32 bits: GPUs emulate 64-bit integer division (about a
// hundred instructions), which in a memory-bound kernel can cost more than the element's traffic.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

namespace stylesdf_fast {

// Half of int32's range: room for a grid-stride loop's `index + step` past the last element.
constexpr int64_t kInt32IndexLimit = std::numeric_limits<int32_t>::max() / 2;

inline bool fits_int32_index(int64_t extent) { return extent < kInt32IndexLimit; }

// One past the largest element offset the tensor's strides reach (strides are never negative).
inline int64_t offset_extent(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * t.stride(d);
  return extent;
}

}  // namespace stylesdf_fast

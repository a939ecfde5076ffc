// Index math and per-output-element arithmetic of upfirdn2d, shared by the CPU loop and the CUDA
// kernel. Along one axis (docs/kernels.md section 3):
//   u[t] = x[t / up] if t % up == 0 else 0          (zero insertion, length in * up)
//   p[t] = u[t - pad0]                               (negative pads crop)
//   out[o] = sum_k p[o * down + k] * kernel[K - 1 - k]   (true convolution, then keep every down-th)
//   out_size = floor((in * up + pad0 + pad1 - K) / down) + 1
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace stylesdf_fast {

// One axis of the problem. `index_t` is int64_t on the CPU; the CUDA kernel takes an int32_t copy
// when every index of the call fits, since 64-bit integer division is emulated on GPUs (about a
// hundred instructions each) and this index math would otherwise dominate the kernel.
template <typename index_t>
struct UpfirdnAxisT {
  index_t in_size;
  index_t out_size;
  index_t up;
  index_t down;
  index_t pad0;
  index_t taps;  // kernel length along this axis

  template <typename other_t>
  SSDF_HOST_DEVICE UpfirdnAxisT<other_t> as() const {
    return {static_cast<other_t>(in_size), static_cast<other_t>(out_size), static_cast<other_t>(up),
            static_cast<other_t>(down),    static_cast<other_t>(pad0),     static_cast<other_t>(taps)};
  }
};
using UpfirdnAxis = UpfirdnAxisT<int64_t>;

SSDF_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

SSDF_HOST_DEVICE inline int64_t upfirdn_output_size(int64_t in_size, int64_t up, int64_t down, int64_t pad0,
                                                    int64_t pad1, int64_t taps) {
  return floor_div(in_size * up + pad0 + pad1 - taps, down) + 1;
}

// Input index read by output o through (unflipped convolution) tap k, or -1 when that tap lands on
// an inserted zero, in the padding, or in a cropped-away region.
template <typename index_t>
SSDF_HOST_DEVICE inline index_t upfirdn_source_index(index_t o, index_t k, const UpfirdnAxisT<index_t>& a) {
  const index_t t = o * a.down + k - a.pad0;  // position in the upsampled signal
  if (t < 0 || t % a.up != 0) return -1;
  const index_t i = t / a.up;
  return i < a.in_size ? i : -1;
}

// Smallest tap k >= 0 whose position o * down + k - pad0 is a non-negative multiple of up.
// Later taps that land on input samples follow every `up` taps.
template <typename index_t>
SSDF_HOST_DEVICE inline index_t upfirdn_first_tap(index_t o, const UpfirdnAxisT<index_t>& a) {
  const index_t t0 = o * a.down - a.pad0;
  const index_t k = t0 < 0 ? -t0 : 0;
  const index_t r = (t0 + k) % a.up;
  return r == 0 ? k : k + (a.up - r);
}

// One output element of one plane. `kernel` is the [taps_y, taps_x] filter, contiguous, already in
// the accumulation type. Taps are visited in ascending (ky, kx) order, the same order as the CPU row
// loop, so both devices sum in the same order. Each `up` taps move the input index by one, so the
// only divisions are the two that place the first tap.
template <typename scalar_t, typename acc_t, typename index_t>
SSDF_HOST_DEVICE inline acc_t upfirdn2d_output_element(const scalar_t* plane, index_t stride_y, index_t stride_x,
                                                       const acc_t* kernel, const UpfirdnAxisT<index_t>& ax,
                                                       const UpfirdnAxisT<index_t>& ay, index_t oy, index_t ox) {
  acc_t sum = acc_t(0);
  const index_t kx_first = upfirdn_first_tap(ox, ax);
  const index_t ky_first = upfirdn_first_tap(oy, ay);
  const index_t ix_first = (ox * ax.down + kx_first - ax.pad0) / ax.up;
  index_t iy = (oy * ay.down + ky_first - ay.pad0) / ay.up;
  for (index_t ky = ky_first; ky < ay.taps && iy < ay.in_size; ky += ay.up, ++iy) {
    const acc_t* kernel_row = kernel + (ay.taps - 1 - ky) * ax.taps;
    const scalar_t* input_row = plane + iy * stride_y;
    index_t ix = ix_first;
    for (index_t kx = kx_first; kx < ax.taps && ix < ax.in_size; kx += ax.up, ++ix) {
      sum += kernel_row[ax.taps - 1 - kx] * static_cast<acc_t>(input_row[ix * stride_x]);
    }
  }
  return sum;
}

}  // namespace stylesdf_fast

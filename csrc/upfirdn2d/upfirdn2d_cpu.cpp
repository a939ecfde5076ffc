// CPU upfirdn2d: parallel over (n, c) planes; each output row is accumulated in an fp32 (fp64 for
// double) buffer, one FIR tap at a time, visiting only the taps that land on real samples
// (polyphase), never the inserted zeros.
//
// For a fixed horizontal tap the outputs that read an input sample form an arithmetic progression
// (output step P = up / gcd(up, down), input step Q = P * down / up). Storing the row buffers
// de-interleaved by phase (element i at (i % step) * length + i / step) turns every tap into a
// contiguous axpy, which vectorises for every up/down and any input strides.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/cpu_multiversion.h"
#include "../common/memory_format.h"
#include "upfirdn2d.h"
#include "upfirdn2d_args.h"
#include "upfirdn2d_math.h"

namespace stylesdf_fast {
namespace {

int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A buffer of `size` elements stored as `step` phases of `length` = ceil(size / step) elements.
struct PhasedRow {
  int64_t step;
  int64_t length;
  int64_t offset(int64_t i) const { return (i % step) * length + i / step; }
};

// The outputs first_output + t * P (t < count) read input first_input + t * Q through one
// horizontal tap; offsets are positions in the phased output / input row buffers.
struct TapRun {
  int64_t output_offset = 0;
  int64_t input_offset = 0;
  int64_t count = 0;
};

// Derived from upfirdn_source_index, so the CPU row loop reads exactly the samples the
// per-element function (CUDA) reads.
std::vector<TapRun> horizontal_tap_runs(const UpfirdnAxis& ax, const PhasedRow& out_row, const PhasedRow& in_row) {
  std::vector<TapRun> runs(ax.taps);
  for (int64_t k = 0; k < ax.taps; ++k) {
    int64_t o = 0;
    while (o < ax.out_size && upfirdn_source_index(o, k, ax) < 0) ++o;
    if (o == ax.out_size) continue;
    TapRun& run = runs[k];
    run.output_offset = out_row.offset(o);
    run.input_offset = in_row.offset(upfirdn_source_index(o, k, ax));
    for (int64_t next = o; next < ax.out_size && upfirdn_source_index(next, k, ax) >= 0; next += out_row.step) {
      ++run.count;
    }
  }
  return runs;
}

struct PlaneGeometry {
  UpfirdnProblem p;
  PhasedRow out_row;
  PhasedRow in_row;
  int64_t in_sy, in_sx, out_sy, out_sx;
};

// One (n, c) plane. `out_buffer` and `in_buffer` are per-thread scratch rows.
template <typename scalar_t, typename acc_t>
SSDF_CPU_MULTIVERSION void upfirdn2d_plane(const scalar_t* in_plane, scalar_t* out_plane, const acc_t* kernel,
                                           const TapRun* runs, const PlaneGeometry& g, acc_t* out_buffer,
                                           acc_t* in_buffer) {
  const UpfirdnAxis& ax = g.p.x;
  const UpfirdnAxis& ay = g.p.y;
  const int64_t out_buffer_size = g.out_row.step * g.out_row.length;
  for (int64_t oy = 0; oy < ay.out_size; ++oy) {
    for (int64_t i = 0; i < out_buffer_size; ++i) out_buffer[i] = acc_t(0);
    for (int64_t ky = upfirdn_first_tap(oy, ay); ky < ay.taps; ky += ay.up) {
      const int64_t iy = (oy * ay.down + ky - ay.pad0) / ay.up;
      if (iy >= ay.in_size) break;
      const scalar_t* input_row = in_plane + iy * g.in_sy;
      for (int64_t phase = 0; phase < g.in_row.step; ++phase) {
        acc_t* dst = in_buffer + phase * g.in_row.length;
        for (int64_t m = 0, ix = phase; ix < ax.in_size; ++m, ix += g.in_row.step) {
          dst[m] = static_cast<acc_t>(input_row[ix * g.in_sx]);
        }
      }
      const acc_t* kernel_row = kernel + (ay.taps - 1 - ky) * ax.taps;
      for (int64_t kx = 0; kx < ax.taps; ++kx) {
        const acc_t weight = kernel_row[ax.taps - 1 - kx];
        const TapRun& run = runs[kx];
        acc_t* __restrict__ out = out_buffer + run.output_offset;
        const acc_t* __restrict__ in = in_buffer + run.input_offset;
        for (int64_t t = 0; t < run.count; ++t) out[t] += weight * in[t];
      }
    }
    scalar_t* output_row = out_plane + oy * g.out_sy;
    for (int64_t phase = 0; phase < g.out_row.step; ++phase) {
      const acc_t* src = out_buffer + phase * g.out_row.length;
      for (int64_t m = 0, ox = phase; ox < ax.out_size; ++m, ox += g.out_row.step) {
        output_row[ox * g.out_sx] = static_cast<scalar_t>(src[m]);
      }
    }
  }
}

template <typename scalar_t>
void upfirdn2d_planes(const at::Tensor& input, const at::Tensor& kernel_acc, at::Tensor& output,
                      const UpfirdnProblem& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = input.size(1);
  const int64_t planes = input.size(0) * channels;
  const int64_t output_step = p.x.up / gcd(p.x.up, p.x.down);
  const int64_t input_step = output_step * p.x.down / p.x.up;
  const PlaneGeometry g{p,
                        PhasedRow{output_step, ceil_div(p.x.out_size, output_step)},
                        PhasedRow{input_step, ceil_div(p.x.in_size, input_step)},
                        input.stride(2),
                        input.stride(3),
                        output.stride(2),
                        output.stride(3)};
  const std::vector<TapRun> runs = horizontal_tap_runs(p.x, g.out_row, g.in_row);
  const scalar_t* in_data = input.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  const acc_t* kernel = kernel_acc.const_data_ptr<acc_t>();
  const int64_t work_per_plane = p.y.out_size * p.x.out_size * p.x.taps * p.y.taps;

  at::parallel_for(0, planes, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_plane)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> out_buffer(g.out_row.step * g.out_row.length);
    std::vector<acc_t> in_buffer(g.in_row.step * g.in_row.length);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / channels, c = plane % channels;
      upfirdn2d_plane<scalar_t, acc_t>(in_data + n * input.stride(0) + c * input.stride(1),
                                       out_data + n * output.stride(0) + c * output.stride(1), kernel, runs.data(),
                                       g, out_buffer.data(), in_buffer.data());
    }
  });
}

}  // namespace

at::Tensor upfirdn2d_cpu(const at::Tensor& input, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                         int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                         int64_t pad_y1) {
  const UpfirdnProblem p =
      make_upfirdn_problem(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
  at::Tensor output = at::empty({input.size(0), input.size(1), p.y.out_size, p.x.out_size},
                                input.options().memory_format(preferred_memory_format(input)));
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "upfirdn2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor kernel_acc = kernel.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    upfirdn2d_planes<scalar_t>(input, kernel_acc, output, p);
  });
  return output;
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CPU, m) {
  m.impl("upfirdn2d", &stylesdf_fast::upfirdn2d_cpu);
}

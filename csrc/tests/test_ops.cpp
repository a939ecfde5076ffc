// C++ check of the stylesdf_fast ops as a C++ user reaches them: looked up through the dispatcher
// (the library is linked, never called directly) and run on CPU tensors against plain ATen
// compositions. Prints one line per check; exits non-zero when any fails.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#ifndef STYLESDF_FAST_EXPECTED_TORCH_VERSION
#define STYLESDF_FAST_EXPECTED_TORCH_VERSION ""
#endif
#ifndef STYLESDF_FAST_EXPECTED_CUDA
#define STYLESDF_FAST_EXPECTED_CUDA 0
#endif

namespace {

using BuildInfoFn = std::string();
using FusedLeakyReluFn = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double, double);
using FusedLeakyReluBackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                    double, bool);
using Upfirdn2dFn = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t,
                               int64_t, int64_t, int64_t);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

constexpr double kSlope = 0.2;
const double kScale = std::sqrt(2.0);
int failures = 0;

const char* dtype_name(at::ScalarType t) { return t == at::kDouble ? "double" : "float"; }

void report(bool ok, const std::string& name, const std::string& detail) {
  std::printf("[%s] %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  if (!ok) ++failures;
}

void check_close(const std::string& name, const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.sizes() != expected.sizes() || actual.scalar_type() != expected.scalar_type()) {
    report(false, name, "got " + std::string(c10::toString(actual.scalar_type())) + " " + c10::str(actual.sizes()) +
                            ", expected " + c10::toString(expected.scalar_type()) + " " + c10::str(expected.sizes()));
    return;
  }
  const bool is_double = actual.scalar_type() == at::kDouble;
  const double rtol = is_double ? 1e-10 : 1e-4, atol = is_double ? 1e-10 : 1e-5;
  const double err = actual.numel() == 0 ? 0.0 : (actual - expected).abs().max().item<double>();
  report(at::allclose(actual, expected, rtol, atol), name, "max abs err " + c10::str(err));
}

// y = scale * leaky_relu(x + b[channel], slope), channel = dim 1.
at::Tensor fused_leaky_relu_ref(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  at::Tensor v = x;
  if (bias) {
    std::vector<int64_t> shape(x.dim(), 1);
    shape[1] = x.size(1);
    v = x + bias->view(shape);
  }
  return at::leaky_relu(v, kSlope) * kScale;
}

void test_fused_leaky_relu() {
  auto op = find_op<FusedLeakyReluFn>("stylesdf_fast::fused_leaky_relu");
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const std::string type = dtype_name(dtype);
    const at::Tensor x = at::randn({2, 5, 6, 7}, at::dtype(dtype));
    const at::Tensor b = at::randn({5}, at::dtype(dtype));
    check_close("fused_leaky_relu " + type + " bias", op.call(x, b, kSlope, kScale), fused_leaky_relu_ref(x, b));
    check_close("fused_leaky_relu " + type + " no bias", op.call(x, std::nullopt, kSlope, kScale),
                fused_leaky_relu_ref(x, std::nullopt));
  }
  const at::Tensor x = at::randn({2, 5, 6, 7}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor b = at::randn({5});
  const at::Tensor y = op.call(x, b, kSlope, kScale);
  check_close("fused_leaky_relu float channels_last bias", y, fused_leaky_relu_ref(x, b));
  report(y.is_contiguous(at::MemoryFormat::ChannelsLast), "fused_leaky_relu channels_last output format", "");
  const at::Tensor x2 = at::randn({8, 5});
  check_close("fused_leaky_relu float rank-2 bias", op.call(x2, b, kSlope, kScale), fused_leaky_relu_ref(x2, b));
}

void test_fused_leaky_relu_backward() {
  auto forward = find_op<FusedLeakyReluFn>("stylesdf_fast::fused_leaky_relu");
  auto backward = find_op<FusedLeakyReluBackwardFn>("stylesdf_fast::fused_leaky_relu_backward");
  for (const bool channels_last : {false, true}) {
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      const std::string name = std::string("fused_leaky_relu_backward ") + dtype_name(dtype) +
                               (channels_last ? " channels_last" : "");
      const at::Tensor x = at::randn({3, 4, 5, 6}, at::dtype(dtype)).contiguous(format);
      const at::Tensor b = at::randn({4}, at::dtype(dtype));
      const at::Tensor grad = at::randn({3, 4, 5, 6}, at::dtype(dtype)).contiguous(format);
      const at::Tensor out = forward.call(x, b, kSlope, kScale);
      // d/dv [scale * leaky_relu(v)] = scale where v > 0 (equivalently out > 0), else scale * slope.
      const at::Tensor grad_input_ref = at::where(out > 0, grad * kScale, grad * (kScale * kSlope));
      const auto [grad_input, grad_bias] = backward.call(grad, out, kSlope, kScale, true);
      check_close(name + " grad_input", grad_input, grad_input_ref);
      check_close(name + " grad_bias", grad_bias, grad_input_ref.sum({0, 2, 3}));
    }
  }
  const at::Tensor out = forward.call(at::randn({2, 3, 4, 4}), std::nullopt, kSlope, kScale);
  const auto [grad_input, grad_bias] = backward.call(at::ones_like(out), out, kSlope, kScale, false);
  check_close("fused_leaky_relu_backward no bias grad_input", grad_input,
              at::where(out > 0, at::full_like(out, kScale), at::full_like(out, kScale * kSlope)));
  report(grad_bias.numel() == 0, "fused_leaky_relu_backward no bias grad_bias is empty", c10::str(grad_bias.sizes()));
}

// Zero insertion, pad (negative pads crop), true convolution (correlation with the flipped
// kernel), keep every down-th sample: out = (in * up + pad0 + pad1 - k) // down + 1 per axis.
at::Tensor upfirdn2d_ref(const at::Tensor& x, const at::Tensor& kernel, int64_t up_x, int64_t up_y, int64_t down_x,
                         int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor up = at::zeros({n, c, h, up_y, w, up_x}, x.options());
  up.select(5, 0).select(3, 0).copy_(x);
  const at::Tensor padded =
      at::constant_pad_nd(up.reshape({n * c, 1, h * up_y, w * up_x}), {pad_x0, pad_x1, pad_y0, pad_y1}, 0);
  const at::Tensor weight = kernel.flip({0, 1}).to(x.scalar_type()).view({1, 1, kernel.size(0), kernel.size(1)});
  const at::Tensor y = at::conv2d(padded, weight);
  const at::Tensor strided = y.slice(2, 0, y.size(2), down_y).slice(3, 0, y.size(3), down_x);
  return strided.reshape({n, c, strided.size(2), strided.size(3)});
}

void test_upfirdn2d() {
  auto op = find_op<Upfirdn2dFn>("stylesdf_fast::upfirdn2d");
  const at::Tensor k1d = at::tensor({1.0f, 3.0f, 3.0f, 1.0f});
  const at::Tensor blur = at::outer(k1d, k1d) / at::outer(k1d, k1d).sum();  // 4x4, sums to 1
  struct Case {
    const char* name;
    at::Tensor input, kernel;
    int64_t up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1;
  };
  const Case cases[] = {
      {"upfirdn2d up=2 pad (2,1)", at::randn({2, 3, 8, 8}), blur * 4, 2, 2, 1, 1, 2, 1, 2, 1},
      {"upfirdn2d down=2 pad (1,1)", at::randn({2, 3, 8, 8}), blur, 1, 1, 2, 2, 1, 1, 1, 1},
      {"upfirdn2d blur pad (2,2)", at::randn({2, 3, 8, 8}), blur, 1, 1, 1, 1, 2, 2, 2, 2},
      {"upfirdn2d up_x=3 down_y=2 5x3 kernel, negative pad, float", at::randn({2, 3, 11, 6}), at::randn({5, 3}), 3, 1,
       1, 2, -1, 2, 2, -1},
      {"upfirdn2d up_x=3 down_y=2 5x3 kernel, negative pad, double", at::randn({2, 3, 11, 6}, at::kDouble),
       at::randn({5, 3}, at::kDouble), 3, 1, 1, 2, -1, 2, 2, -1},
  };
  for (const Case& t : cases) {
    const at::Tensor out = op.call(t.input, t.kernel, t.up_x, t.up_y, t.down_x, t.down_y, t.pad_x0, t.pad_x1,
                                   t.pad_y0, t.pad_y1);
    const int64_t out_h = (t.input.size(2) * t.up_y + t.pad_y0 + t.pad_y1 - t.kernel.size(0)) / t.down_y + 1;
    const int64_t out_w = (t.input.size(3) * t.up_x + t.pad_x0 + t.pad_x1 - t.kernel.size(1)) / t.down_x + 1;
    report(out.size(2) == out_h && out.size(3) == out_w, std::string(t.name) + " output size",
           c10::str(out.sizes(), " (expected H ", out_h, ", W ", out_w, ")"));
    check_close(t.name, out,
                upfirdn2d_ref(t.input, t.kernel, t.up_x, t.up_y, t.down_x, t.down_y, t.pad_x0, t.pad_x1, t.pad_y0,
                              t.pad_y1));
  }
}

void test_build_info() {
  const std::string info = find_op<BuildInfoFn>("stylesdf_fast::_build_info").call();
  const std::string expected =
      std::string("torch=") + STYLESDF_FAST_EXPECTED_TORCH_VERSION + ";cuda=" + (STYLESDF_FAST_EXPECTED_CUDA ? "1" : "0");
  report(info.rfind("torch=", 0) == 0 && info == expected, "_build_info", "\"" + info + "\" (expected \"" + expected + "\")");
}

}  // namespace

int main() {
  at::manual_seed(0);
  try {
    test_build_info();
    test_fused_leaky_relu();
    test_fused_leaky_relu_backward();
    test_upfirdn2d();
  } catch (const std::exception& e) {
    std::printf("[FAIL] exception: %s\n", e.what());
    return 1;
  }
  std::printf("%s: %d failed\n", failures == 0 ? "OK" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}

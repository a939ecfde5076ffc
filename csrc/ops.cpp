// The one TORCH_LIBRARY block of the project: every op's schema. Each op's CPU and CUDA
// implementations register themselves beside their code (TORCH_LIBRARY_IMPL at the end of
// csrc/<op>/<op>_cpu.cpp and _cuda.cu); autograd and fake (meta) kernels are attached from Python
// (stylesdf_fast/ops/).
#include <torch/library.h>

#include <string>


#ifndef STYLESDF_FAST_TORCH_VERSION
#define STYLESDF_FAST_TORCH_VERSION "unknown"
#endif

namespace stylesdf_fast {
namespace {

// "torch=<version the extension was compiled against>;cuda=<0|1>", read by stylesdf_fast/_extension.py.
std::string build_info() {
#ifdef WITH_CUDA
  const char* cuda = "1";
#else
  const char* cuda = "0";
#endif
  return std::string("torch=") + STYLESDF_FAST_TORCH_VERSION + ";cuda=" + cuda;
}

}  // namespace
}  // namespace stylesdf_fast

TORCH_LIBRARY(stylesdf_fast, m) {
  m.def("_build_info() -> str");
  m.def("fused_leaky_relu(Tensor input, Tensor? bias, float negative_slope, float scale) -> Tensor");
  m.def(
      "fused_leaky_relu_backward(Tensor grad_output, Tensor output, float negative_slope, float scale, "
      "bool bias_grad) -> (Tensor, Tensor)");
  m.def(
      "upfirdn2d(Tensor input, Tensor kernel, int up_x, int up_y, int down_x, int down_y, int pad_x0, "
      "int pad_x1, int pad_y0, int pad_y1) -> Tensor");
  m.def(
      "sdf_volume_render(Tensor density, Tensor rgb, Tensor? features, Tensor z_vals, Tensor ray_norm, "
      "Tensor? beta, bool force_background, int rgb_activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sdf_volume_render_backward(Tensor? grad_rgb_map, Tensor? grad_feature_map, Tensor? grad_weights, "
      "Tensor density, Tensor rgb, Tensor? features, Tensor z_vals, Tensor ray_norm, Tensor? beta, "
      "bool force_background, int rgb_activation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sdf_volume_render_packed(Tensor raw, int rgb_offset, int sdf_offset, int feature_offset, int channels, "
      "Tensor z_vals, Tensor ray_norm, Tensor beta, bool force_background) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sdf_volume_render_packed_backward(Tensor? grad_rgb_map, Tensor? grad_feature_map, Tensor? grad_weights, "
      "Tensor raw, int rgb_offset, int sdf_offset, int feature_offset, int channels, Tensor z_vals, "
      "Tensor ray_norm, Tensor beta, bool force_background, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("film_siren(Tensor x, Tensor gamma, Tensor beta) -> Tensor");
  m.def(
      "film_siren_backward(Tensor grad, Tensor x, Tensor gamma, Tensor beta) -> (Tensor grad_x, Tensor grad_gamma, "
      "Tensor grad_beta)");
  m.def(
      "film_siren_double_backward(Tensor? gg_x, Tensor? gg_gamma, Tensor? gg_beta, Tensor grad, Tensor x, "
      "Tensor gamma, Tensor beta) -> (Tensor d_grad, Tensor d_x, Tensor d_gamma, Tensor d_beta)");
}

TORCH_LIBRARY_IMPL(stylesdf_fast, CompositeExplicitAutograd, m) {
  m.impl("_build_info", &stylesdf_fast::build_info);
}

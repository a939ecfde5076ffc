// film_siren: a FiLM-SIREN layer's modulation and sine after its GEMM (docs/kernels.md section 4).
//
//   y = sin(gamma[b, c] * x[b, n, c] + beta[b, c])     x [B, ..., C] (rank >= 2, seen as [B, N, C])
//   backward: with u = gamma x + beta, g = grad * cos(u):  grad_x = gamma g,
//             grad_gamma = sum_n x g,  grad_beta = sum_n g   (deterministic per-channel sums)
//   The backward is itself an op with its own vector-Jacobian product (film_siren_double_backward),
//   which the eikonal loss needs; only x_lin, gamma and beta are kept, sin and cos are recomputed.
//
// Host API, registered with the dispatcher beside each implementation (TORCH_LIBRARY_IMPL at the end
// of the _cpu.cpp / _cuda.cu files). gamma and beta [B, C] in x's dtype (float32 when x is
// float16/bfloat16).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace stylesdf_fast {

at::Tensor film_siren_cpu(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta);
// Returns (grad_x, grad_gamma, grad_beta), each in its input's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> film_siren_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                       const at::Tensor& gamma,
                                                                       const at::Tensor& beta);
// The vector-Jacobian product of film_siren_backward with the cotangents gg_x [B, ..., C],
// gg_gamma, gg_beta [B, C] of its outputs (absent = zero). Returns (d_grad, d_x, d_gamma, d_beta).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_siren_double_backward_cpu(
    const std::optional<at::Tensor>& gg_x, const std::optional<at::Tensor>& gg_gamma,
    const std::optional<at::Tensor>& gg_beta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta);
#ifdef WITH_CUDA
at::Tensor film_siren_cuda(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta);
std::tuple<at::Tensor, at::Tensor, at::Tensor> film_siren_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                        const at::Tensor& gamma,
                                                                        const at::Tensor& beta);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_siren_double_backward_cuda(
    const std::optional<at::Tensor>& gg_x, const std::optional<at::Tensor>& gg_gamma,
    const std::optional<at::Tensor>& gg_beta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta);
#endif

}  // namespace stylesdf_fast

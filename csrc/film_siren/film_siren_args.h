// Host-side argument checks and views shared by the CPU and CUDA FiLM-SIREN activation.
// x [B, ..., C] of any rank >= 2 is seen as [B, N, C] (N the product of the middle dims, 1 for
// rank 2) and made contiguous (copied only when it is not); gamma and beta [B, C] are converted to
// the accumulation type (float32 for float16/bfloat16/float32 storage, float64 for float64).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>

namespace stylesdf_fast {

struct FilmSirenShape {
  int64_t batch;     // B
  int64_t rows;      // N: elements per (b, c), the product of x's middle dims
  int64_t channels;  // C
};

inline bool film_is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

inline at::ScalarType film_acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Checks x, gamma, beta and returns x's [B, N, C] view sizes.
inline FilmSirenShape check_film_siren_args(const char* op, const at::Tensor& x, const at::Tensor& gamma,
                                            const at::Tensor& beta) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must be [B, ..., C] (rank >= 2), got ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || film_is_low_precision(dtype), op,
              ": x must be float32, float64, float16 or bfloat16, got ", dtype);
  const int64_t batch = x.size(0), channels = x.size(-1);
  for (const at::Tensor* p : {&gamma, &beta}) {
    TORCH_CHECK(p->dim() == 2 && p->size(0) == batch && p->size(1) == channels, op, ": gamma and beta must be [",
                batch, ", ", channels, "] (x's first and last dims), got ", p->sizes());
    TORCH_CHECK(p->device() == x.device(), op, ": gamma and beta must be on x's device ", x.device(), ", got ",
                p->device());
  }
  TORCH_CHECK(gamma.scalar_type() == beta.scalar_type(), op, ": gamma dtype ", gamma.scalar_type(),
              " differs from beta dtype ", beta.scalar_type());
  const auto param = gamma.scalar_type();
  TORCH_CHECK(param == dtype || (param == at::kFloat && film_is_low_precision(dtype)), op,
              ": gamma and beta must have x's dtype ", dtype, " (or float32 when x is float16/bfloat16), got ", param);
  int64_t rows = 1;
  for (int64_t d = 1; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return {batch, rows, channels};
}

// `grad` (the cotangent of the forward output) must match x in shape, dtype and device.
inline void check_film_siren_grad(const char* op, const char* name, const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
              ", got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(), ", got ",
              grad.device());
}

// A [B, C] per-(batch, channel) tensor (gamma, beta or their cotangents) as a contiguous tensor of
// the accumulation type.
inline at::Tensor film_params_as_acc(const at::Tensor& p, at::ScalarType acc) { return p.to(acc).contiguous(); }

// An optional [B, C] cotangent, checked, as film_params_as_acc; undefined when absent.
inline at::Tensor film_optional_params_as_acc(const char* op, const char* name, const std::optional<at::Tensor>& p,
                                              const at::Tensor& gamma, at::ScalarType acc) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  TORCH_CHECK(p->sizes() == gamma.sizes(), op, ": ", name, " must be [B, C] = ", gamma.sizes(), ", got ", p->sizes());
  TORCH_CHECK(at::isFloatingType(p->scalar_type()), op, ": ", name, " must be floating point, got ",
              p->scalar_type());
  TORCH_CHECK(p->device() == gamma.device(), op, ": ", name, " must be on ", gamma.device(), ", got ", p->device());
  return film_params_as_acc(*p, acc);
}

// Rows of [B, N, C] are summed over n in fixed chunks of `chunk_rows`, a function of the shape only
// (never of the thread count or the device), so the per-(b, c) sums are bitwise reproducible.
struct FilmRowChunks {
  int64_t chunk_rows;
  int64_t num_chunks;
};

inline FilmRowChunks film_row_chunks(int64_t rows, int64_t channels, int64_t max_chunks, int64_t min_elements,
                                     int64_t row_multiple) {
  const int64_t by_count = (rows + max_chunks - 1) / max_chunks;
  const int64_t by_size = (min_elements + std::max<int64_t>(channels, 1) - 1) / std::max<int64_t>(channels, 1);
  int64_t chunk_rows = std::max<int64_t>({by_count, by_size, int64_t(1)});
  chunk_rows = (chunk_rows + row_multiple - 1) / row_multiple * row_multiple;
  return {chunk_rows, std::max<int64_t>(1, (rows + chunk_rows - 1) / chunk_rows)};
}

// What the CPU and CUDA backward share before their loops: the checked shape, contiguous inputs,
// the parameters in the math dtype, and the allocated outputs (grad_gamma / grad_beta in the math
// dtype, cast back by the caller).
struct FilmBackwardArgs {
  FilmSirenShape shape;
  at::Tensor x, grad;                         // [B, N, C] contiguous
  at::Tensor gamma, beta;                     // [B, C] in the math dtype; defined only for a non-empty x
  at::Tensor grad_x, grad_gamma, grad_beta;
};

inline FilmBackwardArgs prepare_film_backward(const at::Tensor& grad_arg, const at::Tensor& x_arg,
                                              const at::Tensor& gamma_arg, const at::Tensor& beta_arg) {
  const char* op = "film_siren_backward";
  FilmBackwardArgs a;
  a.shape = check_film_siren_args(op, x_arg, gamma_arg, beta_arg);
  check_film_siren_grad(op, "grad", grad_arg, x_arg);
  a.x = x_arg.contiguous();
  a.grad = grad_arg.contiguous();
  const at::ScalarType acc = film_acc_type(a.x.scalar_type());
  a.grad_x = at::empty(a.x.sizes(), a.x.options());
  a.grad_gamma = at::zeros(gamma_arg.sizes(), gamma_arg.options().dtype(acc));
  a.grad_beta = at::zeros(beta_arg.sizes(), beta_arg.options().dtype(acc));
  if (a.x.numel() > 0) {
    a.gamma = film_params_as_acc(gamma_arg, acc);
    a.beta = film_params_as_acc(beta_arg, acc);
  }
  return a;
}

// What the CPU and CUDA double backward share before their loops: the checked shape, contiguous
// inputs, the parameters and cotangents in the math dtype (zeros for absent gg_gamma / gg_beta), and
// the allocated outputs (d_gamma / d_beta in the math dtype, cast back by the caller).
struct FilmDoubleBackwardArgs {
  FilmSirenShape shape;
  at::ScalarType acc;
  at::Tensor x, grad, gg_x;                   // [B, N, C] contiguous; gg_x undefined when absent
  at::Tensor gamma, beta, gg_gamma, gg_beta;  // [B, C] in acc; defined only for a non-empty x
  at::Tensor d_grad, d_x, d_gamma, d_beta;
};

inline FilmDoubleBackwardArgs prepare_film_double_backward(
    const char* op, const std::optional<at::Tensor>& gg_x_arg, const std::optional<at::Tensor>& gg_gamma_arg,
    const std::optional<at::Tensor>& gg_beta_arg, const at::Tensor& grad_arg, const at::Tensor& x_arg,
    const at::Tensor& gamma_arg, const at::Tensor& beta_arg) {
  FilmDoubleBackwardArgs a;
  a.shape = check_film_siren_args(op, x_arg, gamma_arg, beta_arg);
  check_film_siren_grad(op, "grad", grad_arg, x_arg);
  const bool has_gg_x = gg_x_arg.has_value() && gg_x_arg->defined();
  if (has_gg_x) check_film_siren_grad(op, "gg_x", *gg_x_arg, x_arg);
  a.acc = film_acc_type(x_arg.scalar_type());
  a.gg_gamma = film_optional_params_as_acc(op, "gg_gamma", gg_gamma_arg, gamma_arg, a.acc);
  a.gg_beta = film_optional_params_as_acc(op, "gg_beta", gg_beta_arg, gamma_arg, a.acc);
  a.x = x_arg.contiguous();
  a.grad = grad_arg.contiguous();
  if (has_gg_x) a.gg_x = gg_x_arg->contiguous();
  a.d_grad = at::empty(a.x.sizes(), a.x.options());
  a.d_x = at::empty(a.x.sizes(), a.x.options());
  a.d_gamma = at::zeros(gamma_arg.sizes(), gamma_arg.options().dtype(a.acc));
  a.d_beta = at::zeros(beta_arg.sizes(), beta_arg.options().dtype(a.acc));
  if (a.x.numel() > 0) {
    a.gamma = film_params_as_acc(gamma_arg, a.acc);
    a.beta = film_params_as_acc(beta_arg, a.acc);
    if (!a.gg_gamma.defined()) a.gg_gamma = at::zeros(a.gamma.sizes(), a.gamma.options());
    if (!a.gg_beta.defined()) a.gg_beta = at::zeros(a.gamma.sizes(), a.gamma.options());
  }
  return a;
}

}  // namespace stylesdf_fast

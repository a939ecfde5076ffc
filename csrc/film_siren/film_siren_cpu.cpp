// CPU FiLM-SIREN activation y = sin(gamma x + beta) on x [B, N, C]: forward, backward and double
// backward. Each task takes a block of rows of one batch item: it forms the phases u = gamma x + beta
// in a small buffer, takes their sines/cosines with ATen's vectorised kernels (SLEEF, several times
// faster than a scalar libm loop), then finishes with the shared per-element math of
// film_siren_math.h. The sums over n (gamma's and beta's gradients) are accumulated per fixed chunk
// of rows into a workspace and then added chunk by chunk in order, so they do not depend on the
// thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/cos.h>
#include <c10/core/InferenceMode.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <vector>

#include "../common/cpu_multiversion.h"
#include "../ops.h"
#include "film_siren_args.h"
#include "film_siren_math.h"

namespace stylesdf_fast {
namespace {

constexpr int64_t kMaxChunks = 64;          // per batch item: enough tasks for the cores, small workspace
constexpr int64_t kMinChunkElements = 4096;  // no chunk smaller than this many elements
constexpr int64_t kBlockElements = 32768;    // sines/cosines computed per vectorised call (128 KiB of floats)

// sin and cos of a block of phases u, with ATen's vectorised (SLEEF) kernels: a scalar sinf/cosf loop
// is several times slower than the eager torch.sin this op replaces. Called inside at::parallel_for,
// where ATen runs the op on the calling thread.
template <typename acc_t>
void sin_cos_block(acc_t* u, int64_t count, acc_t* sin_out, bool want_cos) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor phases = at::from_blob(u, {count}, options);
  if (sin_out != nullptr) {
    at::Tensor sines = at::from_blob(sin_out, {count}, options);
    at::sin_out(sines, phases);
  }
  if (want_cos) phases.cos_();
}

// u[i] = gamma[c] x[r, c] + beta[c] for rows [begin, end) of one batch item (gamma, beta: its [C] rows).
template <typename scalar_t, typename acc_t>
SSDF_CPU_MULTIVERSION void phases_rows(const scalar_t* __restrict__ x, const acc_t* __restrict__ gamma,
                                       const acc_t* __restrict__ beta, acc_t* __restrict__ u, int64_t channels,
                                       int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* __restrict__ xr = x + r * channels;
    acc_t* __restrict__ ur = u + (r - begin) * channels;
    for (int64_t c = 0; c < channels; ++c) ur[c] = gamma[c] * static_cast<acc_t>(xr[c]) + beta[c];
  }
}

// Rows [begin, end) of the forward pass, all in one batch item (gamma, beta: its [C] rows).
template <typename scalar_t, typename acc_t>
void forward_rows(const scalar_t* x, const acc_t* gamma, const acc_t* beta, scalar_t* y, int64_t channels,
                  int64_t begin, int64_t end, std::vector<acc_t>& buffer) {
  const int64_t block_rows = std::max<int64_t>(1, kBlockElements / channels);
  for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
    const int64_t r1 = std::min(end, r0 + block_rows), count = (r1 - r0) * channels;
    buffer.resize(static_cast<size_t>(count));
    phases_rows<scalar_t, acc_t>(x, gamma, beta, buffer.data(), channels, r0, r1);
    sin_cos_block<acc_t>(buffer.data(), count, buffer.data(), false);   // in place: u -> sin(u)
    std::copy(buffer.begin(), buffer.begin() + count, y + r0 * channels);
  }
}

// Rows [begin, end) of batch item b's backward: writes grad_x, adds the gamma/beta terms to sums[C].
// Every pointer is __restrict__: without it the compiler must assume the per-channel sums alias the
// rows and cannot vectorise the loop (measured: several times slower).
template <typename scalar_t, typename acc_t>
SSDF_CPU_MULTIVERSION void backward_finish(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                           const acc_t* __restrict__ gamma, const acc_t* __restrict__ cosines,
                                           scalar_t* __restrict__ grad_x, acc_t* __restrict__ sum_gamma,
                                           acc_t* __restrict__ sum_beta, int64_t channels, int64_t begin,
                                           int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* __restrict__ gr = grad + r * channels;
    const scalar_t* __restrict__ xr = x + r * channels;
    const acc_t* __restrict__ cr = cosines + (r - begin) * channels;
    scalar_t* __restrict__ dxr = grad_x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const FilmSirenVjp<acc_t> v =
          film_siren_vjp_given_cos(static_cast<acc_t>(gr[c]), static_cast<acc_t>(xr[c]), gamma[c], cr[c]);
      dxr[c] = static_cast<scalar_t>(v.dx);
      sum_gamma[c] += v.dgamma;
      sum_beta[c] += v.dbeta;
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward_rows(const scalar_t* grad, const scalar_t* x, const acc_t* gamma, const acc_t* beta, scalar_t* grad_x,
                   acc_t* sum_gamma, acc_t* sum_beta, int64_t channels, int64_t begin, int64_t end) {
  const int64_t block_rows = std::max<int64_t>(1, kBlockElements / channels);
  std::vector<acc_t> cosines;
  for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
    const int64_t r1 = std::min(end, r0 + block_rows), count = (r1 - r0) * channels;
    cosines.resize(static_cast<size_t>(count));
    phases_rows<scalar_t, acc_t>(x, gamma, beta, cosines.data(), channels, r0, r1);
    sin_cos_block<acc_t>(cosines.data(), count, nullptr, true);
    backward_finish<scalar_t, acc_t>(grad, x, gamma, cosines.data(), grad_x, sum_gamma, sum_beta, channels, r0, r1);
  }
}

// Rows [begin, end) of batch item b's double backward given the sines and cosines of the block;
// gg_x may be null, gg_gamma/gg_beta are batch item b's rows of the cotangents (zeros when absent).
template <typename scalar_t, typename acc_t, bool kHasGgX>
SSDF_CPU_MULTIVERSION void double_backward_finish(const scalar_t* __restrict__ gg_x,
                                                  const acc_t* __restrict__ gg_gamma,
                                                  const acc_t* __restrict__ gg_beta, const scalar_t* __restrict__ grad,
                                                  const scalar_t* __restrict__ x, const acc_t* __restrict__ gamma,
                                                  const acc_t* __restrict__ sines, const acc_t* __restrict__ cosines,
                                                  scalar_t* __restrict__ d_grad, scalar_t* __restrict__ d_x,
                                                  acc_t* __restrict__ sum_gamma, acc_t* __restrict__ sum_beta,
                                                  int64_t channels, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t o = r * channels, ob = (r - begin) * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t ggx = kHasGgX ? static_cast<acc_t>(gg_x[o + c]) : acc_t(0);
      const FilmSirenDoubleVjp<acc_t> v = film_siren_double_vjp_given_sincos(
          ggx, gg_gamma[c], gg_beta[c], static_cast<acc_t>(grad[o + c]), static_cast<acc_t>(x[o + c]), gamma[c],
          sines[ob + c], cosines[ob + c]);
      d_grad[o + c] = static_cast<scalar_t>(v.d_grad);
      d_x[o + c] = static_cast<scalar_t>(v.d_x);
      sum_gamma[c] += v.d_gamma;
      sum_beta[c] += v.d_beta;
    }
  }
}

template <typename scalar_t, typename acc_t>
void double_backward_rows(const scalar_t* gg_x, const acc_t* gg_gamma, const acc_t* gg_beta, const scalar_t* grad,
                          const scalar_t* x, const acc_t* gamma, const acc_t* beta, scalar_t* d_grad, scalar_t* d_x,
                          acc_t* sum_gamma, acc_t* sum_beta, int64_t channels, int64_t begin, int64_t end) {
  const int64_t block_rows = std::max<int64_t>(1, kBlockElements / channels);
  std::vector<acc_t> sines, cosines;
  for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
    const int64_t r1 = std::min(end, r0 + block_rows), count = (r1 - r0) * channels;
    sines.resize(static_cast<size_t>(count));
    cosines.resize(static_cast<size_t>(count));
    phases_rows<scalar_t, acc_t>(x, gamma, beta, cosines.data(), channels, r0, r1);
    sin_cos_block<acc_t>(cosines.data(), count, sines.data(), true);
    if (gg_x != nullptr) {   // the branch is taken once per block, not per element
      double_backward_finish<scalar_t, acc_t, true>(gg_x, gg_gamma, gg_beta, grad, x, gamma, sines.data(),
                                                    cosines.data(), d_grad, d_x, sum_gamma, sum_beta, channels, r0,
                                                    r1);
    } else {
      double_backward_finish<scalar_t, acc_t, false>(gg_x, gg_gamma, gg_beta, grad, x, gamma, sines.data(),
                                                     cosines.data(), d_grad, d_x, sum_gamma, sum_beta, channels, r0,
                                                     r1);
    }
  }
}

// Runs rows_fn(b, row_begin, row_end, sum_gamma, sum_beta) over fixed chunks of each batch item's
// rows in parallel (global row indices), then writes the per-(b, c) totals, chunk by chunk in
// order, to out_gamma and out_beta [B, C].
template <typename acc_t, typename RowsFn>
void reduce_rows(const FilmSirenShape& shape, acc_t* out_gamma, acc_t* out_beta, const RowsFn& rows_fn) {
  const int64_t B = shape.batch, N = shape.rows, C = shape.channels;
  const FilmRowChunks chunks = film_row_chunks(N, C, kMaxChunks, kMinChunkElements, 1);
  const int64_t K = chunks.num_chunks;
  std::vector<acc_t> partial(static_cast<size_t>(B * K * C) * 2, acc_t(0));  // [B, K, 2, C]
  at::parallel_for(0, B * K, 1, [&](int64_t task_begin, int64_t task_end) {
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = task / K, k = task % K;
      const int64_t begin = k * chunks.chunk_rows, end = std::min(N, begin + chunks.chunk_rows);
      acc_t* sums = partial.data() + task * 2 * C;
      rows_fn(b, b * N + begin, b * N + end, sums, sums + C);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      for (int64_t c = 0; c < C; ++c) {
        acc_t total_gamma = acc_t(0), total_beta = acc_t(0);
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* sums = partial.data() + (b * K + k) * 2 * C;
          total_gamma += sums[c];
          total_beta += sums[C + c];
        }
        out_gamma[b * C + c] = total_gamma;
        out_beta[b * C + c] = total_beta;
      }
    }
  });
}

}  // namespace

at::Tensor film_siren_cpu(const at::Tensor& x_arg, const at::Tensor& gamma_arg, const at::Tensor& beta_arg) {
  const FilmSirenShape shape = check_film_siren_args("film_siren", x_arg, gamma_arg, beta_arg);
  const at::Tensor x = x_arg.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  const at::ScalarType acc = film_acc_type(x.scalar_type());
  const at::Tensor gamma = film_params_as_acc(gamma_arg, acc), beta = film_params_as_acc(beta_arg, acc);
  const int64_t N = shape.rows, C = shape.channels;
  const int64_t block_rows = std::max<int64_t>(1, kBlockElements / C);
  const int64_t blocks_per_item = (N + block_rows - 1) / block_rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "film_siren_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* gp = gamma.const_data_ptr<acc_t>();
    const acc_t* bp = beta.const_data_ptr<acc_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    // tasks: (batch item, block of rows); ranges never straddle two batch items
    at::parallel_for(0, shape.batch * blocks_per_item, 1, [&](int64_t task_begin, int64_t task_end) {
      std::vector<acc_t> buffer;
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t b = task / blocks_per_item, k = task % blocks_per_item;
        const int64_t begin = b * N + k * block_rows, end = b * N + std::min(N, (k + 1) * block_rows);
        forward_rows<scalar_t, acc_t>(xp, gp + b * C, bp + b * C, yp, C, begin, end, buffer);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> film_siren_backward_cpu(const at::Tensor& grad_arg,
                                                                       const at::Tensor& x_arg,
                                                                       const at::Tensor& gamma_arg,
                                                                       const at::Tensor& beta_arg) {
  FilmBackwardArgs a = prepare_film_backward(grad_arg, x_arg, gamma_arg, beta_arg);
  const FilmSirenShape& shape = a.shape;
  const at::Tensor &x = a.x, &grad = a.grad, &gamma = a.gamma, &beta = a.beta;
  at::Tensor &grad_x = a.grad_x, &grad_gamma = a.grad_gamma, &grad_beta = a.grad_beta;
  if (x.numel() > 0) {
    const int64_t C = shape.channels;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "film_siren_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const acc_t* gp = gamma.const_data_ptr<acc_t>();
      const acc_t* bp = beta.const_data_ptr<acc_t>();
      scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
      reduce_rows<acc_t>(shape, grad_gamma.mutable_data_ptr<acc_t>(), grad_beta.mutable_data_ptr<acc_t>(),
                         [&](int64_t b, int64_t begin, int64_t end, acc_t* sum_gamma, acc_t* sum_beta) {
                           backward_rows<scalar_t, acc_t>(g, xp, gp + b * C, bp + b * C, dx, sum_gamma, sum_beta,
                                                          C, begin, end);
                         });
    });
  }
  return {grad_x, grad_gamma.to(gamma_arg.scalar_type()), grad_beta.to(beta_arg.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_siren_double_backward_cpu(
    const std::optional<at::Tensor>& gg_x_arg, const std::optional<at::Tensor>& gg_gamma_arg,
    const std::optional<at::Tensor>& gg_beta_arg, const at::Tensor& grad_arg, const at::Tensor& x_arg,
    const at::Tensor& gamma_arg, const at::Tensor& beta_arg) {
  FilmDoubleBackwardArgs a = prepare_film_double_backward("film_siren_double_backward", gg_x_arg, gg_gamma_arg,
                                                          gg_beta_arg, grad_arg, x_arg, gamma_arg, beta_arg);
  if (a.x.numel() > 0) {
    const int64_t C = a.shape.channels;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "film_siren_double_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* ggx = a.gg_x.defined() ? a.gg_x.const_data_ptr<scalar_t>() : nullptr;
      const acc_t* ggg = a.gg_gamma.const_data_ptr<acc_t>();
      const acc_t* ggb = a.gg_beta.const_data_ptr<acc_t>();
      const scalar_t* g = a.grad.const_data_ptr<scalar_t>();
      const scalar_t* xp = a.x.const_data_ptr<scalar_t>();
      const acc_t* gp = a.gamma.const_data_ptr<acc_t>();
      const acc_t* bp = a.beta.const_data_ptr<acc_t>();
      scalar_t* dg = a.d_grad.mutable_data_ptr<scalar_t>();
      scalar_t* dx = a.d_x.mutable_data_ptr<scalar_t>();
      reduce_rows<acc_t>(a.shape, a.d_gamma.mutable_data_ptr<acc_t>(), a.d_beta.mutable_data_ptr<acc_t>(),
                         [&](int64_t b, int64_t begin, int64_t end, acc_t* sum_gamma, acc_t* sum_beta) {
                           double_backward_rows<scalar_t, acc_t>(ggx, ggg + b * C, ggb + b * C, g, xp, gp + b * C,
                                                                 bp + b * C, dg, dx, sum_gamma, sum_beta, C, begin,
                                                                 end);
                         });
    });
  }
  return {a.d_grad, a.d_x, a.d_gamma.to(gamma_arg.scalar_type()), a.d_beta.to(beta_arg.scalar_type())};
}

}  // namespace stylesdf_fast

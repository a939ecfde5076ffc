// CPU FiLM-SIREN activation y = sin(gamma x + beta) on x [B, N, C]: forward, backward and double
// backward. Each task takes blocks of rows of one batch item and makes one pass over them: phase,
// sine/cosine and the shared per-element math of film_siren_math.h in the same loop, which the
// compiler vectorises (float: the branch-free sincos of film_siren_sincos.h; a block with a phase it
// cannot reduce exactly, |u| > 8192 or NaN, is recomputed with sinf/cosf). The sums over n (gamma's
// and beta's gradients) are accumulated per block, then per fixed chunk of rows into a workspace,
// and then added chunk by chunk in order, so they do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/cpu_multiversion.h"
#include "film_siren.h"
#include "film_siren_args.h"
#include "film_siren_math.h"
#include "film_siren_sincos.h"

namespace stylesdf_fast {
namespace {

constexpr int64_t kMaxChunks = 64;          // per batch item: enough tasks for the cores, small workspace
constexpr int64_t kMinChunkElements = 4096;  // no chunk smaller than this many elements
constexpr int64_t kBlockElements = 16384;    // elements per block: the unit of the out-of-range retry

// Sine and cosine policies of the row loops. FastTrig (float only) vectorises and flags phases it
// cannot reduce exactly; ExactTrig calls the C library and never flags.
struct FastTrig {
  static inline float sin(float u) { return film_sincos_fast(u).s; }
  static inline float cos(float u) { return film_sincos_fast(u).c; }
  static inline FilmSinCos sincos(float u) { return film_sincos_fast(u); }
  static inline bool out_of_range(float u) { return film_phase_out_of_range(u); }
};

template <typename acc_t>
struct ExactTrig {
  struct Pair {
    acc_t s, c;
  };
  static inline acc_t sin(acc_t u) { return film_sin(u); }
  static inline acc_t cos(acc_t u) { return film_cos(u); }
  static inline Pair sincos(acc_t u) { return {film_sin(u), film_cos(u)}; }
  static inline bool out_of_range(acc_t) { return false; }
};

// Runs block(trig) with FastTrig where it applies (float accumulation) and again with ExactTrig when
// the fast pass flagged a phase; block returns whether it flagged one. reset() runs before each pass
// (it clears the block's partial sums).
template <typename acc_t, typename BlockFn, typename ResetFn>
void run_block(const BlockFn& block, const ResetFn& reset) {
  reset();
  if constexpr (std::is_same<acc_t, float>::value) {
    if (!block(FastTrig{})) return;
    reset();
  }
  block(ExactTrig<acc_t>{});
}

// Rows [begin, end) of the forward pass, all in one batch item (gamma, beta: its [C] rows).
template <typename scalar_t, typename acc_t, typename Trig>
SSDF_CPU_MULTIVERSION bool forward_block(const scalar_t* __restrict__ x, const acc_t* __restrict__ gamma,
                                         const acc_t* __restrict__ beta, scalar_t* __restrict__ y, int64_t channels,
                                         int64_t begin, int64_t end) {
  int flagged = 0;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* __restrict__ xr = x + r * channels;
    scalar_t* __restrict__ yr = y + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t u = gamma[c] * static_cast<acc_t>(xr[c]) + beta[c];
      yr[c] = static_cast<scalar_t>(Trig::sin(u));
      flagged |= Trig::out_of_range(u);
    }
  }
  return flagged != 0;
}

// Rows [begin, end) of batch item b's backward: writes grad_x, adds the gamma/beta terms to sums[C].
// Every pointer is __restrict__: without it the compiler must assume the per-channel sums alias the
// rows and cannot vectorise the loop (measured: several times slower).
template <typename scalar_t, typename acc_t, typename Trig>
SSDF_CPU_MULTIVERSION bool backward_block(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                          const acc_t* __restrict__ gamma, const acc_t* __restrict__ beta,
                                          scalar_t* __restrict__ grad_x, acc_t* __restrict__ sum_gamma,
                                          acc_t* __restrict__ sum_beta, int64_t channels, int64_t begin,
                                          int64_t end) {
  int flagged = 0;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* __restrict__ gr = grad + r * channels;
    const scalar_t* __restrict__ xr = x + r * channels;
    scalar_t* __restrict__ dxr = grad_x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t xv = static_cast<acc_t>(xr[c]);
      const acc_t u = gamma[c] * xv + beta[c];
      const FilmSirenVjp<acc_t> v =
          film_siren_vjp_given_cos(static_cast<acc_t>(gr[c]), xv, gamma[c], static_cast<acc_t>(Trig::cos(u)));
      dxr[c] = static_cast<scalar_t>(v.dx);
      sum_gamma[c] += v.dgamma;
      sum_beta[c] += v.dbeta;
      flagged |= Trig::out_of_range(u);
    }
  }
  return flagged != 0;
}

// Rows [begin, end) of batch item b's double backward; gg_x may be null, gg_gamma/gg_beta are batch
// item b's rows of the cotangents (zeros when absent).
template <typename scalar_t, typename acc_t, typename Trig, bool kHasGgX>
SSDF_CPU_MULTIVERSION bool double_backward_block(const scalar_t* __restrict__ gg_x, const acc_t* __restrict__ gg_gamma,
                                                 const acc_t* __restrict__ gg_beta, const scalar_t* __restrict__ grad,
                                                 const scalar_t* __restrict__ x, const acc_t* __restrict__ gamma,
                                                 const acc_t* __restrict__ beta, scalar_t* __restrict__ d_grad,
                                                 scalar_t* __restrict__ d_x, acc_t* __restrict__ sum_gamma,
                                                 acc_t* __restrict__ sum_beta, int64_t channels, int64_t begin,
                                                 int64_t end) {
  int flagged = 0;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t ggx = kHasGgX ? static_cast<acc_t>(gg_x[o + c]) : acc_t(0);
      const acc_t xv = static_cast<acc_t>(x[o + c]);
      const acc_t u = gamma[c] * xv + beta[c];
      const auto sc = Trig::sincos(u);
      const FilmSirenDoubleVjp<acc_t> v = film_siren_double_vjp_given_sincos(
          ggx, gg_gamma[c], gg_beta[c], static_cast<acc_t>(grad[o + c]), xv, gamma[c], static_cast<acc_t>(sc.s),
          static_cast<acc_t>(sc.c));
      d_grad[o + c] = static_cast<scalar_t>(v.d_grad);
      d_x[o + c] = static_cast<scalar_t>(v.d_x);
      sum_gamma[c] += v.d_gamma;
      sum_beta[c] += v.d_beta;
      flagged |= Trig::out_of_range(u);
    }
  }
  return flagged != 0;
}

// Rows [begin, end) in blocks of about kBlockElements: block_fn(trig, r0, r1, block_gamma,
// block_beta) adds one block's gamma/beta terms to the zeroed [C] block sums, which are then added
// to sum_gamma and sum_beta (so a block retried with ExactTrig starts over from zero).
template <typename acc_t, typename BlockFn>
void reduce_blocks(int64_t channels, int64_t begin, int64_t end, acc_t* sum_gamma, acc_t* sum_beta,
                   const BlockFn& block_fn) {
  const int64_t block_rows = std::max<int64_t>(1, kBlockElements / channels);
  std::vector<acc_t> block_sums(static_cast<size_t>(2 * channels));
  acc_t* block_gamma = block_sums.data();
  acc_t* block_beta = block_gamma + channels;
  for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
    const int64_t r1 = std::min(end, r0 + block_rows);
    run_block<acc_t>([&](auto trig) { return block_fn(trig, r0, r1, block_gamma, block_beta); },
                     [&] { std::fill(block_sums.begin(), block_sums.end(), acc_t(0)); });
    for (int64_t c = 0; c < channels; ++c) {
      sum_gamma[c] += block_gamma[c];
      sum_beta[c] += block_beta[c];
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
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t b = task / blocks_per_item, k = task % blocks_per_item;
        const int64_t begin = b * N + k * block_rows, end = b * N + std::min(N, (k + 1) * block_rows);
        run_block<acc_t>(
            [&](auto trig) {
              return forward_block<scalar_t, acc_t, decltype(trig)>(xp, gp + b * C, bp + b * C, yp, C, begin, end);
            },
            [] {});
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
                           reduce_blocks<acc_t>(C, begin, end, sum_gamma, sum_beta,
                                                [&](auto trig, int64_t r0, int64_t r1, acc_t* sg, acc_t* sb) {
                                                  return backward_block<scalar_t, acc_t, decltype(trig)>(
                                                      g, xp, gp + b * C, bp + b * C, dx, sg, sb, C, r0, r1);
                                                });
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
                           reduce_blocks<acc_t>(C, begin, end, sum_gamma, sum_beta,
                                                [&](auto trig, int64_t r0, int64_t r1, acc_t* sg, acc_t* sb) {
                                                  using Trig = decltype(trig);
                                                  if (ggx != nullptr) {   // chosen once per block
                                                    return double_backward_block<scalar_t, acc_t, Trig, true>(
                                                        ggx, ggg + b * C, ggb + b * C, g, xp, gp + b * C, bp + b * C,
                                                        dg, dx, sg, sb, C, r0, r1);
                                                  }
                                                  return double_backward_block<scalar_t, acc_t, Trig, false>(
                                                      ggx, ggg + b * C, ggb + b * C, g, xp, gp + b * C, bp + b * C,
                                                      dg, dx, sg, sb, C, r0, r1);
                                                });
                         });
    });
  }
  return {a.d_grad, a.d_x, a.d_gamma.to(gamma_arg.scalar_type()), a.d_beta.to(beta_arg.scalar_type())};
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CPU, m) {
  m.impl("film_siren", &stylesdf_fast::film_siren_cpu);
  m.impl("film_siren_backward", &stylesdf_fast::film_siren_backward_cpu);
  m.impl("film_siren_double_backward", &stylesdf_fast::film_siren_double_backward_cpu);
}

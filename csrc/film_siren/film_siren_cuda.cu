// CUDA FiLM-SIREN activation y = sin(gamma x + beta) on x [B, N, C]: forward, backward and double
// backward. Every pass gives each block a tile of (batch item b, fixed chunk k of rows, 32 channels):
// its 32 x 8 threads read and write the elementwise values (a warp covers 32 consecutive channels of
// one row), and in the backward passes keep per-thread sums, which the block adds in a fixed order
// into a workspace [B, K, 2, C]; a second kernel adds the K chunks of each (b, c), again in a fixed order.
// No floating-point atomics, so the gamma/beta gradients are bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "film_siren.h"
#include "film_siren_args.h"
#include "film_siren_math.h"

namespace stylesdf_fast {
namespace {

constexpr int kTileChannels = 32;  // blocks are tiles of 32 channels (one warp wide) ...
constexpr int kTileRows = 8;       // ... by 8 rows; each thread walks its channel down a chunk of rows
constexpr int64_t kMaxChunks = 512;     // row chunks per batch item: bounds the workspace and the second pass
constexpr int64_t kMinChunkRows = 64;   // 8 rows per thread at least

// Where a reduction block works: batch item b, rows [row_begin, row_end) of it, channel c.
struct Tile {
  int64_t b, chunk, row_begin, row_end, c;
  bool active;  // c < C (inactive threads still join the block's reduction)
};

__device__ inline Tile tile_of(int64_t rows, int64_t channels, int64_t chunk_rows, int64_t num_chunks) {
  const int64_t tiles = (channels + kTileChannels - 1) / kTileChannels;
  const int64_t block = blockIdx.x;
  const int64_t tile = block % tiles;
  const int64_t chunk = (block / tiles) % num_chunks;
  const int64_t b = block / (tiles * num_chunks);
  const int64_t c = tile * kTileChannels + threadIdx.x;
  const int64_t row_begin = chunk * chunk_rows;
  const int64_t row_end = row_begin + chunk_rows < rows ? row_begin + chunk_rows : rows;
  return {b, chunk, row_begin, row_end, c, c < channels};
}

// One thread per channel of the tile, walking down the chunk's rows (no per-element index division).
template <typename scalar_t, typename acc_t>
__global__ void film_siren_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ gamma,
                                          const acc_t* __restrict__ beta, scalar_t* __restrict__ y, int64_t rows,
                                          int64_t channels, int64_t chunk_rows, int64_t num_chunks) {
  const Tile t = tile_of(rows, channels, chunk_rows, num_chunks);
  if (!t.active) return;
  const acc_t g = gamma[t.b * channels + t.c], be = beta[t.b * channels + t.c];
  for (int64_t n = t.row_begin + threadIdx.y; n < t.row_end; n += kTileRows) {
    const int64_t e = (t.b * rows + n) * channels + t.c;
    y[e] = static_cast<scalar_t>(film_siren_forward(static_cast<acc_t>(x[e]), g, be));
  }
}

// Adds the block's kTileRows per-thread sums of each channel in row order and stores them in
// partial[b, chunk, 0 | 1, c].
template <typename acc_t>
__device__ inline void store_block_sums(acc_t sum_gamma, acc_t sum_beta, const Tile& t, int64_t channels,
                                        int64_t num_chunks, acc_t* __restrict__ partial) {
  __shared__ acc_t shared_gamma[kTileRows][kTileChannels];
  __shared__ acc_t shared_beta[kTileRows][kTileChannels];
  shared_gamma[threadIdx.y][threadIdx.x] = sum_gamma;
  shared_beta[threadIdx.y][threadIdx.x] = sum_beta;
  __syncthreads();
  if (threadIdx.y == 0 && t.active) {
    acc_t total_gamma = acc_t(0), total_beta = acc_t(0);
    for (int r = 0; r < kTileRows; ++r) {
      total_gamma += shared_gamma[r][threadIdx.x];
      total_beta += shared_beta[r][threadIdx.x];
    }
    acc_t* out = partial + (t.b * num_chunks + t.chunk) * 2 * channels;
    out[t.c] = total_gamma;
    out[channels + t.c] = total_beta;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void film_siren_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                           const acc_t* __restrict__ gamma, const acc_t* __restrict__ beta,
                                           scalar_t* __restrict__ grad_x, acc_t* __restrict__ partial, int64_t rows,
                                           int64_t channels, int64_t chunk_rows, int64_t num_chunks) {
  const Tile t = tile_of(rows, channels, chunk_rows, num_chunks);
  acc_t sum_gamma = acc_t(0), sum_beta = acc_t(0);
  if (t.active) {
    const acc_t g = gamma[t.b * channels + t.c], be = beta[t.b * channels + t.c];
    for (int64_t n = t.row_begin + threadIdx.y; n < t.row_end; n += kTileRows) {
      const int64_t e = (t.b * rows + n) * channels + t.c;
      const FilmSirenVjp<acc_t> v = film_siren_vjp(static_cast<acc_t>(grad[e]), static_cast<acc_t>(x[e]), g, be);
      grad_x[e] = static_cast<scalar_t>(v.dx);
      sum_gamma += v.dgamma;
      sum_beta += v.dbeta;
    }
  }
  store_block_sums(sum_gamma, sum_beta, t, channels, num_chunks, partial);
}

// gg_x may be null (a zero cotangent); gg_gamma and gg_beta are [B, C] (zeros when absent).
template <typename scalar_t, typename acc_t>
__global__ void film_siren_double_backward_kernel(
    const scalar_t* __restrict__ gg_x, const acc_t* __restrict__ gg_gamma, const acc_t* __restrict__ gg_beta,
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, const acc_t* __restrict__ gamma,
    const acc_t* __restrict__ beta, scalar_t* __restrict__ d_grad, scalar_t* __restrict__ d_x,
    acc_t* __restrict__ partial, int64_t rows, int64_t channels, int64_t chunk_rows, int64_t num_chunks) {
  const Tile t = tile_of(rows, channels, chunk_rows, num_chunks);
  acc_t sum_gamma = acc_t(0), sum_beta = acc_t(0);
  if (t.active) {
    const int64_t p = t.b * channels + t.c;
    const acc_t g = gamma[p], be = beta[p], ggg = gg_gamma[p], ggb = gg_beta[p];
    for (int64_t n = t.row_begin + threadIdx.y; n < t.row_end; n += kTileRows) {
      const int64_t e = (t.b * rows + n) * channels + t.c;
      const acc_t ggx = gg_x ? static_cast<acc_t>(gg_x[e]) : acc_t(0);
      const FilmSirenDoubleVjp<acc_t> v =
          film_siren_double_vjp(ggx, ggg, ggb, static_cast<acc_t>(grad[e]), static_cast<acc_t>(x[e]), g, be);
      d_grad[e] = static_cast<scalar_t>(v.d_grad);
      d_x[e] = static_cast<scalar_t>(v.d_x);
      sum_gamma += v.d_gamma;
      sum_beta += v.d_beta;
    }
  }
  store_block_sums(sum_gamma, sum_beta, t, channels, num_chunks, partial);
}

// out_gamma[b, c] = sum over chunks k of partial[b, k, 0, c] (out_beta: [b, k, 1, c]); each block is
// one batch item's 32 channels, its 8 thread rows take every 8th chunk and are added in row order.
template <typename acc_t>
__global__ void film_siren_finish_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ out_gamma,
                                         acc_t* __restrict__ out_beta, int64_t channels, int64_t num_chunks) {
  const int64_t tiles = (channels + kTileChannels - 1) / kTileChannels;
  const int64_t b = blockIdx.x / tiles;
  const int64_t c = (blockIdx.x % tiles) * kTileChannels + threadIdx.x;
  const bool active = c < channels;
  acc_t sum_gamma = acc_t(0), sum_beta = acc_t(0);
  if (active) {
    for (int64_t k = threadIdx.y; k < num_chunks; k += kTileRows) {
      const acc_t* sums = partial + (b * num_chunks + k) * 2 * channels;
      sum_gamma += sums[c];
      sum_beta += sums[channels + c];
    }
  }
  __shared__ acc_t shared_gamma[kTileRows][kTileChannels];
  __shared__ acc_t shared_beta[kTileRows][kTileChannels];
  shared_gamma[threadIdx.y][threadIdx.x] = sum_gamma;
  shared_beta[threadIdx.y][threadIdx.x] = sum_beta;
  __syncthreads();
  if (threadIdx.y == 0 && active) {
    acc_t total_gamma = acc_t(0), total_beta = acc_t(0);
    for (int r = 0; r < kTileRows; ++r) {
      total_gamma += shared_gamma[r][threadIdx.x];
      total_beta += shared_beta[r][threadIdx.x];
    }
    out_gamma[b * channels + c] = total_gamma;
    out_beta[b * channels + c] = total_beta;
  }
}

// Launch geometry: the tile blocks of every pass, and the blocks of the reductions' second pass.
struct TilePlan {
  FilmRowChunks chunks;
  int64_t channel_tiles;
  int64_t batch;
  int64_t tile_blocks() const { return batch * chunks.num_chunks * channel_tiles; }
  int64_t finish_blocks() const { return batch * channel_tiles; }
};

TilePlan plan_of(const FilmSirenShape& shape) {
  const FilmRowChunks chunks =
      film_row_chunks(shape.rows, shape.channels, kMaxChunks, kMinChunkRows * shape.channels, kTileRows);
  const int64_t tiles = (shape.channels + kTileChannels - 1) / kTileChannels;
  const TilePlan plan{chunks, tiles, shape.batch};
  TORCH_CHECK(plan.tile_blocks() <= std::numeric_limits<int>::max(),
              "film_siren: too many (batch item, row chunk, channel tile) blocks: ", plan.tile_blocks());
  return plan;
}

}  // namespace

at::Tensor film_siren_cuda(const at::Tensor& x_arg, const at::Tensor& gamma_arg, const at::Tensor& beta_arg) {
  const FilmSirenShape shape = check_film_siren_args("film_siren", x_arg, gamma_arg, beta_arg);
  const c10::cuda::CUDAGuard device_guard(x_arg.device());
  const at::Tensor x = x_arg.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  const at::ScalarType acc = film_acc_type(x.scalar_type());
  const at::Tensor gamma = film_params_as_acc(gamma_arg, acc), beta = film_params_as_acc(beta_arg, acc);
  const TilePlan plan = plan_of(shape);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 block(kTileChannels, kTileRows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "film_siren_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    film_siren_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(plan.tile_blocks()), block, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<acc_t>(), beta.const_data_ptr<acc_t>(),
        y.mutable_data_ptr<scalar_t>(), shape.rows, shape.channels, plan.chunks.chunk_rows, plan.chunks.num_chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> film_siren_backward_cuda(const at::Tensor& grad_arg,
                                                                        const at::Tensor& x_arg,
                                                                        const at::Tensor& gamma_arg,
                                                                        const at::Tensor& beta_arg) {
  FilmBackwardArgs a = prepare_film_backward(grad_arg, x_arg, gamma_arg, beta_arg);
  const FilmSirenShape& shape = a.shape;
  const at::Tensor &x = a.x, &grad = a.grad, &gamma = a.gamma, &beta = a.beta;
  at::Tensor &grad_x = a.grad_x, &grad_gamma = a.grad_gamma, &grad_beta = a.grad_beta;
  const c10::cuda::CUDAGuard device_guard(x_arg.device());   // for our launches and the stream
  if (x.numel() > 0) {
    const TilePlan plan = plan_of(shape);
    at::Tensor partial = at::empty({shape.batch, plan.chunks.num_chunks, 2, shape.channels}, gamma.options());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const dim3 block(kTileChannels, kTileRows);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "film_siren_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      film_siren_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(plan.tile_blocks()), block, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<acc_t>(),
          beta.const_data_ptr<acc_t>(), grad_x.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
          shape.rows, shape.channels, plan.chunks.chunk_rows, plan.chunks.num_chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      film_siren_finish_kernel<acc_t><<<static_cast<unsigned>(plan.finish_blocks()), block, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), grad_gamma.mutable_data_ptr<acc_t>(), grad_beta.mutable_data_ptr<acc_t>(),
          shape.channels, plan.chunks.num_chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_x, grad_gamma.to(gamma_arg.scalar_type()), grad_beta.to(beta_arg.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_siren_double_backward_cuda(
    const std::optional<at::Tensor>& gg_x_arg, const std::optional<at::Tensor>& gg_gamma_arg,
    const std::optional<at::Tensor>& gg_beta_arg, const at::Tensor& grad_arg, const at::Tensor& x_arg,
    const at::Tensor& gamma_arg, const at::Tensor& beta_arg) {
  // checks first (clear errors for mixed devices); ATen's own ops in there guard their devices
  FilmDoubleBackwardArgs a = prepare_film_double_backward("film_siren_double_backward", gg_x_arg, gg_gamma_arg,
                                                          gg_beta_arg, grad_arg, x_arg, gamma_arg, beta_arg);
  const c10::cuda::CUDAGuard device_guard(x_arg.device());   // for our launches and the stream
  if (a.x.numel() > 0) {
    const FilmSirenShape& shape = a.shape;
    const TilePlan plan = plan_of(shape);
    at::Tensor partial = at::empty({shape.batch, plan.chunks.num_chunks, 2, shape.channels}, a.gamma.options());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const dim3 block(kTileChannels, kTileRows);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "film_siren_double_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      film_siren_double_backward_kernel<scalar_t, acc_t>
          <<<static_cast<unsigned>(plan.tile_blocks()), block, 0, stream>>>(
              a.gg_x.defined() ? a.gg_x.const_data_ptr<scalar_t>() : nullptr, a.gg_gamma.const_data_ptr<acc_t>(),
              a.gg_beta.const_data_ptr<acc_t>(), a.grad.const_data_ptr<scalar_t>(), a.x.const_data_ptr<scalar_t>(),
              a.gamma.const_data_ptr<acc_t>(), a.beta.const_data_ptr<acc_t>(), a.d_grad.mutable_data_ptr<scalar_t>(),
              a.d_x.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), shape.rows, shape.channels,
              plan.chunks.chunk_rows, plan.chunks.num_chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      film_siren_finish_kernel<acc_t><<<static_cast<unsigned>(plan.finish_blocks()), block, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), a.d_gamma.mutable_data_ptr<acc_t>(), a.d_beta.mutable_data_ptr<acc_t>(),
          shape.channels, plan.chunks.num_chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {a.d_grad, a.d_x, a.d_gamma.to(gamma_arg.scalar_type()), a.d_beta.to(beta_arg.scalar_type())};
}

}  // namespace stylesdf_fast

TORCH_LIBRARY_IMPL(stylesdf_fast, CUDA, m) {
  m.impl("film_siren", &stylesdf_fast::film_siren_cuda);
  m.impl("film_siren_backward", &stylesdf_fast::film_siren_backward_cuda);
  m.impl("film_siren_double_backward", &stylesdf_fast::film_siren_double_backward_cuda);
}

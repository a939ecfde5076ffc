"""Pure-PyTorch FiLM-SIREN activation: the oracle of the tests and the fallback of the op."""
from __future__ import annotations

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in for x_lin of `dtype`: float32 for half storage, else dtype itself."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def per_row_view(t: torch.Tensor, x_dim: int) -> torch.Tensor:
    """[B, C] -> [B, 1, ..., 1, C], broadcastable against an x of rank x_dim."""
    return t.reshape((t.shape[0],) + (1,) * (x_dim - 2) + (t.shape[-1],))


def film_siren(
    x_lin: torch.Tensor,  # [B, ..., C] (rank >= 2), the GEMM output W x + b of a FiLM-SIREN layer
    gamma: torch.Tensor,  # [B, C] FiLM frequencies, per batch item and channel
    beta: torch.Tensor,  # [B, C] FiLM phase shifts
) -> torch.Tensor:
    """sin(gamma * x_lin + beta) with gamma and beta broadcast over x_lin's middle dims; the math runs
    in float32 for float16/bfloat16 x_lin, and the result has x_lin's shape and dtype. Differentiable
    by autograd to any order."""
    dtype = compute_dtype(x_lin.dtype)
    g = per_row_view(gamma.to(dtype), x_lin.dim())
    b = per_row_view(beta.to(dtype), x_lin.dim())
    return torch.sin(g * x_lin.to(dtype) + b).to(x_lin.dtype)

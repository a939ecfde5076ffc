"""Fused FiLM-SIREN activation y = sin(gamma * x_lin + beta) of StyleSDF's SIREN renderer.

x_lin is the GEMM output W x + b of a FiLM-SIREN layer ([B, ..., C]); gamma and beta are per batch
item and channel ([B, C]). The op keeps only x_lin, gamma and beta for the backward, which
recomputes u = gamma x_lin + beta, sin u and cos u: none of the eager version's [B, ..., C]
temporaries (gamma * x_lin, u) are written or saved. Its backward is a registered op with its own
autograd (the eikonal loss differentiates d sdf / d points again), and so is that op's backward
(the double backward), whose gradient is given by a pure-PyTorch formula: any order works.
"""
from __future__ import annotations

import torch

from .. import _extension
from .. import reference
from ..reference.film_siren import LOW_PRECISION, compute_dtype, per_row_view
from .._checks import check_same_device, check_tensor

OP = "film_siren"
STORAGE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def film_siren(
    x_lin: torch.Tensor,  # [B, ..., C] (rank >= 2), the GEMM output W x + b
    gamma: torch.Tensor,  # [B, C] FiLM frequencies, per batch item and channel
    beta: torch.Tensor,  # [B, C] FiLM phase shifts
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """y[b, ..., c] = sin(gamma[b, c] * x_lin[b, ..., c] + beta[b, c]), same shape and dtype as x_lin.

    dtypes: x_lin float32, float64, or float16/bfloat16 storage with float32 math; gamma and beta
    share one floating dtype, used as given when it is x_lin's (or float32 with half x_lin, as under
    autocast) and otherwise cast to x_lin's math dtype. Each gradient comes back in its input's dtype.
    Layout: the kernel reads x_lin as a contiguous [B, N, C] buffer (N the product of the middle
    dims); a non-contiguous x_lin is copied to a contiguous one first. The output is contiguous.
    Saved for the backward: x_lin (that contiguous tensor), gamma and beta, nothing else.
    The gamma/beta gradients (sums over N) are deterministic on CPU and CUDA.
    impl: "auto" (kernel when built for x_lin's device, else the reference with a warning),
    "kernel" or "reference".
    """
    _check_arguments(x_lin, gamma, beta)
    if _extension.use_kernel(impl, OP, x_lin.device):
        gamma, beta = _kernel_params(x_lin.dtype, gamma, beta)
        return torch.ops.stylesdf_fast.film_siren(x_lin.contiguous(), gamma, beta)
    return reference.film_siren(x_lin, gamma, beta)


def _kernel_params(x_dtype: torch.dtype, gamma: torch.Tensor, beta: torch.Tensor):
    """gamma and beta in a dtype the kernel takes: x's, or float32 for half x (as given, then)."""
    if gamma.dtype == x_dtype or (gamma.dtype == torch.float32 and x_dtype in LOW_PRECISION):
        return gamma, beta
    dtype = compute_dtype(x_dtype)
    return gamma.to(dtype), beta.to(dtype)


def _check_arguments(x_lin, gamma, beta) -> None:
    check_tensor(OP, "x_lin", x_lin)
    check_tensor(OP, "gamma", gamma)
    check_tensor(OP, "beta", beta)
    if x_lin.dtype not in STORAGE_DTYPES:
        raise TypeError(f"{OP}: x_lin must be float32, float64, float16 or bfloat16, got {x_lin.dtype}")
    if x_lin.dim() < 2:
        raise ValueError(f"{OP}: x_lin must have rank >= 2 ([B, ..., C]), got shape {tuple(x_lin.shape)}")
    expected = (x_lin.shape[0], x_lin.shape[-1])
    for name, value in (("gamma", gamma), ("beta", beta)):
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{OP}: {name} must have shape [B, C] = {list(expected)} (x_lin's first and last dims), "
                f"got {list(value.shape)}"
            )
    check_same_device(OP, ("x_lin", x_lin), ("gamma", gamma), ("beta", beta))
    if gamma.dtype != beta.dtype:
        raise TypeError(f"{OP}: gamma and beta must have the same dtype, got gamma {gamma.dtype} and beta {beta.dtype}")


# --- the gradient of the double backward, in plain PyTorch (any order) ----------------------------

def _sum_rows(t: torch.Tensor) -> torch.Tensor:
    """[B, ..., C] -> [B, C], summed over the middle dims (none for rank 2)."""
    return t.sum(dim=tuple(range(1, t.dim() - 1))) if t.dim() > 2 else t


def _double_backward_vjp(cotangents, gg_x, gg_gamma, gg_beta, grad, x, gamma, beta):
    """Gradients of film_siren_double_backward's outputs (d_grad, d_x, d_gamma, d_beta), paired with
    `cotangents` (alpha, beta_x, kappa, lam; None = zero), w.r.t. its seven inputs.

    With u = gamma x + beta, s = sin u, c = cos u, t = gg_x gamma + gg_gamma x + gg_beta, the pairing is
    M = sum [c K - s t grad w] with K = alpha t + beta_x grad gg_gamma + kappa grad gg_x and
    w = beta_x gamma + kappa x + lam; its derivatives are written out below (R = dM/du)."""
    dtype = compute_dtype(x.dtype)
    rank = x.dim()
    X, G = x.to(dtype), grad.to(dtype)
    zero = torch.zeros_like(X)

    def full(t):  # [B, ..., C] or None -> compute dtype
        return zero if t is None else t.to(dtype)

    def rows(t):  # [B, C] or None -> [B, 1, ..., 1, C] in the compute dtype
        if t is None:
            return X.new_zeros((X.shape[0],) + (1,) * (rank - 2) + (X.shape[-1],))
        return per_row_view(t.to(dtype), rank)

    alpha, beta_x, kappa, lam = full(cotangents[0]), full(cotangents[1]), rows(cotangents[2]), rows(cotangents[3])
    A, P, Q = full(gg_x), rows(gg_gamma), rows(gg_beta)
    g, be = rows(gamma), rows(beta)
    u = g * X + be
    s, c = torch.sin(u), torch.cos(u)
    t = A * g + P * X + Q
    w = beta_x * g + kappa * X + lam
    K = alpha * t + beta_x * G * P + kappa * G * A
    m = c * alpha - s * G * w
    R = -s * K - c * t * G * w
    stG = s * t * G
    d_A = g * m + c * kappa * G
    d_P = _sum_rows(X * m + c * beta_x * G)
    d_Q = _sum_rows(m)
    d_G = c * (beta_x * P + kappa * A) - s * t * w
    d_X = R * g + P * m - stG * kappa
    d_g = _sum_rows(R * X + A * m - stG * beta_x)
    d_b = _sum_rows(R)
    return d_A, d_P, d_Q, d_G, d_X, d_g, d_b


# --- dispatcher registrations (only when the extension is loaded) ---------------------------------

def _register() -> None:
    from torch.library import register_autograd, register_fake

    forward_name = "stylesdf_fast::film_siren"
    backward_name = "stylesdf_fast::film_siren_backward"
    double_name = "stylesdf_fast::film_siren_double_backward"

    @register_fake(forward_name)
    def _(x, gamma, beta):
        return x.new_empty(x.shape)

    @register_fake(backward_name)
    def _(grad, x, gamma, beta):
        return x.new_empty(x.shape), gamma.new_empty(gamma.shape), beta.new_empty(beta.shape)

    @register_fake(double_name)
    def _(gg_x, gg_gamma, gg_beta, grad, x, gamma, beta):
        return grad.new_empty(grad.shape), x.new_empty(x.shape), gamma.new_empty(gamma.shape), beta.new_empty(beta.shape)

    def forward_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs)  # x, gamma, beta: u, sin u and cos u are recomputed

    def forward_backward(ctx, grad):
        if grad is None:
            return None, None, None
        x, gamma, beta = ctx.saved_tensors
        grads = torch.ops.stylesdf_fast.film_siren_backward(grad, x, gamma, beta)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))

    def backward_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # an unused output's cotangent arrives as None, not zeros
        ctx.save_for_backward(*inputs)  # grad, x, gamma, beta

    def backward_backward(ctx, gg_x, gg_gamma, gg_beta):
        if gg_x is None and gg_gamma is None and gg_beta is None:
            return None, None, None, None
        grad, x, gamma, beta = ctx.saved_tensors
        grads = torch.ops.stylesdf_fast.film_siren_double_backward(gg_x, gg_gamma, gg_beta, grad, x, gamma, beta)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))

    def double_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs)  # gg_x, gg_gamma, gg_beta (each may be None), grad, x, gamma, beta

    def double_backward(ctx, *cotangents):
        needs = ctx.needs_input_grad
        if all(c is None for c in cotangents) or not any(needs):
            return (None,) * 7
        saved = ctx.saved_tensors
        grads = _double_backward_vjp(cotangents, *saved)
        return tuple(
            None if (not need or value is None) else g.to(value.dtype)
            for g, need, value in zip(grads, needs, saved)
        )

    register_autograd(forward_name, forward_backward, setup_context=forward_setup)
    register_autograd(backward_name, backward_backward, setup_context=backward_setup)
    register_autograd(double_name, double_backward, setup_context=double_setup)


if _extension.status().loaded:
    _register()

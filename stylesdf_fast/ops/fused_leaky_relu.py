"""StyleGAN2's fused bias + leaky ReLU, y = scale * leaky_relu(input + bias, negative_slope).

Same call signature as the official StyleSDF / rosinality `op.fused_leaky_relu` and
`op.FusedLeakyReLU`, so their code can switch imports. The backward is a registered op with its own
autograd, so gradients of gradients (R1, path-length regularisation) work, also under torch.compile.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _extension
from .. import reference
from ._layout import preferred_memory_format
from .._checks import check_number, check_same_device, check_tensor

OP = "fused_leaky_relu"


def fused_leaky_relu(
    input: torch.Tensor,  # [B, C, ...] (rank >= 2)
    bias: Optional[torch.Tensor] = None,  # [C], broadcast along dim 1
    negative_slope: float = 0.2,
    scale: float = 2**0.5,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """scale * leaky_relu(input + bias, negative_slope), same shape, dtype and memory format as input.

    negative_slope must be >= 0 and scale > 0 (the backward reads its mask from the output).
    impl: "auto" (kernel when built for input's device, else the reference with a warning),
    "kernel" or "reference".
    """
    _check_arguments(input, bias, negative_slope, scale)
    if bias is not None and bias.dtype != input.dtype:
        bias = bias.to(input.dtype)  # autocast: conv outputs half, the bias parameter stays float32
    if _extension.use_kernel(impl, OP, input.device):
        return torch.ops.stylesdf_fast.fused_leaky_relu(input, bias, float(negative_slope), float(scale))
    return reference.fused_leaky_relu(input, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """Bias (a parameter, initialised to zero) + leaky ReLU + gain, as in StyleGAN2."""

    def __init__(self, channel: int, bias: bool = True, negative_slope: float = 0.2, scale: float = 2**0.5,
                 *, impl: str = "auto"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale
        self.impl = impl

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale, impl=self.impl)

    def extra_repr(self) -> str:
        channels = None if self.bias is None else self.bias.shape[0]
        return f"channel={channels}, negative_slope={self.negative_slope}, scale={self.scale:.4g}"


def _check_arguments(input, bias, negative_slope, scale) -> None:
    check_tensor(OP, "input", input)
    if input.dim() < 2:
        raise ValueError(f"{OP}: input must have rank >= 2 ([B, C, ...]), got shape {tuple(input.shape)}")
    if bias is not None:
        check_tensor(OP, "bias", bias)
        if bias.dim() != 1 or bias.shape[0] != input.shape[1]:
            raise ValueError(
                f"{OP}: bias must have shape [{input.shape[1]}] (input's dim 1), got {tuple(bias.shape)}"
            )
        check_same_device(OP, ("input", input), ("bias", bias))
    check_number(OP, "negative_slope", negative_slope, minimum=0.0, inclusive=True)
    check_number(OP, "scale", scale, minimum=0.0, inclusive=False)


# --- dispatcher registrations (only when the extension is loaded) ---------------------------------

def _register() -> None:
    from torch.library import register_autograd, register_fake

    forward_name = "stylesdf_fast::fused_leaky_relu"
    backward_name = "stylesdf_fast::fused_leaky_relu_backward"

    @register_fake(forward_name)
    def _(input, bias, negative_slope, scale):
        return torch.empty_like(input, memory_format=preferred_memory_format(input))

    @register_fake(backward_name)
    def _(grad_output, output, negative_slope, scale, bias_grad):
        grad_input = torch.empty_like(output, memory_format=preferred_memory_format(output))
        grad_bias = output.new_empty((output.shape[1] if bias_grad else 0,))
        return grad_input, grad_bias

    def forward_setup(ctx, inputs, output):
        _, bias, negative_slope, scale = inputs
        ctx.negative_slope, ctx.scale = negative_slope, scale
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output)

    def forward_backward(ctx, grad):
        if grad is None:
            # A double backward reaches here through `output`, which only supplies the piecewise
            # constant mask: its gradient is zero, so skip the full pass over zeros.
            return None, None, None, None
        (output,) = ctx.saved_tensors
        bias_grad = ctx.has_bias and ctx.needs_input_grad[1]
        grad_input, grad_bias = torch.ops.stylesdf_fast.fused_leaky_relu_backward(
            grad, output, ctx.negative_slope, ctx.scale, bias_grad
        )
        return grad_input, (grad_bias if bias_grad else None), None, None

    def backward_setup(ctx, inputs, output):
        _, output, negative_slope, scale, _ = inputs
        ctx.negative_slope, ctx.scale = negative_slope, scale
        ctx.set_materialize_grads(False)  # an unused grad_bias arrives as None, not as zeros to add
        ctx.save_for_backward(output)

    def backward_backward(ctx, grad_grad_input, grad_grad_bias):
        # The backward is linear in grad_output with a mask that is piecewise constant in the
        # output: d(grad_input)/d(grad_output) is the same mask, and there is no term through output.
        (output,) = ctx.saved_tensors
        total = grad_grad_input
        if grad_grad_bias is not None and grad_grad_bias.numel() > 0 and ctx.needs_input_grad[0]:
            shape = (1, -1) + (1,) * (output.dim() - 2)
            bias_part = grad_grad_bias.view(shape).expand_as(output)
            total = bias_part if total is None else total + bias_part
        if total is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        grad_grad_output, _ = torch.ops.stylesdf_fast.fused_leaky_relu_backward(
            total, output, ctx.negative_slope, ctx.scale, False
        )
        return grad_grad_output, None, None, None, None

    register_autograd(forward_name, forward_backward, setup_context=forward_setup)
    register_autograd(backward_name, backward_backward, setup_context=backward_setup)


if _extension.status().loaded:
    _register()

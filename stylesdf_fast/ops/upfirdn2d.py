"""upfirdn2d: upsample by zero insertion, pad (negative pads crop), 2-D FIR filter, downsample.

Signature of the official StyleSDF / rosinality `op.upfirdn2d`, plus (x, y) pairs for up/down and a
4-tuple pad. The gradient with respect to the input is upfirdn2d itself (flipped kernel, up and
down swapped, pads derived from the shapes), so derivatives of any order are available. The FIR
kernel is a constant: asking for its gradient raises.

Also the wrappers StyleGAN2 code uses: `make_kernel`, `upsample2d`, `downsample2d`, `blur2d` and the
modules `Upsample`, `Downsample`, `Blur` (with the `kernel` buffer of the official checkpoints).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import nn

from .. import _extension
from .. import reference
from ._layout import preferred_memory_format
from .._checks import check_same_device, check_tensor, int_pair

OP = "upfirdn2d"
IntPair = Union[int, Sequence[int]]


def upfirdn2d(
    input: torch.Tensor,  # [N, C, H, W]
    kernel: torch.Tensor,  # [KH, KW] FIR filter (float32 is fine for half inputs)
    up: IntPair = 1,
    down: IntPair = 1,
    pad: Sequence[int] = (0, 0),
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Returns [N, C, OH, OW] with, per axis, out = (in * up + pad0 + pad1 - k) // down + 1.

    up, down: an int or (x, y). pad: (p0, p1) for both axes or (x0, x1, y0, y1); negative pads crop.
    The filter is applied as a true convolution (flipped), as in StyleGAN2. Output dtype is input's;
    accumulation is float32 (float64 for double inputs). channels_last inputs give channels_last outputs.
    """
    up_x, up_y = int_pair(OP, "up", up, minimum=1)
    down_x, down_y = int_pair(OP, "down", down, minimum=1)
    pads = _pads(pad)
    _check_tensors(input, kernel)
    out_h, out_w = output_size(input.shape[2:], kernel.shape, (up_x, up_y), (down_x, down_y), pads)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{OP}: the output would be {out_h}x{out_w} for input {tuple(input.shape)}, kernel "
            f"{tuple(kernel.shape)}, up {(up_x, up_y)}, down {(down_x, down_y)}, pad {pads}: the pads crop too much"
        )
    if kernel.requires_grad and torch.is_grad_enabled():
        kernel = _KernelGradGuard.apply(kernel)
    if _extension.use_kernel(impl, OP, input.device):
        return torch.ops.stylesdf_fast.upfirdn2d(input, kernel, up_x, up_y, down_x, down_y, *pads)
    return reference.upfirdn2d(input, kernel, (up_x, up_y), (down_x, down_y), pads)


def output_size(in_hw, kernel_hw, up_xy, down_xy, pads) -> Tuple[int, int]:
    """(OH, OW) of upfirdn2d for input (H, W), kernel (KH, KW), (up_x, up_y), (down_x, down_y), (x0, x1, y0, y1)."""
    (in_h, in_w), (kernel_h, kernel_w) = in_hw, kernel_hw
    pad_x0, pad_x1, pad_y0, pad_y1 = pads
    out_h = (in_h * up_xy[1] + pad_y0 + pad_y1 - kernel_h) // down_xy[1] + 1
    out_w = (in_w * up_xy[0] + pad_x0 + pad_x1 - kernel_w) // down_xy[0] + 1
    return out_h, out_w


class _KernelGradGuard(torch.autograd.Function):
    """Identity on the FIR kernel whose backward refuses: a kernel gradient is not computed, and a
    silent zero would hide that."""

    @staticmethod
    def forward(ctx, kernel):
        return kernel.view_as(kernel)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            f"{OP}: a gradient with respect to the FIR kernel was requested, but upfirdn2d treats the kernel "
            "as a constant and does not compute one; register it as a buffer or pass kernel.detach()"
        )


def _pads(pad) -> Tuple[int, int, int, int]:
    if not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pad):
        raise TypeError(f"{OP}: pad must be a tuple of ints, got {pad!r}")
    if len(pad) == 2:
        return (pad[0], pad[1], pad[0], pad[1])
    if len(pad) == 4:
        return tuple(pad)
    raise ValueError(f"{OP}: pad must have 2 (p0, p1) or 4 (x0, x1, y0, y1) entries, got {len(pad)}: {pad!r}")


def _check_tensors(input, kernel) -> None:
    check_tensor(OP, "input", input)
    check_tensor(OP, "kernel", kernel)
    if input.dim() != 4:
        raise ValueError(f"{OP}: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    if kernel.dim() != 2 or kernel.numel() == 0:
        raise ValueError(f"{OP}: kernel must be a non-empty 2-D filter [KH, KW], got shape {tuple(kernel.shape)}")
    check_same_device(OP, ("input", input), ("kernel", kernel))


# --- StyleGAN2 wrappers ---------------------------------------------------------------------------

def make_kernel(taps: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """A 2-D FIR filter normalised to sum 1: outer(taps, taps) for 1-D taps, or the 2-D taps given."""
    kernel = torch.as_tensor(taps, dtype=torch.float32)
    if kernel.dim() == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def upsample_pads(kernel_size: int, factor: int) -> Tuple[int, int]:
    """StyleGAN2's (pad0, pad1) for upsampling by `factor` with a kernel_size-tap filter."""
    p = kernel_size - factor
    return (p + 1) // 2 + factor - 1, p // 2


def downsample_pads(kernel_size: int, factor: int) -> Tuple[int, int]:
    """StyleGAN2's (pad0, pad1) for downsampling by `factor` with a kernel_size-tap filter."""
    p = kernel_size - factor
    return (p + 1) // 2, p // 2


def upsample2d(input: torch.Tensor, kernel: torch.Tensor, factor: int = 2, *, impl: str = "auto") -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H*factor, W*factor]; kernel normalised to sum 1 (scaled by factor**2 here)."""
    return upfirdn2d(input, kernel * factor**2, up=factor, pad=upsample_pads(kernel.shape[0], factor), impl=impl)


def downsample2d(input: torch.Tensor, kernel: torch.Tensor, factor: int = 2, *, impl: str = "auto") -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H//factor, W//factor]; kernel normalised to sum 1."""
    return upfirdn2d(input, kernel, down=factor, pad=downsample_pads(kernel.shape[0], factor), impl=impl)


def blur2d(input: torch.Tensor, kernel: torch.Tensor, pad: Sequence[int], *, impl: str = "auto") -> torch.Tensor:
    """FIR filtering with the given pads, e.g. (2, 2) before a 3x3 stride-2 conv, (1, 1) after a transposed conv."""
    return upfirdn2d(input, kernel, pad=pad, impl=impl)


class Upsample(nn.Module):
    """StyleGAN2 Upsample: kernel buffer = make_kernel(taps) * factor**2."""

    def __init__(self, kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2, *, impl: str = "auto"):
        super().__init__()
        self.factor, self.impl = factor, impl
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        self.pad = upsample_pads(self.kernel.shape[0], factor)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(input, self.kernel, up=self.factor, pad=self.pad, impl=self.impl)


class Downsample(nn.Module):
    """StyleGAN2 Downsample: kernel buffer = make_kernel(taps)."""

    def __init__(self, kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2, *, impl: str = "auto"):
        super().__init__()
        self.factor, self.impl = factor, impl
        self.register_buffer("kernel", make_kernel(kernel))
        self.pad = downsample_pads(self.kernel.shape[0], factor)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(input, self.kernel, down=self.factor, pad=self.pad, impl=self.impl)


class Blur(nn.Module):
    """StyleGAN2 Blur: kernel buffer = make_kernel(taps) * upsample_factor**2, fixed pads."""

    def __init__(self, kernel: Sequence[float], pad: Sequence[int], upsample_factor: int = 1, *, impl: str = "auto"):
        super().__init__()
        self.pad, self.impl = tuple(pad), impl
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(input, self.kernel, pad=self.pad, impl=self.impl)


# --- dispatcher registrations (only when the extension is loaded) ---------------------------------

def backward_arguments(in_hw, out_hw, kernel_hw, up_xy, down_xy, pads):
    """(up, down, pads) of the upfirdn2d call (with the flipped kernel) that maps a gradient of the
    output back to the input: up and down swap, and the pads make its output exactly [H, W]."""
    (in_h, in_w), (out_h, out_w), (kernel_h, kernel_w) = in_hw, out_hw, kernel_hw
    (up_x, up_y), (down_x, down_y) = up_xy, down_xy
    pad_x0, _, pad_y0, _ = pads
    grad_pads = (
        kernel_w - pad_x0 - 1,
        in_w * up_x - out_w * down_x + pad_x0 - up_x + 1,
        kernel_h - pad_y0 - 1,
        in_h * up_y - out_h * down_y + pad_y0 - up_y + 1,
    )
    return (down_x, down_y), (up_x, up_y), grad_pads


def _register() -> None:
    from torch.library import register_autograd, register_fake

    name = "stylesdf_fast::upfirdn2d"

    @register_fake(name)
    def _(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
        pads = (pad_x0, pad_x1, pad_y0, pad_y1)
        out_h, out_w = output_size(input.shape[2:], kernel.shape, (up_x, up_y), (down_x, down_y), pads)
        shape = (input.shape[0], input.shape[1], out_h, out_w)
        return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=preferred_memory_format(input))

    def setup_context(ctx, inputs, output):
        input, kernel, up_x, up_y, down_x, down_y, *pads = inputs
        ctx.arguments = (tuple(input.shape[2:]), tuple(output.shape[2:]), tuple(kernel.shape), (up_x, up_y),
                         (down_x, down_y), tuple(pads))
        ctx.save_for_backward(kernel)

    def backward(ctx, grad):
        (kernel,) = ctx.saved_tensors  # no kernel gradient: _KernelGradGuard reports a request for one
        up, down, pads = backward_arguments(*ctx.arguments)
        grad_input = torch.ops.stylesdf_fast.upfirdn2d(grad, torch.flip(kernel, [0, 1]), *up, *down, *pads)
        return (grad_input,) + (None,) * 9

    register_autograd(name, backward, setup_context=setup_context)


if _extension.status().loaded:
    _register()

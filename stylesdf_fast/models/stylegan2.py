"""StyleGAN2 building blocks (rosinality port, as adapted by the official StyleSDF), on our fused ops.

Module trees, parameter names, initialisation and forward math follow the official `model.py`, so
that `load_state_dict(official, strict=True)` works; parameters are created in the official order,
so a seeded initialisation makes the same random draws as the official code. See
docs/official.md sections 1.3, 1.8, 1.10.

Every block takes a keyword-only `impl="auto"|"kernel"|"reference"` that is handed to the fused ops
(fused_leaky_relu, upfirdn2d); `models.impl.set_impl(module, impl)` changes it afterwards on a whole tree.

Shape legend: B batch, C channels, H/W height/width, D style dimension.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.fused_leaky_relu import FusedLeakyReLU, fused_leaky_relu
from ..ops.upfirdn2d import Blur, Upsample

BLUR_KERNEL = (1, 3, 3, 1)
DEMODULATION_EPS = 1e-8
PIXEL_NORM_EPS = 1e-8
STDDEV_EPS = 1e-8


def stylegan2_channels(channel_multiplier: int = 2, channel_max: int = 512) -> dict:
    """Channels per resolution of the StyleGAN2 decoder and discriminator (docs/official.md section 1.8), each
    capped at channel_max (512, the official network; smaller caps make small CPU models)."""
    for name, value in (("channel_multiplier", channel_multiplier), ("channel_max", channel_max)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    official = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return {size: min(channels, channel_max) for size, channels in official.items()}


def log2_size(name: str, size: int, minimum: int, maximum: int) -> int:
    """log2(size) for a power-of-two size in [minimum, maximum], else a ValueError naming `name`."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size & (size - 1):
        raise ValueError(f"{name} must be a power of two, got {size!r}")
    if not minimum <= size <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {size}")
    return size.bit_length() - 1


# --- linear layers and normalisation --------------------------------------------------------------

class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + 1e-8); [B, D] -> [B, D]. No parameters."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [B, D, ...]
        return input * torch.rsqrt(torch.mean(input**2, dim=1, keepdim=True) + PIXEL_NORM_EPS)


class EqualLinear(nn.Module):
    """Equalised-learning-rate linear layer; [B, in_dim] -> [B, out_dim].

    Stored weight ~ N(0, 1) / lr_mul, runtime weight = stored * lr_mul / sqrt(in_dim); stored bias
    = bias_init, runtime bias = stored * lr_mul. With activation (any truthy value, e.g.
    "fused_lrelu") the bias goes into fused_leaky_relu (slope 0.2, gain sqrt(2)) as in the official.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: Optional[str] = None, *, impl: str = "auto"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.impl = impl

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [B, in_dim]
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            out = F.linear(input, self.weight * self.scale)
            return fused_leaky_relu(out, bias, impl=self.impl)
        return F.linear(input, self.weight * self.scale, bias=bias)

    def extra_repr(self) -> str:
        return (f"in_dim={self.weight.shape[1]}, out_dim={self.weight.shape[0]}, lr_mul={self.lr_mul}, "
                f"activation={self.activation}")


class EqualConv2d(nn.Module):
    """Equalised-learning-rate conv: weight ~ N(0, 1) scaled by 1/sqrt(in * k^2) at runtime, bias 0.
    [B, in_channel, H, W] -> [B, out_channel, H', W']."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [B, C_in, H, W]
        return F.conv2d(input, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        out_channel, in_channel, kernel_size, _ = self.weight.shape
        return f"{in_channel}, {out_channel}, {kernel_size}, stride={self.stride}, padding={self.padding}"


# --- generator blocks -----------------------------------------------------------------------------

def _upsample_blur_pad(blur_taps: int, kernel_size: int, factor: int = 2) -> Tuple[int, int]:
    """Blur pads after a stride-`factor` transposed conv: (1, 1) for a 4-tap blur and a 3x3 conv."""
    p = (blur_taps - factor) - (kernel_size - 1)
    return (p + 1) // 2 + factor - 1, p // 2 + 1


def _downsample_blur_pad(blur_taps: int, kernel_size: int, factor: int = 2) -> Tuple[int, int]:
    """Blur pads before a stride-`factor` conv: (2, 2) for a 3x3 conv, (1, 1) for 1x1 (4-tap blur)."""
    p = (blur_taps - factor) + (kernel_size - 1)
    return (p + 1) // 2, p // 2


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution, one grouped conv for the whole batch.

    w'_b[o, i] = w[o, i] * s_b[i] / sqrt(in * k^2), s = modulation(style) (EqualLinear, bias init 1);
    with demodulate, w''_b[o] = w'_b[o] / sqrt(sum_{i,kh,kw} w'_b[o]^2 + 1e-8).
    upsample: transposed conv with stride 2, then Blur(pad (1, 1), gain 4): H -> 2H.
    downsample: Blur(pad (2, 2)) then a stride-2 conv: H -> H/2. Otherwise "same" padding.
    input [B, in_channel, H, W], style [B, style_dim] -> [B, out_channel, H', W'].
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, downsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 *, impl: str = "auto"):
        super().__init__()
        if upsample and downsample:
            raise ValueError("ModulatedConv2d: upsample and downsample are exclusive")
        self.eps = DEMODULATION_EPS
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.downsample = downsample
        if upsample:
            self.blur = Blur(blur_kernel, pad=_upsample_blur_pad(len(blur_kernel), kernel_size), upsample_factor=2,
                             impl=impl)
        if downsample:
            self.blur = Blur(blur_kernel, pad=_downsample_blur_pad(len(blur_kernel), kernel_size), impl=impl)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1, impl=impl)
        self.demodulate = demodulate

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, upsample={self.upsample}, "
                f"downsample={self.downsample}, demodulate={self.demodulate}")

    def modulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """Per-sample weights [B, out, in, k, k] from style [B, style_dim] (modulated, demodulated)."""
        batch = style.shape[0]
        style = self.modulation(style).view(batch, 1, self.in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        return weight

    def forward(self, input: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # input [B, in_channel, H, W], style [B, style_dim]
        batch, in_channel, height, width = input.shape
        if in_channel != self.in_channel or style.shape[0] != batch:
            raise ValueError(
                f"ModulatedConv2d: expected input [B, {self.in_channel}, H, W] and style [B, D] with the same B, "
                f"got input {tuple(input.shape)} and style {tuple(style.shape)}"
            )
        k = self.kernel_size
        weight = self.modulated_weight(style)
        # Fold the batch into the channels: one grouped conv applies each sample's own weights.
        if self.upsample:
            input = input.reshape(1, batch * in_channel, height, width)
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(input, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_channel, out.shape[2], out.shape[3])
            return self.blur(out)
        weight = weight.reshape(batch * self.out_channel, in_channel, k, k)
        if self.downsample:
            input = self.blur(input)
            input = input.reshape(1, batch * in_channel, input.shape[2], input.shape[3])
            out = F.conv2d(input, weight, padding=0, stride=2, groups=batch)
        else:
            input = input.reshape(1, batch * in_channel, height, width)
            out = F.conv2d(input, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    """image + weight * noise, weight a scalar initialised to 0; noise [B or 1, 1, H, W], drawn
    N(0, 1) per call when None. The official mesh-projected noise of videos is a noise list computed
    outside (generation/noise_projection.py) and passed in as `noise`."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # [B, C, H, W]
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class StyledConv(nn.Module):
    """ModulatedConv2d -> NoiseInjection -> FusedLeakyReLU(out) (own bias, gain sqrt(2)).

    `bias` [1, out, 1, 1] is never used by the forward pass; it exists because the official
    module has it, so it is in every checkpoint (and DDP needs find_unused_parameters=True).
    input [B, in_channel, H, W], style [B, style_dim] -> [B, out_channel, H (x2 if upsample), W (x2)].
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, *, impl: str = "auto"):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel, impl=impl)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(1, out_channel, 1, 1))  # unused, for key compatibility
        self.activate = FusedLeakyReLU(out_channel, impl=impl)

    def forward(self, input: torch.Tensor, style: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.conv(input, style)
        out = self.noise(out, noise=noise)
        return self.activate(out)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to 3 channels + bias, plus the upsampled skip.

    input [B, in_channel, H, W], style [B, style_dim], skip [B, 3, H/2, W/2] (upsample) or
    [B, 3, H, W] or None -> [B, 3, H, W]. The skip is upsampled by upfirdn2d(up 2, pad (2, 1), gain 4).
    """

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, *, impl: str = "auto"):
        super().__init__()
        self.upsample = Upsample(blur_kernel, impl=impl) if upsample else None
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False, impl=impl)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, input: torch.Tensor, style: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.conv(input, style) + self.bias
        if skip is not None:
            if self.upsample is not None:
                skip = self.upsample(skip)
            out = out + skip
        return out


# --- discriminator blocks -------------------------------------------------------------------------

class ConvLayer(nn.Sequential):
    """[Blur (when downsampling)] -> EqualConv2d -> [FusedLeakyReLU]; keys `0.*`, `1.*`, `2.*` as official.

    downsample: blur with pads (2, 2) for 3x3 / (1, 1) for 1x1, then a stride-2 conv without padding.
    The conv has a bias only when there is no activation (then the activation owns the bias).
    [B, in_channel, H, W] -> [B, out_channel, H (/2 if downsample), W (/2)].
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, bias: bool = True, activate: bool = True,
                 *, impl: str = "auto"):
        layers = []
        if downsample:
            layers.append(Blur(blur_kernel, pad=_downsample_blur_pad(len(blur_kernel), kernel_size), impl=impl))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias, impl=impl))
        super().__init__(*layers)
        self.padding = padding


class ResBlock(nn.Module):
    """StyleGAN2 D residual block: (conv3x3 -> conv3x3 down) + (blur -> 1x1 stride 2, no bias/act),
    summed and divided by sqrt(2). [B, in_channel, H, W] -> [B, out_channel, H/2, W/2]."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 *, impl: str = "auto"):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, impl=impl)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel, impl=impl)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel, activate=False,
                              bias=False, impl=impl)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [B, C_in, H, W]
        out = self.conv2(self.conv1(input))
        return (out + self.skip(input)) / math.sqrt(2)


def stddev_group_size(batch: int, group_size: int = 4) -> int:
    """The official group rule: min(B, 4); if that does not divide B, 3 when 3 divides B, else 2.

    Batches that rule cannot split (5, 7, 11, ...) crash in the official code with a view error;
    here they raise a ValueError that says so.
    """
    group = min(batch, group_size)
    if batch % group != 0:
        group = 3 if batch % 3 == 0 else 2
    if batch % group != 0:
        raise ValueError(
            f"minibatch stddev: batch {batch} cannot be split into groups of {min(batch, group_size)}, 3 or 2 "
            "(the official rule); use a batch size that is a multiple of 2 or 3, or 1"
        )
    return group


def minibatch_stddev(input: torch.Tensor, group_size: int = 4, num_features: int = 1) -> torch.Tensor:
    """Appends the minibatch standard deviation as `num_features` channels: [B, C, H, W] -> [B, C + F, H, W].

    Samples are grouped with a stride (sample b is in group member b // (B / G), as the official
    view(G, -1, ...) does); per group: sqrt(var (biased) over the group + 1e-8), averaged over
    channels-per-feature and space, broadcast back to every member of the group.
    """
    batch, channel, height, width = input.shape
    group = stddev_group_size(batch, group_size)
    if channel % num_features != 0:
        raise ValueError(f"minibatch stddev: {channel} channels are not divisible by num_features={num_features}")
    stddev = input.reshape(group, -1, num_features, channel // num_features, height, width)
    stddev = torch.sqrt(stddev.var(0, correction=0) + STDDEV_EPS)  # [B/G, F, C/F, H, W]
    stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)  # [B/G, F, 1, 1]
    stddev = stddev.repeat(group, 1, height, width)  # [B, F, H, W]
    return torch.cat([input, stddev], 1)

"""The official StyleSDF discriminators, key-compatible with their checkpoints.

- `Discriminator`: the StyleGAN2 residual discriminator of stage 2 (full-resolution images,
  minibatch stddev), docs/official.md sections 1.10 / 2.4.
- `VolumeRenderDiscriminator`: the stage-1 CoordConv discriminator of 64x64 renderer images, with
  the viewpoint head that predicts (azimuth, elevation), docs/official.md sections 1.9 / 2.4.

Parameters are created in the official order, so a seeded initialisation makes the official's draws.
Shape legend: B batch, C channels, H/W height/width.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..ops.fused_leaky_relu import FusedLeakyReLU
from .impl import set_impl
from .stylegan2 import (
    BLUR_KERNEL,
    ConvLayer,
    EqualLinear,
    ResBlock,
    log2_size,
    minibatch_stddev,
    stylegan2_channels,
    stddev_group_size,
)


def _check_image(name: str, input: torch.Tensor, size: int) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4 or tuple(input.shape[1:]) != (3, size, size):
        raise ValueError(f"{name}: input must have shape [B, 3, {size}, {size}], got {tuple(input.shape)}")
    if input.shape[0] == 0:
        raise ValueError(f"{name}: input batch is empty")


# --- stage 2: StyleGAN2 discriminator -------------------------------------------------------------

class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: image [B, 3, size, size] -> logit [B, 1].

    convs.0 = ConvLayer 1x1 3 -> ch[size] (+ lrelu); ResBlocks halve the resolution down to 4x4;
    minibatch stddev (group min(B, 4), 1 feature) adds a channel; final_conv 3x3 (513 -> 512);
    final_linear = EqualLinear(512*16 -> 512, lrelu) -> EqualLinear(512 -> 1).
    size: power of two in [4, 1024]. Batches must be 1 or divisible by 2 or 3 (the stddev grouping).
    channel_max caps every layer's channels (512: the official network).
    """

    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 *, channel_max: int = 512, impl: str = "auto"):
        super().__init__()
        channels = stylegan2_channels(channel_multiplier, channel_max)
        log_size = log2_size("size", size, 4, 1024)
        self.size = size

        convs = [ConvLayer(3, channels[size], 1, impl=impl)]
        in_channel = channels[size]
        for i in range(log_size, 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel, impl=impl))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)

        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + self.stddev_feat, channels[4], 3, impl=impl)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu", impl=impl),
            EqualLinear(channels[4], 1, impl=impl),
        )
        set_impl(self, impl)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [B, 3, size, size] -> [B, 1]
        _check_image("Discriminator", input, self.size)
        stddev_group_size(input.shape[0], self.stddev_group)  # a clear error before the convolutions
        out = self.convs(input)
        out = minibatch_stddev(out, self.stddev_group, self.stddev_feat)
        out = self.final_conv(out)
        out = self.final_linear(out.reshape(out.shape[0], -1))
        return out[:, :1]


# --- stage 1: volume-renderer discriminator -------------------------------------------------------

VOLUME_D_CHANNELS = {2: 400, 4: 400, 8: 400, 16: 400, 32: 256, 64: 128, 128: 64}


def _uniform_fan_in_(tensor: torch.Tensor, fan_in: int) -> None:
    """U(-1/sqrt(fan_in), +1/sqrt(fan_in)), the official init of the activations' biases."""
    bound = math.sqrt(1 / fan_in)
    nn.init.uniform_(tensor, a=-bound, b=bound)


class VolumeRenderDiscConv2d(nn.Module):
    """Plain nn.Conv2d (PyTorch default init) with an optional FusedLeakyReLU of gain 1.

    With activate, the conv has no bias and the activation's bias is drawn U(+-1/sqrt(in * k^2)).
    [B, in_channels, H, W] -> [B, out_channels, H', W'].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, activate: bool = False, *, impl: str = "auto"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias and not activate)
        self.activate = activate
        if activate:
            self.activation = FusedLeakyReLU(out_channels, bias=bias, scale=1, impl=impl)
            if bias:
                _uniform_fan_in_(self.activation.bias, in_channels * kernel_size * kernel_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self.conv(input)
        return self.activation(out) if self.activate else out


class AddCoords(nn.Module):
    """CoordConv: appends yy then xx coordinate channels in [-1, 1]; [B, C, H, W] -> [B, C + 2, H, W]."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = input.shape
        # float32 like the official (float64 inputs get float64 coordinates), then the input's dtype
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        xx = torch.arange(width, dtype=dtype, device=input.device) / (width - 1) * 2 - 1
        yy = torch.arange(height, dtype=dtype, device=input.device) / (height - 1) * 2 - 1
        xx = xx.to(input.dtype).view(1, 1, 1, width).expand(batch, 1, height, width)
        yy = yy.to(input.dtype).view(1, 1, height, 1).expand(batch, 1, height, width)
        return torch.cat([input, yy, xx], dim=1)


class CoordConv2d(nn.Module):
    """AddCoords then nn.Conv2d(in_channels + 2 -> out_channels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.addcoords = AddCoords()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [B, C_in, H, W]
        return self.conv(self.addcoords(input))


class CoordConvLayer(nn.Module):
    """CoordConv2d ("same" padding for k > 2, no conv bias) + FusedLeakyReLU of gain 1 whose bias is
    drawn U(+-1/sqrt(in_channel * k^2)) (in_channel without the 2 coordinate channels, as official)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, bias: bool = True,
                 *, impl: str = "auto"):
        super().__init__()
        self.padding = kernel_size // 2 if kernel_size > 2 else 0
        self.conv = CoordConv2d(in_channel, out_channel, kernel_size, padding=self.padding, bias=False)
        self.activation = FusedLeakyReLU(out_channel, bias=bias, scale=1, impl=impl)
        if bias:
            _uniform_fan_in_(self.activation.bias, in_channel * kernel_size * kernel_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(input))


class VolumeRenderResBlock(nn.Module):
    """(CoordConv 3x3 -> CoordConv 3x3 -> AvgPool2) + (AvgPool2 -> 1x1 conv when channels change),
    divided by sqrt(2). [B, in_channel, H, W] -> [B, out_channel, H/2, W/2]."""

    def __init__(self, in_channel: int, out_channel: int, *, impl: str = "auto"):
        super().__init__()
        self.conv1 = CoordConvLayer(in_channel, out_channel, 3, impl=impl)
        self.conv2 = CoordConvLayer(out_channel, out_channel, 3, impl=impl)
        self.pooling = nn.AvgPool2d(2)
        self.downsample = nn.AvgPool2d(2)
        self.skip = VolumeRenderDiscConv2d(in_channel, out_channel, 1, impl=impl) if out_channel != in_channel else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self.pooling(self.conv2(self.conv1(input)))
        skip = self.downsample(input)
        if self.skip is not None:
            skip = self.skip(skip)
        return (out + skip) / math.sqrt(2)


class VolumeRenderDiscriminator(nn.Module):
    """Stage-1 discriminator: image [B, 3, size, size] -> (logit [B, 1], viewpoint [B, 2] or None).

    convs.0: 1x1 conv 3 -> ch[size] + lrelu (gain 1); one VolumeRenderResBlock per halving down to
    2x2; final_conv: 2x2 conv (with bias) to 3 channels = logit + (azimuth, elevation), or to 1
    channel (viewpoint None) when viewpoint_head is False (the official `view_lambda = 0`).
    size: the renderer output size (64), a power of two in [2, 128]. channel_max caps every layer's
    channels (400: the official network).
    """

    def __init__(self, size: int = 64, viewpoint_head: bool = True, *, channel_max: int = 400, impl: str = "auto"):
        super().__init__()
        log_size = log2_size("size", size, 2, 128)
        if isinstance(channel_max, bool) or not isinstance(channel_max, int) or channel_max < 1:
            raise ValueError(f"VolumeRenderDiscriminator: channel_max must be a positive int, got {channel_max!r}")
        channels = {res: min(count, channel_max) for res, count in VOLUME_D_CHANNELS.items()}
        self.size = size
        self.viewpoint_loss = bool(viewpoint_head)  # official attribute name
        convs = [VolumeRenderDiscConv2d(3, channels[size], 1, activate=True, impl=impl)]
        in_channel = channels[size]
        for i in range(log_size - 1, 0, -1):
            out_channel = channels[2**i]
            convs.append(VolumeRenderResBlock(in_channel, out_channel, impl=impl))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.final_conv = VolumeRenderDiscConv2d(in_channel, 3 if self.viewpoint_loss else 1, 2, impl=impl)
        set_impl(self, impl)

    def forward(self, input: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        _check_image("VolumeRenderDiscriminator", input, self.size)
        out = self.final_conv(self.convs(input))  # [B, 3 or 1, 1, 1]
        gan_preds = out[:, 0:1].reshape(-1, 1)
        viewpoint_preds = out[:, 1:].reshape(-1, 2) if self.viewpoint_loss else None
        return gan_preds, viewpoint_preds

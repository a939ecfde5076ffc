"""Pure-PyTorch upfirdn2d: zero insertion, pad/crop, one depthwise conv2d with the flipped kernel,
then every down-th sample. The oracle of the tests and the fallback of the op."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _pads(pad: Sequence[int]) -> Tuple[int, int, int, int]:
    """(x0, x1, y0, y1) from a 2-tuple (same on both axes) or a 4-tuple."""
    pad = tuple(int(p) for p in pad)
    return (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else pad


def upfirdn2d(
    input: torch.Tensor,  # [N, C, H, W]
    kernel: torch.Tensor,  # [KH, KW]
    up: IntPair = 1,
    down: IntPair = 1,
    pad: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), convolve with `kernel`, downsample.
    Output [N, C, (H*up_y + pad_y0 + pad_y1 - KH)//down_y + 1, (W*up_x + pad_x0 + pad_x1 - KW)//down_x + 1]."""
    up_x, up_y = _pair(up)
    down_x, down_y = _pair(down)
    pad_x0, pad_x1, pad_y0, pad_y1 = _pads(pad)
    batch, channels, in_h, in_w = input.shape
    kernel_h, kernel_w = kernel.shape

    x = input.reshape(batch * channels, in_h, 1, in_w, 1)
    x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])  # zero insertion after every sample
    x = x.reshape(batch * channels, 1, in_h * up_y, in_w * up_x)
    x = F.pad(x, [max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
    x = x[:, :, max(-pad_y0, 0) : x.shape[2] - max(-pad_y1, 0), max(-pad_x0, 0) : x.shape[3] - max(-pad_x1, 0)]

    weight = torch.flip(kernel, [0, 1]).view(1, 1, kernel_h, kernel_w).to(x.dtype)
    x = F.conv2d(x, weight)
    x = x[:, :, ::down_y, ::down_x]
    return x.reshape(batch, channels, x.shape[2], x.shape[3])

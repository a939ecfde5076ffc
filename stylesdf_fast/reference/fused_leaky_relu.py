"""Pure-PyTorch fused bias + leaky ReLU: the oracle of the tests and the fallback of the op."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def fused_leaky_relu(
    input: torch.Tensor,  # [B, C, ...] (rank >= 2)
    bias: Optional[torch.Tensor] = None,  # [C], broadcast along dim 1
    negative_slope: float = 0.2,
    scale: float = 2**0.5,
) -> torch.Tensor:
    """scale * leaky_relu(input + bias, negative_slope), in input's dtype; differentiable by autograd."""
    if bias is not None:
        broadcast_shape = (1, bias.shape[0]) + (1,) * (input.dim() - 2)
        input = input + bias.to(input.dtype).view(broadcast_shape)
    return F.leaky_relu(input, negative_slope) * scale

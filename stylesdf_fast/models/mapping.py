"""The renderer mapping network `Generator.style`: z [N, 256] -> w_r [N, 256] (docs/official.md
section 1.2): three leaky-ReLU linear layers of gain 1, plain parameters, no PixelNorm."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.fused_leaky_relu import fused_leaky_relu
from ._init import LEAKY_SLOPE, kaiming_leaky, uniform_bias
from .impl import check_impl

__all__ = ["MappingLinear", "RendererMapping", "make_renderer_mapping"]


class MappingLinear(nn.Module):
    """y = leaky_relu(x W^T + b, 0.2) with gain 1 (or x W^T + b when activate=False).

    Plain parameters, no equalised learning rate: W ~ Kaiming-normal (a=0.2, fan_in), b ~ U(+-1/sqrt(in)).
    """

    def __init__(self, in_dim: int, out_dim: int, activate: bool = True, *, impl: str = "auto"):
        super().__init__()
        self.weight = nn.Parameter(kaiming_leaky(out_dim, in_dim))  # [out, in]
        self.bias = nn.Parameter(uniform_bias(out_dim, in_dim))  # [out]
        self.activate = activate
        self.impl = check_impl("MappingLinear", impl)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        if not self.activate:
            return F.linear(input, self.weight, self.bias)
        return fused_leaky_relu(F.linear(input, self.weight), self.bias, LEAKY_SLOPE, scale=1.0, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, activate={self.activate}"


class RendererMapping(nn.Sequential):
    """z [N, style_dim] -> w_r [N, style_dim]: n_layers MappingLinear, every one activated (the last
    too), no PixelNorm. An nn.Sequential so its keys are `0.weight`, `0.bias`, ... as the official."""

    def __init__(self, style_dim: int = 256, n_layers: int = 3, *, impl: str = "auto"):
        if style_dim < 1 or n_layers < 1:
            raise ValueError(f"RendererMapping: style_dim and n_layers must be >= 1, got {style_dim}, {n_layers}")
        super().__init__(*[MappingLinear(style_dim, style_dim, impl=impl) for _ in range(n_layers)])


def make_renderer_mapping(style_dim: int = 256, n_layers: int = 3, *, impl: str = "auto") -> RendererMapping:
    """The renderer mapping network `Generator.style` of the official code."""
    return RendererMapping(style_dim, n_layers, impl=impl)

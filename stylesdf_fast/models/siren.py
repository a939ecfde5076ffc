"""The FiLM-SIREN network of the renderer (docs/official.md section 1.4): per sample point, its
[rgb logits (3), sdf (1), features (W)].

    LinearLayer   y = std_init (x W^T + b) + bias_init
    FiLMSiren     y = sin(gamma(w) * (x W^T + b) + beta(w)), gamma = 15 (A w + a) + 30, beta = 0.25 (B w + b)
    SirenGenerator  depth FiLMSiren layers, the SDF head, the view-dependent feature layer, the colour head

impl "auto"/"kernel": each FiLMSiren is its GEMM followed by the fused film_siren op, and the next
GEMM recomputes the layer output instead of keeping it (recompute.py); "reference": the official
formulas op by op.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.film_siren import film_siren
from ._init import kaiming_leaky, uniform, uniform_bias
from .impl import check_impl
from .recompute import attach_recipe, linear_recomputing_input

__all__ = ["LinearLayer", "FiLMSiren", "SirenGenerator"]

FILM_GAMMA_SCALE, FILM_GAMMA_OFFSET = 15.0, 30.0  # gamma = 15 (A w + a) + 30
FILM_BETA_SCALE = 0.25  # beta = 0.25 (B w + b)
SIREN_FREQ_DIVISOR = 25.0  # non-first SIREN weights U(+-sqrt(6/in)/25)


class LinearLayer(nn.Module):
    """y = std_init (x W^T + b) + bias_init, the official SIREN "LinearLayer".

    Weight init: is_first U(+-1/in); freq_init U(+-sqrt(6/in)/25); otherwise 0.25 x Kaiming-normal
    (a=0.2, fan_in). Bias U(+-1/sqrt(in)) in every case.
    """

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, std_init: float = 1.0,
                 freq_init: bool = False, is_first: bool = False):
        super().__init__()
        if is_first:
            weight = uniform((out_dim, in_dim), 1 / in_dim)
        elif freq_init:
            weight = uniform((out_dim, in_dim), math.sqrt(6 / in_dim) / SIREN_FREQ_DIVISOR)
        else:
            weight = 0.25 * kaiming_leaky(out_dim, in_dim)
        self.weight = nn.Parameter(weight)  # [out, in]
        self.bias = nn.Parameter(uniform_bias(out_dim, in_dim))  # [out]
        self.bias_init = bias_init
        self.std_init = std_init

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        out = linear_recomputing_input(input, self.weight, self.bias)
        if self.std_init != 1:
            out = self.std_init * out
        if self.bias_init != 0:
            out = out + self.bias_init
        return out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, std_init={self.std_init}, bias_init={self.bias_init}"


class FiLMSiren(nn.Module):
    """y = sin(gamma(w) * (x W^T + b) + beta(w)), gamma = 15 (A w + a) + 30, beta = 0.25 (B w + b).

    gamma and beta are per output channel and per batch item, broadcast over every other dim of x.
    Weight init: is_first U(-1/3, 1/3) (in = 3), otherwise U(+-sqrt(6/in)/25); bias U(+-1/sqrt(in)).
    """

    def __init__(self, in_channel: int, out_channel: int, style_dim: int, is_first: bool = False, *,
                 impl: str = "auto"):
        super().__init__()
        self.impl = check_impl("FiLMSiren", impl)   # "reference": the official formula; else the fused op
        self.in_channel = in_channel
        self.out_channel = out_channel
        bound = 1 / 3 if is_first else math.sqrt(6 / in_channel) / SIREN_FREQ_DIVISOR
        self.weight = nn.Parameter(uniform((out_channel, in_channel), bound))  # [out, in]
        self.bias = nn.Parameter(uniform_bias(out_channel, in_channel))  # [out]
        self.gamma = LinearLayer(style_dim, out_channel, bias_init=FILM_GAMMA_OFFSET, std_init=FILM_GAMMA_SCALE)
        self.beta = LinearLayer(style_dim, out_channel, bias_init=0.0, std_init=FILM_BETA_SCALE)

    def forward(self, input: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # input [B, ..., in], style [B, style_dim] -> [B, ..., out]
        per_item = input.dim() >= 2 and input.shape[0] == style.shape[0]
        if self.impl != "reference" and per_item:
            x_lin = linear_recomputing_input(input, self.weight, self.bias)  # [B, ..., out]: all the op keeps
            gamma, beta = self.gamma(style), self.beta(style)
            out = film_siren(x_lin, gamma, beta, impl=self.impl)
            attach_recipe(out, x_lin, gamma, beta, self.impl)   # the next GEMM recomputes, not keeps, out
            return out
        # the official formula op by op (the oracle). The official views gamma as [B, 1, 1, 1, style_dim]:
        # right only for 5-d input and out == style_dim; viewing by out_channel and input rank is the same there.
        out = F.linear(input, self.weight, self.bias)
        shape = (style.shape[0],) + (1,) * (input.dim() - 2) + (self.out_channel,)
        gamma = self.gamma(style).view(shape)
        beta = self.beta(style).view(shape)
        return torch.sin(gamma * out + beta)

    def extra_repr(self) -> str:
        return f"{self.in_channel}, {self.out_channel}, impl={self.impl!r}"


class SirenGenerator(nn.Module):
    """The SDF/colour/feature MLP: per sample [rgb logits (3), sdf (1), features (W)].

    pts_linears: depth FiLMSiren layers (3 -> W, then W -> W); sigma_linear (W -> 1) on the trunk
    output is the SDF; views_linears (W + 3 -> W) on [trunk, view direction] is the feature vector;
    rgb_linear (W -> 3) on it gives the colour logits. output_features=False drops the features from
    the output (the parameters are the same).
    """

    def __init__(self, depth: int = 8, width: int = 256, style_dim: int = 256, input_ch: int = 3,
                 input_ch_views: int = 3, output_features: bool = True, *, impl: str = "auto"):
        super().__init__()
        self.depth = depth
        self.width = width
        self.style_dim = style_dim
        self.input_ch = input_ch
        self.input_ch_views = input_ch_views
        self.output_features = output_features
        self.pts_linears = nn.ModuleList(
            [FiLMSiren(input_ch, width, style_dim, is_first=True, impl=impl)]
            + [FiLMSiren(width, width, style_dim, impl=impl) for _ in range(depth - 1)]
        )
        self.views_linears = FiLMSiren(width + input_ch_views, width, style_dim, impl=impl)
        self.rgb_linear = LinearLayer(width, 3, freq_init=True)
        self.sigma_linear = LinearLayer(width, 1, freq_init=True)

    @property
    def out_channels(self) -> int:
        return 4 + (self.width if self.output_features else 0)

    def trunk(self, points: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        # points [B, ..., 3], styles [B, style_dim] -> [B, ..., W]
        out = points
        for layer in self.pts_linears:
            out = layer(out, styles)
        return out

    def sdf(self, points: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """Only the SDF [B, ..., 1] (skips the colour branch; for the sphere init and surface queries)."""
        return self.sigma_linear(self.trunk(points, styles))

    def forward_raw_and_sdf(self, points: torch.Tensor, viewdirs: torch.Tensor,
                            styles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw [B, ..., 4 + C], sdf [B, ..., 1]); sdf is the tensor before packing, so a gradient of
        it (the eikonal term) does not run zeros back through the colour branch."""
        trunk = self.trunk(points, styles)  # [B, ..., W]
        sdf = self.sigma_linear(trunk)  # [B, ..., 1]
        views = viewdirs.expand(*trunk.shape[:-1], viewdirs.shape[-1])  # per-ray directions to every sample
        features = self.views_linears(torch.cat([trunk, views], -1), styles)  # [B, ..., W]
        rgb = self.rgb_linear(features)  # [B, ..., 3]
        parts = [rgb, sdf, features] if self.output_features else [rgb, sdf]
        return torch.cat(parts, -1), sdf

    def forward(self, points: torch.Tensor, viewdirs: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """points [B, ..., 3] (normalised), viewdirs broadcastable to [B, ..., 3] (unit),
        styles [B, style_dim] -> raw [B, ..., 4 + C] = [rgb logits, sdf, features]."""
        return self.forward_raw_and_sdf(points, viewdirs, styles)[0]

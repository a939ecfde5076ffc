"""Pure-PyTorch volume aggregation: a faithful transcription of StyleSDF's `volume_integration`
(the 1e10 last interval, the 1e-10 inside the transmittance product, force_background), the oracle
of the tests and the fallback of the op. It materialises [..., S, C] temporaries; the kernel does not."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

RGB_ACTIVATIONS = ("sigmoid_pm1", "sigmoid", "none")
LAST_INTERVAL = 1e10
TRANSMITTANCE_EPS = 1e-10


class VolumeRenderOutput(NamedTuple):
    rgb: torch.Tensor  # [..., 3]
    features: Optional[torch.Tensor]  # [..., C] or None
    weights: torch.Tensor  # [..., S]


def sdf_volume_render(
    sdf: torch.Tensor,  # [..., S]
    rgb: torch.Tensor,  # [..., S, 3] colour logits
    features: Optional[torch.Tensor],  # [..., S, C] or None
    z_vals: torch.Tensor,  # [..., S]
    ray_norm: torch.Tensor,  # [...]
    beta: torch.Tensor,  # one element
    *,
    force_background: bool = False,
) -> VolumeRenderOutput:
    """sigma = sigmoid(-sdf / beta) / beta, then `density_volume_render` with StyleSDF's colours
    (-1 + 2 * sum_i w_i sigmoid(rgb_i))."""
    beta = beta.reshape(()).to(z_vals.dtype)
    sigma = torch.sigmoid(-sdf.to(z_vals.dtype) / beta) / beta
    return density_volume_render(sigma, rgb, features, z_vals, ray_norm, rgb_activation="sigmoid_pm1",
                                 force_background=force_background)


def sdf_volume_render_raw(
    raw: torch.Tensor,  # [..., S, 4 + C]: rgb logits (3), sdf (1), features (C)
    z_vals: torch.Tensor,  # [..., S]
    ray_norm: torch.Tensor,  # [...]
    beta: torch.Tensor,  # one element
    *,
    force_background: bool = False,
) -> VolumeRenderOutput:
    """StyleSDF's volume_integration of its packed network output."""
    features = raw[..., 4:] if raw.shape[-1] > 4 else None
    return sdf_volume_render(raw[..., 3], raw[..., :3], features, z_vals, ray_norm, beta,
                             force_background=force_background)


def density_volume_render(
    sigma: torch.Tensor,  # [..., S] non-negative densities
    rgb: torch.Tensor,  # [..., S, 3]
    features: Optional[torch.Tensor],  # [..., S, C] or None
    z_vals: torch.Tensor,  # [..., S]
    ray_norm: torch.Tensor,  # [...]
    *,
    rgb_activation: str = "sigmoid",
    force_background: bool = False,
) -> VolumeRenderOutput:
    """NeRF quadrature: alpha_i = 1 - exp(-sigma_i delta_i), delta_i = (z_{i+1} - z_i) |d| and
    1e10 |d| for the last sample, T_i = prod_{j<i} (1 - alpha_j + 1e-10), w_i = alpha_i T_i.
    rgb_activation: "sigmoid" (NeRF), "sigmoid_pm1" (StyleSDF, -1 + 2 * sum w sigmoid) or "none"."""
    sigma = sigma.to(z_vals.dtype)
    dists = z_vals[..., 1:] - z_vals[..., :-1]
    dists = torch.cat([dists, torch.full_like(z_vals[..., :1], LAST_INTERVAL)], -1) * ray_norm.unsqueeze(-1)
    alpha = 1 - torch.exp(-sigma * dists)
    ones = torch.ones_like(alpha[..., :1])
    transmittance = torch.cumprod(torch.cat([ones, 1 - alpha + TRANSMITTANCE_EPS], -1), -1)[..., :-1]
    weights = alpha * transmittance
    if force_background:
        weights = torch.cat([weights[..., :-1], 1 - weights[..., :-1].sum(-1, keepdim=True)], -1)

    colors = rgb.to(weights.dtype)
    if rgb_activation in ("sigmoid", "sigmoid_pm1"):
        colors = torch.sigmoid(colors)
    rgb_map = torch.sum(weights.unsqueeze(-1) * colors, -2)
    if rgb_activation == "sigmoid_pm1":
        rgb_map = -1 + 2 * rgb_map
    feature_map = None
    if features is not None:
        feature_map = torch.sum(weights.unsqueeze(-1) * features.to(weights.dtype), -2).to(features.dtype)
    return VolumeRenderOutput(rgb_map.to(rgb.dtype), feature_map, weights)

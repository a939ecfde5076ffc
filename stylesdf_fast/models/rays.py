"""Rays and samples of the renderer (docs/official.md section 1.6): pixel centres, pinhole rays in
the OpenGL convention, and the depths along each ray (offset or stratified sampling).

Legend: B batch, H/W image height/width, S samples per ray.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["pixel_grid", "camera_rays", "make_t_vals", "sample_depths"]


def pixel_grid(resolution: int, *, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres (i, j), each [1, H, W] with values 0.5 .. res - 0.5: i the column (x), j the row (y)."""
    coords = torch.linspace(0.5, resolution - 0.5, resolution, dtype=dtype, device=device)
    j, i = torch.meshgrid(coords, coords, indexing="ij")
    return i.unsqueeze(0).contiguous(), j.unsqueeze(0).contiguous()   # meshgrid gives expanded views


def camera_rays(c2w: torch.Tensor, focal: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                resolution: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pinhole rays, OpenGL convention (camera looks along -z, +y up, row 0 at the top).

    c2w [B, 3, 4], focal [B, 1, 1] in pixels, i/j [1, H, W] pixel centres ->
    rays_o [B, H, W, 3] (camera position), rays_d [B, H, W, 3] = R ((i - res/2)/f, -(j - res/2)/f, -1)
    (not normalised: its norm scales the sample spacing), dirs [B, H, W, 3] (the camera-frame direction).
    """
    half = resolution * 0.5
    x = (i - half) / focal  # [B, H, W]
    y = -(j - half) / focal
    dirs = torch.stack([x, y, -torch.ones_like(x)], -1)  # [B, H, W, 3]
    # The official sum-of-products form of R . d (kept for bitwise-equal ray directions).
    rays_d = torch.sum(dirs[..., None, :] * c2w[:, None, None, :3, :3], -1)
    rays_o = c2w[:, None, None, :3, -1].expand(rays_d.shape)
    return rays_o, rays_d, dirs


def make_t_vals(n_samples: int, offset_sampling: bool = True, *, dtype: torch.dtype = torch.float32,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Sample fractions t [S]: linspace(0, 1 - 1/S, S) for offset sampling (every sample then owns
    the interval up to the next one, the last up to far), linspace(0, 1, S) for stratified."""
    end = 1.0 - 1.0 / n_samples if offset_sampling else 1.0
    return torch.linspace(0.0, end, n_samples, dtype=dtype, device=device)


def sample_depths(near: torch.Tensor, far: torch.Tensor, t_vals: torch.Tensor, *, perturb: float = 0.0,
                  offset_sampling: bool = True) -> torch.Tensor:
    """Depths along each ray, z [..., S] = near (1 - t) + far t, jittered when perturb > 0.

    near/far [..., 1] (one per ray), t_vals [S]. Offset sampling: one u ~ U(0, 1) per ray moves every
    sample by u times its gap to the next (the last one toward far), so z stays < far. Stratified: an
    independent uniform draw per sample inside the bin between the neighbouring midpoints.
    """
    z_vals = near * (1.0 - t_vals) + far * t_vals  # [..., S]
    if not perturb > 0:
        return z_vals
    if offset_sampling:
        upper = torch.cat([z_vals[..., 1:], far], -1)
        lower = z_vals
        t_rand = torch.rand(z_vals.shape[:-1] + (1,), dtype=z_vals.dtype, device=z_vals.device)  # one per ray
    else:
        mids = 0.5 * (z_vals[..., 1:] + z_vals[..., :-1])
        upper = torch.cat([mids, z_vals[..., -1:]], -1)
        lower = torch.cat([z_vals[..., :1], mids], -1)
        t_rand = torch.rand(z_vals.shape, dtype=z_vals.dtype, device=z_vals.device)
    return lower + (upper - lower) * t_rand

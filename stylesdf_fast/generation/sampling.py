"""Sampling a trained StyleSDF generator: latents, views, images, thumbnails and surfaces.

Inference follows the official scripts (docs/official.md section 6.1): static view directions,
force_background, no depth jitter, truncation psi toward the mean of 10,000 mapped latents, fresh
decoder noise per image (generate_images(fixed_noise=True): the stored buffers). Surfaces (depth maps, points,
SDF volumes for marching cubes) come from a second renderer sharing the generator's weights, at its
own resolution and samples per ray (128 x 128 rays and 128 samples in the official scripts), rendered
a band of rows at a time so memory stays bounded on any machine.

Legend: N identities, K views, D style_dim, S image size, R renderer (or surface) resolution.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..models import Generator, generate_camera_params, load_generator
from ..models.cameras import AZIM_RANGE, DIST_RADIUS, ELEV_RANGE, FOV_HALF_ANGLE_DEG, fixed_view_angles, sample_angles
from ..models.generator import _generator_state
from .._atomic import write_json
from ..models.renderer import VolumeFeatureRenderer

__all__ = ["CameraSettings", "LoadedModel", "SurfaceRender", "load_model", "identity_latents", "view_angles",
           "truncation_centres", "renderer_latents", "generate_images", "iter_images", "render_surface",
           "to_uint8", "view_cameras"]

DEFAULT_TRUNCATION = 0.5          # the official generate script's psi
TRUNCATION_MEAN_SAMPLES = 10000   # latents averaged for the truncation centre (official --truncation_mean)
SURFACE_MEMORY_BUDGET = 1 << 30   # bytes of MLP activations per band of surface rows


@dataclass(frozen=True)
class CameraSettings:
    """The pose distribution and lens a model was trained with (official FFHQ values by default)."""
    azim_range: float = AZIM_RANGE
    elev_range: float = ELEV_RANGE
    fov: float = FOV_HALF_ANGLE_DEG          # half angle, degrees
    dist_radius: float = DIST_RADIUS         # near/far = 1 -/+ dist_radius
    uniform: bool = False


@dataclass
class LoadedModel:
    generator: Generator      # g_ema, eval mode
    cameras: CameraSettings
    source: str               # "stylesdf_fast" (ours, with a training config) or "official"
    path: str

    @property
    def image_size(self) -> int:
        g = self.generator
        return g.size if g.decoder is not None else g.renderer.out_im_res


@dataclass
class SurfaceRender:
    """A surface render of one batch of views; all [N, ...] with N views."""
    xyz: torch.Tensor             # [N, 3, R, R] expected surface point (world)
    depth: torch.Tensor           # [N, 1, R, R] distance along the camera axis to xyz
    foreground: torch.Tensor      # [N, 1, R, R] bool: the ray hit the surface (background weight < 0.5)
    rgb: torch.Tensor             # [N, 3, R, R] in [-1, 1]
    sdf: Optional[torch.Tensor]   # [N, R, R, S] raw SDF at the samples (when keep_sdf), near -> far


def load_model(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", *,
               impl: str = "auto") -> LoadedModel:
    """g_ema of an official StyleSDF checkpoint or one of ours (docs/official.md section 2), with
    the camera settings it was trained with (ours store them; official ones use the FFHQ defaults).
    Raises FileNotFoundError for a missing file, ValueError for a file that is not StyleSDF."""
    generator = load_generator(path, device, impl=impl)
    _, config = _generator_state(path)
    cameras = CameraSettings()
    if config:
        cameras = CameraSettings(azim_range=float(config.get("azim", AZIM_RANGE)),
                                 elev_range=float(config.get("elev", ELEV_RANGE)),
                                 fov=float(config.get("fov", FOV_HALF_ANGLE_DEG)),
                                 dist_radius=float(config.get("dist_radius", DIST_RADIUS)),
                                 uniform=bool(config.get("uniform", False)))
    return LoadedModel(generator, cameras, "stylesdf_fast" if config else "official", os.fspath(path))


# --- latents and views ------------------------------------------------------------------------------

def identity_latents(count: int, style_dim: int, seed: int) -> torch.Tensor:
    """z [count, style_dim] from a CPU generator seeded with `seed`: the same identities on any device."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"identity_latents: count must be an int >= 1, got {count!r}")
    return torch.randn(count, style_dim, generator=torch.Generator().manual_seed(seed))


def view_angles(identities: int, views: int, cameras: CameraSettings, *, fixed: bool = False,
                seed: int = 0) -> torch.Tensor:
    """(azimuth, elevation) [identities, K, 2] in radians: the official 13 fixed views (K = 13, the
    same for every identity) or K views per identity drawn from the training pose distribution."""
    if fixed:
        angles = fixed_view_angles(cameras.azim_range, cameras.elev_range)
        return angles.unsqueeze(0).expand(identities, -1, -1).clone()
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f"view_angles: views must be an int >= 1, got {views!r}")
    generator = torch.Generator().manual_seed(seed + 1)
    angles = sample_angles(identities * views, uniform=cameras.uniform, azim_range=cameras.azim_range,
                           elev_range=cameras.elev_range, generator=generator)
    return angles.reshape(identities, views, 2)


@torch.no_grad()
def truncation_centres(generator: Generator, truncation: float, *, samples: int = TRUNCATION_MEAN_SAMPLES,
                       seed: int = 0):
    """[mean_r, mean_d] for truncation < 1 (official: the mean of 10,000 mapped latents), else None."""
    if not 0 <= truncation <= 1:
        raise ValueError(f"truncation must be in [0, 1], got {truncation}")
    if truncation >= 1:
        return None
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed + 2)
        return generator.mean_latent(samples)
    finally:
        torch.random.set_rng_state(state)


def renderer_latents(generator: Generator, z: torch.Tensor, truncation: float, centres) -> torch.Tensor:
    """w_r [N, D] of z [N, D] after truncation (what the renderer and the surface renderer see)."""
    device = generator.renderer.device
    return generator.renderer_latents([z.to(device)], truncation, centres)[0]


def view_cameras(angles: torch.Tensor, resolution: int, cameras: CameraSettings, device):
    """CameraParams of views angles [N, 2] for a renderer of `resolution` rays per side."""
    return generate_camera_params(resolution, device, locations=angles.to(device), fov_ang=cameras.fov,
                                  dist_radius=cameras.dist_radius)


# --- images -----------------------------------------------------------------------------------------

@torch.no_grad()
def generate_images(model: LoadedModel, z: torch.Tensor, angles: torch.Tensor, *,
                    truncation: float = DEFAULT_TRUNCATION, centres=None, batch_size: int = 4,
                    fixed_noise: bool = False, seed: Optional[int] = None) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Every identity z [N, D] from its views angles [N, K, 2] -> (images [N, K, 3, S, S] or None for a
    renderer-only checkpoint, thumbnails [N, K, 3, R, R]), in [-1, 1], on the CPU.

    centres: truncation_centres(...) (computed here when None and truncation < 1). Decoder noise: fresh
    for every image, as the official generate script (randomize_noise=True), drawn from `seed` (a
    forked RNG, so the caller's random state is untouched; None: the global RNG); fixed_noise=True uses
    the stored noise buffers for every view instead (the official videos' choice)."""
    generator = model.generator
    if z.dim() != 2 or z.shape[1] != generator.style_dim:
        raise ValueError(f"generate_images: z must be [N, {generator.style_dim}], got {tuple(z.shape)}")
    if angles.dim() != 3 or angles.shape[0] != z.shape[0] or angles.shape[2] != 2:
        raise ValueError(f"generate_images: angles must be [N, K, 2] with N = {z.shape[0]}, got {tuple(angles.shape)}")
    if centres is None:
        centres = truncation_centres(generator, truncation)
    views = angles.shape[1]
    flat_z = z.repeat_interleave(views, 0)                 # [N*K, D]
    flat_angles = angles.reshape(-1, 2)                    # [N*K, 2]
    images, thumbnails = [], []
    devices = [generator.renderer.device] if generator.renderer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for image, thumbnail in _render_batches(model, flat_z, flat_angles, truncation, centres, batch_size,
                                                randomize_noise=not fixed_noise):
            thumbnails.append(thumbnail)
            if image is not None:
                images.append(image)
    thumbnails = torch.cat(thumbnails).unflatten(0, (z.shape[0], views))
    images = torch.cat(images).unflatten(0, (z.shape[0], views)) if images else None
    return images, thumbnails


def _render_batches(model: LoadedModel, z: torch.Tensor, angles: torch.Tensor, truncation: float, centres,
                    batch_size: int, randomize_noise: bool = False) -> Iterator[Tuple[Optional[torch.Tensor], torch.Tensor]]:
    generator = model.generator
    device = generator.renderer.device
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for start in range(0, z.shape[0], batch_size):
        cams = view_cameras(angles[start:start + batch_size], generator.renderer.out_im_res, model.cameras, device)
        image, thumbnail = generator([z[start:start + batch_size].to(device)], cams.c2w, cams.focal, cams.near,
                                     cams.far, truncation=truncation, truncation_latent=centres,
                                     randomize_noise=randomize_noise)[:2]
        yield (None if image is None else image.float().cpu()), thumbnail.float().cpu()


@torch.no_grad()
def iter_images(model: LoadedModel, count: int, *, truncation: float = 1.0, batch_size: int = 8,
                seed: int = 0) -> Iterator[torch.Tensor]:
    """`count` random samples (fresh identity and training-distribution view each) in batches of
    [n, 3, S, S] in [-1, 1], on the CPU: what FID/KID measure (the full image, or the thumbnail of a
    renderer-only checkpoint). Deterministic for a seed."""
    z = identity_latents(count, model.generator.style_dim, seed)
    angles = view_angles(count, 1, model.cameras, seed=seed).reshape(count, 2)
    centres = truncation_centres(model.generator, truncation, seed=seed)
    for image, thumbnail in _render_batches(model, z, angles, truncation, centres, batch_size):
        yield thumbnail if image is None else image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (the official scale: (x + 1) * 127.5, rounded)."""
    array = ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8)
    return array.movedim(-3, -1).cpu().numpy()


# --- surfaces ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _surface_renderer(generator: Generator, resolution: int, samples: int, keep_sdf: bool):
    """A renderer of resolution^2 rays and `samples` per ray sharing the generator's network and beta
    (no copy of the weights), without the feature output (the surface needs colour and SDF only)."""
    base = generator.renderer
    surface = VolumeFeatureRenderer(base.style_dim, resolution, depth=1, width=1, n_samples=samples, perturb=0.0,
                                    offset_sampling=base.offset_sampling, z_normalize=base.z_normalize,
                                    static_viewdirs=True, force_background=True, return_xyz=True,
                                    return_sdf=keep_sdf, sdf=base.sdf, impl=base.impl)
    surface.network = base.network            # shared modules (the depth-1 stand-in is dropped)
    surface.sigmoid_beta = base.sigmoid_beta
    surface.to(base.device)
    saved = base.network.output_features
    base.network.output_features = False
    try:
        yield surface
    finally:
        base.network.output_features = saved


def _rows_per_band(resolution: int, samples: int, width: int, budget: int) -> int:
    # about four live [rays, samples, width] float32 activations per band
    per_row = resolution * samples * width * 4 * 4
    return max(1, min(resolution, budget // max(per_row, 1)))


@torch.no_grad()
def render_surface(model: LoadedModel, w: torch.Tensor, angles: torch.Tensor, *, resolution: int = 128,
                   samples: int = 128, keep_sdf: bool = False,
                   memory_budget: int = SURFACE_MEMORY_BUDGET) -> SurfaceRender:
    """The surface of renderer latents w [N, D] (renderer_latents(...)) seen from angles [N, 2], with
    resolution^2 rays and `samples` samples per ray (the official surface renderer: 128 and 128,
    focal scaled with the resolution), one view and one band of rows at a time. On the CPU."""
    generator = model.generator
    device = generator.renderer.device
    if w.dim() != 2 or w.shape[1] != generator.style_dim or angles.shape != (w.shape[0], 2):
        raise ValueError(f"render_surface: w must be [N, {generator.style_dim}] and angles [N, 2], got "
                         f"{tuple(w.shape)} and {tuple(angles.shape)}")
    for name, value in (("resolution", resolution), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"render_surface: {name} must be an int >= 2, got {value!r}")
    cams = view_cameras(angles, resolution, model.cameras, device)   # focal scales with the resolution
    band = _rows_per_band(resolution, samples, generator.renderer.network.width, memory_budget)
    views = []
    with _surface_renderer(generator, resolution, samples, keep_sdf) as surface:
        for index in range(w.shape[0]):
            one = slice(index, index + 1)
            parts = [surface.render(cams.c2w[one], cams.focal[one], cams.near[one], cams.far[one], w[one].to(device),
                                    rows=(start, min(start + band, resolution)))
                     for start in range(0, resolution, band)]
            views.append(_join_bands(parts, cams.c2w[one]))
    return SurfaceRender(*(torch.cat(items) if items[0] is not None else None for items in zip(*views)))


def _join_bands(parts, c2w: torch.Tensor):
    """Bands of RayRenderOutput (channels last, [1, rows, R, ...]) -> (xyz, depth, foreground, rgb, sdf)."""
    xyz = torch.cat([p.xyz for p in parts], 1).float()                         # [1, R, R, 3]
    background = torch.cat([p.mask for p in parts], 1).float()                # [1, R, R, 1]
    rgb = torch.cat([p.rgb for p in parts], 1).float()                        # [1, R, R, 3]
    sdf = torch.cat([p.sdf for p in parts], 1)[..., 0].float() if parts[0].sdf is not None else None
    position, forward = c2w[:, :, 3].float(), -c2w[:, :, 2].float()         # camera looks along -z
    depth = ((xyz - position[:, None, None]) * forward[:, None, None]).sum(-1, keepdim=True)
    nchw = lambda t: t.permute(0, 3, 1, 2).contiguous().cpu()                  # noqa: E731
    return (nchw(xyz), nchw(depth), nchw(background < 0.5), nchw(rgb), None if sdf is None else sdf.cpu())


def angles_in_degrees(angle: Sequence[float]) -> Tuple[float, float]:
    return math.degrees(float(angle[0])), math.degrees(float(angle[1]))


def describe(model: LoadedModel) -> str:
    g = model.generator
    kind = f"full pipeline {g.size}px" if g.decoder is not None else f"renderer only {g.renderer.out_im_res}px"
    density = (f"beta {float(g.renderer.sigmoid_beta.detach()):.4g}" if g.renderer.sdf
               else "NeRF densities (no SDF)")
    return (f"{model.path} ({model.source} checkpoint, {kind}, width {g.renderer.network.width}, "
            f"depth {g.renderer.network.depth}, {g.renderer.n_samples} samples/ray, {density})")


def write_json_atomic(path: Union[str, os.PathLike], payload) -> None:
    """JSON, written atomically (stylesdf_fast._atomic)."""
    write_json(path, payload)

"""Geometry of a generated identity: the marching-cubes mesh of its SDF and the meshes of its depth maps.

`extract_mesh` renders the SDF in the frustum of one view with the surface renderer (sampling.py),
resamples it to a box and runs marching cubes (mesh.py), then colours the vertices with the network's
own colour at each vertex (seen from the front). `depth_mesh` triangulates one surface render.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .mesh import Mesh, depth_map_mesh, marching_cubes_mesh
from .sampling import LoadedModel, SurfaceRender, render_surface, view_cameras

__all__ = ["extract_mesh", "vertex_colors", "depth_mesh"]


@torch.no_grad()
def extract_mesh(model: LoadedModel, w: torch.Tensor, angle: Sequence[float] = (0.0, 0.0), *,
                 resolution: int = 128, samples: Optional[int] = None, colors: bool = True,
                 level: float = 0.0, official_mapping: bool = False) -> Mesh:
    """The marching-cubes mesh of renderer latent w [D] or [1, D] (renderer_latents(...)), its SDF
    sampled in the frustum of the view `angle` = (azimuth, elevation) with resolution^2 rays and
    `samples` (default: resolution) samples per ray, as the official script (128 x 128 x 128, first
    view), resampled to a box as the official align_volume. Vertices in world coordinates, each placed
    where the SDF it interpolates was sampled; official_mapping=True instead places them as the
    official script does (in the view's frame, 0.5-2% too wide and tall: mesh.marching_cubes_mesh).
    Vertex colours from the network when `colors`.
    Raises mesh.NoSurfaceError when the SDF has no zero crossing in the frustum."""
    w = w.reshape(1, -1)
    samples = resolution if samples is None else samples
    angles = torch.tensor([list(map(float, angle))], dtype=torch.float32)
    surface = render_surface(model, w, angles, resolution=resolution, samples=samples, keep_sdf=True)
    cams = view_cameras(angles, resolution, model.cameras, "cpu")
    near, far = float(cams.near[0]), float(cams.far[0])
    placement = {} if official_mapping else {"focal": float(cams.focal[0]), "c2w": cams.c2w[0]}
    mesh = marching_cubes_mesh(surface.sdf[0], near, far, level=level, **placement)   # sdf [R, R, S]
    if colors and len(mesh.vertices):
        mesh.vertex_colors = vertex_colors(model, w, mesh.vertices, near, far)
    return mesh


@torch.no_grad()
def vertex_colors(model: LoadedModel, w: torch.Tensor, vertices: np.ndarray, near: float, far: float,
                  chunk: int = 65536) -> np.ndarray:
    """The renderer's colour at world points vertices [V, 3], seen along -z (a frontal static view
    direction) -> uint8 [V, 3]."""
    renderer = model.generator.renderer
    device = renderer.device
    points = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    if renderer.z_normalize:
        points = points * (2 / (far - near))                                    # the network's input scale
    viewdir = torch.tensor([0.0, 0.0, -1.0], device=device)
    out = []
    for start in range(0, points.shape[0], chunk):
        part = points[start:start + chunk].unsqueeze(0)                          # [1, V', 3]
        raw = renderer.network(part, viewdir.expand_as(part), w.to(device))      # [1, V', 4 + C]
        out.append(torch.sigmoid(raw[0, :, :3].float()))
    rgb = torch.cat(out) if out else torch.zeros(0, 3)
    return (rgb * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


def depth_mesh(surface: SurfaceRender, index: int = 0, *, drop_background: bool = False) -> Mesh:
    """The depth-map mesh of view `index` of a surface render: its xyz map triangulated over the pixel
    grid with the rendered colours (the official keeps the background; drop_background removes it)."""
    mask = surface.foreground[index, 0] if drop_background else None
    return depth_map_mesh(surface.xyz[index], surface.rgb[index], mask)

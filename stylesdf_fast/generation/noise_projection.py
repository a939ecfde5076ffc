"""Geometry-aware decoder noise (the official render_video.py --project_noise, supplementary C.1).

Fixed 2D noise maps make the decoder's fine detail (hair, skin texture) slide over the face as the
camera moves. Instead, each NoiseInjection layer gets noise painted on the identity's surface: a
marching-cubes mesh of its SDF (shapes.extract_mesh, frontal view) carries one N(0, 1) value per
vertex and layer, and every frame rasterises the mesh from the frame's camera at the layer's
resolution (rasterize.py: nearest face, perspective-correct interpolation of the vertex values).
Pixels the mesh covers take the rasterised value; the others keep the layer's fixed noise buffer
(decoder.noises.noise_k), as in the official code.

So that the projected noise has about the layer's resolution, the mesh is subdivided (each triangle
into 4 through its edge midpoints, trimesh.remesh.subdivide) 0 times for layers up to 128 px, once
for 256 px and 3 times from 512 px up, the official rule for a 128^3 mesh. Each layer draws its own
vertex values once, from a torch.Generator seeded with `seed` (layers in order, on the CPU), so a
video is the same for a seed on any device.

    projector = NoiseProjector(mesh, generator.decoder, seed=1234)
    cams = view_cameras(angles, generator.renderer.out_im_res, model.cameras, device)   # angles [B, 2]
    noise = projector(cams.c2w, cams.focal, generator.renderer.out_im_res)            # [B, 1, r_k, r_k] each
    image = generator([z], cams.c2w, cams.focal, cams.near, cams.far, noise=noise, ...)[0]

Legend: B cameras, V vertices, F faces, L decoder noise layers, r_k layer k's resolution.
"""
from __future__ import annotations

import numbers
from typing import Dict, List, Tuple

import numpy as np
import torch

from .._checks import count

from .mesh import Mesh
from .rasterize import DEFAULT_MAX_CANDIDATES, interpolate_vertex_values, rasterize_mesh

__all__ = ["NoiseProjector", "subdivision_level", "subdivide_mesh"]


def subdivision_level(resolution: int) -> int:
    """Midpoint subdivisions of the mesh for a noise layer of `resolution` px: 0 up to 128, 1 up to 256,
    3 above (the official rule: a 128^3 marching-cubes mesh has faces of about a pixel at 128 px)."""
    resolution = count("subdivision_level", "resolution", resolution, minimum=1)
    if resolution <= 128:
        return 0
    return 1 if resolution <= 256 else 3


def subdivide_mesh(vertices: np.ndarray, faces: np.ndarray, times: int) -> Tuple[np.ndarray, np.ndarray]:
    """`times` midpoint subdivisions (trimesh.remesh.subdivide): each face becomes 4, the original
    vertices keep their indices and the edge midpoints follow. vertices [V, 3], faces [F, 3] ->
    vertices [V', 3] float32, faces [4^times F, 3] int64."""
    import trimesh

    if isinstance(times, bool) or not isinstance(times, numbers.Integral) or times < 0:
        raise ValueError(f"subdivide_mesh: times must be an int >= 0, got {times!r}")
    vertices, faces = np.asarray(vertices), np.asarray(faces)
    for _ in range(times):
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    return np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64)


class NoiseProjector:
    """Per-layer decoder noise projected from a mesh (module docstring).

    mesh: the identity's Mesh in world coordinates (shapes.extract_mesh, or load_mesh of a saved one).
    decoder: the generator's Decoder (its noise layers' resolutions and fixed noise buffers).
    seed: seeds the per-vertex N(0, 1) values of every layer.
    max_candidates: the rasteriser's chunk size, (face, pixel) pairs.

    Tensors live on the device of the decoder's noise buffers. Attributes: `resolutions` [L] ints,
    `vertex_noise` [L] tensors [V_k] (V_k the vertex count of layer k's mesh), `meshes` {subdivisions:
    (vertices [V, 3] float32, faces [F, 3] int64)} built once for every level the layers need.
    """

    def __init__(self, mesh: Mesh, decoder, *, seed: int = 0, max_candidates: int = DEFAULT_MAX_CANDIDATES):
        fn = "NoiseProjector"
        if not isinstance(mesh, Mesh):
            raise TypeError(f"{fn}: mesh must be a Mesh (generation.mesh), got {type(mesh).__name__}")
        if mesh.num_faces == 0:
            raise ValueError(f"{fn}: mesh has no faces; nothing to project noise from")
        if decoder is None or not hasattr(decoder, "noise_list"):
            raise TypeError(f"{fn}: decoder must be the generator's Decoder (generator.decoder), got "
                            f"{type(decoder).__name__}; a renderer-only model has no decoder noise")
        seed = count(fn, "seed", seed, minimum=-2**63)
        max_candidates = count(fn, "max_candidates", max_candidates, minimum=1)
        self.fixed_noise: List[torch.Tensor] = decoder.noise_list(randomize_noise=False)   # [1, 1, r_k, r_k] each
        self.device = self.fixed_noise[0].device
        self.resolutions = [int(noise.shape[-1]) for noise in self.fixed_noise]
        self.max_candidates = max_candidates
        self.meshes = self._subdivided_meshes(mesh, sorted({subdivision_level(r) for r in self.resolutions}))
        generator = torch.Generator().manual_seed(int(seed))
        self.vertex_noise = [torch.randn(self.layer_mesh(k)[0].shape[0], generator=generator).to(self.device)
                             for k in range(len(self.resolutions))]

    def _subdivided_meshes(self, mesh: Mesh, levels: List[int]) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """{level: (vertices, faces)} for the levels asked, each subdivided from the previous one."""
        meshes, vertices, faces, done = {}, mesh.vertices, mesh.faces, 0
        for level in levels:
            vertices, faces = subdivide_mesh(vertices, faces, level - done)
            done = level
            meshes[level] = (torch.from_numpy(vertices).to(self.device), torch.from_numpy(faces).to(self.device))
        return meshes

    def layer_mesh(self, layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(vertices [V, 3], faces [F, 3]) that layer `layer` rasterises."""
        return self.meshes[subdivision_level(self.resolutions[layer])]

    def __call__(self, c2w: torch.Tensor, focal, resolution: int) -> List[torch.Tensor]:
        """The decoder's noise list for cameras c2w [B, 3, 4] with focal [B, 1, 1] (or [B], or a number)
        in pixels for `resolution`-px images (the CameraParams of view_cameras(angles, resolution, ...),
        e.g. at the renderer's resolution): one [B, 1, r_k, r_k] tensor per layer, in the buffers'
        dtype, on their device. Pass it as generator(..., noise=...)."""
        return self.project(c2w, focal, resolution)[0]

    @torch.no_grad()
    def project(self, c2w: torch.Tensor, focal, resolution: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(noise, coverage): the noise list of __call__ and, per layer, coverage [B, 1, r_k, r_k] bool
        (True where the mesh covers the pixel and the noise is projected)."""
        c2w, focal = self._cameras(c2w, focal, resolution)                       # [B, 3, 4], [B] at 1 px
        noise = [fixed.expand(c2w.shape[0], -1, -1, -1).clone() for fixed in self.fixed_noise]
        coverage = [torch.zeros_like(n, dtype=torch.bool) for n in noise]
        for size, layers in self._layers_by_resolution().items():
            vertices, faces = self.layer_mesh(layers[0])
            values = torch.stack([self.vertex_noise[k] for k in layers], 1)       # [V, n]: one raster, n layers
            for view in range(c2w.shape[0]):
                fragments = rasterize_mesh(vertices, faces, c2w[view], float(focal[view]) * size, size,
                                           max_candidates=self.max_candidates)
                image = interpolate_vertex_values(fragments, faces, values)       # [n, r, r]
                covered = fragments.covered                                       # [r, r]
                for channel, k in enumerate(layers):
                    noise[k][view, 0][covered] = image[channel][covered].to(noise[k].dtype)
                    coverage[k][view, 0] = covered
        return noise, coverage

    def _layers_by_resolution(self) -> Dict[int, List[int]]:
        """{resolution: layers}: layers of one resolution share the mesh and the raster of a view."""
        groups: Dict[int, List[int]] = {}
        for k, size in enumerate(self.resolutions):
            groups.setdefault(size, []).append(k)
        return groups

    def _cameras(self, c2w, focal, resolution) -> Tuple[torch.Tensor, torch.Tensor]:
        """c2w [B, 3, 4] and focal per pixel of image width [B] (float64, on the CPU: scaled per layer)."""
        fn = "NoiseProjector"
        if not isinstance(c2w, torch.Tensor) or c2w.dim() != 3 or tuple(c2w.shape[1:]) != (3, 4):
            got = tuple(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__
            raise ValueError(f"{fn}: c2w must be a tensor [B, 3, 4] of camera-to-world matrices, got {got}")
        resolution = count(fn, "resolution (the image width focal is given for)", resolution, minimum=1)
        focal = torch.as_tensor(focal, dtype=torch.float64).detach().cpu().reshape(-1)
        if focal.numel() == 1:
            focal = focal.expand(c2w.shape[0])
        if focal.numel() != c2w.shape[0] or not bool(torch.isfinite(focal).all()) or bool((focal <= 0).any()):
            raise ValueError(f"{fn}: focal must be one positive finite number or one per camera "
                             f"({c2w.shape[0]}), got {focal.tolist()}")
        return c2w.detach().to(self.device), focal / resolution

"""The built-in synthetic dataset: procedural 3D objects in StyleSDF's world, rendered exactly.

Every identity is a smooth union of rounded boxes (exact SDFs; a rounded box covers spheres, capsules,
pills and slabs): a main body plus two pairs of smaller parts mirrored across the x = 0 plane (a
pair becomes one part on the plane with probability 0.35), each with its own colour. The object is
centred and scaled to a bounding radius of 0.09-0.1, so it fills the 12 degree frustum of a camera
on the unit sphere, like an aligned face. Parts sit on the front half (+z, toward the azimuth-0
camera) so the pose can be read from the image.

Rendering uses the official camera model (models/cameras.py: unit-sphere cameras looking at the
origin, half FoV 6 degrees, pixel centres as the renderer) with poses from the official FFHQ
distribution (azimuth ~ N(0, 0.3^2), elevation ~ N(0, 0.15^2)). Each ray is sphere traced against
the exact SDF from where it enters the object's bounding sphere; hits are shaded with a fixed world
light (Lambert plus a sky term), so views of one identity are consistent. Images are rendered at the
largest requested size and resized with LANCZOS to the others.

Everything is deterministic for a seed: identity j's shape comes from numpy's
default_rng([seed, 0, j]) and image i's pose from default_rng([seed, 1, i]), independent of batching.

    python -m stylesdf_fast.prepare_data --synthetic 2000 --size 64,128 --out data/synthetic

Shape legend: B images (or scenes), K primitives per scene, N rays, H/W pixels.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..models.cameras import AZIM_RANGE, ELEV_RANGE, generate_camera_params
from ..models.rays import camera_rays, pixel_grid
from .lmdb_format import LmdbWriter, encode_png, is_lmdb_dir, parse_sizes

__all__ = [
    "SyntheticConfig", "Scenes", "SyntheticRender", "sample_scene", "make_scenes", "sphere_scene",
    "scene_sdf", "sample_pose", "render_scenes", "build_synthetic_dataset", "ensure_synthetic_dataset",
]

NUM_PRIMITIVES = 5                       # body + two mirrored pairs of parts
LIGHT_DIRECTION = (-0.45, 0.6, 0.66)     # world-space direction toward the light (normalised below)
AMBIENT, SKY, DIFFUSE = 0.38, 0.1, 0.6  # shading = albedo * (AMBIENT + SKY * n_y + DIFFUSE * max(n.l, 0))
_COLOUR_SHARPNESS = 0.25                 # colour blend width relative to the shape blend
_DISABLED_CENTRE = 10.0                  # unused part slots sit this far away (never the nearest)
_HIT_EPSILON = 2e-4                      # world units: 1/8 of a 128-pixel footprint at the object
_MAX_STEPS = 96                          # sphere-tracing iterations
_RAYS_PER_CHUNK = 1 << 16                # rays traced together (keeps the working set in cache)
FORMAT_VERSION = 1                       # bump when the rendering changes: cached datasets rebuild


@dataclass(frozen=True)
class SyntheticConfig:
    """How the built-in dataset is made."""
    num_images: int = 2000                     # images in the dataset
    sizes: Tuple[int, ...] = (64, 128)         # stored resolutions (rendered at the largest)
    seed: int = 0                              # everything follows from it
    views_per_identity: int = 1                # images per identity (1: every image a new object)
    azim_range: float = AZIM_RANGE             # std of the Gaussian azimuth, radians (official FFHQ)
    elev_range: float = ELEV_RANGE             # std of the Gaussian elevation, radians
    object_radius: float = 0.1                 # largest bounding radius of an object (world units)
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)   # RGB in [0, 1] where rays miss

    def validated(self) -> "SyntheticConfig":
        if self.num_images < 1 or self.views_per_identity < 1:
            raise ValueError(f"SyntheticConfig: num_images and views_per_identity must be >= 1, got "
                             f"{self.num_images} and {self.views_per_identity}")
        if not 0 < self.object_radius < 0.12:
            raise ValueError(f"SyntheticConfig: object_radius must lie in (0, 0.12) to stay inside the "
                             f"near/far range 0.88-1.12, got {self.object_radius}")
        if len(self.background) != 3 or not all(0 <= c <= 1 for c in self.background):
            raise ValueError(f"SyntheticConfig: background must be 3 values in [0, 1], got {self.background}")
        return dataclasses.replace(self, sizes=parse_sizes(self.sizes), background=tuple(map(float, self.background)))

    def identity_of(self, index: int) -> int:
        return index // self.views_per_identity


class Scenes(NamedTuple):
    """B scenes of K rounded boxes; primitive k's SDF at world point x is
    |max(q, 0)| + min(max_i q_i, 0) - rounding with q = |rotation (x - centre)| - half_extent."""
    centre: torch.Tensor        # [B, K, 3] world
    rotation: torch.Tensor      # [B, K, 3, 3] world -> primitive frame
    half_extent: torch.Tensor   # [B, K, 3] box half sizes before rounding (>= 0)
    rounding: torch.Tensor      # [B, K] rounding radius (> 0)
    colour: torch.Tensor        # [B, K, 3] albedo in [0, 1]
    blend: torch.Tensor         # [B] smooth-union width: sdf = -blend * logsumexp(-d_k / blend)
    bound: torch.Tensor         # [B] radius of a sphere at the origin holding the object


class SyntheticRender(NamedTuple):
    image: torch.Tensor   # [B, 3, H, W] RGB in [0, 1]
    depth: torch.Tensor   # [B, H, W] camera-space depth (along the view axis) of the hit; 0 where missed
    mask: torch.Tensor    # [B, H, W] bool, True where the ray hits the object


# --- scene sampling ----------------------------------------------------------------------------------

def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    about_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


def _colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.35, 0.85), rng.uniform(0.45, 0.9)))


_MIRROR_X = np.diag([-1.0, 1.0, 1.0])


_CORNER_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


def _farthest_extent(centre, rotation, half_extent, rounding) -> np.ndarray:
    """[K] the farthest distance from the origin of each rounded box: its farthest box corner
    (a convex box's farthest point is a corner) plus the rounding."""
    corners = np.einsum("kji,kcj->kci", rotation, _CORNER_SIGNS[None] * half_extent[:, None])  # R^T (s * b)
    return np.linalg.norm(centre[:, None] + corners, axis=-1).max(1) + rounding


def sample_scene(rng: np.random.Generator, object_radius: float = 0.1) -> dict:
    """One random identity -> numpy arrays for the fields of `Scenes` (without the batch axis)."""
    centre = np.zeros((NUM_PRIMITIVES, 3))
    rotation = np.tile(np.eye(3), (NUM_PRIMITIVES, 1, 1))
    half_extent = np.zeros((NUM_PRIMITIVES, 3))
    rounding = np.full(NUM_PRIMITIVES, 1e-3)
    colour = np.zeros((NUM_PRIMITIVES, 3))
    # body: a rounded box, slightly turned, that the parts attach to
    half_extent[0] = rng.uniform(0.005, 0.045, size=3)
    rounding[0] = rng.uniform(0.012, 0.04)
    rotation[0] = _rotation(*rng.uniform(-0.35, 0.35, size=3))
    body_hue = rng.uniform()
    colour[0] = _colour(body_hue, rng)
    body_radii = half_extent[0] + rounding[0]          # an ellipsoid roughly hugging the body
    for pair in range(2):
        first = 1 + 2 * pair
        single = rng.uniform() < 0.35
        side = 0.0 if single else rng.uniform(0.25, 1.2)     # angle from the front toward +x
        rise = rng.uniform(-0.7, 0.8)                        # angle above the equator
        direction = np.array([math.cos(rise) * math.sin(side), math.sin(rise), math.cos(rise) * math.cos(side)])
        centre[first] = rotation[0].T @ (body_radii * direction) * rng.uniform(1.0, 1.2)
        half_extent[first] = rng.uniform(0.0, 0.018, size=3)
        rounding[first] = rng.uniform(0.009, 0.022)
        rotation[first] = _rotation(*rng.uniform(-math.pi, math.pi, size=3))
        colour[first] = _colour(body_hue + rng.uniform(0.25, 0.75), rng)
        second = first + 1
        if single:
            centre[second] = (0.0, 0.0, _DISABLED_CENTRE)
        else:   # the mirror image across x = 0 (M R M is the mirrored box's proper rotation)
            centre[second] = _MIRROR_X @ centre[first]
            rotation[second] = _MIRROR_X @ rotation[first] @ _MIRROR_X
            half_extent[second], rounding[second] = half_extent[first], rounding[first]
        colour[second] = colour[first]
    blend = rng.uniform(0.004, 0.012)
    enabled = np.linalg.norm(centre, axis=1) < _DISABLED_CENTRE / 2
    extents = _farthest_extent(centre, rotation, half_extent, rounding)
    inflation = blend * math.log(NUM_PRIMITIVES)   # how far the smooth union can grow past the parts
    bound = extents[enabled].max() + inflation
    scale = object_radius * rng.uniform(0.9, 1.0) / bound
    centre[enabled] *= scale
    return dict(centre=centre, rotation=rotation, half_extent=half_extent * scale, rounding=rounding * scale,
                colour=colour, blend=blend * scale, bound=bound * scale)


def _stack(scenes: Sequence[dict]) -> Scenes:
    fields = {name: torch.as_tensor(np.stack([s[name] for s in scenes]), dtype=torch.float32)
              for name in Scenes._fields}
    return Scenes(**fields)


def make_scenes(identities: Sequence[int], seed: int = 0, object_radius: float = 0.1) -> Scenes:
    """The scenes of the given identity numbers (identity j from default_rng([seed, 0, j]))."""
    return _stack([sample_scene(np.random.default_rng([seed, 0, int(j)]), object_radius) for j in identities])


def sphere_scene(radius: float, colour=(0.8, 0.3, 0.2)) -> Scenes:
    """One scene holding only a sphere of `radius` at the origin (for checks against the analytic answer)."""
    scene = sample_scene(np.random.default_rng(0))
    scene["centre"][:] = (0.0, 0.0, _DISABLED_CENTRE)
    scene["centre"][0] = 0.0
    scene["half_extent"][:] = 0.0
    scene["rounding"][:] = 1e-3
    scene["rounding"][0] = radius
    scene["colour"][:] = colour
    scene["bound"] = radius
    return _stack([scene])


def sample_pose(index: int, seed: int = 0, azim_range: float = AZIM_RANGE,
                elev_range: float = ELEV_RANGE) -> Tuple[float, float]:
    """Image `index`'s (azimuth, elevation) in radians from the official Gaussian pose distribution."""
    rng = np.random.default_rng([seed, 1, int(index)])
    return float(azim_range * rng.standard_normal()), float(elev_range * rng.standard_normal())


# --- the SDF -----------------------------------------------------------------------------------------

def _primitive_distances(points_local: torch.Tensor, half_extent: torch.Tensor,
                         rounding: torch.Tensor) -> torch.Tensor:
    """points in each primitive's frame [N, K, 3] (overwritten) -> rounded-box distances [N, K]."""
    q = points_local.abs_().sub_(half_extent)            # [N, K, 3]
    inside = q.amax(dim=-1).clamp_max_(0.0)              # [N, K]
    outside = torch.linalg.vector_norm(q.clamp_min_(0.0), dim=-1)
    return outside.add_(inside).sub_(rounding)


def _smooth_union(distances: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """[N, K] distances, blend [N] -> [N]: -blend * logsumexp(-d / blend) (a 1-Lipschitz smooth min,
    at most blend * log K below the true min, so sphere tracing stays safe)."""
    return torch.logsumexp(distances / -blend[:, None], dim=-1).mul_(-blend)


def scene_sdf(scenes: Scenes, points: torch.Tensor) -> torch.Tensor:
    """Signed distance of world points [B, P, 3] to scene b -> [B, P]."""
    local = torch.einsum("bkij,bpkj->bpki", scenes.rotation,
                         points[:, :, None, :] - scenes.centre[:, None])   # [B, P, K, 3]
    batch, count = points.shape[:2]
    distances = _primitive_distances(local.reshape(batch * count, NUM_PRIMITIVES, 3),
                                     scenes.half_extent.repeat_interleave(count, 0),
                                     scenes.rounding.repeat_interleave(count, 0))
    return _smooth_union(distances, scenes.blend.repeat_interleave(count)).reshape(batch, count)


# --- sphere tracing ----------------------------------------------------------------------------------

def _bounding_interval(origins: torch.Tensor, directions: torch.Tensor, radius: torch.Tensor):
    """Unit rays [N, 3] against spheres of `radius` [N] at the origin -> (enter [N], leave [N], hits [N])."""
    half_b = (origins * directions).sum(-1)
    disc = half_b.square() - (origins.square().sum(-1) - radius.square())
    root = disc.clamp_min(0).sqrt()
    return (-half_b - root).clamp_min(0), -half_b + root, disc > 0


def _trace(state: torch.Tensor, blend: torch.Tensor, t: torch.Tensor, t_far: torch.Tensor):
    """Sphere trace rays given per-primitive frames.

    state [N, K, 10] = (origin in primitive frame 3, direction in primitive frame 3, half extent 3,
    rounding 1); blend, t (start), t_far [N] -> (t [N], hit [N] bool). Rays leave the active set when
    they converge (sdf < epsilon) or pass t_far; the set is compacted as it shrinks."""
    count = t.shape[0]
    t_out = torch.zeros(count)
    hit_out = torch.zeros(count, dtype=torch.bool)
    rays = torch.arange(count)
    for _ in range(_MAX_STEPS):
        if rays.numel() == 0:
            break
        points = torch.addcmul(state[..., 0:3], t[:, None, None], state[..., 3:6])   # [N, K, 3]
        sdf = _smooth_union(_primitive_distances(points, state[..., 6:9], state[..., 9]), blend)
        done_hit = sdf < _HIT_EPSILON
        t = t + sdf
        done_miss = t > t_far
        done = done_hit | done_miss
        if bool(done.any()):
            t_out[rays[done]] = t[done]
            hit_out[rays[done]] = done_hit[done]
            keep = ~done
            rays, state, blend, t, t_far = rays[keep], state[keep], blend[keep], t[keep], t_far[keep]
            sdf = sdf[keep]
    if rays.numel():   # grazing rays still creeping along a silhouette: a hit if nearly converged
        t_out[rays] = t
        hit_out[rays] = sdf < 8 * _HIT_EPSILON
    return t_out, hit_out


def _normals_and_albedo(scenes: Scenes, image_of_ray: torch.Tensor, points: torch.Tensor):
    """World hit points [N, 3] of the rays' images -> (unit normals [N, 3], albedo [N, 3]):
    the gradient of the smooth union (softmax-weighted primitive gradients, rotated back to world)."""
    rotation = scenes.rotation[image_of_ray]                          # [N, K, 3, 3]
    local = torch.einsum("nkij,nkj->nki", rotation, points[:, None, :] - scenes.centre[image_of_ray])
    sign = torch.where(local < 0, -1.0, 1.0)
    q = local.abs() - scenes.half_extent[image_of_ray]                # [N, K, 3]
    outside = q.clamp_min(0)
    outside_norm = torch.linalg.vector_norm(outside, dim=-1, keepdim=True)
    inside_axis = torch.nn.functional.one_hot(q.argmax(-1), 3).to(q.dtype)
    grad_local = sign * torch.where(outside_norm > 0, outside / outside_norm.clamp_min(1e-12), inside_axis)
    distance = (outside_norm.squeeze(-1) + q.amax(-1).clamp_max(0) - scenes.rounding[image_of_ray])
    blend = scenes.blend[image_of_ray, None]
    weights = torch.softmax(distance / -blend, dim=-1)                               # [N, K]
    grad_world = torch.einsum("nkji,nkj->ni", rotation, grad_local * weights[..., None])
    # colours blend over a narrower band than the shapes, so each part keeps its own colour to the seam
    colour_weights = torch.softmax(distance / (-_COLOUR_SHARPNESS * blend), dim=-1)   # [N, K]
    albedo = (colour_weights[..., None] * scenes.colour[image_of_ray]).sum(1)
    return torch.nn.functional.normalize(grad_world, dim=-1), albedo


def _shade(normals: torch.Tensor, albedo: torch.Tensor) -> torch.Tensor:
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIRECTION), dim=0)
    lambert = (normals @ light).clamp_min(0)
    return (albedo * (AMBIENT + SKY * normals[:, 1:2] + DIFFUSE * lambert[:, None])).clamp(0, 1)


@torch.no_grad()
def render_scenes(scenes: Scenes, angles: torch.Tensor, resolution: int,
                  background=(1.0, 1.0, 1.0)) -> SyntheticRender:
    """Render scene b from camera angles[b] = (azimuth, elevation) [B, 2] at resolution x resolution
    with the official camera model -> SyntheticRender(image [B, 3, H, W], depth [B, H, W], mask [B, H, W])."""
    batch = angles.shape[0]
    cameras = generate_camera_params(resolution, "cpu", locations=angles, dtype=torch.float32)
    i, j = pixel_grid(resolution)
    origins, directions, _ = camera_rays(cameras.c2w, cameras.focal, i, j, resolution)    # [B, H, W, 3]
    z_per_unit = 1.0 / torch.linalg.vector_norm(directions, dim=-1).reshape(-1)           # depth per unit t
    origins, directions = origins.reshape(-1, 3), torch.nn.functional.normalize(directions.reshape(-1, 3), dim=-1)
    image_of_ray = torch.arange(batch).repeat_interleave(resolution * resolution)
    t, hit = _trace_rays(scenes, image_of_ray, origins, directions)
    colour = torch.tensor(background, dtype=torch.float32).repeat(t.shape[0], 1)
    if bool(hit.any()):
        points = origins[hit] + t[hit, None] * directions[hit]
        colour[hit] = _shade(*_normals_and_albedo(scenes, image_of_ray[hit], points))
    depth = torch.where(hit, t * z_per_unit, torch.zeros_like(t))
    shape = (batch, resolution, resolution)
    return SyntheticRender(colour.reshape(*shape, 3).permute(0, 3, 1, 2).contiguous(), depth.reshape(shape),
                           hit.reshape(shape))


def _trace_rays(scenes: Scenes, image_of_ray: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor):
    """Unit rays [N, 3] of the given images -> (t [N] along the ray, hit [N]), in chunks."""
    t = torch.zeros(origins.shape[0])
    hit = torch.zeros(origins.shape[0], dtype=torch.bool)
    enter, leave, inside = _bounding_interval(origins, directions, scenes.bound[image_of_ray])
    candidates = inside.nonzero().squeeze(1)
    for start in range(0, candidates.numel(), _RAYS_PER_CHUNK):
        rays = candidates[start:start + _RAYS_PER_CHUNK]
        images = image_of_ray[rays]
        rotation = scenes.rotation[images]                                          # [n, K, 3, 3]
        origin_local = torch.einsum("nkij,nkj->nki", rotation, origins[rays, None, :] - scenes.centre[images])
        direction_local = torch.einsum("nkij,nj->nki", rotation, directions[rays])
        state = torch.cat([origin_local, direction_local, scenes.half_extent[images],
                           scenes.rounding[images, :, None]], dim=-1)               # [n, K, 10]
        t[rays], hit[rays] = _trace(state, scenes.blend[images], enter[rays], leave[rays])
    return t, hit


# --- the dataset file ------------------------------------------------------------------------------

def _to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> PIL RGB (rounded to 8 bits)."""
    array = (image.permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def build_synthetic_dataset(out: Union[str, os.PathLike], config: SyntheticConfig = SyntheticConfig(), *,
                            overwrite: bool = False, progress: bool = True, batch: int = 16) -> Path:
    """Render `config.num_images` images and write them as an official-format LMDB at `out` (atomic),
    with each image's {"azimuth", "elevation", "identity"} under "meta-{index:05d}"."""
    from tqdm import tqdm

    config = config.validated()
    largest = max(config.sizes)
    info = {"writer": "stylesdf_fast.data.synthetic", "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(config)}
    with LmdbWriter(out, overwrite=overwrite, info=info) as writer, \
            tqdm(total=config.num_images, desc="synthetic dataset", unit="img", disable=not progress) as bar:
        for start in range(0, config.num_images, batch):
            indices = list(range(start, min(start + batch, config.num_images)))
            identities = [config.identity_of(i) for i in indices]
            poses = [sample_pose(i, config.seed, config.azim_range, config.elev_range) for i in indices]
            scenes = make_scenes(identities, config.seed, config.object_radius)
            rendered = render_scenes(scenes, torch.tensor(poses), largest, config.background)
            for index, identity, pose, image in zip(indices, identities, poses, rendered.image):
                _write_image(writer, index, _to_pil(image), config.sizes)
                writer.put_meta(index, {"azimuth": pose[0], "elevation": pose[1], "identity": identity})
            bar.update(len(indices))
    return Path(out)


def _write_image(writer: LmdbWriter, index: int, image: Image.Image, sizes: Sequence[int]) -> None:
    for size in sizes:
        resized = image if size == image.width else image.resize((size, size), Image.LANCZOS)
        writer.put_image(size, index, encode_png(resized))


def _cache_name(config: SyntheticConfig) -> str:
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, dataclasses.asdict(config)], sort_keys=True).encode())
    sizes = "_".join(str(s) for s in config.sizes)
    return f"synthetic-n{config.num_images}-s{sizes}-seed{config.seed}-{digest.hexdigest()[:10]}"


def ensure_synthetic_dataset(cache_dir: Optional[Union[str, os.PathLike]] = None,
                             config: SyntheticConfig = SyntheticConfig(), *, progress: bool = True) -> Path:
    """The cached built-in dataset for `config`, built on first use (under `cache_dir`, default
    `default_cache_dir()/datasets`)."""
    from .prepare import default_cache_dir

    config = config.validated()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "datasets"
    path = root / _cache_name(config)
    if not is_lmdb_dir(path):
        if progress:
            print(f"building the built-in synthetic dataset once into {path}")
        build_synthetic_dataset(path, config, progress=progress)
    return path

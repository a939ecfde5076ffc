"""Multi-view depth consistency (the StyleSDF paper's modified Chamfer distance), the geometry part.

The paper renders the surface of one identity from two views and compares the two surfaces with a
modified Chamfer distance. Our precise definition, for views A and B of one identity, each an
R x R render:

- Surface points: P_A [R*R, 3], the world point each pixel sees (the renderer's expected surface
  point `xyz`), with a foreground mask F_A [R*R] (pixels that hit the object, not the background).
  Pixel k is row k // R, column k % R (row-major, as `xyz[b].permute(1, 2, 0).reshape(-1, 3)`).
- Camera model: the renderer's (docs/official.md sections 1.6, 1.7; `models.renderer.camera_rays`).
  Pixel centre (i, j) (i the column, j the row, both at k + 0.5) looks along the camera-frame
  direction ((i - R/2)/f, -(j - R/2)/f, -1); the world direction is R_c2w @ dir from the camera
  position c2w[:, 3]. `project_points` inverts this: a point with camera-frame coordinates
  (x, y, z) has depth d = -z and lands at i = R/2 + f x / d, j = R/2 - f y / d.
- "A point p of A is seen by B" iff its projection into B has depth > 0, lands inside B's image
  (0 <= i < R and 0 <= j < R) and the pixel containing it (floor(j), floor(i)) is in F_B. There is
  no occlusion test: a z-buffer test against B's own surface would drop exactly the points where
  the two surfaces disagree in depth, which is what the metric measures. (Side effect: points near
  A's silhouette that face away from B still count when they project onto B's foreground; their
  nearest partner is then B's nearby silhouette point, a small bias that grows with the angle
  between the views and vanishes for identical views.)
- a_to_b = mean over the foreground points of A seen by B of the Euclidean distance to the nearest
  foreground point of B (all of F_B, seen by A or not); b_to_a likewise; chamfer is their average
  (so two surfaces offset by a constant delta give chamfer ~ delta). Distances are in world units
  (the camera sits at distance 1 from the origin).
- counted_fraction_a = |{p in F_A seen by B}| / |F_A|, likewise for B: how much of each surface had
  a partner view. A direction with no counted point raises ValueError (the views do not overlap)
  rather than returning NaN.

Nearest neighbours are exact (float64 torch.cdist on coordinate differences) in query chunks, so a
128 x 128 pair (16k x 16k points) keeps at most `chunk_size` x |F| distances in memory (64 MiB at
the defaults); about 0.2-0.4 s per pair on this project's 2-core CPU, 0.03 s at 64 x 64.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Sequence, Tuple, Union

import torch

__all__ = ["project_points", "points_seen_by", "nearest_neighbour_distances", "depth_consistency"]

_CHUNK_ROWS = 512          # query rows per cdist call: 512 x 16384 float64 = 64 MiB
_ORTHONORMAL_TOL = 1e-4    # |R^T R - I| above this: not a rotation (float32 c2w are ~1e-7 off)

Camera = Tuple[torch.Tensor, Union[float, torch.Tensor]]


# --- argument checks -------------------------------------------------------------------------------

def _resolution(fn: str, resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral):
        raise TypeError(f"{fn}: resolution must be an int (pixels per side), got {type(resolution).__name__}")
    if resolution < 1:
        raise ValueError(f"{fn}: resolution must be >= 1, got {resolution}")
    return int(resolution)


def _focal(fn: str, name: str, focal) -> float:
    """A positive finite number or a one-element tensor (e.g. focal[b] of a [B, 1, 1] batch)."""
    if isinstance(focal, torch.Tensor):
        if focal.numel() != 1:
            raise ValueError(f"{fn}: {name} must be one number; a tensor must have 1 element, got shape "
                             f"{tuple(focal.shape)} (pass focal[b] for camera b of a batch)")
        focal = focal.item()
    if isinstance(focal, bool) or not isinstance(focal, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number (pixels), got {type(focal).__name__}")
    if not math.isfinite(focal) or focal <= 0:
        raise ValueError(f"{fn}: {name} must be a finite number > 0 (pixels), got {focal}")
    return float(focal)


def _c2w(fn: str, name: str, c2w) -> torch.Tensor:
    """[3, 4] camera-to-world with an orthonormal rotation -> float64."""
    if not isinstance(c2w, torch.Tensor) or not c2w.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point torch.Tensor [3, 4], got "
                        f"{getattr(c2w, 'dtype', type(c2w).__name__)}")
    if c2w.shape != (3, 4):
        raise ValueError(f"{fn}: {name} must have shape [3, 4] = [x y z | position], got {tuple(c2w.shape)} "
                         f"(pass c2w[b] for camera b of a [B, 3, 4] batch)")
    c2w = c2w.detach().to(device="cpu", dtype=torch.float64)
    rotation = c2w[:, :3]
    error = float((rotation.T @ rotation - torch.eye(3, dtype=torch.float64)).abs().max())
    if not error <= _ORTHONORMAL_TOL:
        raise ValueError(f"{fn}: {name}[:, :3] must be a rotation (orthonormal columns); "
                         f"max |R^T R - I| = {error:.3g}")
    return c2w


def _points(fn: str, name: str, points, count: Union[int, None] = None) -> torch.Tensor:
    """[N, 3] finite floating points (N == count when given) -> float64 CPU."""
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point torch.Tensor [N, 3], got "
                        f"{getattr(points, 'dtype', type(points).__name__)}")
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"{fn}: {name} must have shape [N, 3], got {tuple(points.shape)}")
    if count is not None and points.shape[0] != count:
        raise ValueError(f"{fn}: {name} must have one point per pixel, [R*R, 3] = [{count}, 3], got "
                         f"{tuple(points.shape)} (from the renderer's xyz [B, 3, R, R]: "
                         f"xyz[b].permute(1, 2, 0).reshape(-1, 3))")
    points = points.detach().to(device="cpu", dtype=torch.float64)
    return points


def _mask(fn: str, name: str, mask, count: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{fn}: {name} must be a torch.bool tensor [R*R], got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != (count,):
        raise ValueError(f"{fn}: {name} must have shape [R*R] = [{count}], got {tuple(mask.shape)}")
    return mask.detach().cpu()


def _camera(fn: str, name: str, camera) -> Tuple[torch.Tensor, float]:
    if not isinstance(camera, Sequence) or isinstance(camera, (str, bytes)) or len(camera) != 2:
        raise TypeError(f"{fn}: {name} must be a pair (c2w [3, 4], focal), got {type(camera).__name__}")
    return _c2w(fn, f"{name}[0] (c2w)", camera[0]), _focal(fn, f"{name}[1] (focal)", camera[1])


# --- projection ------------------------------------------------------------------------------------

def project_points(points: torch.Tensor, c2w: torch.Tensor, focal: Union[float, torch.Tensor],
                   resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """World points [N, 3] -> (pixels [N, 2] float64, depth [N] float64) for camera c2w [3, 4].

    pixels[:, 0] is the continuous column i, pixels[:, 1] the row j (pixel centres at k + 0.5, the
    renderer's convention); depth is the distance along the camera's -z axis (the renderer's ray
    parameter for its un-normalised directions). Points at or behind the camera (depth <= 0) have no
    image position: their pixels are set to (-1, -1), outside every image, so an inside-the-image
    test rejects them; check depth > 0 if you need to tell them apart.
    """
    fn = "project_points"
    points = _points(fn, "points", points)
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{fn}: points has NaN/inf entries; only finite points have a projection")
    c2w = _c2w(fn, "c2w", c2w)
    focal = _focal(fn, "focal", focal)
    half = _resolution(fn, resolution) * 0.5
    local = (points - c2w[:, 3]) @ c2w[:, :3]         # [N, 3] = R^T (p - o) for every row
    depth = -local[:, 2]                               # [N]
    in_front = depth > 0
    safe_depth = torch.where(in_front, depth, torch.ones_like(depth))
    column = half + focal * local[:, 0] / safe_depth
    row = half - focal * local[:, 1] / safe_depth
    pixels = torch.stack([column, row], dim=1)         # [N, 2]
    pixels = torch.where(in_front[:, None], pixels, torch.full_like(pixels, -1.0))
    return pixels, depth


def points_seen_by(points: torch.Tensor, camera: Camera, mask: torch.Tensor,
                   resolution: int) -> torch.Tensor:
    """Points [N, 3] -> [N] bool: in front of `camera` (c2w [3, 4], focal), inside its R x R image
    and on a pixel whose `mask` [R*R] entry is True (see the module docstring)."""
    fn = "points_seen_by"
    resolution = _resolution(fn, resolution)
    c2w, focal = _camera(fn, "camera", camera)
    mask = _mask(fn, "mask", mask, resolution * resolution)
    pixels, depth = project_points(points, c2w, focal, resolution)
    inside = (depth > 0) & (pixels >= 0).all(dim=1) & (pixels < resolution).all(dim=1)
    column = pixels[:, 0].floor().long().clamp(0, resolution - 1)
    row = pixels[:, 1].floor().long().clamp(0, resolution - 1)
    return inside & mask[row * resolution + column]


# --- nearest neighbours ----------------------------------------------------------------------------

def nearest_neighbour_distances(queries: torch.Tensor, targets: torch.Tensor, *,
                                chunk_size: int = _CHUNK_ROWS) -> torch.Tensor:
    """queries [N, 3], targets [M, 3] (M >= 1) -> [N] float64 Euclidean distance from each query to
    its nearest target. Exact: float64 differences (cdist without its |x|^2 + |y|^2 - 2 x.y matrix
    product shortcut, whose cancellation would blur sub-millimetre distances between points ~1 from
    the origin; for 3-d points the direct form is also the faster one on CPU)."""
    fn = "nearest_neighbour_distances"
    queries = _points(fn, "queries", queries)
    targets = _points(fn, "targets", targets)
    if targets.shape[0] == 0:
        raise ValueError(f"{fn}: targets must hold at least one point, got shape {tuple(targets.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be an int >= 1, got {chunk_size!r}")
    pieces = []
    for chunk in queries.split(int(chunk_size)):                 # [chunk, 3]
        distances = torch.cdist(chunk, targets, compute_mode="donot_use_mm_for_euclid_dist")  # [chunk, M]
        pieces.append(distances.min(dim=1).values)
    return torch.cat(pieces) if pieces else queries.new_zeros(0)


# --- the metric ------------------------------------------------------------------------------------

def _one_direction(fn: str, source: str, points: torch.Tensor, mask: torch.Tensor, other_points: torch.Tensor,
                   other_mask: torch.Tensor, other_camera: Camera, resolution: int) -> Tuple[float, float]:
    """Mean distance from the points of one view seen by the other view to the other view's
    foreground, and the fraction of the first view's foreground that was counted."""
    foreground = points[mask]                                          # [F, 3]
    counted = foreground[points_seen_by(foreground, other_camera, other_mask, resolution)]
    if counted.shape[0] == 0:
        raise ValueError(f"{fn}: none of the {foreground.shape[0]} foreground points of view {source} "
                         f"projects onto a foreground pixel of the other view; the views do not overlap "
                         f"(check the cameras and masks)")
    distances = nearest_neighbour_distances(counted, other_points[other_mask])
    return float(distances.mean()), counted.shape[0] / foreground.shape[0]


def depth_consistency(points_a: torch.Tensor, mask_a: torch.Tensor, cam_a: Camera,
                      points_b: torch.Tensor, mask_b: torch.Tensor, cam_b: Camera,
                      resolution: int) -> Dict[str, float]:
    """Modified Chamfer distance between two renders of one surface (definition: module docstring).

    points_a / points_b [R*R, 3] world surface points per pixel (row-major), mask_a / mask_b [R*R]
    bool foreground, cam_a / cam_b = (c2w [3, 4], focal in pixels), resolution R ->
    {"chamfer", "a_to_b", "b_to_a", "counted_fraction_a", "counted_fraction_b"} (floats, world units
    for the distances). ValueError if a view has no foreground, has non-finite foreground points, or
    the views do not overlap.
    """
    fn = "depth_consistency"
    resolution = _resolution(fn, resolution)
    pixels = resolution * resolution
    views = {}
    for name, points, mask, camera in (("a", points_a, mask_a, cam_a), ("b", points_b, mask_b, cam_b)):
        points = _points(fn, f"points_{name}", points, pixels)
        mask = _mask(fn, f"mask_{name}", mask, pixels)
        if not bool(mask.any()):
            raise ValueError(f"{fn}: mask_{name} has no foreground pixel; nothing to compare")
        if not bool(torch.isfinite(points[mask]).all()):
            raise ValueError(f"{fn}: points_{name} has NaN/inf at foreground pixels")
        views[name] = (points, mask, _camera(fn, f"cam_{name}", camera))
    (pa, ma, ca), (pb, mb, cb) = views["a"], views["b"]
    a_to_b, fraction_a = _one_direction(fn, "a", pa, ma, pb, mb, cb, resolution)
    b_to_a, fraction_b = _one_direction(fn, "b", pb, mb, pa, ma, ca, resolution)
    return {"chamfer": 0.5 * (a_to_b + b_to_a), "a_to_b": a_to_b, "b_to_a": b_to_a,
            "counted_fraction_a": fraction_a, "counted_fraction_b": fraction_b}

"""A dependency-free triangle rasteriser of per-vertex values, in the StyleSDF camera convention.

The official StyleSDF projects its decoder noise with PyTorch3D's mesh rasteriser (one face per
pixel, no blur, no back-face culling, ambient-only shading, so a pixel shows the interpolated vertex
values of the nearest face). This module does the same in plain PyTorch, vectorised, on any device.

Camera (models/cameras.py): c2w [3, 4] = [x y z | position], looking along its -z axis with +y up.
A camera-space point q = R^-1 (p - position) with depth d = -q_z > 0 lands at the continuous pixel
coordinates (x, y) = (r/2 + f q_x / d, r/2 - f q_y / d): x the column, y the row (row 0 at the top),
pixel (column c, row j) spanning [c, c + 1) x [j, j + 1) with its centre at (c + 0.5, j + 0.5). This
inverts models.renderer.camera_rays, whose ray through pixel centre (i, j) has camera direction
((i - r/2)/f, -(j - r/2)/f, -1): a surface point the volume renderer sees through a pixel is
rasterised at that pixel.

Rules: a pixel is covered by a face when its centre lies inside the projected triangle or on its
border; the nearest face wins (z-buffer on the depth d, ties to the lower face index); values are
interpolated with perspective-correct barycentric weights (linear in camera space); back faces are
kept; faces with a vertex at depth <= `near` are skipped (not clipped: the meshes here lie about one
unit in front of the camera); faces whose pixel box holds no pixel centre drop out early, which is
most of the faces of a finely subdivided mesh.

Memory stays bounded for millions of faces at 1024 px: faces are boxed in chunks, and every
(face, candidate pixel) pair of the boxes gets a global index, processed max_candidates at a time
(a large face may span several chunks). Each pair that passes the inside test gives an int64 key
(float32 depth bits << 32 | face index) reduced per pixel with amin, which is order independent, so
the result does not depend on the chunking. A last pass recomputes the weights of the winning face of
each covered pixel. Edge functions are evaluated with each edge's endpoints in vertex-index order, so
two faces sharing an edge compute bit-identical values for it: no pixel centre on a shared edge is
lost to rounding (watertight).

Legend: V vertices, F faces, K value channels, r resolution (pixels per side), N candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Tuple, Union

import numpy as np
import torch

from .._checks import count, positive

__all__ = ["Fragments", "DEFAULT_NEAR", "DEFAULT_MAX_CANDIDATES", "project_points", "rasterize_mesh",
           "interpolate_vertex_values", "rasterize_vertex_values"]

DEFAULT_NEAR = 1e-6                # faces with a vertex closer than this (or behind the camera) are skipped
DEFAULT_MAX_CANDIDATES = 1 << 18   # (face, pixel) pairs per chunk: ~120 MB of temporaries
FACE_CHUNK = 1 << 20               # faces boxed per step
_NO_FACE = torch.iinfo(torch.int64).max
_FACE_BITS = 32                    # low bits of a z-buffer key: the face index

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass
class Fragments:
    """The nearest face of every pixel of one r x r view."""
    face_index: torch.Tensor   # [r, r] int64, -1 where no face covers the pixel centre
    weights: torch.Tensor      # [r, r, 3] perspective-correct barycentric weights of the face's corners (0 if none)
    depth: torch.Tensor        # [r, r] camera-space depth of the face at the pixel centre (inf if none)

    @property
    def covered(self) -> torch.Tensor:
        """[r, r] bool: a face covers the pixel centre."""
        return self.face_index >= 0


# --- public functions ------------------------------------------------------------------------------

def project_points(points: ArrayLike, c2w: ArrayLike, focal, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """World points [N, 3] -> (pixel coordinates [N, 2] = (x column, y row), continuous, pixel centres at
    k + 0.5; depth [N] along the view axis, > 0 in front of the camera). Points at depth <= 0 get
    meaningless coordinates; check the depth."""
    fn = "project_points"
    points = _vertices(fn, points, name="points")
    inverse, position = _camera(fn, c2w, points)
    return _to_screen(points, inverse, position, positive(fn, "focal", focal, allow_tensor=True), count(fn, "resolution", resolution, minimum=1))


@torch.no_grad()
def rasterize_mesh(vertices: ArrayLike, faces: ArrayLike, c2w: ArrayLike, focal, resolution: int, *,
                   near: float = DEFAULT_NEAR, max_candidates: int = DEFAULT_MAX_CANDIDATES) -> Fragments:
    """Rasterise a triangle mesh seen by one camera.

    vertices [V, 3] world points (float32 / float64, finite), faces [F, 3] integer indices into them,
    c2w [3, 4] (or [1, 3, 4]) camera-to-world, focal in pixels for this resolution (0.5 r / tan(fov),
    e.g. cams.focal[k] of view_cameras(angles, r, ...)), resolution r. Returns the Fragments [r, r]
    on the vertices' device (module docstring for the rules). Geometry is computed in the vertices'
    dtype (float32 unless float64).
    """
    fn = "rasterize_mesh"
    vertices = _vertices(fn, vertices)
    faces = _faces(fn, faces, vertices.shape[0], vertices.device)
    inverse, position = _camera(fn, c2w, vertices)
    focal = positive(fn, "focal", focal, allow_tensor=True)
    resolution = count(fn, "resolution", resolution, minimum=1)
    near = positive(fn, "near", near, allow_tensor=True)
    max_candidates = count(fn, "max_candidates", max_candidates, minimum=1)
    screen, depth = _to_screen(vertices, inverse, position, focal, resolution)      # [V, 2], [V]
    view = _View(screen[:, 0].contiguous(), screen[:, 1].contiguous(), depth, faces, resolution)
    keys = torch.full((resolution * resolution,), _NO_FACE, dtype=torch.int64, device=vertices.device)
    boxes = _pixel_boxes(view, near)
    for start in range(0, boxes.total, max_candidates):
        _scatter_nearest(keys, boxes, start, min(start + max_candidates, boxes.total), view)
    return _fragments(keys, view, max_candidates)


def interpolate_vertex_values(fragments: Fragments, faces: ArrayLike, values: ArrayLike, *,
                              background: float = 0.0) -> torch.Tensor:
    """Per-vertex values [V] or [V, K] -> the image [r, r] or [K, r, r] of the covered pixels' nearest
    face (its corners' values with the fragments' weights); uncovered pixels get `background`.
    The values' floating dtype is kept; on the fragments' device."""
    fn = "interpolate_vertex_values"
    if not isinstance(fragments, Fragments):
        raise TypeError(f"{fn}: fragments must be a Fragments (from rasterize_mesh), got {type(fragments).__name__}")
    device = fragments.face_index.device
    values = _values(fn, values, device)
    faces = _faces(fn, faces, values.shape[0], device)
    channels = values.reshape(values.shape[0], -1)                                 # [V, K]
    rows, cols = fragments.face_index.shape
    image = torch.full((channels.shape[1], rows * cols), float(background), dtype=channels.dtype, device=device)
    covered = fragments.covered.reshape(-1)                                        # [r*r]
    face = fragments.face_index.reshape(-1)[covered]                               # [P]
    if face.numel() and int(face.max()) >= faces.shape[0]:
        raise ValueError(f"{fn}: fragments name face {int(face.max())} but faces has {faces.shape[0]} rows; "
                         f"pass the faces that were rasterised")
    weights = fragments.weights.reshape(-1, 3)[covered].to(channels.dtype)         # [P, 3]
    corner_values = channels[faces[face]]                                          # [P, 3, K]
    image[:, covered] = (weights[:, :, None] * corner_values).sum(1).t()
    image = image.reshape(-1, rows, cols)
    return image[0] if values.dim() == 1 else image


def rasterize_vertex_values(vertices: ArrayLike, faces: ArrayLike, values: ArrayLike, c2w: ArrayLike, focal,
                            resolution: int, *, near: float = DEFAULT_NEAR,
                            max_candidates: int = DEFAULT_MAX_CANDIDATES,
                            background: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """rasterize_mesh + interpolate_vertex_values: (values image [r, r] or [K, r, r], coverage [r, r] bool)."""
    vertex_count, value_count = len(vertices), len(values)
    if vertex_count != value_count:
        raise ValueError(f"rasterize_vertex_values: values must have one row per vertex ({vertex_count}), got "
                         f"{value_count}")
    fragments = rasterize_mesh(vertices, faces, c2w, focal, resolution, near=near, max_candidates=max_candidates)
    image = interpolate_vertex_values(fragments, faces, values, background=background)
    return image, fragments.covered


# --- projection ------------------------------------------------------------------------------------

def _to_screen(points: torch.Tensor, inverse: torch.Tensor, position: torch.Tensor, focal: float,
               resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """points [N, 3] -> pixel coordinates [N, 2] (x, y) and depth [N] (camera_rays inverted)."""
    camera = (points - position) @ inverse.t()                                    # [N, 3], camera looks along -z
    depth = -camera[:, 2]
    half = resolution * 0.5
    safe = torch.where(depth > 0, depth, torch.ones_like(depth))                  # no inf/NaN behind the camera
    x = half + focal * camera[:, 0] / safe
    y = half - focal * camera[:, 1] / safe
    return torch.stack([x, y], 1), depth


@dataclass
class _View:
    """The mesh as one camera sees it, per vertex as 1-D arrays (gathers from them are the fast kind)."""
    x: torch.Tensor          # [V] column coordinate
    y: torch.Tensor          # [V] row coordinate
    depth: torch.Tensor      # [V]
    faces: torch.Tensor      # [F, 3] int64
    resolution: int

    def corners(self, values: torch.Tensor, corner_ids: torch.Tensor) -> torch.Tensor:
        """values [V] at corner_ids [m, 3] -> [m, 3]."""
        return values.index_select(0, corner_ids.reshape(-1)).view(-1, 3)


# --- candidate pixels --------------------------------------------------------------------------------

@dataclass
class _PixelBoxes:
    """The faces whose pixel box holds at least one pixel centre, with a global numbering of their
    (face, pixel) candidates: box k owns candidates ends[k] - count[k] .. ends[k] - 1, row-major."""
    face: torch.Tensor     # [M] int64 face indices, ascending
    column: torch.Tensor   # [M] first column of the box
    row: torch.Tensor      # [M] first row
    width: torch.Tensor    # [M] columns in the box (>= 1)
    count: torch.Tensor    # [M] candidate pixels in the box (width * height >= 1)
    ends: torch.Tensor     # [M] inclusive cumulative counts

    @property
    def total(self) -> int:
        return int(self.ends[-1]) if self.ends.numel() else 0


def _pixel_boxes(view: _View, near: float) -> _PixelBoxes:
    """Boxes of the pixel centres each face may cover, for faces in front of `near` and on screen."""
    parts = []
    faces = view.faces
    for start in range(0, max(faces.shape[0], 1), FACE_CHUNK):   # one (empty) step without faces
        corner_ids = faces[start:start + FACE_CHUNK]                              # [n, 3]
        xs, ys = view.corners(view.x, corner_ids), view.corners(view.y, corner_ids)   # [n, 3]
        in_front = (view.corners(view.depth, corner_ids) > near).all(1)
        low = torch.stack([xs.amin(1), ys.amin(1)], 1)                             # [n, 2] (x, y)
        high = torch.stack([xs.amax(1), ys.amax(1)], 1)
        # pixel c's centre c + 0.5 lies in [low, high] for c in [ceil(low - 0.5), floor(high - 0.5)]
        first = torch.ceil(low - 0.5).clamp(0, view.resolution).long()            # [n, 2] (column, row)
        last = torch.floor(high - 0.5).clamp(-1, view.resolution - 1).long()
        size = (last - first + 1).clamp(min=0)                                     # [n, 2]
        keep = torch.nonzero(in_front & (size > 0).all(1))[:, 0]                   # [n']
        parts.append((keep + start, first.index_select(0, keep), size.index_select(0, keep)))
    face = torch.cat([p[0] for p in parts])
    first = torch.cat([p[1] for p in parts])
    size = torch.cat([p[2] for p in parts])
    count = size[:, 0] * size[:, 1]
    return _PixelBoxes(face, first[:, 0], first[:, 1], size[:, 0], count, torch.cumsum(count, 0))


def _scatter_nearest(keys: torch.Tensor, boxes: _PixelBoxes, start: int, stop: int, view: _View) -> None:
    """Candidates start .. stop - 1: inside test, depth, then keys[pixel] = min(keys[pixel], key).
    Their owners are a contiguous run of boxes (a box may continue from / into the next chunk)."""
    bounds = torch.tensor([start, stop - 1], device=keys.device)
    first, last = torch.searchsorted(boxes.ends, bounds, right=True).tolist()
    owners = slice(first, last + 1)
    begin = boxes.ends[owners] - boxes.count[owners]                              # [m] each box's first candidate
    taken = boxes.ends[owners].clamp(max=stop) - begin.clamp(min=start)           # [m] candidates here
    per_owner = [begin, boxes.column[owners], boxes.row[owners], boxes.width[owners], boxes.face[owners]]
    edges = _edge_data(view, per_owner[4])
    if begin.shape[0] != stop - start:                                             # some box has several candidates
        local = torch.repeat_interleave(torch.arange(begin.shape[0], device=keys.device), taken)   # [N]
        per_owner = [t.index_select(0, local) for t in per_owner]
        edges = _Edges(*(t.index_select(0, local) for t in edges))
    begin, column, row, width, face = per_owner                                    # [N] each
    offset = torch.arange(start, stop, device=keys.device) - begin                 # [N] 0 .. count - 1
    column = column + offset % width
    row = row + offset // width
    edge_values = _edge_functions(edges, column, row)                              # [N, 3]
    inside = torch.nonzero(((edge_values >= 0).all(1) | (edge_values <= 0).all(1))
                           & (edge_values.sum(1) != 0))[:, 0]
    _, pixel_depth = _perspective_weights(edge_values.index_select(0, inside),
                                          edges.inverse_depth.index_select(0, inside))
    key = (pixel_depth.float().view(torch.int32).long() << _FACE_BITS) | face.index_select(0, inside)
    pixel = (row * view.resolution + column).index_select(0, inside)
    keys.scatter_reduce_(0, pixel, key, reduce="amin")


class _Edges(NamedTuple):
    """Per face and corner k, [m, 3] each: the edge opposite corner k, from its lower-index endpoint u
    to the other, v (e = v - u; sign -1 when that reverses the face's own order k+1 -> k+2, so faces
    sharing an edge get the same u and e for it, bit for bit), and 1 / depth of corner k."""
    ux: torch.Tensor
    uy: torch.Tensor
    ex: torch.Tensor
    ey: torch.Tensor
    sign: torch.Tensor
    inverse_depth: torch.Tensor


def _edge_data(view: _View, face: torch.Tensor) -> _Edges:
    """_Edges of faces [m]."""
    corner_ids = view.faces.index_select(0, face)                                  # [m, 3]
    a, b = corner_ids.roll(-1, 1), corner_ids.roll(-2, 1)                          # [m, 3]: corners k+1, k+2
    swap = a > b
    low, high = torch.where(swap, b, a), torch.where(swap, a, b)
    ux, uy = view.corners(view.x, low), view.corners(view.y, low)
    ex, ey = view.corners(view.x, high) - ux, view.corners(view.y, high) - uy
    sign = 1.0 - 2.0 * swap.to(ux.dtype)
    return _Edges(ux, uy, ex, ey, sign, 1.0 / view.corners(view.depth, corner_ids))


def _edge_functions(edges: _Edges, column: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Edge functions [N, 3] of faces (their _Edges) at pixel centres (column, row) [N]: entry k
    is twice the signed area of (corner k+1, corner k+2, centre), so the three sum to twice the face's
    signed area and entry k / sum is the centre's screen-space barycentric weight of corner k."""
    px = (column.to(edges.ux.dtype) + 0.5)[:, None]                                # [N, 1]
    py = (row.to(edges.ux.dtype) + 0.5)[:, None]
    return edges.sign * (edges.ex * (py - edges.uy) - edges.ey * (px - edges.ux))


def _perspective_weights(edge_values: torch.Tensor, inverse_depth: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Edge functions [N, 3] of centres inside their faces and the corners' 1 / depth [N, 3] ->
    (perspective-correct weights [N, 3], depth [N]): 1 / depth is linear in screen space."""
    screen_weights = edge_values / edge_values.sum(1, keepdim=True)                # [N, 3], >= 0
    scaled = screen_weights * inverse_depth                                        # [N, 3]
    total = scaled.sum(1, keepdim=True)                                            # [N, 1]: 1 / depth at the centre
    return scaled / total, 1.0 / total[:, 0]


def _fragments(keys: torch.Tensor, view: _View, max_candidates: int) -> Fragments:
    """The z-buffer keys [r*r] -> Fragments: the winning face of each covered pixel and its weights,
    max_candidates pixels at a time."""
    resolution, count = view.resolution, view.resolution * view.resolution
    face_index = torch.full((count,), -1, dtype=torch.int64, device=keys.device)
    weights = torch.zeros(count, 3, dtype=view.x.dtype, device=keys.device)
    depth = torch.full((count,), float("inf"), dtype=view.x.dtype, device=keys.device)
    covered = torch.nonzero(keys != _NO_FACE)[:, 0]                                # [P]
    for start in range(0, covered.shape[0], max_candidates):
        pixel = covered[start:start + max_candidates]
        face = keys.index_select(0, pixel) & ((1 << _FACE_BITS) - 1)
        edges = _edge_data(view, face)
        edge_values = _edge_functions(edges, pixel % resolution, pixel // resolution)
        weights[pixel], depth[pixel] = _perspective_weights(edge_values, edges.inverse_depth)
        face_index[pixel] = face
    shape = (resolution, resolution)
    return Fragments(face_index.reshape(shape), weights.reshape(*shape, 3), depth.reshape(shape))


# --- argument checks ---------------------------------------------------------------------------------

def _as_tensor(fn: str, name: str, value, device=None) -> torch.Tensor:
    """A tensor of a tensor, numpy array or nested list / tuple of numbers."""
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError:       # ragged rows
            raise ValueError(f"{fn}: {name} must be a rectangular array, got ragged nested sequences") from None
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{fn}: {name} must hold numbers, got an array of objects")
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, numpy array or nested list, got "
                        f"{type(value).__name__}")
    return value.detach() if device is None else value.detach().to(device)


def _vertices(fn: str, value, name: str = "vertices") -> torch.Tensor:
    """[V, 3] finite float32 / float64 (other floats become float32)."""
    points = _as_tensor(fn, name, value)
    if not points.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating point, got dtype {points.dtype}")
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"{fn}: {name} must be [N, 3], got shape {tuple(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    return points if points.dtype in (torch.float32, torch.float64) else points.float()


def _faces(fn: str, value, vertex_count: int, device) -> torch.Tensor:
    """[F, 3] int64 indices in [0, vertex_count) on `device`."""
    faces = _as_tensor(fn, "faces", value, device)
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"{fn}: faces must hold integer vertex indices, got dtype {faces.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{fn}: faces must be [F, 3], got shape {tuple(faces.shape)}")
    if faces.shape[0] >= 1 << _FACE_BITS:   # the z-buffer keys hold face indices in their low 32 bits
        raise ValueError(f"{fn}: at most {(1 << _FACE_BITS) - 1} faces, got {faces.shape[0]}")
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertex_count):
        raise ValueError(f"{fn}: faces must index vertices in [0, {vertex_count}), got indices "
                         f"{int(faces.min())} .. {int(faces.max())}")
    return faces


def _values(fn: str, value, device) -> torch.Tensor:
    """[V] or [V, K] finite floating values on `device`."""
    values = _as_tensor(fn, "values", value, device)
    if not values.is_floating_point():
        raise TypeError(f"{fn}: values must be floating point, got dtype {values.dtype}")
    if values.dim() not in (1, 2):
        raise ValueError(f"{fn}: values must be [V] or [V, K], got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{fn}: values contains NaN or infinite values")
    return values


def _camera(fn: str, value, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """c2w [3, 4] or [1, 3, 4] -> (inverse rotation [3, 3], position [3]) in the points' dtype / device."""
    c2w = _as_tensor(fn, "c2w", value, points.device)
    if c2w.dim() == 3 and c2w.shape[0] == 1:
        c2w = c2w[0]
    if tuple(c2w.shape) != (3, 4):
        raise ValueError(f"{fn}: c2w must be a camera-to-world matrix [3, 4] (or [1, 3, 4]), got shape "
                         f"{tuple(c2w.shape)}")
    if not c2w.is_floating_point() or not bool(torch.isfinite(c2w).all()):
        raise ValueError(f"{fn}: c2w must hold finite floating-point numbers, got dtype {c2w.dtype}")
    rotation = c2w[:, :3].double()
    if abs(float(torch.linalg.det(rotation))) < 1e-12:
        raise ValueError(f"{fn}: c2w's 3 x 3 rotation is singular")
    return torch.linalg.inv(rotation).to(points.dtype), c2w[:, 3].to(points.dtype)

"""Meshes from StyleSDF surface renders: marching cubes on the frustum SDF, depth-map meshes, files.

The surface renderer samples the SDF on a frustum grid: sdf [H, W, S] with rows top -> bottom,
columns left -> right and S samples per ray from near to far (offset sampling, depth
near + (far - near) k / S for sample k, the inference default; docs/official.md section 1.6).
`frustum_to_box` resamples that frustum into an axis-aligned box exactly as the official
`utils.align_volume` does, and `marching_cubes_mesh` runs marching cubes on the box and maps the
vertices back to 3D (docs/official.md section 6.2).

Coordinate frames used here:
  * box indices (column, row, sample): marching cubes' vertex coordinates, fractional;
  * the *view frame*: camera axes (x right, y up, z toward the camera) with the origin on the optical
    axis at depth (near + far) / 2. The official cameras sit at distance 1 from the world origin with
    near + far = 2, so the view frame is the world frame rotated into the camera's axes; for the
    frontal camera (azimuth = elevation = 0) it IS the world frame. Official meshes are in this frame;
  * the world frame, when the camera-to-world matrix c2w [3, 4] is given.

Legend: H/W image rows/columns, S samples per ray, V vertices, F faces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import atomic_path
from .._checks import positive, real, to_numpy

__all__ = ["Mesh", "NoSurfaceError", "MESH_SUFFIXES", "frustum_to_box", "marching_cubes_mesh",
           "depth_map_mesh", "save_mesh", "load_mesh"]

OUTSIDE_FRUSTUM_SDF = 1.0          # official value for box cells outside the frustum ("outside the surface")
MESH_SUFFIXES = (".obj", ".ply")

ArrayLike = Union[np.ndarray, torch.Tensor]
Scalar = Union[float, int, torch.Tensor]


class NoSurfaceError(ValueError):
    """The SDF never crosses the iso-level (it is all outside or all inside): nothing to mesh."""


# --- the mesh container ----------------------------------------------------------------------------

@dataclass
class Mesh:
    """A triangle mesh. Faces are counter-clockwise seen from the side their normal points to
    (outside for closed surfaces, toward the camera for depth-map meshes).

    vertices [V, 3] float32, faces [F, 3] int64 (indices into vertices), vertex_colors [V, 3] uint8
    RGB or None. The constructor converts vertices / faces to those dtypes and checks shapes and
    face indices; colours must already be uint8.
    """
    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: Optional[np.ndarray] = None

    def __post_init__(self):
        self.vertices = _rows_of_three("Mesh", "vertices", self.vertices, np.float32, kind="fiu")
        self.faces = _rows_of_three("Mesh", "faces", self.faces, np.int64, kind="iu")
        count = len(self.vertices)
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= count):
            raise ValueError(f"Mesh: faces must index vertices in [0, {count}), got indices "
                             f"{self.faces.min()} .. {self.faces.max()}")
        if self.vertex_colors is not None:
            self.vertex_colors = _rows_of_three("Mesh", "vertex_colors", self.vertex_colors, np.uint8,
                                                kind="u", exact_dtype=np.uint8)
            if len(self.vertex_colors) != count:
                raise ValueError(f"Mesh: vertex_colors must have one row per vertex ({count}), got "
                                 f"{len(self.vertex_colors)}")

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def to_trimesh(self):
        """A trimesh.Trimesh of the same arrays (process=False: vertex order and count are kept)."""
        import trimesh
        colors = None
        if self.vertex_colors is not None:
            alpha = np.full((self.num_vertices, 1), 255, dtype=np.uint8)
            colors = np.concatenate([self.vertex_colors, alpha], axis=1)     # [V, 4] RGBA
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=colors, process=False)

    @property
    def is_watertight(self) -> bool:
        """Every edge is shared by exactly two faces (trimesh's test, on the vertices as they are)."""
        return bool(self.to_trimesh().is_watertight)

    @property
    def volume(self) -> float:
        """Signed enclosed volume (positive when a closed mesh's faces point outward)."""
        return float(self.to_trimesh().volume)


# --- frustum -> box (the official align_volume) ----------------------------------------------------

def frustum_to_box(sdf: torch.Tensor, near: Scalar, far: Scalar) -> torch.Tensor:
    """Resample the frustum-shaped SDF grid of one view into an axis-aligned box (official align_volume).

    sdf [H, W, S] or [H, W, S, 1]: rows top -> bottom, columns left -> right, samples near -> far
    (the renderer's `sdf` output of one image, e.g. out.sdf[k]). Returns box [H, W, S], same dtype:
      axis 0 = rows (image y, top -> bottom), axis 1 = columns (image x, left -> right),
      axis 2 = depth slice (near -> far), each box slice k taken from sample k of every ray.
    The frustum widens with depth, so the box keeps the far slice's footprint: in slice k, box node
    (row, column) at normalised position (u, v) in [-1, 1]^2 reads the sample at (u, v) * c_k with
    c = linspace(far / near, 1, S) (bilinear between rays, border padding, align_corners=True), and
    nodes with |u c_k| > 1 or |v c_k| > 1 (outside the frustum) are set to 1 (= outside the surface).
    """
    fn = "frustum_to_box"
    volume = _sdf_volume(fn, sdf)                                   # [H, W, S]
    near, far = _near_far(fn, near, far)
    rows, cols, samples = volume.shape
    grid, outside = _box_sampling_grid(rows, cols, samples, near, far, volume.dtype, volume.device)
    source = volume.permute(2, 0, 1)[None, None]                    # [1, 1, S, H, W]: grid_sample's (D, H, W)
    box = F.grid_sample(source, grid[None], mode="bilinear", padding_mode="border", align_corners=True)
    box = box[0, 0].permute(1, 2, 0)                                 # [S, H, W] -> [H, W, S]
    return box.masked_fill(outside, OUTSIDE_FRUSTUM_SDF)


def _box_sampling_grid(rows: int, cols: int, samples: int, near: float, far: float, dtype: torch.dtype,
                       device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """grid_sample coordinates of the box nodes, grid [S, H, W, 3] = (column, row, sample) each in
    [-1, 1], and the out-of-frustum mask [H, W, S]. Built in the volume's dtype from the same linspaces
    as the official code, so the float32 values match it bit for bit."""
    def line(count):
        return torch.linspace(-1.0, 1.0, count, dtype=dtype, device=device)
    widen = torch.linspace(far / near, 1.0, samples, dtype=dtype, device=device)[:, None, None]  # [S, 1, 1]
    x = line(cols)[None, None, :] * widen                            # [S, 1, W]
    y = line(rows)[None, :, None] * widen                            # [S, H, 1]
    z = line(samples)[:, None, None]                                 # [S, 1, 1]
    grid = torch.stack(torch.broadcast_tensors(x, y, z), dim=-1)     # [S, H, W, 3]
    outside = (grid[..., :2].abs() > 1).any(dim=-1)                  # [S, H, W]
    return grid, outside.permute(1, 2, 0)


# --- marching cubes --------------------------------------------------------------------------------

def marching_cubes_mesh(sdf: torch.Tensor, near: Scalar, far: Scalar, *, level: float = 0.0,
                        focal: Optional[Scalar] = None, c2w: Optional[ArrayLike] = None,
                        close_boundary: bool = False) -> Mesh:
    """The `level` iso-surface of one view's frustum SDF sdf [H, W, S] (or [H, W, S, 1]) as a Mesh.

    frustum_to_box, then skimage marching cubes on the box with axes (column, row, sample) as in the
    official code. Vertex placement:
      * focal=None (official): v -> (v / n - 0.5) * (far - near) per axis (n = W, H, S), y and z
        negated; for 128^3 and near/far 0.88/1.12 exactly the official (v / 128 - 0.5) * 0.24. The
        depth axis is then exact (sample k lies at depth near + (far - near) k / S), but the lateral
        axes only approximately: 0.24 is far - near, while the frustum's true width at far is
        2 far tan(fov) = 0.2354 (fov = 6 degrees), and the linear widening c_k only approximates
        far / depth_k; official meshes are 0.5% (mid depth) to 2% (near/far) too wide and tall,
        and half a voxel off-centre in x and y.
      * focal given (pixels, for this H x W grid, e.g. 608.92 at 128): every vertex is put where the
        SDF value it interpolates was sampled, x = d c (col - (W-1)/2) / focal, y = -d c (row -
        (H-1)/2) / focal, z = (near + far) / 2 - d, with d the sample depth and c the box widening
        of its slice: the metric surface, without the official lateral stretch.
    Vertices are in the view frame (module docstring); with c2w [3, 4] (or [1, 3, 4]) of the
    rendering camera they are mapped to the world. Faces point outward (toward positive SDF).
    close_boundary=True pads the box with "outside" cells so a surface cut by the box is capped
    (official: False, open there). Raises NoSurfaceError (a ValueError) when the SDF does not cross
    `level`, ValueError for NaN / infinite values.
    """
    from skimage.measure import marching_cubes

    fn = "marching_cubes_mesh"
    volume = _sdf_volume(fn, sdf).detach()                          # [H, W, S]
    near, far = _near_far(fn, near, far)
    level = real(fn, "level", level, allow_tensor=True)
    focal = None if focal is None else positive(fn, "focal", focal, allow_tensor=True)
    rotation, position = (None, None) if c2w is None else _camera_to_world(fn, c2w)
    _require_crossing(fn, volume, level)
    box = frustum_to_box(volume, near, far)                          # [H, W, S]
    _require_crossing(fn, box, level)   # the crossing may lie only where the box leaves the frustum
    grid = box.permute(1, 0, 2).cpu().numpy()                        # [W, H, S]: (column, row, sample), official order
    if close_boundary:
        grid = np.pad(grid, 1, constant_values=max(OUTSIDE_FRUSTUM_SDF, level + 1.0))
    indices, faces, _, _ = marching_cubes(grid, level)               # [V, 3] (column, row, sample), [F, 3]
    if close_boundary:
        indices = indices - 1.0
    if len(faces) == 0:
        raise NoSurfaceError(f"{fn}: marching cubes found no surface at level {level}")
    positions = _box_to_view(indices.astype(np.float64), tuple(box.shape), near, far, focal)   # [V, 3]
    if rotation is not None:
        positions = _view_to_world(positions, rotation, position, near, far)
    # skimage's default ("descent") winding already points toward larger values in index space, and
    # (column, row, sample) -> (x, -y, -z) is orientation-preserving, so faces point outward as they are.
    return Mesh(positions, faces.astype(np.int64))


def _require_crossing(fn: str, volume: torch.Tensor, level: float) -> None:
    if not bool(torch.isfinite(volume).all()):
        raise ValueError(f"{fn}: sdf contains NaN or infinite values")
    low, high = float(volume.min()), float(volume.max())
    if not low < level < high:
        side = "outside (>=" if low >= level else "inside (<="
        raise NoSurfaceError(f"{fn}: the SDF has no zero crossing at level {level:g}: every value is "
                             f"{side} {level:g}), min {low:.6g}, max {high:.6g}")


def _box_to_view(indices: np.ndarray, box_shape: Tuple[int, int, int], near: float, far: float,
                 focal: Optional[float]) -> np.ndarray:
    """Marching-cubes vertices [V, 3] in box indices (column, row, sample) -> view frame [V, 3]."""
    rows, cols, samples = box_shape
    col, row, sample = indices[:, 0], indices[:, 1], indices[:, 2]
    depth = near + (far - near) * sample / samples                    # offset sampling: sample k at k / S
    z = (near + far) / 2 - depth                                     # official: -(k / S - 0.5)(far - near)
    if focal is None:
        extent = far - near                                          # the official 0.24
        x = (col / cols - 0.5) * extent
        y = -(row / rows - 0.5) * extent
    else:
        widen = far / near + (1 - far / near) * sample / (samples - 1)   # the slice's c_k
        scale = depth * widen / focal
        x = scale * (col - (cols - 1) / 2)
        y = -scale * (row - (rows - 1) / 2)
    return np.stack([x, y, z], axis=1)


def _view_to_world(points: np.ndarray, rotation: np.ndarray, position: np.ndarray, near: float,
                   far: float) -> np.ndarray:
    """View frame [V, 3] -> world [V, 3]: shift the origin to the camera (z - (near+far)/2), rotate, translate."""
    camera = points - np.array([0.0, 0.0, (near + far) / 2])
    return camera @ rotation.T + position


# --- depth-map meshes ------------------------------------------------------------------------------

def depth_map_mesh(xyz: ArrayLike, colors: Optional[ArrayLike] = None,
                   mask: Optional[ArrayLike] = None) -> Mesh:
    """A mesh over the pixel grid of one view's surface-point map.

    xyz [3, H, W] (the renderer's layout, xyz[k]) or [H, W, 3] world points: one vertex per pixel,
    vertex index row * W + column. Two triangles per 2x2 pixel quad (diagonal bottom-left to
    top-right), counter-clockwise as seen from the camera, so their normals face it (the official
    code Delaunay-triangulates the same grid and flips the faces to the same effect).
    colors [3, H, W] or [H, W, 3]: floats in [-1, 1] (the renderer's rgb) or uint8, -> vertex colours.
    mask [H, W] or [1, H, W] bool (True = foreground): when given, triangles touching a background
    pixel and the vertices no triangle uses are dropped. mask=None keeps every pixel, background
    included, like the official meshes. Raises NoSurfaceError when the mask leaves no triangle.
    An array [3, H, 3] is read as channels-first.
    """
    fn = "depth_map_mesh"
    points = _channels_last(fn, "xyz", xyz)                          # [H, W, 3]
    if not np.issubdtype(points.dtype, np.floating) or not np.isfinite(points).all():
        raise ValueError(f"{fn}: xyz must hold finite floating-point points, got dtype {points.dtype}")
    rows, cols = points.shape[:2]
    if rows < 2 or cols < 2:
        raise ValueError(f"{fn}: xyz needs at least 2 x 2 pixels, got {rows} x {cols}")
    vertices = points.reshape(-1, 3)                                 # [H*W, 3]
    vertex_colors = None if colors is None else _colors_uint8(fn, colors, (rows, cols)).reshape(-1, 3)
    faces = _grid_faces(rows, cols)                                  # [2 (H-1)(W-1), 3]
    if mask is not None:
        foreground = _mask_2d(fn, mask, (rows, cols)).reshape(-1)    # [H*W]
        faces = faces[foreground[faces].all(axis=1)]
        if len(faces) == 0:
            raise NoSurfaceError(f"{fn}: the mask ({int(foreground.sum())} foreground pixels) leaves no "
                                 f"triangle with all three corners in the foreground")
        vertices, faces, vertex_colors = _drop_unused_vertices(vertices, faces, vertex_colors)
    return Mesh(vertices, faces, vertex_colors)


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    """Triangles [2 (rows-1)(cols-1), 3] of the pixel grid, two per quad, counter-clockwise on screen
    (x right, y up): (top-left, bottom-left, top-right) and (top-right, bottom-left, bottom-right)."""
    index = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    top_left, top_right = index[:-1, :-1], index[:-1, 1:]
    bottom_left, bottom_right = index[1:, :-1], index[1:, 1:]
    first = np.stack([top_left, bottom_left, top_right], axis=-1)   # [H-1, W-1, 3]
    second = np.stack([top_right, bottom_left, bottom_right], axis=-1)
    return np.stack([first, second], axis=2).reshape(-1, 3)         # quads in raster order


def _drop_unused_vertices(vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]):
    used = np.unique(faces)                                          # sorted, so vertex order is kept
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces], None if colors is None else colors[used]


# --- files -----------------------------------------------------------------------------------------

def save_mesh(mesh: Mesh, path: Union[str, os.PathLike]) -> Path:
    """Write `mesh` to `path` (.obj or .ply, by suffix, case-insensitive) through trimesh, atomically
    (a temporary file in the same folder, then os.replace; the folder is created if missing).

    PLY: binary little-endian, vertex colours as uchar red/green/blue/alpha properties.
    OBJ: vertex colours, when present, as the common "v x y z r g b" extension (floats in [0, 1];
    read by MeshLab, Blender, trimesh); no normals, no material file. Returns the path.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"save_mesh: mesh must be a Mesh, got {type(mesh).__name__}")
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"save_mesh: path must end in {' or '.join(MESH_SUFFIXES)}, got {str(target)!r}")
    shape = mesh.to_trimesh()
    if suffix == ".obj":
        data = shape.export(file_type="obj", include_normals=False, include_texture=False)
    else:
        data = shape.export(file_type="ply", encoding="binary")
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return target


def load_mesh(path: Union[str, os.PathLike]) -> Mesh:
    """Read a .obj / .ply mesh (e.g. one written by save_mesh) with its vertex colours when present."""
    import trimesh
    shape = trimesh.load(os.fspath(path), process=False, force="mesh")
    colors = None
    if shape.visual.kind == "vertex":
        colors = np.asarray(shape.visual.vertex_colors)[:, :3].astype(np.uint8)
    return Mesh(np.asarray(shape.vertices), np.asarray(shape.faces), colors)


# --- argument checks -------------------------------------------------------------------------------

def _near_far(fn: str, near, far) -> Tuple[float, float]:
    near, far = positive(fn, "near", near, allow_tensor=True), positive(fn, "far", far, allow_tensor=True)
    if not near < far:
        raise ValueError(f"{fn}: near must be < far, got near={near}, far={far}")
    return near, far


def _sdf_volume(fn: str, sdf) -> torch.Tensor:
    """sdf [H, W, S] or [H, W, S, 1] tensor -> floating [H, W, S] (float32 unless float64)."""
    if isinstance(sdf, np.ndarray):
        sdf = torch.from_numpy(sdf)
    if not isinstance(sdf, torch.Tensor):
        raise TypeError(f"{fn}: sdf must be a torch.Tensor or numpy array, got {type(sdf).__name__}")
    if sdf.dim() == 4 and sdf.shape[-1] == 1:
        sdf = sdf[..., 0]
    if sdf.dim() != 3:
        raise ValueError(f"{fn}: sdf must be [H, W, S] or [H, W, S, 1] (one view: pass sdf[k] of a "
                         f"batch), got shape {tuple(sdf.shape)}")
    if min(sdf.shape) < 2:
        raise ValueError(f"{fn}: sdf needs at least 2 rows, columns and samples, got {tuple(sdf.shape)}")
    if not (sdf.is_floating_point() or sdf.dtype in (torch.int32, torch.int64)) or sdf.is_complex():
        raise TypeError(f"{fn}: sdf must hold real numbers, got dtype {sdf.dtype}")
    return sdf if sdf.dtype in (torch.float32, torch.float64) else sdf.float()


def _camera_to_world(fn: str, c2w) -> Tuple[np.ndarray, np.ndarray]:
    """c2w [3, 4] or [1, 3, 4] -> (rotation [3, 3], position [3]) as float64 arrays."""
    matrix = c2w.detach().cpu().double().numpy() if isinstance(c2w, torch.Tensor) else np.asarray(c2w, float)
    if matrix.shape == (1, 3, 4):
        matrix = matrix[0]
    if matrix.shape != (3, 4):
        raise ValueError(f"{fn}: c2w must be a camera-to-world matrix [3, 4] (or [1, 3, 4]), got shape "
                         f"{matrix.shape}")
    return matrix[:, :3], matrix[:, 3]


def _channels_last(fn: str, name: str, image) -> np.ndarray:
    """[3, H, W] (preferred when the first axis is 3) or [H, W, 3] -> [H, W, 3]."""
    array = to_numpy(image)
    if array.ndim == 3 and array.shape[0] == 3:
        return np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 3:
        return array
    raise ValueError(f"{fn}: {name} must be [3, H, W] or [H, W, 3] (one view: pass {name}[k] of a "
                     f"batch), got shape {array.shape}")


def _colors_uint8(fn: str, colors, size: Tuple[int, int]) -> np.ndarray:
    """Colours [3, H, W] / [H, W, 3], uint8 or floats in [-1, 1] -> uint8 [H, W, 3]."""
    rgb = _channels_last(fn, "colors", colors)
    if rgb.shape[:2] != size:
        raise ValueError(f"{fn}: colors must cover the same {size[0]} x {size[1]} pixels as xyz, got "
                         f"{rgb.shape[0]} x {rgb.shape[1]}")
    if rgb.dtype == np.uint8:
        return rgb
    if not np.issubdtype(rgb.dtype, np.floating):
        raise TypeError(f"{fn}: colors must be uint8 or floats in [-1, 1], got dtype {rgb.dtype}")
    return np.round((np.clip(rgb, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _mask_2d(fn: str, mask, size: Tuple[int, int]) -> np.ndarray:
    array = to_numpy(mask)
    if array.dtype != np.bool_:
        raise TypeError(f"{fn}: mask must be boolean (True = foreground; threshold a float mask first), "
                        f"got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != size:
        raise ValueError(f"{fn}: mask must be [H, W] = {list(size)} (or [1, H, W]), got shape {array.shape}")
    return array


def _rows_of_three(fn: str, name: str, value, dtype, *, kind: str, exact_dtype=None) -> np.ndarray:
    """An array [N, 3] of the allowed dtype kinds, converted to `dtype` (C-contiguous)."""
    array = to_numpy(value)
    if exact_dtype is not None and array.dtype != exact_dtype:
        raise TypeError(f"{fn}: {name} must have dtype {np.dtype(exact_dtype).name}, got {array.dtype}")
    if array.dtype.kind not in kind:
        raise TypeError(f"{fn}: {name} has dtype {array.dtype}; expected "
                        f"{'integers' if kind in ('iu', 'u') else 'real numbers'}")
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{fn}: {name} must be [N, 3], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)

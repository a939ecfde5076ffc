"""The StyleSDF camera model (docs/official.md sections 1.6, 1.7 and 6).

Every camera sits on the unit sphere and looks at the origin. A pose is (azimuth a, elevation e) in
radians; the camera position is (cos e sin a, sin e, cos e cos a), so (0, 0) is the frontal camera at
(0, 0, 1). Cameras look along their own -z axis with +y up (OpenGL style): the camera-to-world matrix
c2w = [x y z | position] has z = the unit position, x = normalise(up x z) with up = (0, 1, 0), and
y = z x x. The renderer's camera-frame ray direction ((i - W/2)/f, -(j - H/2)/f, -1) goes to the world
as c2w[:, :3] @ dir, starting at c2w[:, 3].

Intrinsics: the field of view `fov_ang` is the HALF angle in degrees (6, so a 12 degree frustum),
focal = 0.5 * resolution / tan(fov) (304.46 px at 64, 608.92 at 128); near / far = 1 -/+ dist_radius
(0.88 / 1.12).

`generate_camera_params` keeps the official `utils.generate_camera_params` signature and return
order, so scripts written for the official code can switch imports. It adds a `generator` for
reproducible draws and, keyword-only, `dtype` and `uniform_elev_nonnegative`. Without a generator it
draws from the global RNG in the official order (azimuth, then elevation, each [B, 1]).

Shape legend: B cameras, F video frames. Angles travel as "locations" [B, 2] = (azimuth, elevation),
the same layout as the returned `viewpoint` (the pose head's target).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .._checks import count, real

__all__ = [
    "AZIM_RANGE", "AZIM_RANGE_AFHQ", "ELEV_RANGE", "FOV_HALF_ANGLE_DEG", "DIST_RADIUS", "SWEEP_VIEWS",
    "VIDEO_FRAMES", "CameraParams", "sample_angles", "sweep_angles", "fixed_view_angles",
    "azimuth_sweep_trajectory", "ellipse_trajectory", "camera_positions", "look_at_origin",
    "focal_from_fov", "near_far", "generate_camera_params",
]

AZIM_RANGE = 0.3            # --azim (FFHQ): std (Gaussian) or half-width (uniform) of the azimuth, radians
AZIM_RANGE_AFHQ = 0.15      # --azim in the AFHQ scripts
ELEV_RANGE = 0.15           # --elev: std or half-width of the elevation, radians
FOV_HALF_ANGLE_DEG = 6.0    # --fov: HALF field of view in degrees (full FoV 12 degrees)
DIST_RADIUS = 0.12          # --dist_radius: near / far = 1 -/+ this
SWEEP_VIEWS = 8             # azimuths per identity in the training previews
VIDEO_FRAMES = 250          # frames per identity in render_video.py

_POLE_EPS = 1e-6            # |up x z| below this: the camera looks straight up or down

Device = Union[str, torch.device, None]
Number = Union[int, float]


class CameraParams(NamedTuple):
    """What `generate_camera_params` returns; unpacks like the official 5-tuple."""
    c2w: torch.Tensor        # [B, 3, 4] camera-to-world [x y z | position]
    focal: torch.Tensor      # [B, 1, 1] pixels
    near: torch.Tensor       # [B, 1, 1]
    far: torch.Tensor        # [B, 1, 1]
    viewpoint: torch.Tensor  # [B, 2] (azimuth, elevation) radians


# --- argument checks -------------------------------------------------------------------------------

def _ranges(fn: str, azim_range, elev_range) -> Tuple[float, float]:
    return (real(fn, "azim_range", azim_range, low=0.0), real(fn, "elev_range", elev_range, low=0.0))


def _dtype(fn: str, dtype: Optional[torch.dtype]) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{fn}: dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _generator(fn: str, generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


# --- random draws ----------------------------------------------------------------------------------

def _draw(kind: str, rows: int, generator: Optional[torch.Generator], device: Device,
          dtype: torch.dtype) -> torch.Tensor:
    """[rows, 1] of U(0, 1) (kind "rand") or N(0, 1) ("randn"). With a generator the draw happens on the
    generator's device and is then moved, so a CPU generator gives the same numbers on any device."""
    sample = torch.rand if kind == "rand" else torch.randn
    if generator is None:
        return sample(rows, 1, device=device, dtype=dtype)
    return sample(rows, 1, generator=generator, device=generator.device, dtype=dtype).to(device)


def sample_angles(batch: int, *, uniform: bool = False, azim_range: float = AZIM_RANGE,
                  elev_range: float = ELEV_RANGE, uniform_elev_nonnegative: bool = False,
                  generator: Optional[torch.Generator] = None, device: Device = None,
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Random poses from the training distribution -> locations [B, 2] = (azimuth, elevation).

    Gaussian (default, unclipped): a ~ N(0, azim_range^2), e ~ N(0, elev_range^2).
    uniform=True: a ~ U(-azim_range, azim_range), e ~ U(-elev_range, elev_range); with
    uniform_elev_nonnegative=True, e ~ U(0, elev_range) as the official `--uniform` code draws it.
    Draw order (azimuth [B, 1], then elevation [B, 1]) is the official one.
    """
    fn = "sample_angles"
    batch = count(fn, "batch", batch, minimum=1)
    azim_range, elev_range = _ranges(fn, azim_range, elev_range)
    generator, dtype = _generator(fn, generator), _dtype(fn, dtype)
    if uniform:
        azim = azim_range * (2 * _draw("rand", batch, generator, device, dtype) - 1)
        elev_unit = _draw("rand", batch, generator, device, dtype)
        elev = elev_range * (elev_unit if uniform_elev_nonnegative else 2 * elev_unit - 1)
    else:
        azim = azim_range * _draw("randn", batch, generator, device, dtype)
        elev = elev_range * _draw("randn", batch, generator, device, dtype)
    return torch.cat([azim, elev], dim=1)


def sweep_angles(batch: int, *, azim_range: float = AZIM_RANGE, elev_range: float = ELEV_RANGE,
                 num_views: int = SWEEP_VIEWS, generator: Optional[torch.Generator] = None,
                 device: Device = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Training-preview poses -> locations [batch * num_views, 2], identity-major.

    Row i * num_views + k is identity i's view k: azimuth -azim_range + k * 2 azim_range / (num_views - 1)
    (8 views: step 2 azim_range / 7), elevation one draw e_i ~ U(-elev_range, elev_range) shared by the
    identity's views (one [batch, 1] uniform draw, as the official code).
    """
    fn = "sweep_angles"
    batch = count(fn, "batch", batch, minimum=1)
    num_views = count(fn, "num_views", num_views, minimum=2)
    azim_range, elev_range = _ranges(fn, azim_range, elev_range)
    generator, dtype = _generator(fn, generator), _dtype(fn, dtype)
    steps = torch.arange(num_views, device=device, dtype=dtype)
    azim = (-azim_range + (2 * azim_range / (num_views - 1)) * steps).repeat(batch)
    elev = -elev_range + 2 * elev_range * _draw("rand", batch, generator, device, dtype)
    elev = elev.repeat_interleave(num_views)
    return torch.stack([azim, elev], dim=1)


def fixed_view_angles(azim_range: float = AZIM_RANGE, elev_range: float = ELEV_RANGE, *,
                      device: Device = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The 13 views of `generate_shapes_and_images.py --fixed_camera_angles` -> locations [13, 2]:
    (0, 0); azimuth -1.5, -1, -0.5, 0.5, 1, 1.5 x azim_range at elevation 0; elevation the same
    multiples of elev_range at azimuth 0."""
    fn = "fixed_view_angles"
    azim_range, elev_range = _ranges(fn, azim_range, elev_range)
    scales = (-1.5, -1.0, -0.5, 0.5, 1.0, 1.5)
    rows = [(0.0, 0.0)] + [(s * azim_range, 0.0) for s in scales] + [(0.0, s * elev_range) for s in scales]
    return torch.tensor(rows, device=device, dtype=_dtype(fn, dtype))


# --- video trajectories (render_video.py) ---------------------------------------------------------

def _frame_phase(fn: str, num_frames: int, device: Device, dtype: torch.dtype) -> torch.Tensor:
    """2 pi t with t = linspace(0, 1, F) -> [F] (both ends included, so the first and last frames
    coincide, as in the official videos); computed in float64, then cast."""
    num_frames = count(fn, "num_frames", num_frames, minimum=1)
    return (2 * math.pi * torch.linspace(0, 1, num_frames, dtype=torch.float64)).to(device=device, dtype=dtype)


def azimuth_sweep_trajectory(num_frames: int = VIDEO_FRAMES, *, azim_range: float = AZIM_RANGE,
                             uniform: bool = False, device: Device = None,
                             dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`render_video.py --azim_video` -> locations [F, 2]: azimuth A cos(2 pi t), elevation 0, with
    A = 1.5 azim_range (Gaussian training poses) or azim_range (uniform=True)."""
    fn = "azimuth_sweep_trajectory"
    azim_range = real(fn, "azim_range", azim_range, low=0.0)
    phase = _frame_phase(fn, num_frames, device, _dtype(fn, dtype))
    amplitude = azim_range if uniform else 1.5 * azim_range
    return torch.stack([amplitude * torch.cos(phase), torch.zeros_like(phase)], dim=1)


def ellipse_trajectory(num_frames: int = VIDEO_FRAMES, *, azim_range: float = AZIM_RANGE,
                       elev_range: float = ELEV_RANGE, uniform: bool = False, device: Device = None,
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`render_video.py` default ("elipsoid") -> locations [F, 2]. Gaussian training poses:
    azimuth 1.5 azim_range cos(2 pi t), elevation 1.5 elev_range sin(2 pi t). uniform=True: azimuth
    azim_range cos(2 pi t), elevation elev_range / 2 + elev_range / 2 sin(2 pi t) (so in [0, elev_range])."""
    fn = "ellipse_trajectory"
    azim_range, elev_range = _ranges(fn, azim_range, elev_range)
    phase = _frame_phase(fn, num_frames, device, _dtype(fn, dtype))
    if uniform:
        azim, elev = azim_range * torch.cos(phase), elev_range / 2 + elev_range / 2 * torch.sin(phase)
    else:
        azim, elev = 1.5 * azim_range * torch.cos(phase), 1.5 * elev_range * torch.sin(phase)
    return torch.stack([azim, elev], dim=1)


# --- geometry --------------------------------------------------------------------------------------

def camera_positions(azim: torch.Tensor, elev: torch.Tensor,
                     radius: Union[Number, torch.Tensor] = 1.0) -> torch.Tensor:
    """Angles [...] (radians, broadcastable) -> positions [..., 3] =
    radius * (cos e sin a, sin e, cos e cos a). (0, 0) is (0, 0, radius); +a turns toward +x,
    +e rises toward +y."""
    fn = "camera_positions"
    for name, value in (("azim", azim), ("elev", elev)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point torch.Tensor, got "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
    if not isinstance(radius, torch.Tensor):
        radius = real(fn, "radius", radius, low=0.0, low_inclusive=False)
    cos_e = torch.cos(elev)
    direction = torch.stack(torch.broadcast_tensors(cos_e * torch.sin(azim), torch.sin(elev),
                                                    cos_e * torch.cos(azim)), dim=-1)
    return radius * direction if isinstance(radius, float) else radius.unsqueeze(-1) * direction


def _pole_x_axis(z_axis: torch.Tensor, azim: Optional[torch.Tensor]) -> torch.Tensor:
    """x axis for cameras looking straight up or down: the limit of normalise(up x z) there,
    (cos a, 0, -sin a), made exactly orthogonal to z. Without azimuths a = 0, i.e. (1, 0, 0)."""
    if azim is None:
        reference = torch.zeros_like(z_axis)
        reference[..., 0] = 1
    else:
        azim = azim.to(z_axis.dtype)
        reference = torch.stack([torch.cos(azim), torch.zeros_like(azim), -torch.sin(azim)], dim=-1)
        reference = reference.expand_as(z_axis)
    reference = reference - (reference * z_axis).sum(-1, keepdim=True) * z_axis
    return F.normalize(reference, dim=-1)


def look_at_origin(positions: torch.Tensor, *, azim: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Camera positions [..., 3] (non-zero) -> camera-to-world c2w [..., 3, 4] = [x y z | position],
    looking at the origin along -z with +y up.

    z = normalise(position); x = normalise((0, 1, 0) x z); y = z x x (det +1). Where |up x z| < 1e-6
    (straight up or down) x falls back to (cos a, 0, -sin a), the limit of the formula above, using
    `azim` [...] when given, else a = 0; the result is always orthonormal.
    """
    fn = "look_at_origin"
    if not isinstance(positions, torch.Tensor) or not positions.is_floating_point():
        raise TypeError(f"{fn}: positions must be a floating-point torch.Tensor, got "
                        f"{getattr(positions, 'dtype', type(positions).__name__)}")
    if positions.dim() < 1 or positions.shape[-1] != 3:
        raise ValueError(f"{fn}: positions must have shape [..., 3], got {tuple(positions.shape)}")
    z_axis = F.normalize(positions, dim=-1)
    up = torch.zeros_like(z_axis)
    up[..., 1] = 1
    up_cross_z = torch.linalg.cross(up, z_axis, dim=-1)
    at_pole = torch.linalg.vector_norm(up_cross_z, dim=-1, keepdim=True) < _POLE_EPS
    x_axis = torch.where(at_pole, _pole_x_axis(z_axis, azim), F.normalize(up_cross_z, dim=-1))
    y_axis = F.normalize(torch.linalg.cross(z_axis, x_axis, dim=-1), dim=-1)
    return torch.stack([x_axis, y_axis, z_axis, positions], dim=-1)


def focal_from_fov(resolution: Union[Number, torch.Tensor],
                   fov_half_angle_deg: Union[Number, torch.Tensor] = FOV_HALF_ANGLE_DEG):
    """Focal length in pixels = 0.5 * resolution / tan(fov), fov the HALF angle in degrees
    (304.46 px at 64, 608.92 at 128 for 6 degrees). Floats in, float out; a tensor in, a tensor out."""
    fn = "focal_from_fov"
    if not isinstance(resolution, torch.Tensor):
        resolution = real(fn, "resolution", resolution, low=0.0, low_inclusive=False)
    if isinstance(fov_half_angle_deg, torch.Tensor):
        if not fov_half_angle_deg.is_floating_point():
            fov_half_angle_deg = fov_half_angle_deg.to(torch.get_default_dtype())
        if bool(((fov_half_angle_deg <= 0) | (fov_half_angle_deg >= 90)).any()):
            raise ValueError(f"{fn}: fov_half_angle_deg must lie in (0, 90) degrees")
        return 0.5 * resolution / torch.tan(torch.deg2rad(fov_half_angle_deg))
    fov = real(fn, "fov_half_angle_deg", fov_half_angle_deg, low=0.0, low_inclusive=False, high=90.0)
    return 0.5 * resolution / math.tan(math.radians(fov))


def near_far(dist_radius: float = DIST_RADIUS, dist: float = 1.0) -> Tuple[float, float]:
    """Ray bounds around the origin for a camera at distance `dist`: (dist - r, dist + r)
    (0.88, 1.12 by default). Requires 0 < r < dist."""
    fn = "near_far"
    dist = real(fn, "dist", dist, low=0.0, low_inclusive=False)
    dist_radius = real(fn, "dist_radius", dist_radius, low=0.0, low_inclusive=False, high=dist)
    return dist - dist_radius, dist + dist_radius


# --- the official entry point ----------------------------------------------------------------------

def _locations(fn: str, locations, device: Device, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Given angles -> [B, 2] floating tensor on `device` (dtype: given, else theirs if floating,
    else the default)."""
    if not isinstance(locations, torch.Tensor):
        try:
            locations = torch.as_tensor(locations)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{fn}: locations must be a [B, 2] tensor of (azimuth, elevation), "
                            f"got {type(locations).__name__}") from error
    if locations.dtype == torch.bool or locations.is_complex():
        raise TypeError(f"{fn}: locations must be real numbers, got dtype {locations.dtype}")
    if locations.dim() != 2 or locations.shape[1] != 2 or locations.shape[0] < 1:
        raise ValueError(f"{fn}: locations must have shape [B, 2] (azimuth, elevation) with B >= 1, "
                         f"got {tuple(locations.shape)}")
    if dtype is None and locations.is_floating_point():
        dtype = locations.dtype
    return locations.to(device=device, dtype=_dtype(fn, dtype))


def _focal_tensor(fn: str, resolution, fov_ang, count: int, device: Device,
                  dtype: torch.dtype) -> torch.Tensor:
    """focal [B, 1, 1] from a scalar fov or a per-camera fov tensor of 1 or B elements
    (render_video.py passes [B, 1])."""
    resolution = real(fn, "resolution", resolution, low=0.0, low_inclusive=False)
    if not isinstance(fov_ang, torch.Tensor):
        fov = real(fn, "fov_ang", fov_ang, low=0.0, low_inclusive=False, high=90.0)
        return torch.full((count, 1, 1), focal_from_fov(resolution, fov), device=device, dtype=dtype)
    if fov_ang.numel() not in (1, count):
        raise ValueError(f"{fn}: a fov_ang tensor must have 1 or B = {count} elements, got shape "
                         f"{tuple(fov_ang.shape)}")
    fov = fov_ang.to(device=device, dtype=dtype).reshape(-1, 1, 1).expand(count, 1, 1)
    return focal_from_fov(resolution, fov)


def generate_camera_params(resolution: Number, device: Device, batch: int = 1, locations=None,
                           sweep: bool = False, uniform: bool = False,
                           azim_range: float = AZIM_RANGE, elev_range: float = ELEV_RANGE,
                           fov_ang: Union[Number, torch.Tensor] = FOV_HALF_ANGLE_DEG,
                           dist_radius: float = DIST_RADIUS,
                           generator: Optional[torch.Generator] = None, *,
                           dtype: Optional[torch.dtype] = None,
                           uniform_elev_nonnegative: bool = False) -> CameraParams:
    """Cameras for the renderer, with the official function's signature and 5-tuple.

    Poses: `locations` [B, 2] (azimuth, elevation) if given (then `batch` is ignored); else
    sweep=True: `sweep_angles(batch)` (B = 8 * batch, identity-major); else `sample_angles(batch)`
    (Gaussian, or uniform with uniform=True). `fov_ang` is the half angle in degrees, a number or a
    tensor of 1 or B elements. Returns CameraParams(c2w [B, 3, 4], focal [B, 1, 1], near [B, 1, 1],
    far [B, 1, 1], viewpoint [B, 2] = (azimuth, elevation)); near / far = 1 -/+ dist_radius.
    """
    fn = "generate_camera_params"
    batch = count(fn, "batch", batch, minimum=1)
    near, far = near_far(dist_radius)
    if locations is not None:
        if sweep:
            raise ValueError(f"{fn}: give either locations or sweep=True, not both")
        angles = _locations(fn, locations, device, dtype)
    elif sweep:
        angles = sweep_angles(batch, azim_range=azim_range, elev_range=elev_range,
                              generator=generator, device=device, dtype=_dtype(fn, dtype))
    else:
        angles = sample_angles(batch, uniform=uniform, azim_range=azim_range, elev_range=elev_range,
                               uniform_elev_nonnegative=uniform_elev_nonnegative, generator=generator,
                               device=device, dtype=_dtype(fn, dtype))
    cameras, dtype, device = angles.shape[0], angles.dtype, angles.device
    azim, elev = angles[:, 0], angles[:, 1]
    c2w = look_at_origin(camera_positions(azim, elev), azim=azim)
    focal = _focal_tensor(fn, resolution, fov_ang, cameras, device, dtype)
    bounds = dict(size=(cameras, 1, 1), device=device, dtype=dtype)
    return CameraParams(c2w, focal, torch.full(fill_value=near, **bounds),
                        torch.full(fill_value=far, **bounds), angles)

"""Video files and shape / depth visualisations for StyleSDF renders, without PyTorch3D.

`write_video` streams uint8 frames to an H.264 .mp4 (imageio + imageio-ffmpeg) or an animated
.gif (Pillow), atomically; `video_info` reads a written file back. `shade_normals` turns the surface
renderer's xyz map into a grey Lambertian shape image (the official depth videos rasterise the
depth-map mesh with PyTorch3D instead); `colorize_depth` maps a depth image through a viridis-like
colour map.

Legend: T frames, B images, H/W rows/columns.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import re
import subprocess
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import atomic_path
from .._checks import positive, to_numpy

__all__ = ["VIDEO_SUFFIXES", "DEFAULT_FPS", "DEFAULT_CRF", "write_video", "video_info", "shade_normals",
           "colorize_depth", "DEFAULT_LIGHT_DIR"]

VIDEO_SUFFIXES = (".mp4", ".gif")
DEFAULT_FPS = 25                   # skvideo / ffmpeg default, what the official videos use
DEFAULT_CRF = 10                   # the official RGB videos (its depth videos use 1)
DEFAULT_LIGHT_DIR = (0.0, 1.0, 5.0)  # the official depth-video light position, used as a direction

# Viridis-like colour map (dark purple -> blue -> green -> yellow) as 9 evenly spaced anchors,
# approximated by hand; its luminance rises monotonically, so brightness alone orders the depths.
_COLOR_MAP_ANCHORS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float64)   # [9, 3]

PathLike = Union[str, os.PathLike]
Frames = Union[np.ndarray, torch.Tensor, Iterable[np.ndarray]]


# --- writing and reading videos -------------------------------------------------------------------

def write_video(frames: Frames, path: PathLike, *, fps: float = DEFAULT_FPS, crf: int = DEFAULT_CRF) -> Path:
    """Write frames (uint8 [H, W, 3] RGB each: an iterable, consumed one frame at a time, or a
    [T, H, W, 3] array) to `path`, atomically (temporary file in the same folder, then os.replace;
    the temporary is removed on any error, KeyboardInterrupt included). Returns the path written.

    .mp4: H.264 (libx264, yuv420p) through imageio's ffmpeg plugin, streamed to the ffmpeg process.
    `crf` is x264's constant rate factor (0 = lossless luma .. 51; official: 10 RGB, 1 depth).
    yuv420p needs even sizes, so odd heights / widths are padded by repeating the last row / column
    (the file is then (H + H % 2) x (W + W % 2)); imageio's resize to multiples of 16 is disabled.
    When imageio-ffmpeg / its ffmpeg binary is unusable, a .gif with the same stem is written
    instead, with a RuntimeWarning, and that path is returned.
    .gif: Pillow animated GIF (looping, adaptive 256-colour palette per frame, odd sizes kept,
    frame time 1000 / fps ms rounded down to GIF's 10 ms steps; `crf` unused). Pillow keeps the
    palettised frames in memory until the end and merges identical consecutive frames into one
    longer frame, so video_info can count fewer frames than were written.
    """
    fn = "write_video"
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{fn}: path must end in {' or '.join(VIDEO_SUFFIXES)}, got {str(target)!r}")
    fps = positive(fn, "fps", fps)
    crf = _crf(fn, crf)
    if suffix == ".mp4" and not _ffmpeg_usable():
        fallback = target.with_suffix(".gif")
        warnings.warn(f"{fn}: ffmpeg (imageio-ffmpeg) is not usable, so an animated GIF {str(fallback)!r} "
                      f"is written instead of {str(target)!r}", RuntimeWarning, stacklevel=2)
        target, suffix = fallback, ".gif"
    checked = _checked_frames(fn, frames)
    with atomic_path(target) as temporary:
        if suffix == ".mp4":
            _write_mp4(checked, temporary, fps, crf)
        else:
            _write_gif(checked, temporary, fps)
    return target


def video_info(path: PathLike) -> Tuple[int, int, int]:
    """(frame_count, height, width) of an .mp4 (counted by imageio-ffmpeg's ffmpeg) or .gif (Pillow).
    Raises FileNotFoundError for a missing file, ValueError for another suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video_info: path must end in {' or '.join(VIDEO_SUFFIXES)}, got {str(target)!r}")
    if not target.is_file():
        raise FileNotFoundError(f"video_info: no such file: {str(target)!r}")
    if suffix == ".gif":
        from PIL import Image
        with Image.open(target) as image:
            width, height = image.size
            return int(getattr(image, "n_frames", 1)), height, width
    import imageio_ffmpeg
    frames, _ = imageio_ffmpeg.count_frames_and_secs(os.fspath(target))
    height, width = _mp4_frame_size(imageio_ffmpeg.get_ffmpeg_exe(), target)
    return int(frames), height, width


def _mp4_frame_size(ffmpeg: str, path: Path) -> Tuple[int, int]:
    """(height, width) of the first video stream, from ffmpeg's stream description ("..., 48x32, ...").
    A plain subprocess: imageio's readers leave pipes open (ResourceWarning)."""
    probe = subprocess.run([ffmpeg, "-hide_banner", "-i", os.fspath(path)], capture_output=True, text=True)
    for line in probe.stderr.splitlines():
        found = re.search(r"Video:.*?,\s*(\d+)x(\d+)[\s,]", line + " ")
        if found:
            return int(found.group(2)), int(found.group(1))
    raise ValueError(f"video_info: no video stream found in {str(path)!r}")


def _ffmpeg_usable() -> bool:
    """imageio-ffmpeg is installed and finds an ffmpeg binary (its bundled one or $IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg
        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError):
        return False


def _write_mp4(frames: Iterator[np.ndarray], path: Path, fps: float, crf: int) -> None:
    import imageio.v2 as imageio
    writer = None
    try:
        for frame in frames:
            if writer is None:   # ffmpeg starts with the first frame, so an empty input starts nothing
                writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                            pixelformat="yuv420p", quality=None, macro_block_size=1,
                                            output_params=["-crf", str(crf)], ffmpeg_log_level="error")
            writer.append_data(_pad_to_even(frame))
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):   # keep the original error, not ffmpeg's complaint
                writer.close()
        raise
    if writer is not None:
        writer.close()


def _write_gif(frames: Iterator[np.ndarray], path: Path, fps: float) -> None:
    from PIL import Image
    first = next(frames)     # the frame checker raises a clear error when there is none
    rest = (Image.fromarray(frame) for frame in frames)
    with open(path, "wb") as handle:   # ours to close: Pillow only closes its own files on Exception
        Image.fromarray(first).save(handle, format="GIF", save_all=True, append_images=rest,
                                    duration=1000.0 / fps, loop=0)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H + H % 2, W + W % 2, 3], repeating the last row / column."""
    rows, cols = frame.shape[:2]
    if rows % 2 == 0 and cols % 2 == 0:
        return frame
    return np.pad(frame, ((0, rows % 2), (0, cols % 2), (0, 0)), mode="edge")


def _checked_frames(fn: str, frames: Frames) -> Iterator[np.ndarray]:
    """Check the container now; return a stream of C-contiguous uint8 [H, W, 3] frames that checks
    each frame as it comes (all one size) and raises at the end when there was none."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4:
            raise ValueError(f"{fn}: an array of frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    elif not isinstance(frames, Iterable) or isinstance(frames, (str, bytes)):
        raise TypeError(f"{fn}: frames must be an iterable of [H, W, 3] uint8 arrays or a [T, H, W, 3] "
                        f"array, got {type(frames).__name__}")
    return _frame_stream(fn, frames)


def _frame_stream(fn: str, frames: Iterable) -> Iterator[np.ndarray]:
    size = None
    count = 0
    for index, frame in enumerate(frames):
        array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        if array.dtype != np.uint8:
            raise TypeError(f"{fn}: frame {index} must have dtype uint8, got {array.dtype}")
        if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise ValueError(f"{fn}: frame {index} must be [H, W, 3] RGB, got shape {array.shape}")
        size = size or array.shape
        if array.shape != size:
            raise ValueError(f"{fn}: frame {index} is {array.shape[0]} x {array.shape[1]}, but frame 0 is "
                             f"{size[0]} x {size[1]}; all frames must have the same size")
        count += 1
        yield np.ascontiguousarray(array)
    if count == 0:
        raise ValueError(f"{fn}: frames is empty; a video needs at least one frame")


# --- shape shading ---------------------------------------------------------------------------------

def shade_normals(xyz: torch.Tensor, mask: Optional[torch.Tensor] = None, *,
                  light_dir: Union[Sequence[float], torch.Tensor] = DEFAULT_LIGHT_DIR,
                  ambient: float = 0.15, diffuse: float = 0.75, specular: float = 0.0,
                  shininess: float = 32.0, camera_position: Optional[torch.Tensor] = None,
                  background: float = 1.0) -> torch.Tensor:
    """Grey shape rendering of surface-point maps: xyz [B, 3, H, W] world points (the renderer's xyz),
    mask [B, 1, H, W] bool (True = foreground) or None (all foreground) -> image [B, 3, H, W] in [0, 1].

    Normals come from finite differences of the point map, n = d xyz/d row x d xyz/d column:
    central differences where both neighbours are foreground, one-sided next to the background or
    the image border (so the silhouette never mixes in background points), none for isolated pixels
    (then only the ambient term lights them). With the image's rows going down and columns right,
    this n faces the camera for every visible surface; with camera_position [B, 3] (or [3]) given,
    normals are also flipped explicitly toward it.
    Shading: ambient + diffuse max(0, n.l) + specular max(0, n.h)^shininess (Blinn-Phong, needs
    camera_position), with l = normalised light_dir, a world direction (default (0, 1, 5): from the
    front and slightly above, the official depth videos' light position), clamped to [0, 1].
    Background pixels get `background`.
    """
    fn = "shade_normals"
    if specular > 0 and camera_position is None:
        raise ValueError(f"{fn}: specular > 0 needs camera_position (for the view direction), got None")
    points = _point_maps(fn, xyz)                                  # [B, 3, H, W]
    foreground = _mask_like(fn, mask, points)                      # [B, 1, H, W] bool
    light = _unit_vector(fn, "light_dir", light_dir, points)       # [B, 3, 1, 1]
    normals = _surface_normals(points, foreground)                 # [B, 3, H, W] unit or 0
    view = None
    if camera_position is not None:
        view = F.normalize(_camera_positions(fn, camera_position, points) - points, dim=1)   # [B, 3, H, W]
        facing = (normals * view).sum(1, keepdim=True) >= 0
        normals = torch.where(facing, normals, -normals)
    shade = ambient + diffuse * (normals * light).sum(1, keepdim=True).clamp(min=0)      # [B, 1, H, W]
    if specular > 0:
        half = F.normalize(light + view, dim=1)
        shade = shade + specular * (normals * half).sum(1, keepdim=True).clamp(min=0) ** shininess
    shade = torch.where(foreground, shade.clamp(0.0, 1.0), torch.full_like(shade, float(background)))
    return shade.expand(-1, 3, -1, -1).contiguous()


def _surface_normals(points: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """points [B, 3, H, W], foreground [B, 1, H, W] -> unit normals [B, 3, H, W] (0 where undefined)."""
    down = _masked_derivative(points, foreground, dim=2)           # d xyz / d row
    right = _masked_derivative(points, foreground, dim=3)          # d xyz / d column
    return F.normalize(torch.linalg.cross(down, right, dim=1), dim=1, eps=1e-12)


def _masked_derivative(points: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Derivative [B, 3, H, W] of points along `dim` (2 rows, 3 columns) using only valid pixels:
    central (x[k+1] - x[k-1]) / 2 when both neighbours are valid, else the one-sided difference
    that is, else 0."""
    size = points.shape[dim]
    step = points.narrow(dim, 1, size - 1) - points.narrow(dim, 0, size - 1)       # x[k+1] - x[k]
    step_ok = valid.narrow(dim, 1, size - 1) & valid.narrow(dim, 0, size - 1)
    step = step * step_ok
    zero, no = torch.zeros_like(points.narrow(dim, 0, 1)), torch.zeros_like(valid.narrow(dim, 0, 1))
    forward, has_forward = torch.cat([step, zero], dim), torch.cat([step_ok, no], dim)      # at k: k -> k+1
    backward, has_backward = torch.cat([zero, step], dim), torch.cat([no, step_ok], dim)    # at k: k-1 -> k
    count = (has_forward.to(points.dtype) + has_backward.to(points.dtype)).clamp(min=1)
    return (forward + backward) / count


# --- depth colouring -------------------------------------------------------------------------------

def colorize_depth(depth: Union[np.ndarray, torch.Tensor], mask: Optional[Union[np.ndarray, torch.Tensor]] = None,
                   *, depth_range: Optional[Tuple[float, float]] = None,
                   background: Union[int, Sequence[int]] = 255) -> np.ndarray:
    """Depth image(s) -> RGB uint8: depth [H, W] -> [H, W, 3], or [B, 1, H, W] -> [B, H, W, 3].

    Each image's foreground depths (mask True; all pixels when mask is None) are normalised to
    t in [0, 1] with near -> 1 and far -> 0, over that image's own min..max, or over a fixed
    depth_range (near, far) for every image (steady colours across video frames; values outside are
    clipped). A constant depth maps to t = 1. t goes through a viridis-like map: near = bright
    yellow, far = dark purple (luminance rises monotonically with nearness). Background pixels get
    `background`: white (255) by default, a grey level or an (R, G, B) triple.
    """
    fn = "colorize_depth"
    values = to_numpy(depth).astype(np.float64)
    single = values.ndim == 2
    if not (single or (values.ndim == 4 and values.shape[1] == 1)):
        raise ValueError(f"{fn}: depth must be [H, W] or [B, 1, H, W], got shape {values.shape}")
    values = values[None] if single else values[:, 0]              # [B, H, W]
    foreground = np.ones(values.shape, dtype=bool) if mask is None else _depth_mask(fn, mask, depth, single)
    if not np.isfinite(values[foreground]).all():
        raise ValueError(f"{fn}: depth has NaN or infinite values in the foreground")
    nearness = np.stack([_nearness(image, keep, depth_range, fn) for image, keep in zip(values, foreground)])
    colors = _apply_color_map(nearness)                             # [B, H, W, 3] uint8
    colors[~foreground] = _background_rgb(fn, background)
    return colors[0] if single else colors


def _nearness(depth: np.ndarray, foreground: np.ndarray, depth_range, fn: str) -> np.ndarray:
    """depth [H, W] -> t [H, W] in [0, 1], 1 = nearest (0 on the background)."""
    if depth_range is not None:
        near, far = (float(v) for v in depth_range)
        if not near < far:
            raise ValueError(f"{fn}: depth_range must be (near, far) with near < far, got {depth_range!r}")
    elif foreground.any():
        near, far = float(depth[foreground].min()), float(depth[foreground].max())
    else:
        return np.zeros_like(depth)
    if far == near:
        return np.where(foreground, 1.0, 0.0)
    return np.where(foreground, np.clip((far - depth) / (far - near), 0.0, 1.0), 0.0)


def _apply_color_map(t: np.ndarray) -> np.ndarray:
    """t [...] in [0, 1] -> uint8 [..., 3], piecewise-linear between the anchors."""
    anchors = np.linspace(0.0, 1.0, len(_COLOR_MAP_ANCHORS))
    channels = [np.interp(t, anchors, _COLOR_MAP_ANCHORS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def _background_rgb(fn: str, background) -> np.ndarray:
    rgb = np.broadcast_to(np.asarray(background), (3,)) if np.ndim(background) == 0 else np.asarray(background)
    if rgb.shape != (3,) or not np.issubdtype(rgb.dtype, np.integer) or rgb.min() < 0 or rgb.max() > 255:
        raise ValueError(f"{fn}: background must be an int in 0..255 or an (R, G, B) triple of them, got "
                         f"{background!r}")
    return rgb.astype(np.uint8)


# --- argument checks -------------------------------------------------------------------------------

def _crf(fn: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= 51:
        raise ValueError(f"{fn}: crf must be an int in 0..51 (x264 constant rate factor), got {value!r}")
    return int(value)


def _point_maps(fn: str, xyz) -> torch.Tensor:
    if not isinstance(xyz, torch.Tensor):
        xyz = torch.as_tensor(np.asarray(xyz))
    if xyz.dim() != 4 or xyz.shape[1] != 3 or xyz.shape[2] < 2 or xyz.shape[3] < 2:
        raise ValueError(f"{fn}: xyz must be [B, 3, H, W] with H, W >= 2, got shape {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise TypeError(f"{fn}: xyz must be floating point, got dtype {xyz.dtype}")
    return xyz.detach()


def _mask_like(fn: str, mask, points: torch.Tensor) -> torch.Tensor:
    """mask [B, 1, H, W] bool (or None = all foreground) on the points' device."""
    batch, _, rows, cols = points.shape
    if mask is None:
        return torch.ones(batch, 1, rows, cols, dtype=torch.bool, device=points.device)
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    if mask.dtype != torch.bool:
        raise TypeError(f"{fn}: mask must be boolean (True = foreground), got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch, 1, rows, cols):
        raise ValueError(f"{fn}: mask must be [B, 1, H, W] = {[batch, 1, rows, cols]}, got {list(mask.shape)}")
    return mask.to(points.device)


def _unit_vector(fn: str, name: str, value, points: torch.Tensor) -> torch.Tensor:
    """A direction [3] or [B, 3] -> unit [B, 3, 1, 1] in the points' dtype / device."""
    vector = torch.as_tensor(value, dtype=points.dtype, device=points.device)
    if vector.shape not in ((3,), (points.shape[0], 3)) or not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{fn}: {name} must be 3 finite numbers (or [B, 3]), got {value!r}")
    norm = torch.linalg.vector_norm(vector, dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError(f"{fn}: {name} must not be the zero vector")
    return (vector / norm).expand(points.shape[0], 3)[:, :, None, None]


def _camera_positions(fn: str, value, points: torch.Tensor) -> torch.Tensor:
    """camera_position [3] or [B, 3] -> [B, 3, 1, 1]."""
    position = torch.as_tensor(value, dtype=points.dtype, device=points.device)
    if position.shape not in ((3,), (points.shape[0], 3)):
        raise ValueError(f"{fn}: camera_position must be [3] or [B, 3], got shape {tuple(position.shape)}")
    return position.expand(points.shape[0], 3)[:, :, None, None]


def _depth_mask(fn: str, mask, depth, single: bool) -> np.ndarray:
    """The foreground mask as [B, H, W] bool, shaped like the depth it came with."""
    array = to_numpy(mask)
    if array.dtype != np.bool_:
        raise TypeError(f"{fn}: mask must be boolean (True = foreground), got dtype {array.dtype}")
    if array.shape != tuple(depth.shape):
        raise ValueError(f"{fn}: mask must have the depth's shape {tuple(depth.shape)}, got {array.shape}")
    return array[None] if single else array[:, 0]

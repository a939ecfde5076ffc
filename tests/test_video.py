"""stylesdf_fast.generation.video: mp4 / gif writing (streamed, atomic, odd sizes, GIF fallback without
ffmpeg), reading back, normal shading of xyz maps and depth colouring."""
import os

import numpy as np
import pytest
import torch

from stylesdf_fast.generation import video
from stylesdf_fast.generation.video import colorize_depth, shade_normals, video_info, write_video
from stylesdf_fast.models.cameras import generate_camera_params
from stylesdf_fast.models.renderer import camera_rays, pixel_grid


def moving_frames(count, rows, cols):
    """A generator of distinct uint8 frames [H, W, 3] (a bar moving down, a red ramp over time)."""
    for index in range(count):
        frame = np.zeros((rows, cols, 3), dtype=np.uint8)
        frame[..., 0] = 30 * index
        frame[index % rows, :, 1] = 255
        yield frame


def listing(folder):
    return sorted(os.listdir(folder))


# --- writing and reading videos -------------------------------------------------------------------

def test_mp4_from_a_generator(tmp_path):
    path = write_video(moving_frames(6, 32, 48), tmp_path / "clip.mp4", fps=10, crf=18)
    assert path == tmp_path / "clip.mp4"
    assert video_info(path) == (6, 32, 48)
    assert listing(tmp_path) == ["clip.mp4"]                          # no temporary left


def test_mp4_from_an_array(tmp_path):
    frames = np.stack(list(moving_frames(4, 16, 16)))                 # [T, H, W, 3]
    assert video_info(write_video(frames, tmp_path / "a.mp4")) == (4, 16, 16)
    torch_frames = torch.from_numpy(frames)
    assert video_info(write_video(torch_frames, tmp_path / "b.MP4")) == (4, 16, 16)


def test_gif(tmp_path):
    path = write_video(moving_frames(5, 24, 40), tmp_path / "clip.gif", fps=25)
    assert video_info(path) == (5, 24, 40)
    from PIL import Image
    with Image.open(path) as image:
        assert image.info["duration"] == 40 and image.info["loop"] == 0


def test_odd_sizes_are_padded_for_mp4_and_kept_for_gif(tmp_path):
    assert video_info(write_video(moving_frames(3, 31, 45), tmp_path / "odd.mp4")) == (3, 32, 46)
    assert video_info(write_video(moving_frames(3, 31, 45), tmp_path / "odd.gif")) == (3, 31, 45)
    assert video.video_info(write_video(moving_frames(2, 30, 45), tmp_path / "w.mp4")) == (2, 30, 46)


def test_pad_repeats_the_last_row_and_column():
    frame = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    padded = video._pad_to_even(frame)
    assert padded.shape == (4, 6, 3)
    np.testing.assert_array_equal(padded[:3, :5], frame)
    np.testing.assert_array_equal(padded[3, :5], frame[2])
    np.testing.assert_array_equal(padded[:3, 5], frame[:, 4])


def test_mp4_falls_back_to_gif_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_ffmpeg_usable", lambda: False)
    with pytest.warns(RuntimeWarning, match="ffmpeg.*not usable.*GIF"):
        path = write_video(moving_frames(4, 20, 22), tmp_path / "clip.mp4")
    assert path == tmp_path / "clip.gif"
    assert listing(tmp_path) == ["clip.gif"]
    assert video_info(path) == (4, 20, 22)


def test_ffmpeg_is_detected_here():
    assert video._ffmpeg_usable()


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
@pytest.mark.parametrize("error", [RuntimeError("renderer failed"), KeyboardInterrupt()])
def test_failed_write_leaves_no_file(tmp_path, suffix, error):
    def failing_frames():
        yield from moving_frames(2, 16, 16)
        raise error

    with pytest.raises(type(error)):
        write_video(failing_frames(), tmp_path / f"clip{suffix}")
    assert listing(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"previous video")
    frames = list(moving_frames(2, 16, 16)) + [np.zeros((16, 16, 3), np.float32)]
    with pytest.raises(TypeError, match="frame 2 must have dtype uint8"):
        write_video(frames, path)
    assert listing(tmp_path) == ["clip.mp4"] and path.read_bytes() == b"previous video"


def test_write_video_bad_inputs(tmp_path):
    frames = list(moving_frames(2, 16, 16))
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        write_video(frames, tmp_path / "clip.avi")
    with pytest.raises((TypeError, ValueError), match="fps must be"):
        write_video(frames, tmp_path / "clip.mp4", fps=0)
    with pytest.raises(ValueError, match="crf must be"):
        write_video(frames, tmp_path / "clip.mp4", crf=60)
    with pytest.raises(ValueError, match="frames is empty"):
        write_video([], tmp_path / "clip.mp4")
    with pytest.raises(ValueError, match="frames is empty"):
        write_video(iter([]), tmp_path / "clip.gif")
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(frames[0], tmp_path / "clip.mp4")               # one frame, not a sequence
    with pytest.raises(ValueError, match="frame 1 is 8 x 16, but frame 0 is 16 x 16"):
        write_video([frames[0], frames[1][:8]], tmp_path / "clip.gif")
    with pytest.raises(ValueError, match=r"frame 0 must be \[H, W, 3\]"):
        write_video([frames[0][..., :2]], tmp_path / "clip.mp4")
    with pytest.raises(TypeError, match="iterable"):
        write_video(42, tmp_path / "clip.mp4")
    assert listing(tmp_path) == []


def test_video_info_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video_info(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        video_info(tmp_path / "clip.webm")


# --- normal shading ---------------------------------------------------------------------------------

RADIUS = 0.1


def sphere_map(res=64, angles=(0.0, 0.0), background_point=None):
    """The surface renderer's view of a sphere at the origin: xyz [1, 3, H, W] (the first hit along
    each ray), mask [1, 1, H, W] (the ray hits), true unit normals [1, 3, H, W], camera position [3]."""
    dtype = torch.float64
    cams = generate_camera_params(res, "cpu", locations=torch.tensor([angles], dtype=dtype), dtype=dtype)
    i, j = pixel_grid(res, dtype=dtype)
    origins, directions, _ = camera_rays(cams.c2w, cams.focal, i, j, res)
    o, d = origins[0], directions[0]                                           # [H, W, 3]
    a, b, c = (d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - RADIUS ** 2
    disc = b * b - 4 * a * c
    hit = disc > 0
    depth = torch.where(hit, (-b - disc.clamp(min=0).sqrt()) / (2 * a), torch.ones_like(a))
    xyz = o + d * depth[..., None]
    if background_point is not None:
        xyz = torch.where(hit[..., None], xyz, torch.tensor(background_point, dtype=dtype))
    normals = xyz / RADIUS
    as_nchw = lambda t: t.permute(2, 0, 1)[None]
    return as_nchw(xyz), hit[None, None], as_nchw(normals), cams.c2w[0, :, 3]


def test_shading_matches_analytic_normals():
    xyz, mask, normals, _ = sphere_map()
    light = torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64)
    light = light / light.norm()
    shade = shade_normals(xyz, mask, light_dir=light, ambient=0.0, diffuse=1.0)
    assert shade.shape == (1, 3, 64, 64) and shade.dtype == torch.float64
    expected = (normals * light[None, :, None, None]).sum(1, keepdim=True).clamp(min=0)
    # away from the silhouette (where the map is steep) central differences of the smooth map
    # give the normal to O(h^2); next to it one-sided differences are O(h)
    interior = mask & (normals[:, 2:3] > 0.5)
    assert int(interior.sum()) > 500
    assert (shade[:, :1] - expected).abs()[interior].max() < 0.01
    rim = mask & ~interior
    assert (shade[:, :1] - expected).abs()[rim].max() < 0.25


def test_pixels_facing_the_light_are_brighter():
    xyz, mask, normals, _ = sphere_map()
    light = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64) / 2 ** 0.5       # from above and in front
    shade = shade_normals(xyz, mask, light_dir=light)[:, 0]                        # [1, H, W]
    top, bottom = shade[:, :32][mask[:, 0, :32]], shade[:, 32:][mask[:, 0, 32:]]  # row 0 = image top = +y
    assert top.mean() > bottom.mean() + 0.2
    brightest = torch.where(mask[:, 0], shade, torch.full_like(shade, -1)).flatten().argmax()
    facing = (normals[0].reshape(3, -1)[:, brightest] * light).sum()
    assert facing > 0.99


def test_mask_gives_background_and_ignores_background_points():
    xyz, mask, _, _ = sphere_map()
    wild, _, _, _ = sphere_map(background_point=(1e3, -1e3, 7.0))               # garbage off the sphere
    plain = shade_normals(xyz, mask, background=0.25)
    noisy = shade_normals(wild, mask, background=0.25)
    assert bool((plain[~mask.expand(-1, 3, -1, -1)] == 0.25).all())
    torch.testing.assert_close(plain, noisy)
    assert plain.min() >= 0 and plain.max() <= 1
    assert torch.equal(plain[:, 0], plain[:, 1]) and torch.equal(plain[:, 0], plain[:, 2])   # grey


def test_camera_position_orients_mirrored_maps_and_enables_specular():
    xyz, mask, _, camera = sphere_map(angles=(0.3, 0.1))
    reference = shade_normals(xyz, mask, camera_position=camera)
    torch.testing.assert_close(reference, shade_normals(xyz, mask))                # already facing it
    mirrored = shade_normals(xyz.flip(-1), mask.flip(-1), camera_position=camera)  # columns reversed
    torch.testing.assert_close(mirrored.flip(-1), reference)
    shiny = shade_normals(xyz, mask, specular=0.3, camera_position=camera)
    assert bool((shiny >= reference - 1e-12).all())
    assert shiny[mask.expand_as(shiny)].max() > reference[mask.expand_as(shiny)].max() + 0.1
    batch = shade_normals(torch.cat([xyz, xyz]), torch.cat([mask, mask]), camera_position=camera[None].repeat(2, 1))
    torch.testing.assert_close(batch[1:], reference)


def test_shade_normals_without_mask_and_float32():
    xyz, _, _, _ = sphere_map(res=16)
    shade = shade_normals(xyz.float())
    assert shade.dtype == torch.float32 and torch.isfinite(shade).all()


def test_shade_normals_bad_inputs():
    xyz, mask, _, _ = sphere_map(res=8)
    with pytest.raises(ValueError, match="needs camera_position"):
        shade_normals(xyz, mask, specular=0.5)
    with pytest.raises(ValueError, match=r"xyz must be \[B, 3, H, W\]"):
        shade_normals(xyz[0], mask)
    with pytest.raises(TypeError, match="mask must be boolean"):
        shade_normals(xyz, mask.double())
    with pytest.raises(ValueError, match=r"mask must be \[B, 1, H, W\]"):
        shade_normals(xyz, mask[:, :, :4])
    with pytest.raises(ValueError, match="zero vector"):
        shade_normals(xyz, mask, light_dir=(0, 0, 0))
    with pytest.raises(ValueError, match="light_dir must be 3"):
        shade_normals(xyz, mask, light_dir=(0, 1))


# --- depth colouring --------------------------------------------------------------------------------

def luminance(rgb):
    return rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def test_colorize_depth_is_monotone_along_a_ramp():
    depth = np.linspace(0.9, 1.1, 64)[None, :].repeat(3, axis=0)           # [H, W]: farther to the right
    colors = colorize_depth(depth)
    assert colors.shape == (3, 64, 3) and colors.dtype == np.uint8
    brightness = luminance(colors[0])
    assert (np.diff(brightness) < 0).all()                                  # nearer = brighter
    np.testing.assert_array_equal(colors[0, 0], [253, 231, 37])            # nearest: the bright end
    np.testing.assert_array_equal(colors[0, -1], [68, 1, 84])              # farthest: the dark end


def test_colorize_depth_constant_and_empty_foreground():
    flat = colorize_depth(torch.full((1, 1, 5, 6), 1.02))                  # [B, 1, H, W] -> [B, H, W, 3]
    assert flat.shape == (1, 5, 6, 3)
    assert (flat == flat[0, 0, 0]).all() and tuple(flat[0, 0, 0]) == (253, 231, 37)
    none = colorize_depth(np.ones((4, 4)), np.zeros((4, 4), dtype=bool))
    assert (none == 255).all()


def test_colorize_depth_mask_background_and_ranges():
    depth = np.stack([np.linspace(0.9, 1.0, 16), np.linspace(1.0, 1.1, 16)])[:, None, None, :].repeat(4, 2)
    mask = np.ones(depth.shape, dtype=bool)
    mask[:, :, 0] = False
    depth[:, :, 0] = np.nan                                                # ignored: background
    colors = colorize_depth(depth, mask)
    assert colors.shape == (2, 4, 16, 3)
    assert (colors[:, 0] == 255).all()                                     # white background
    np.testing.assert_array_equal(colors[0, 1:], colors[1, 1:])            # each image spans the map
    fixed = colorize_depth(depth, mask, depth_range=(0.9, 1.1), background=(0, 0, 0))
    assert (fixed[:, 0] == 0).all()
    assert luminance(fixed[0, 1:]).min() > luminance(fixed[1, 1:]).max() - 1e-9   # image 0 is nearer
    np.testing.assert_array_equal(fixed[1, 1, -1], [68, 1, 84])


def test_colorize_depth_bad_inputs():
    with pytest.raises(ValueError, match=r"\[H, W\] or \[B, 1, H, W\]"):
        colorize_depth(np.ones((2, 3, 4)))
    with pytest.raises(TypeError, match="mask must be boolean"):
        colorize_depth(np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="mask must have the depth's shape"):
        colorize_depth(np.ones((3, 4)), np.ones((4, 3), dtype=bool))
    with pytest.raises(ValueError, match="NaN or infinite"):
        colorize_depth(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="depth_range"):
        colorize_depth(np.ones((3, 4)), depth_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="background"):
        colorize_depth(np.ones((3, 4)), background=300)

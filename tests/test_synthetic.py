"""The built-in synthetic dataset: exactness of the sphere tracer against analytic answers,
multi-view consistency, variety across identities, determinism, and the dataset file."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from stylesdf_fast import prepare_data
from stylesdf_fast.data import MultiResolutionDataset, image_key
from stylesdf_fast.data import synthetic as S
from stylesdf_fast.models.cameras import focal_from_fov, generate_camera_params
from stylesdf_fast.models.renderer import camera_rays, pixel_grid

RES = 64


def _angle_from_axis(resolution: int) -> torch.Tensor:
    """[H, W] angle between each pixel-centre ray and the optical axis (pinhole, half FoV 6 deg)."""
    focal = focal_from_fov(resolution)
    centres = torch.arange(resolution, dtype=torch.float64) + 0.5 - resolution / 2
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.atan(torch.sqrt(x ** 2 + y ** 2) / focal)


@pytest.mark.parametrize("pose", [(0.0, 0.0), (0.4, -0.2), (-1.0, 0.6)])
def test_sphere_silhouette_and_depth_are_analytic(pose):
    radius = 0.08
    rendered = S.render_scenes(S.sphere_scene(radius), torch.tensor([pose]), RES)
    theta = _angle_from_axis(RES)              # a centred sphere looks the same from every pose
    edge = math.asin(radius)                   # seen from distance 1 it covers angles below asin(r)
    clear = (theta - edge).abs() > 2e-4        # pixels not straddling the silhouette
    expected = theta < edge
    assert torch.equal(rendered.mask[0][clear], expected[clear])
    assert 500 < int(expected.sum()) < RES * RES
    # depth along the view axis: t cos(theta) with t = cos(theta) - sqrt(r^2 - sin^2(theta))
    inner = theta < 0.8 * edge
    t = torch.cos(theta) - torch.sqrt(radius ** 2 - torch.sin(theta) ** 2)
    torch.testing.assert_close(rendered.depth[0][inner].double(), (t * torch.cos(theta))[inner],
                               rtol=0, atol=5e-4)
    background = torch.ones(3, 1)
    assert torch.equal(rendered.image[0][:, ~rendered.mask[0]], background.expand(3, int((~rendered.mask[0]).sum())))
    assert (rendered.image[0][:, rendered.mask[0]] != 1).any(0).all()


def _world_points(angles: torch.Tensor, depth: torch.Tensor, resolution: int) -> torch.Tensor:
    """Unproject depth [B, H, W] (along the view axis) -> world points [B, H, W, 3]."""
    cameras = generate_camera_params(resolution, "cpu", locations=angles)
    origins, directions, _ = camera_rays(cameras.c2w, cameras.focal, *pixel_grid(resolution), resolution)
    return origins + depth[..., None] * directions     # directions have unit depth along the axis


def _project(points: torch.Tensor, angles: torch.Tensor, resolution: int):
    """World points [P, 3] into one camera -> (column, row) pixel indices [P] and view depth [P]."""
    cameras = generate_camera_params(resolution, "cpu", locations=angles)
    rotation, position = cameras.c2w[0, :, :3], cameras.c2w[0, :, 3]
    local = (points - position) @ rotation                      # camera frame, looking along -z
    depth = -local[:, 2]
    focal = cameras.focal[0, 0, 0]
    column = (focal * local[:, 0] / depth + resolution / 2).floor().long()
    row = (-focal * local[:, 1] / depth + resolution / 2).floor().long()
    return column, row, depth


def _agreement(scenes_a, scenes_b, view_a, view_b, resolution=96):
    """Reproject view A's surface points into view B. Of the points B does not see occluded (B's
    depth there is not nearer), the fraction where B has the same depth (within 2 pixel footprints)
    and colour (within 0.08): 1 for a consistent 3D object with view-independent shading
    -> (that fraction, the fraction of points not occluded)."""
    a = S.render_scenes(scenes_a, view_a, resolution)
    b = S.render_scenes(scenes_b, view_b, resolution)
    points = _world_points(view_a, a.depth, resolution)[0][a.mask[0]]
    colours = a.image[0].permute(1, 2, 0)[a.mask[0]]
    column, row, depth = _project(points, view_b, resolution)
    inside = (column >= 0) & (column < resolution) & (row >= 0) & (row < resolution)
    column, row, depth, colours = column[inside], row[inside], depth[inside], colours[inside]
    tolerance = 2 * (2 * math.tan(math.radians(6)) / resolution)
    depth_b = torch.where(b.mask[0], b.depth[0], torch.full_like(b.depth[0], 10.0))[row, column]
    visible = depth_b > depth - tolerance
    same_depth = (depth_b - depth).abs() < tolerance
    same_colour = (b.image[0].permute(1, 2, 0)[row, column] - colours).abs().max(-1).values < 0.08
    return float((same_depth & same_colour)[visible].float().mean()), float(visible.float().mean())


def test_views_of_one_identity_are_consistent_and_of_two_identities_are_not():
    view_a, view_b = torch.tensor([[0.25, 0.05]]), torch.tensor([[-0.2, -0.1]])
    one = S.make_scenes([7])
    agreement, visible = _agreement(one, one, view_a, view_b)
    assert agreement > 0.9 and visible > 0.7      # the rest: pixel steps on steep slopes
    assert _agreement(one, S.make_scenes([8]), view_a, view_b)[0] < 0.3


def test_hits_lie_on_the_surface_and_misses_never_cross_it():
    resolution = 24
    scenes = S.make_scenes([0, 1, 2])
    angles = torch.tensor([S.sample_pose(i) for i in range(3)])
    rendered = S.render_scenes(scenes, angles, resolution)
    points = _world_points(angles, rendered.depth, resolution)                     # [B, H, W, 3]
    sdf_at_hits = S.scene_sdf(scenes, points.reshape(3, -1, 3)).reshape(rendered.mask.shape)
    assert sdf_at_hits[rendered.mask].abs().max() < 1e-3
    # dense samples along every missed ray (through the whole bounding sphere) stay outside
    cameras = generate_camera_params(resolution, "cpu", locations=angles)
    origins, directions, _ = camera_rays(cameras.c2w, cameras.focal, *pixel_grid(resolution), resolution)
    steps = torch.linspace(0.85, 1.15, 600)
    samples = origins[..., None, :] + steps[:, None] * directions[..., None, :]    # [B, H, W, 600, 3]
    sdf = S.scene_sdf(scenes, samples.reshape(3, -1, 3)).reshape(*rendered.mask.shape, -1)
    assert sdf.amin(-1)[~rendered.mask].min() > 0
    # and every hit ray reaches the surface (to the tracer's tolerance: grazing rays may only touch it)
    assert sdf.amin(-1)[rendered.mask].max() < 8 * S._HIT_EPSILON


def test_identities_differ_and_fit_the_frame():
    count = 12
    scenes = S.make_scenes(range(count))
    rendered = S.render_scenes(scenes, torch.zeros(count, 2), 48)
    flat = rendered.image.reshape(count, -1)
    differences = (flat[:, None] - flat[None]).abs().mean(-1)
    assert differences[~torch.eye(count, dtype=torch.bool)].min() > 0.02
    assert (scenes.bound <= 0.1 + 1e-6).all() and (scenes.bound > 0.05).all()
    border = torch.cat([rendered.mask[:, 0], rendered.mask[:, -1], rendered.mask[:, :, 0], rendered.mask[:, :, -1]], 1)
    assert not border.any()                                   # whole objects, nothing cut by the frame
    assert (rendered.mask.float().mean((1, 2)) > 0.1).all()   # and they fill a good part of it


def test_deterministic_and_independent_of_batching():
    angles = torch.tensor([S.sample_pose(i, seed=5) for i in range(4)])
    together = S.render_scenes(S.make_scenes(range(4), seed=5), angles, 32)
    alone = [S.render_scenes(S.make_scenes([i], seed=5), angles[i:i + 1], 32) for i in range(4)]
    for field in ("image", "depth", "mask"):
        assert torch.equal(getattr(together, field), torch.cat([getattr(r, field) for r in alone]))
    other_seed = S.render_scenes(S.make_scenes(range(4), seed=6), angles, 32)
    assert not torch.equal(together.image, other_seed.image)


def test_poses_follow_the_official_ffhq_distribution():
    poses = np.array([S.sample_pose(i) for i in range(4000)])
    assert abs(poses[:, 0].std() - 0.3) < 0.015 and abs(poses[:, 1].std() - 0.15) < 0.008
    assert abs(poses.mean(0)).max() < 0.015


def test_dataset_file_holds_images_and_their_cameras(tmp_path):
    config = S.SyntheticConfig(num_images=6, sizes=(16, 32), seed=3, views_per_identity=2)
    path = S.build_synthetic_dataset(tmp_path / "syn", config, progress=False, batch=4)
    dataset = MultiResolutionDataset(path, resolution=32, nerf_resolution=16, hflip=False)
    assert len(dataset) == 6 and dataset.info["config"]["seed"] == 3
    angles = dataset.camera_angles()
    expected = torch.tensor([S.sample_pose(i, seed=3) for i in range(6)], dtype=torch.float32)
    torch.testing.assert_close(angles, expected)
    assert [dataset.meta(i)["identity"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    rendered = S.render_scenes(S.make_scenes([1], seed=3), expected[3:4], 32)
    stored = dataset.read_image(3)
    assert np.abs(np.asarray(stored, dtype=np.float64) / 255
                  - rendered.image[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    small = MultiResolutionDataset(path, resolution=16, hflip=False).read_image(3)
    assert np.array_equal(np.asarray(small), np.asarray(stored.resize((16, 16), Image.LANCZOS)))


def test_rebuild_is_byte_identical(tmp_path):
    config = S.SyntheticConfig(num_images=3, sizes=(16,), seed=1)
    first = S.build_synthetic_dataset(tmp_path / "a", config, progress=False)
    second = S.build_synthetic_dataset(tmp_path / "b", config, progress=False, batch=1)
    read = lambda path, i: MultiResolutionDataset(path, resolution=16)._record(image_key(16, i))  # noqa: E731
    assert all(read(first, i) == read(second, i) for i in range(3))


def test_ensure_builds_once_into_the_cache(tmp_path):
    config = S.SyntheticConfig(num_images=2, sizes=(16,))
    path = S.ensure_synthetic_dataset(tmp_path, config, progress=False)
    mtime = (path / "data.mdb").stat().st_mtime_ns
    assert S.ensure_synthetic_dataset(tmp_path, config, progress=False) == path
    assert (path / "data.mdb").stat().st_mtime_ns == mtime
    assert S.ensure_synthetic_dataset(tmp_path, S.SyntheticConfig(num_images=3, sizes=(16,)), progress=False) != path


def test_prepare_data_synthetic_flag(tmp_path, capsys):
    out = tmp_path / "syn"
    assert prepare_data.main(["--synthetic", "3", "--size", "16", "--out", str(out)]) == 0
    assert MultiResolutionDataset(out, resolution=16).length == 3
    assert prepare_data.main(["--synthetic", "3", "--out", str(tmp_path / "x"), str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("num_images", 0, "num_images"),
    ("object_radius", 0.2, "object_radius"),
    ("background", (2.0, 0.0, 0.0), "background"),
])
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        S.SyntheticConfig(**{field: value}).validated()

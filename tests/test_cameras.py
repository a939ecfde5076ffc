"""stylesdf_fast.models.cameras: the StyleSDF camera model (docs/official.md sections 1.6, 1.7, 6): positions on
the unit sphere, orthonormal look-at frames (OpenGL, looking along -z at the origin), the straight
up/down fallback, intrinsics, the pose distributions, sweep / fixed / video layouts, reproducibility
and bad input."""
import math

import pytest
import torch

from stylesdf_fast.models import cameras as cam

TOL = dict(atol=1e-6, rtol=0)           # float32 geometry
TOL64 = dict(atol=1e-12, rtol=0)        # float64 geometry
POLE = math.pi / 2


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def check_frames(c2w, tol=TOL):
    """c2w [B, 3, 4]: orthonormal rotation with det +1; the camera z axis is the unit position, so
    the camera looks along -z at the origin; the position lies on the unit sphere."""
    rot, pos = c2w[:, :, :3], c2w[:, :, 3]
    eye = torch.eye(3, dtype=c2w.dtype).expand_as(rot)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye, **tol)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(rot), dtype=c2w.dtype), **tol)
    torch.testing.assert_close(pos.norm(dim=1), torch.ones(len(pos), dtype=c2w.dtype), **tol)
    torch.testing.assert_close(rot[:, :, 2], pos / pos.norm(dim=1, keepdim=True), **tol)
    forward = rot @ torch.tensor([0.0, 0.0, -1.0], dtype=c2w.dtype)     # camera-frame -z in the world
    torch.testing.assert_close(pos + forward, torch.zeros_like(pos), **tol)  # one unit ahead: origin


def project(c2w, focal, point, resolution):
    """Pixel (i, j) of a world point, inverting the renderer's ray direction
    ((i - W/2)/f, -(j - H/2)/f, -1) (docs/official.md section 1.6)."""
    local = c2w[:, :3].T @ (point - c2w[:, 3])
    return (resolution / 2 + focal * local[0] / -local[2], resolution / 2 - focal * local[1] / -local[2])


# --- geometry --------------------------------------------------------------------------------------

def test_positions_on_unit_sphere_with_the_official_formula():
    azim, elev = torch.rand(100, dtype=torch.float64) * 6 - 3, torch.rand(100, dtype=torch.float64) * 3 - 1.5
    pos = cam.camera_positions(azim, elev)
    assert pos.shape == (100, 3)
    torch.testing.assert_close(pos.norm(dim=-1), torch.ones(100, dtype=torch.float64), **TOL64)
    expected = torch.stack([elev.cos() * azim.sin(), elev.sin(), elev.cos() * azim.cos()], -1)
    torch.testing.assert_close(pos, expected, **TOL64)
    torch.testing.assert_close(cam.camera_positions(azim, elev, radius=2.5), 2.5 * expected, **TOL64)
    torch.testing.assert_close(cam.camera_positions(torch.zeros(()), torch.zeros(())), torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL), (torch.float64, TOL64)])
def test_frames_orthonormal_and_looking_at_origin(dtype, tol):
    params = cam.generate_camera_params(64, "cpu", batch=256, azim_range=1.0, elev_range=0.6,
                                        generator=seeded(), dtype=dtype)
    assert params.c2w.dtype == dtype and params.c2w.shape == (256, 3, 4)
    check_frames(params.c2w, tol)
    # +y up: for poses away from the poles the camera's y axis points up and its x axis is horizontal
    assert bool((params.c2w[:, 1, 1] > 0).all())
    torch.testing.assert_close(params.c2w[:, 1, 0], torch.zeros(256, dtype=dtype), **tol)


def test_frontal_pose_is_identity_at_plus_z():
    c2w = cam.generate_camera_params(64, "cpu", locations=torch.zeros(1, 2)).c2w[0]
    torch.testing.assert_close(c2w[:, :3], torch.eye(3))
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0.0, 0.0, 1.0]))


def test_quarter_turn_frame():
    c2w = cam.generate_camera_params(64, "cpu", locations=[[math.pi / 2, 0.0]]).c2w[0]
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(c2w, expected, **TOL)


def test_image_orientation_opengl():
    """Frontal camera: a point toward +x lands right of centre, toward +y above it (row 0 on top);
    the origin projects to the image centre from any pose."""
    params = cam.generate_camera_params(64, "cpu", batch=4, generator=seeded())
    c2w, f = params.c2w[0], params.focal[0, 0, 0]
    frontal = cam.generate_camera_params(64, "cpu", locations=torch.zeros(1, 2)).c2w[0]
    i, j = project(frontal, f, torch.tensor([0.01, 0.0, 0.0]), 64)
    assert i > 32 and abs(j - 32) < 1e-4
    i, j = project(frontal, f, torch.tensor([0.0, 0.01, 0.0]), 64)
    assert j < 32 and abs(i - 32) < 1e-4
    i, j = project(c2w, f, torch.zeros(3), 64)
    assert abs(i - 32) < 1e-4 and abs(j - 32) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL), (torch.float64, TOL64)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fallback_straight_up_or_down(dtype, tol, sign):
    azim = torch.tensor([0.0, 0.3, -1.2, 2.5], dtype=dtype)
    locations = torch.stack([azim, torch.full_like(azim, sign * POLE)], 1)
    c2w = cam.generate_camera_params(64, "cpu", locations=locations).c2w
    assert torch.isfinite(c2w).all()
    check_frames(c2w, tol)
    torch.testing.assert_close(c2w[:, :, 2], torch.tensor([0.0, sign, 0.0], dtype=dtype).expand(4, 3), **tol)
    # the fallback is the limit of the regular frame as the elevation approaches the pole
    near_pole = torch.stack([azim, torch.full_like(azim, sign * (POLE - 1e-4))], 1)
    c2w_near = cam.generate_camera_params(64, "cpu", locations=near_pole).c2w
    torch.testing.assert_close(c2w[:, :, :3], c2w_near[:, :, :3], atol=1e-3, rtol=0)


def test_look_at_origin_exact_pole_without_azimuth():
    positions = torch.tensor([[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    c2w = cam.look_at_origin(positions)
    rot = c2w[:, :, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(3, 3, 3), **TOL64)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3, dtype=torch.float64), **TOL64)
    torch.testing.assert_close(rot[:2, :, 0], torch.tensor([[1.0, 0.0, 0.0]] * 2, dtype=torch.float64), **TOL64)
    torch.testing.assert_close(c2w[:, :, 3], positions)
    assert cam.look_at_origin(torch.randn(2, 5, 3)).shape == (2, 5, 3, 4)


# --- intrinsics ------------------------------------------------------------------------------------

def test_focal_and_bounds():
    assert cam.focal_from_fov(64) == pytest.approx(304.46, abs=0.01)
    assert cam.focal_from_fov(128) == pytest.approx(608.92, abs=0.01)
    assert cam.focal_from_fov(64, 12) == pytest.approx(32 / math.tan(math.radians(12)))
    assert cam.near_far() == pytest.approx((0.88, 1.12))
    params = cam.generate_camera_params(128, "cpu", batch=5, generator=seeded())
    assert params.focal.shape == params.near.shape == params.far.shape == (5, 1, 1)
    torch.testing.assert_close(params.focal, torch.full((5, 1, 1), 608.9193))
    torch.testing.assert_close(params.near, torch.full((5, 1, 1), 0.88))
    torch.testing.assert_close(params.far, torch.full((5, 1, 1), 1.12))
    near, far = cam.generate_camera_params(64, "cpu", batch=2, dist_radius=0.3, generator=seeded())[2:4]
    torch.testing.assert_close(near, torch.full((2, 1, 1), 0.7))
    torch.testing.assert_close(far, torch.full((2, 1, 1), 1.3))


def test_per_camera_fov_tensor_as_render_video_passes_it():
    locations = cam.ellipse_trajectory(10)
    fov = torch.linspace(4, 8, 10).view(10, 1)
    focal = cam.generate_camera_params(64, "cpu", locations=locations, fov_ang=fov).focal
    torch.testing.assert_close(focal.view(10), 32 / torch.tan(torch.deg2rad(fov.view(10))))
    single = cam.generate_camera_params(64, "cpu", locations=locations, fov_ang=torch.tensor(6.0)).focal
    torch.testing.assert_close(single, torch.full((10, 1, 1), 304.4597))


# --- pose distributions ----------------------------------------------------------------------------

def test_gaussian_vs_uniform_statistics():
    n = 20000
    gauss = cam.sample_angles(n, generator=seeded(1))
    unif = cam.sample_angles(n, uniform=True, generator=seeded(2))
    for angles in (gauss, unif):
        assert angles.shape == (n, 2)
        assert angles.mean(0).abs().max() < 0.01
    torch.testing.assert_close(gauss.std(0), torch.tensor([0.3, 0.15]), rtol=0.03, atol=0)
    torch.testing.assert_close(unif.std(0), torch.tensor([0.3, 0.15]) / math.sqrt(3), rtol=0.03, atol=0)
    # Gaussian is unclipped (about 32% beyond one std); uniform stays inside and fills the range
    assert 0.28 < float((gauss[:, 0].abs() > 0.3).float().mean()) < 0.36
    assert float(unif[:, 0].abs().max()) <= 0.3 and float(unif[:, 1].abs().max()) <= 0.15
    assert float(unif[:, 0].min()) < -0.29 and float(unif[:, 0].max()) > 0.29
    assert float(unif[:, 1].min()) < -0.145 and float(unif[:, 1].max()) > 0.145


def test_uniform_nonnegative_elevation_as_official_code():
    angles = cam.sample_angles(5000, uniform=True, uniform_elev_nonnegative=True, generator=seeded())
    assert float(angles[:, 1].min()) >= 0 and float(angles[:, 1].max()) <= 0.15
    assert abs(float(angles[:, 1].mean()) - 0.075) < 0.005


def test_ranges_and_viewpoint():
    params = cam.generate_camera_params(64, "cpu", batch=1000, uniform=True, azim_range=0.15,
                                        elev_range=0.05, generator=seeded())
    assert float(params.viewpoint[:, 0].abs().max()) <= 0.15 and float(params.viewpoint[:, 1].abs().max()) <= 0.05
    azim, elev = params.viewpoint.unbind(1)
    torch.testing.assert_close(params.c2w[:, :, 3], cam.camera_positions(azim, elev))
    assert torch.equal(cam.sample_angles(3, azim_range=0.0, elev_range=0.0), torch.zeros(3, 2))


def test_draw_order_and_generator_reproducibility():
    """Same generator seed -> same cameras; the draws follow the official order: azimuth [B, 1] then
    elevation [B, 1] (randn for Gaussian, rand for uniform), so a seed means the same as there."""
    first = cam.generate_camera_params(64, "cpu", batch=6, generator=seeded(7))
    second = cam.generate_camera_params(64, "cpu", batch=6, generator=seeded(7))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    other = cam.generate_camera_params(64, "cpu", batch=6, generator=seeded(8))
    assert not torch.equal(first.viewpoint, other.viewpoint)
    g = seeded(7)
    expected = torch.cat([0.3 * torch.randn(6, 1, generator=g), 0.15 * torch.randn(6, 1, generator=g)], 1)
    torch.testing.assert_close(first.viewpoint, expected)
    g = seeded(3)
    expected = torch.cat([-0.3 + 0.6 * torch.rand(6, 1, generator=g), -0.15 + 0.3 * torch.rand(6, 1, generator=g)], 1)
    torch.testing.assert_close(cam.sample_angles(6, uniform=True, generator=seeded(3)), expected)
    # without a generator: the global RNG, reproducible through torch.manual_seed
    torch.manual_seed(11)
    a = cam.generate_camera_params(64, "cpu", batch=3).viewpoint
    torch.manual_seed(11)
    assert torch.equal(a, cam.generate_camera_params(64, "cpu", batch=3).viewpoint)


# --- layouts ---------------------------------------------------------------------------------------

def test_sweep_layout():
    params = cam.generate_camera_params(64, "cpu", batch=3, sweep=True, generator=seeded())
    assert params.c2w.shape == (24, 3, 4) and params.viewpoint.shape == (24, 2)
    views = params.viewpoint.view(3, 8, 2)
    azims = -0.3 + (0.6 / 7) * torch.arange(8.0)
    torch.testing.assert_close(views[..., 0], azims.expand(3, 8))
    assert (views[..., 1] == views[:, :1, 1]).all()                    # one elevation per identity
    assert float(views[..., 1].abs().max()) <= 0.15
    assert len(set(views[:, 0, 1].tolist())) == 3                      # identities differ
    g = seeded()
    torch.testing.assert_close(views[:, 0, 1], -0.15 + 0.3 * torch.rand(3, 1, generator=g).view(3))
    check_frames(params.c2w)


def test_locations_passthrough_and_fixed_views():
    fixed = cam.fixed_view_angles()
    assert fixed.shape == (13, 2)
    torch.testing.assert_close(fixed[:7, 0], torch.tensor([0, -0.45, -0.3, -0.15, 0.15, 0.3, 0.45]))
    torch.testing.assert_close(fixed[7:, 1], torch.tensor([-0.225, -0.15, -0.075, 0.075, 0.15, 0.225]))
    assert (fixed[:7, 1] == 0).all() and (fixed[7:, 0] == 0).all()
    params = cam.generate_camera_params(64, "cpu", batch=99, locations=fixed.double())
    assert params.c2w.shape == (13, 3, 4) and params.c2w.dtype == torch.float64
    assert torch.equal(params.viewpoint, fixed.double())
    ints = cam.generate_camera_params(64, None, locations=torch.zeros(2, 2, dtype=torch.long))
    assert ints.viewpoint.dtype == torch.get_default_dtype()


def test_video_trajectories():
    sweep = cam.azimuth_sweep_trajectory()
    assert sweep.shape == (cam.VIDEO_FRAMES, 2) and (sweep[:, 1] == 0).all()
    torch.testing.assert_close(sweep[[0, -1], 0], torch.tensor([0.45, 0.45]))
    assert float(sweep[:, 0].min()) == pytest.approx(-0.45, abs=1e-4)
    assert float(cam.azimuth_sweep_trajectory(uniform=True)[:, 0].max()) == pytest.approx(0.3)
    ellipse = cam.ellipse_trajectory(9)
    t = torch.linspace(0, 1, 9, dtype=torch.float64) * 2 * math.pi
    torch.testing.assert_close(ellipse, torch.stack([0.45 * t.cos(), 0.225 * t.sin()], 1).float())
    uniform = cam.ellipse_trajectory(9, azim_range=0.2, elev_range=0.1, uniform=True)
    torch.testing.assert_close(uniform, torch.stack([0.2 * t.cos(), 0.05 + 0.05 * t.sin()], 1).float())
    assert cam.ellipse_trajectory(1).shape == (1, 2)


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error", [
    (dict(batch=0), ValueError),
    (dict(batch=-2), ValueError),
    (dict(batch=1.5), TypeError),
    (dict(batch=True), TypeError),
    (dict(azim_range=-0.1), ValueError),
    (dict(elev_range=-0.01), ValueError),
    (dict(azim_range=float("nan")), ValueError),
    (dict(azim_range="0.3"), TypeError),
    (dict(elev_range=-0.1, sweep=True), ValueError),
    (dict(locations=torch.zeros(3)), ValueError),
    (dict(locations=torch.zeros(3, 3)), ValueError),
    (dict(locations=torch.zeros(0, 2)), ValueError),
    (dict(locations=torch.zeros(2, 2, 1)), ValueError),
    (dict(locations=torch.zeros(2, 2, dtype=torch.bool)), TypeError),
    (dict(locations="front"), TypeError),
    (dict(locations=torch.zeros(2, 2), sweep=True), ValueError),
    (dict(fov_ang=0), ValueError),
    (dict(fov_ang=90), ValueError),
    (dict(fov_ang=torch.full((3,), 6.0), locations=torch.zeros(2, 2)), ValueError),
    (dict(fov_ang=torch.tensor([6.0, -1.0]), locations=torch.zeros(2, 2)), ValueError),
    (dict(dist_radius=0), ValueError),
    (dict(dist_radius=1.0), ValueError),
    (dict(dist_radius=-0.12), ValueError),
    (dict(generator=0), TypeError),
    (dict(dtype=torch.int32), TypeError),
])
def test_generate_camera_params_bad_input(kwargs, error):
    with pytest.raises(error):
        cam.generate_camera_params(64, "cpu", **kwargs)


@pytest.mark.parametrize("call,error", [
    (lambda: cam.generate_camera_params(0, "cpu"), ValueError),
    (lambda: cam.generate_camera_params("64", "cpu"), TypeError),
    (lambda: cam.focal_from_fov(64, -6), ValueError),
    (lambda: cam.near_far(0.12, dist=0.0), ValueError),
    (lambda: cam.sample_angles(0), ValueError),
    (lambda: cam.sweep_angles(2, num_views=1), ValueError),
    (lambda: cam.fixed_view_angles(-0.3), ValueError),
    (lambda: cam.azimuth_sweep_trajectory(0), ValueError),
    (lambda: cam.ellipse_trajectory(10, elev_range=-1), ValueError),
    (lambda: cam.camera_positions([0.0], [0.0]), TypeError),
    (lambda: cam.camera_positions(torch.zeros(2), torch.zeros(2), radius=0), ValueError),
    (lambda: cam.look_at_origin(torch.zeros(4, 2)), ValueError),
    (lambda: cam.look_at_origin(torch.zeros(4, 3, dtype=torch.long)), TypeError),
])
def test_helpers_bad_input(call, error):
    with pytest.raises(error):
        call()

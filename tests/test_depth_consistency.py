"""stylesdf_fast.evaluation.depth_consistency: projection inverts the renderer's camera rays, the
modified Chamfer distance on analytic spheres rendered with our own cameras and rays, the
visibility filter, exact chunked nearest neighbours, and bad input."""
import importlib
import math

import pytest
import torch

# The package re-exports the function depth_consistency under the module's name, so fetch the module
# itself (an attribute import would give the function).
dc = importlib.import_module("stylesdf_fast.evaluation.depth_consistency")
from stylesdf_fast.models.cameras import generate_camera_params
from stylesdf_fast.models.renderer import camera_rays, pixel_grid

RES = 64
RADIUS = 0.08             # fits the 12 degree frustum (half-width tan 6 deg ~ 0.105 at the origin)


def camera(azim, elev, resolution=RES):
    """(c2w [1, 3, 4], focal [1, 1, 1]) float64 for one pose."""
    params = generate_camera_params(resolution, "cpu", locations=torch.tensor([[azim, elev]], dtype=torch.float64),
                                    dtype=torch.float64)
    return params.c2w, params.focal


def rays(azim, elev, resolution=RES):
    """Origins, directions [R*R, 3] of the renderer's rays (row-major pixels) and the camera pair."""
    c2w, focal = camera(azim, elev, resolution)
    i, j = pixel_grid(resolution, dtype=torch.float64)
    origins, directions, _ = camera_rays(c2w, focal, i, j, resolution)
    return origins.reshape(-1, 3), directions.reshape(-1, 3), (c2w[0], focal[0])


def sphere_view(azim, elev, radius=RADIUS, resolution=RES):
    """Exact first hits of the renderer's rays with a sphere at the origin -> points [R*R, 3]
    (background rows hold the ray origin), mask [R*R], camera (c2w [3, 4], focal [1, 1])."""
    origins, directions, cam = rays(azim, elev, resolution)
    a = (directions * directions).sum(1)
    b = (origins * directions).sum(1)
    c = (origins * origins).sum(1) - radius ** 2
    discriminant = b * b - a * c
    mask = discriminant > 0
    t = (-b - discriminant.clamp(min=0).sqrt()) / a
    points = torch.where(mask[:, None], origins + t[:, None] * directions, origins)
    return points, mask, cam


def pixel_footprint(resolution=RES, radius=RADIUS):
    """World size of one pixel at the sphere's nearest depth (1 - r): the sampling spacing."""
    _, focal = camera(0.0, 0.0, resolution)
    return (1 - radius) / float(focal)


# --- projection ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("azim, elev", [(0.0, 0.0), (0.3, -0.1), (-0.5, 0.2), (math.pi / 2, 1.2)])
def test_projection_inverts_camera_rays(azim, elev):
    origins, directions, (c2w, focal) = rays(azim, elev)
    t = 0.5 + 1.5 * torch.rand(len(origins), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pixels, depth = dc.project_points(origins + t[:, None] * directions, c2w, focal, RES)
    i, j = pixel_grid(RES, dtype=torch.float64)
    torch.testing.assert_close(pixels, torch.stack([i.reshape(-1), j.reshape(-1)], 1), rtol=0, atol=1e-9)
    # the camera-frame direction has z = -1, so the ray parameter is the depth along -z
    torch.testing.assert_close(depth, t, rtol=0, atol=1e-12)


def test_points_behind_the_camera_land_outside_the_image():
    c2w, focal = camera(0.0, 0.0)
    behind = torch.tensor([[0.0, 0.0, 2.0], [0.01, 0.0, 1.0]], dtype=torch.float64)  # camera at z = 1
    pixels, depth = dc.project_points(behind, c2w[0], focal[0], RES)
    assert torch.equal(pixels, torch.full((2, 2), -1.0, dtype=torch.float64))
    assert depth[0] < 0 and depth[1] == 0


# --- the metric on analytic spheres -------------------------------------------------------------------

def test_identical_views_give_zero():
    points, mask, cam = sphere_view(0.2, 0.1)
    result = dc.depth_consistency(points, mask, cam, points.clone(), mask.clone(), cam, RES)
    assert result == {"chamfer": 0.0, "a_to_b": 0.0, "b_to_a": 0.0, "counted_fraction_a": 1.0,
                      "counted_fraction_b": 1.0}


def test_two_views_of_one_sphere_agree_within_the_pixel_spacing():
    # Both point sets lie exactly on the sphere, sampled by the two pixel grids; a point's nearest
    # sample of the other view is therefore within about one pixel footprint s (for a square grid
    # the mean nearest-sample distance is ~0.38 s; foreshortening near the silhouettes stretches the
    # grid). A surface error would show up as a distance >> s; we require chamfer < s.
    spacing = pixel_footprint()
    a = sphere_view(0.0, 0.0)
    b = sphere_view(0.1, 0.05)
    result = dc.depth_consistency(*a, *b, RES)
    assert 0 < result["chamfer"] < spacing, (result, spacing)
    assert result["counted_fraction_a"] > 0.95 and result["counted_fraction_b"] > 0.95


@pytest.mark.parametrize("resolution, delta", [(64, 0.01), (128, 0.005)])
def test_a_larger_sphere_is_off_by_the_radius_difference(resolution, delta):
    # Nearest distance from a point of one sphere to the samples of the concentric other one is
    # sqrt(delta^2 + e^2), e the tangential offset to the nearest sample (e <~ s, the footprint),
    # so the excess over delta is <= s^2 / (2 delta); we allow s^2 / delta.
    spacing = pixel_footprint(resolution)
    small = sphere_view(0.0, 0.0, RADIUS, resolution)
    large = sphere_view(0.1, 0.05, RADIUS + delta, resolution)
    result = dc.depth_consistency(*small, *large, resolution)
    for key in ("chamfer", "a_to_b", "b_to_a"):
        assert result[key] == pytest.approx(delta, abs=spacing ** 2 / delta), (key, result)
    # every point of the small sphere projects into the larger disk; the larger sphere's rim does not
    assert result["counted_fraction_a"] == 1.0 and result["counted_fraction_b"] < 0.95


def test_counted_fraction_is_the_overlap_of_the_silhouettes():
    # Same camera: a point of the larger sphere counts iff its pixel lies in the smaller sphere's disk,
    # whose angular radius is asin(r) -> pixel radius f tan(asin r). Pixel discretisation moves the
    # ratio by about the rim pixels' share, 2 / (disk radius in pixels) ~ 0.08 here; we allow 0.03
    # since rim pixels fall in and out about equally.
    delta = 0.01
    small = sphere_view(0.0, 0.0, RADIUS)
    large = sphere_view(0.0, 0.0, RADIUS + delta)
    result = dc.depth_consistency(*small, *large, RES)
    expected = (math.tan(math.asin(RADIUS)) / math.tan(math.asin(RADIUS + delta))) ** 2
    assert result["counted_fraction_b"] == pytest.approx(expected, abs=0.03)
    assert result["counted_fraction_a"] == 1.0


def test_points_not_seen_by_the_other_view_are_excluded():
    # View b only has foreground in the left half of the image. View a (the same camera) is the
    # sphere, but its right-half points are pushed far back along their own rays: they still
    # project onto their own (right-half) pixels, which are background in b, so they must not count.
    points_b, mask_sphere, cam = sphere_view(0.0, 0.0)
    left = (torch.arange(RES * RES) % RES) < RES // 2
    mask_b = mask_sphere & left
    origins, directions, _ = rays(0.0, 0.0)
    points_a = points_b.clone()
    right = mask_sphere & ~left
    points_a[right] = origins[right] + 1.1 * (points_b[right] - origins[right])     # 10 % deeper
    result = dc.depth_consistency(points_a, mask_sphere, cam, points_b, mask_b, cam, RES)
    assert result["a_to_b"] == 0.0 and result["b_to_a"] == 0.0
    assert result["counted_fraction_a"] == pytest.approx(int(mask_b.sum()) / int(mask_sphere.sum()))
    assert result["counted_fraction_b"] == 1.0
    # control: had they counted, the displaced points would have been ~0.09 from b's surface
    far = dc.nearest_neighbour_distances(points_a[right], points_b[mask_b])
    assert float(far.min()) > 0.05


def test_views_that_do_not_overlap_raise():
    points_a, mask_a, cam = sphere_view(0.0, 0.0)
    mask_b = torch.zeros(RES * RES, dtype=torch.bool)
    mask_b[0] = True                                   # only the top-left pixel, far from the sphere
    with pytest.raises(ValueError, match="view a .* the views do not overlap"):
        dc.depth_consistency(points_a, mask_a, cam, points_a, mask_b, cam, RES)


def test_chunked_nearest_neighbours_are_exact():
    generator = torch.Generator().manual_seed(1)
    queries = torch.rand(100, 3, generator=generator, dtype=torch.float64)
    targets = torch.rand(37, 3, generator=generator, dtype=torch.float64) + 0.5
    brute = (queries[:, None, :] - targets[None, :, :]).norm(dim=2).min(dim=1).values
    torch.testing.assert_close(dc.nearest_neighbour_distances(queries, targets, chunk_size=7), brute,
                               rtol=0, atol=1e-12)


# --- bad input ---------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors():
    points, mask, cam = sphere_view(0.0, 0.0)
    c2w, focal = cam
    with pytest.raises(ValueError, match=r"points_a must have one point per pixel, \[R\*R, 3\] = \[4096, 3\]"):
        dc.depth_consistency(points[:100], mask, cam, points, mask, cam, RES)
    with pytest.raises(ValueError, match=r"points_b must have shape \[N, 3\]"):
        dc.depth_consistency(points, mask, cam, points[:, :2], mask, cam, RES)
    with pytest.raises(TypeError, match="mask_a must be a torch.bool tensor"):
        dc.depth_consistency(points, mask.float(), cam, points, mask, cam, RES)
    with pytest.raises(ValueError, match=r"mask_b must have shape \[R\*R\]"):
        dc.depth_consistency(points, mask, cam, points, mask.reshape(RES, RES), cam, RES)
    with pytest.raises(ValueError, match="mask_b has no foreground"):
        dc.depth_consistency(points, mask, cam, points, torch.zeros_like(mask), cam, RES)
    with pytest.raises(ValueError, match=r"c2w\) must have shape \[3, 4\]"):
        dc.depth_consistency(points, mask, (c2w[None], focal), points, mask, cam, RES)
    with pytest.raises(ValueError, match="must be a rotation"):
        dc.depth_consistency(points, mask, (2 * c2w, focal), points, mask, cam, RES)
    with pytest.raises(ValueError, match=r"focal\) must be a finite number > 0"):
        dc.depth_consistency(points, mask, (c2w, -3.0), points, mask, cam, RES)
    with pytest.raises(TypeError, match=r"cam_b must be a pair \(c2w \[3, 4\], focal\)"):
        dc.depth_consistency(points, mask, cam, points, mask, c2w, RES)
    with pytest.raises(TypeError, match="resolution must be an int"):
        dc.depth_consistency(points, mask, cam, points, mask, cam, 64.0)
    broken = points.clone()
    broken[mask.nonzero()[0]] = float("nan")
    with pytest.raises(ValueError, match="points_a has NaN/inf at foreground pixels"):
        dc.depth_consistency(broken, mask, cam, points, mask, cam, RES)
    with pytest.raises(ValueError, match="points has NaN/inf"):
        dc.project_points(broken, c2w, focal, RES)

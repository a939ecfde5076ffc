"""stylesdf_fast.generation.mesh: the official frustum -> box resampling (align_volume), marching
cubes with the official and the metric vertex mappings, depth-map meshes, OBJ/PLY files.

Analytic SDFs are sampled exactly where our surface renderer samples them (our camera and ray code,
offset sampling, near 0.88, far 1.12), so these tests also pin the axis order and signs."""
import math
import os

import numpy as np
import pytest
import torch

from stylesdf_fast.generation import mesh as mesh_module
from stylesdf_fast.generation.mesh import (Mesh, NoSurfaceError, depth_map_mesh, frustum_to_box, load_mesh,
                                           marching_cubes_mesh, save_mesh)
from stylesdf_fast.models.cameras import generate_camera_params
from stylesdf_fast.models.renderer import camera_rays, make_t_vals, pixel_grid, sample_depths

NEAR, FAR = 0.88, 1.12
RES = 48                                 # rays per side and samples per ray: a 48^3 frustum grid
VOXEL = (FAR - NEAR) / RES               # 0.005: depth step; the lateral step at far is 1.12 / focal = 0.0049


def frustum_grid(res=RES, samples=RES, angles=(0.0, 0.0)):
    """World points [H, W, S, 3] (float64) of the renderer's frustum grid for one camera, and the camera."""
    dtype = torch.float64
    cams = generate_camera_params(res, "cpu", locations=torch.tensor([angles], dtype=dtype), dtype=dtype)
    i, j = pixel_grid(res, dtype=dtype)
    origins, directions, _ = camera_rays(cams.c2w, cams.focal, i, j, res)       # [1, H, W, 3]
    bounds = (1, res, res, 1)
    depths = sample_depths(cams.near.unsqueeze(-1).expand(bounds), cams.far.unsqueeze(-1).expand(bounds),
                           make_t_vals(samples, dtype=dtype))                       # [1, H, W, S]
    points = origins.unsqueeze(-2) + directions.unsqueeze(-2) * depths.unsqueeze(-1)
    return points[0], cams


def sphere_sdf(points, center, radius):
    """points [..., 3] -> |x - c| - r [...]"""
    return torch.linalg.vector_norm(points - torch.tensor(center, dtype=points.dtype), dim=-1) - radius


def radial_error(mesh, center, radius):
    return np.abs(np.linalg.norm(mesh.vertices - np.asarray(center), axis=1) - radius)


# Metric mapping tolerance: vertices come from linear interpolation of an exact distance function,
# between rays (bilinear) and along marching-cubes edges, both of error O(h^2 / r) for a sphere of
# radius r and voxel h (about h^2 / (8 r) each); h^2 / r bounds them with margin (float32 adds 1e-8).
def metric_tolerance(radius, voxel=VOXEL):
    return voxel ** 2 / radius


# Official mapping tolerance: its lateral scale is 0.5% .. 2.2% too large (0.24 vs the frustum's
# 2 far tan 6deg = 0.2354, and a linear widening) and it is shifted half a voxel in x and y.
def official_tolerance(extent, voxel=VOXEL):
    return 0.025 * extent + voxel


# --- frustum -> box ------------------------------------------------------------------------------

def test_frustum_to_box_matches_the_documented_resampling_on_a_linear_volume():
    # A volume linear in (row, column, sample) is reproduced exactly by bilinear sampling, so every box
    # node can be predicted from the documented formula; H, W, S all differ to catch axis swaps.
    rows, cols, samples = 5, 7, 4
    r, c, k = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(samples), indexing="ij")
    volume = torch.tensor(0.01 * r + 0.1 * c + 1.0 * k)                           # [H, W, S]
    box = frustum_to_box(volume, NEAR, FAR).numpy()
    widen = np.linspace(FAR / NEAR, 1.0, samples)                                 # per depth slice
    u_row = np.linspace(-1, 1, rows)[:, None, None] * widen                       # [H, 1, S]
    u_col = np.linspace(-1, 1, cols)[None, :, None] * widen                       # [1, W, S]
    expected = (0.01 * (u_row + 1) / 2 * (rows - 1) + 0.1 * (u_col + 1) / 2 * (cols - 1)
                + 1.0 * np.arange(samples))
    outside = (np.abs(u_row) > 1) | (np.abs(u_col) > 1)
    expected = np.where(outside, 1.0, expected)
    np.testing.assert_allclose(box, expected, atol=1e-12)
    assert outside[:, :, 0].any() and not outside[:, :, -1].any()   # near slice trimmed, far slice full
    # [H, W, S, 1] (the renderer's per-image sdf) and numpy input give the same box
    torch.testing.assert_close(frustum_to_box(volume[..., None], NEAR, FAR), torch.from_numpy(box))
    torch.testing.assert_close(frustum_to_box(volume.numpy(), torch.tensor(NEAR), FAR), torch.from_numpy(box))


def test_frustum_to_box_keeps_float32():
    box = frustum_to_box(torch.zeros(4, 4, 3), NEAR, FAR)
    assert box.dtype == torch.float32 and box.shape == (4, 4, 3)


# --- marching cubes --------------------------------------------------------------------------------

def test_sphere_mesh_is_closed_outward_and_metric_with_focal():
    points, cams = frustum_grid()
    radius = 0.08
    mesh = marching_cubes_mesh(sphere_sdf(points, (0, 0, 0), radius), NEAR, FAR, focal=cams.focal)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64 and mesh.vertex_colors is None
    assert mesh.is_watertight
    assert radial_error(mesh, (0, 0, 0), radius).max() < metric_tolerance(radius)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.02)   # positive: outward
    shape = mesh.to_trimesh()
    outward = np.einsum("fi,fi->f", shape.face_normals, shape.triangles_center)
    assert (outward > 0).all()


def test_sphere_mesh_with_the_official_mapping():
    points, _ = frustum_grid()
    radius = 0.08
    mesh = marching_cubes_mesh(sphere_sdf(points, (0, 0, 0), radius), NEAR, FAR)
    assert mesh.is_watertight and mesh.volume > 0
    assert radial_error(mesh, (0, 0, 0), radius).max() < official_tolerance(radius)


def test_official_vertex_formula():
    # official: marching cubes on box.permute(1, 0, 2) (column, row, sample), then (v / n - 0.5) * 0.24
    # with y and z negated; 0.24 is far - near. Same triangles, same vertex order.
    from skimage.measure import marching_cubes
    points, _ = frustum_grid(32, 40)
    sdf = sphere_sdf(points, (0.01, 0.0, 0.02), 0.07).float()
    box = frustum_to_box(sdf, NEAR, FAR)
    indices, faces, _, _ = marching_cubes(box.permute(1, 0, 2).numpy(), 0.0)
    expected = (indices / np.array([32, 32, 40]) - 0.5) * (FAR - NEAR) * np.array([1, -1, -1])
    mesh = marching_cubes_mesh(sdf, NEAR, FAR)
    np.testing.assert_allclose(mesh.vertices, expected, atol=1e-7)
    np.testing.assert_array_equal(mesh.faces, faces)


def capped_cylinder_sdf(points, normal, offset, radius):
    """The solid {n.x <= offset} within the cylinder rho <= radius about the optical (z) axis: its cap
    is a piece of the plane n.x = offset facing the frontal camera, away from the frustum's sides
    (where the official out-of-frustum value 1 would add walls)."""
    plane = points @ torch.tensor(normal, dtype=points.dtype) - offset
    rho = torch.linalg.vector_norm(points[..., :2], dim=-1)
    return torch.maximum(plane, rho - radius)


def cap_vertices(mesh, radius):
    """Vertices at least two voxels inside the rim: on the cap (the cut back end makes none)."""
    return mesh.vertices[np.linalg.norm(mesh.vertices[:, :2], axis=1) < radius - 2 * VOXEL]


def test_plane_depth_is_exact_in_both_mappings():
    # the plane z = z0 facing the frontal camera: sample k sits at depth near + (far - near) k / S, so
    # z = (near + far) / 2 - depth is exact (the official depth axis has no approximation)
    points, cams = frustum_grid()
    z0, radius = 0.0314, 0.06
    sdf = capped_cylinder_sdf(points, (0.0, 0.0, 1.0), z0, radius)
    for focal in (None, cams.focal):
        cap = cap_vertices(marching_cubes_mesh(sdf, NEAR, FAR, focal=focal), radius)
        assert len(cap) > 100
        np.testing.assert_allclose(cap[:, 2], z0, atol=1e-6)


def test_tilted_plane_is_metric_with_focal():
    # a tilted plane checks the lateral mapping's scale and signs in x and y at every depth it crosses
    points, cams = frustum_grid()
    normal = np.array([0.3, -0.4, 1.0]) / np.linalg.norm([0.3, -0.4, 1.0])
    offset, radius = 0.01, 0.07
    mesh = marching_cubes_mesh(capped_cylinder_sdf(points, normal, offset, radius), NEAR, FAR, focal=cams.focal)
    cap = cap_vertices(mesh, radius)
    assert len(cap) > 100 and np.ptp(cap[:, 2]) > 0.05             # the cap spans many depth slices
    np.testing.assert_allclose(cap @ normal, offset, atol=VOXEL ** 2)
    shape = mesh.to_trimesh()
    on_cap = np.linalg.norm(shape.triangles_center[:, :2], axis=1) < radius - 2 * VOXEL
    assert (shape.face_normals[on_cap] @ normal > 0.999).all()       # slivers tilt a little; none flip
    mean_normal = (shape.face_normals[on_cap] * shape.area_faces[on_cap, None]).sum(0)
    np.testing.assert_allclose(mean_normal / np.linalg.norm(mean_normal), normal, atol=1e-4)


def test_shifted_sphere_moves_the_mesh_the_same_way():
    points, cams = frustum_grid()
    center, radius = (0.02, -0.015, 0.01), 0.07   # each offset >= 3 voxels: a sign flip cannot pass
    sdf = sphere_sdf(points, center, radius)
    metric = marching_cubes_mesh(sdf, NEAR, FAR, focal=cams.focal)
    assert radial_error(metric, center, radius).max() < metric_tolerance(radius)
    official = marching_cubes_mesh(sdf, NEAR, FAR)
    middle = (official.vertices.min(0) + official.vertices.max(0)) / 2
    np.testing.assert_allclose(middle, center, atol=official_tolerance(radius + 0.02))


def test_non_frontal_camera_mesh_in_world_coordinates():
    points, cams = frustum_grid(angles=(0.3, -0.12))
    center, radius = (0.015, 0.02, -0.01), 0.07
    sdf = sphere_sdf(points, center, radius)
    world = marching_cubes_mesh(sdf, NEAR, FAR, focal=cams.focal, c2w=cams.c2w)
    assert radial_error(world, center, radius).max() < metric_tolerance(radius)
    assert world.volume > 0
    # without c2w: the view frame, i.e. the world rotated into the camera's axes (camera at distance 1)
    view = marching_cubes_mesh(sdf, NEAR, FAR, focal=cams.focal)
    rotation = cams.c2w[0, :, :3].numpy()
    np.testing.assert_allclose(view.vertices @ rotation.T, world.vertices, atol=1e-6)


def test_close_boundary_caps_a_surface_cut_by_the_box():
    points, cams = frustum_grid(32, 32)
    sdf = sphere_sdf(points, (0.0, 0.0, -0.1), 0.08)    # its back (z = -0.18) lies beyond far (z = -0.12)
    assert not marching_cubes_mesh(sdf, NEAR, FAR, focal=cams.focal).is_watertight
    closed = marching_cubes_mesh(sdf, NEAR, FAR, focal=cams.focal, close_boundary=True)
    assert closed.is_watertight and closed.volume > 0
    assert closed.vertices[:, 2].min() > -0.12 - 0.3 * (FAR - NEAR) / 32


@pytest.mark.parametrize("value", [0.5, -0.5])
def test_no_zero_crossing_raises_no_surface_error(value):
    sdf = torch.full((8, 8, 8), value)
    with pytest.raises(NoSurfaceError, match="no zero crossing") as info:
        marching_cubes_mesh(sdf, NEAR, FAR)
    assert isinstance(info.value, ValueError)
    assert f"min {value:g}" in str(info.value) and f"max {value:g}" in str(info.value)


def test_level_outside_the_range_raises_no_surface_error():
    points, _ = frustum_grid(16, 16)
    with pytest.raises(NoSurfaceError, match="level 5"):
        marching_cubes_mesh(sphere_sdf(points, (0, 0, 0), 0.08), NEAR, FAR, level=5.0)


def test_marching_cubes_bad_inputs():
    good = torch.linspace(-1, 1, 4 * 4 * 4).reshape(4, 4, 4)
    with pytest.raises(ValueError, match=r"sdf\[k\]"):
        marching_cubes_mesh(good[None, ..., None], NEAR, FAR)        # a batch: pass one view
    with pytest.raises(ValueError, match="near must be < far"):
        marching_cubes_mesh(good, FAR, NEAR)
    with pytest.raises(ValueError, match="far must be > 0"):
        marching_cubes_mesh(good, NEAR, -1.0)
    with pytest.raises(TypeError, match="near"):
        marching_cubes_mesh(good, "0.88", FAR)
    with pytest.raises(ValueError, match="NaN"):
        marching_cubes_mesh(torch.where(good > 0.9, float("nan"), good), NEAR, FAR)
    with pytest.raises(ValueError, match="c2w"):
        marching_cubes_mesh(good, NEAR, FAR, c2w=torch.eye(3))
    with pytest.raises(ValueError, match="focal"):
        marching_cubes_mesh(good, NEAR, FAR, focal=0.0)
    with pytest.raises(TypeError, match="sdf"):
        marching_cubes_mesh([[1.0]], NEAR, FAR)


# --- depth-map meshes ------------------------------------------------------------------------------

def plane_map(rows=4, cols=5):
    """xyz [3, H, W] of a grid in the plane z = 0 seen by the frontal camera: x right, y up."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([0.01 * c, -0.01 * r, np.zeros(r.shape)]).astype(np.float32)


def test_depth_map_mesh_grid_faces_point_to_the_camera():
    xyz = plane_map()
    mesh = depth_map_mesh(xyz)
    assert mesh.num_vertices == 20 and mesh.num_faces == 2 * 3 * 4
    np.testing.assert_array_equal(mesh.vertices, xyz.reshape(3, -1).T)     # vertex = row * W + column
    normals = mesh.to_trimesh().face_normals
    np.testing.assert_allclose(normals, np.tile([0.0, 0.0, 1.0], (24, 1)), atol=1e-6)   # toward (0, 0, 1)
    channels_last = depth_map_mesh(torch.from_numpy(xyz).permute(1, 2, 0))
    np.testing.assert_array_equal(channels_last.faces, mesh.faces)


def test_depth_map_mesh_of_a_sphere_faces_an_oblique_camera():
    res, radius = 24, 0.09
    cams = generate_camera_params(res, "cpu", locations=torch.tensor([[0.35, 0.2]], dtype=torch.float64),
                                  dtype=torch.float64)
    i, j = pixel_grid(res, dtype=torch.float64)
    origins, directions, _ = camera_rays(cams.c2w, cams.focal, i, j, res)
    o, d = origins[0], directions[0]                                           # [H, W, 3]
    a, b = (d * d).sum(-1), 2 * (o * d).sum(-1)
    c = (o * o).sum(-1) - radius ** 2
    hit = b * b - 4 * a * c > 0
    t = (-b - torch.sqrt((b * b - 4 * a * c).clamp(min=0))) / (2 * a)
    xyz = o + d * torch.where(hit, t, torch.ones_like(t))[..., None]           # background: depth 1
    mesh = depth_map_mesh(xyz, mask=hit)
    shape = mesh.to_trimesh()
    to_camera = cams.c2w[0, :, 3].numpy() - shape.triangles_center
    assert (np.einsum("fi,fi->f", shape.face_normals, to_camera) > 0).all()
    assert mesh.num_vertices <= int(hit.sum())


def test_depth_map_mesh_colors_and_mask():
    xyz = plane_map()
    colors = np.zeros((3, 4, 5), dtype=np.float32)
    colors[0] = 1.0
    colors[1] = colors[2] = -1.0
    colors[2, 0, 0] = 0.0
    mesh = depth_map_mesh(xyz, colors)
    assert mesh.vertex_colors.dtype == np.uint8
    np.testing.assert_array_equal(mesh.vertex_colors[0], [255, 0, 128])
    np.testing.assert_array_equal(mesh.vertex_colors[1], [255, 0, 0])
    corner = np.ones((4, 5), dtype=bool)
    corner[0, 0] = False                        # a corner pixel belongs to one triangle
    cut = depth_map_mesh(xyz, colors, corner)
    assert cut.num_faces == 23 and cut.num_vertices == 19
    np.testing.assert_array_equal(cut.vertex_colors, mesh.vertex_colors[1:])
    np.testing.assert_array_equal(cut.vertices, mesh.vertices[1:])
    inner = np.ones((1, 4, 5), dtype=bool)      # [1, H, W] (a SurfaceRender.foreground[k]) works too
    inner[0, 1, 2] = False                      # an inner pixel belongs to six triangles
    cut = depth_map_mesh(xyz, mask=inner)
    assert cut.num_faces == 18 and cut.num_vertices == 19
    with pytest.raises(NoSurfaceError, match="no triangle"):
        depth_map_mesh(xyz, mask=np.zeros((4, 5), dtype=bool))


def test_depth_map_mesh_bad_inputs():
    xyz = plane_map()
    with pytest.raises(ValueError, match=r"xyz must be \[3, H, W\] or \[H, W, 3\]"):
        depth_map_mesh(xyz[None])
    with pytest.raises(TypeError, match="mask must be boolean"):
        depth_map_mesh(xyz, mask=np.ones((4, 5)))
    with pytest.raises(ValueError, match="mask must be"):
        depth_map_mesh(xyz, mask=np.ones((5, 4), dtype=bool))
    with pytest.raises(ValueError, match="colors must cover"):
        depth_map_mesh(xyz, colors=np.zeros((3, 5, 4), np.float32))
    with pytest.raises(ValueError, match="at least 2 x 2"):
        depth_map_mesh(xyz[:, :1])
    with pytest.raises(ValueError, match="finite"):
        depth_map_mesh(np.full((3, 4, 5), np.nan, np.float32))


# --- files -----------------------------------------------------------------------------------------

def colored_sphere():
    points, cams = frustum_grid(24, 24)
    mesh = marching_cubes_mesh(sphere_sdf(points, (0, 0, 0), 0.08), NEAR, FAR, focal=cams.focal)
    colors = np.random.default_rng(0).integers(0, 256, (mesh.num_vertices, 3), dtype=np.uint8)
    return Mesh(mesh.vertices, mesh.faces, colors)


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".PLY"])
def test_save_load_round_trip_with_colors(tmp_path, suffix):
    mesh = colored_sphere()
    path = save_mesh(mesh, tmp_path / "out" / f"sphere{suffix}")       # the folder is created
    assert path == tmp_path / "out" / f"sphere{suffix}" and path.is_file()
    assert sorted(os.listdir(path.parent)) == [path.name]               # no temporary left behind
    loaded = load_mesh(path)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-7)   # OBJ: 8 decimals
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_array_equal(loaded.vertex_colors, mesh.vertex_colors)
    assert loaded.is_watertight


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_save_without_colors(tmp_path, suffix):
    mesh = depth_map_mesh(plane_map())
    loaded = load_mesh(save_mesh(mesh, tmp_path / f"plane{suffix}"))
    assert loaded.vertex_colors is None and loaded.num_faces == mesh.num_faces


def test_obj_writes_colors_as_vertex_line_extension(tmp_path):
    mesh = Mesh(np.eye(3), [[0, 1, 2]], np.array([[255, 0, 0]] * 3, dtype=np.uint8))
    text = save_mesh(mesh, tmp_path / "t.obj").read_text()
    assert "v 1.00000000 0.00000000 0.00000000 1.00000000 0.00000000 0.00000000" in text


def test_save_mesh_bad_suffix_and_type(tmp_path):
    mesh = depth_map_mesh(plane_map())
    with pytest.raises(ValueError, match=r"\.obj or \.ply.*mesh\.stl"):
        save_mesh(mesh, tmp_path / "mesh.stl")
    with pytest.raises(TypeError, match="must be a Mesh"):
        save_mesh(mesh.to_trimesh(), tmp_path / "mesh.obj")
    assert os.listdir(tmp_path) == []


def test_save_mesh_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "mesh.ply"
    path.write_bytes(b"old")

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_mesh(depth_map_mesh(plane_map()), path)
    assert os.listdir(tmp_path) == ["mesh.ply"] and path.read_bytes() == b"old"


def test_mesh_validation():
    with pytest.raises(ValueError, match=r"vertices must be \[N, 3\]"):
        Mesh(np.zeros((4, 2)), np.zeros((1, 3), int))
    with pytest.raises(ValueError, match="faces must index vertices"):
        Mesh(np.zeros((3, 3)), [[0, 1, 3]])
    with pytest.raises(TypeError, match="faces has dtype float"):
        Mesh(np.zeros((3, 3)), np.zeros((1, 3)))
    with pytest.raises(TypeError, match="vertex_colors must have dtype uint8"):
        Mesh(np.zeros((3, 3)), [[0, 1, 2]], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="one row per vertex"):
        Mesh(np.zeros((3, 3)), [[0, 1, 2]], np.zeros((2, 3), np.uint8))
    assert mesh_module.MESH_SUFFIXES == (".obj", ".ply")

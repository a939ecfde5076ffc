"""Geometry-aware noise projection (render_video --project-noise): the triangle rasteriser against an
independent per-pixel ray-casting reference and exact small cases (coverage, linear interpolation,
occlusion, watertight shared edges, the renderer's pixel convention), the NoiseProjector (subdivision
rule, shapes, fixed noise off the mesh, reproducibility, batches) and the command line end to end on
tiny checkpoints, all on the CPU in seconds."""
import json

import numpy as np
import pytest
import torch
import trimesh

from stylesdf_fast import render_video
from stylesdf_fast.generation import identity_latents, load_mesh, load_model, render_surface, renderer_latents
from stylesdf_fast.generation.mesh import Mesh, marching_cubes_mesh
from stylesdf_fast.generation.noise_projection import NoiseProjector, subdivide_mesh, subdivision_level
from stylesdf_fast.generation.rasterize import (Fragments, interpolate_vertex_values, project_points, rasterize_mesh,
                                                rasterize_vertex_values)
from stylesdf_fast.generation.video import video_info
from stylesdf_fast.models import Generator
from stylesdf_fast.models.cameras import generate_camera_params
from stylesdf_fast.models.decoder import Decoder
from stylesdf_fast.models.renderer import camera_rays, pixel_grid

F64 = torch.float64


def camera(resolution, azimuth=0.0, elevation=0.0):
    """(c2w [3, 4], focal) of the StyleSDF camera at (azimuth, elevation), float64."""
    cams = generate_camera_params(resolution, "cpu", locations=torch.tensor([[azimuth, elevation]], dtype=F64),
                                  dtype=F64)
    return cams.c2w[0], float(cams.focal[0])


def unproject(pixels, depth, c2w, focal, resolution):
    """Continuous pixel coordinates [N, 2] (x column, y row) at camera depths [N] -> world points [N, 3]."""
    pixels, depth = torch.as_tensor(pixels, dtype=F64), torch.as_tensor(depth, dtype=F64)
    half = resolution / 2
    local = torch.stack([(pixels[:, 0] - half) / focal, -(pixels[:, 1] - half) / focal, -torch.ones_like(depth)], 1)
    return (local * depth[:, None]) @ c2w[:, :3].t() + c2w[:, 3]


# --- an independent reference: one ray per pixel centre, Moller-Trumbore against every face ---------

def reference_raster(vertices, faces, values, c2w, focal, resolution, near=1e-6):
    """(face index [r, r] (-1 none), values [r, r], depth [r, r], ambiguous [r, r]) by casting the
    renderer's ray of every pixel centre (camera_rays) at every face in 3D, float64, nearest hit
    (ties to the lower face index). A pixel is ambiguous when its centre is within 1e-9 of a face's
    border (barycentric) or two faces are within 1e-12 in depth: the exact answer there depends on
    rounding, so comparisons skip those (the tests' random meshes have none)."""
    v = torch.as_tensor(vertices, dtype=F64)
    camera_space = (v - c2w[:, 3]) @ torch.linalg.inv(c2w[:, :3]).t()            # [V, 3]
    usable = (-camera_space[:, 2] > near)[torch.as_tensor(faces)].all(1)          # faces in front
    i, j = pixel_grid(resolution, dtype=F64)
    origins, directions, _ = camera_rays(c2w[None], torch.tensor([[[focal]]], dtype=F64), i, j, resolution)
    origins, directions = origins[0].reshape(-1, 3), directions[0].reshape(-1, 3)    # [P, 3]
    a, b, c = (v[torch.as_tensor(faces)[:, k]] for k in range(3))                 # [F, 3] each
    e1, e2 = b - a, c - a
    h = torch.linalg.cross(directions[:, None], e2[None].expand(len(directions), -1, -1), dim=-1)   # [P, F, 3]
    det = (e1[None] * h).sum(-1)
    s = origins[:, None] - a[None]
    u = (s * h).sum(-1) / det
    q = torch.linalg.cross(s, e1[None].expand_as(s), dim=-1)
    w = (directions[:, None] * q).sum(-1) / det
    t = (e2[None] * q).sum(-1) / det                                              # depth: directions have z = -1
    bary = torch.stack([1 - u - w, u, w], -1)                                     # [P, F, 3]
    hit = (bary >= 0).all(-1) & usable[None] & (det.abs() > 1e-300)
    ambiguous_edge = (hit | (bary >= -1e-9).all(-1)) & (bary.abs() < 1e-9).any(-1) & usable[None]
    depth = torch.where(hit, t, torch.full_like(t, float("inf")))                 # [P, F]
    best_depth, best = depth.min(1)                                               # first minimum: lowest index
    second = depth.clone()
    second[torch.arange(len(best)), best] = float("inf")
    ambiguous = ambiguous_edge.any(1) | ((second.min(1).values - best_depth).abs() < 1e-12)
    covered = torch.isfinite(best_depth)
    vals = torch.as_tensor(values, dtype=F64)[torch.as_tensor(faces)]             # [F, 3]
    picked = (bary[torch.arange(len(best)), best] * vals[best]).sum(-1)
    shape = (resolution, resolution)
    return (torch.where(covered, best, -1).reshape(shape), torch.where(covered, picked, 0.0).reshape(shape),
            best_depth.reshape(shape), ambiguous.reshape(shape))


def random_triangles(count, resolution, c2w, focal, seed):
    """`count` independent triangles in the view (centres in -0.2 r .. 1.2 r, so some leave the image,
    corners within 0.3 r of them; depths 0.85 .. 1.15, one face per 8 with a corner behind the
    camera), their values [3 count]."""
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.rand(count, 1, 2, generator=generator, dtype=F64) * 1.4 - 0.2) * resolution
    spread = (torch.rand(count, 3, 2, generator=generator, dtype=F64) * 0.6 - 0.3) * resolution
    pixels = (centres + spread).reshape(-1, 2)
    depth = 0.85 + 0.3 * torch.rand(count * 3, generator=generator, dtype=F64)
    depth[torch.arange(0, count * 3, 24)] = -0.5                                    # behind the camera
    vertices = unproject(pixels, depth, c2w, focal, resolution)
    faces = torch.arange(count * 3).reshape(count, 3)
    return vertices, faces, torch.randn(count * 3, generator=generator, dtype=F64)


# --- the rasteriser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, angles, dtype", [(0, (0.0, 0.0), F64), (1, (0.3, -0.2), F64),
                                                 (2, (-0.4, 0.25), torch.float32)])
def test_rasteriser_matches_ray_casting_reference(seed, angles, dtype):
    resolution = 24
    c2w, focal = camera(resolution, *angles)
    vertices, faces, values = random_triangles(40, resolution, c2w, focal, seed)
    expected_face, expected_values, expected_depth, ambiguous = reference_raster(vertices, faces, values, c2w, focal,
                                                                                 resolution)
    assert not ambiguous.any()
    fragments = rasterize_mesh(vertices.to(dtype), faces, c2w.to(dtype), focal, resolution, max_candidates=97)
    image = interpolate_vertex_values(fragments, faces, values.to(dtype))
    assert fragments.face_index.dtype == torch.int64 and image.dtype == dtype and image.shape == (24, 24)
    assert torch.equal(fragments.face_index, expected_face)
    assert 0.3 < float(fragments.covered.float().mean()) < 1.0                     # overlaps and background both
    tolerance = dict(rtol=1e-9, atol=1e-9) if dtype == F64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(image.double(), expected_values, **tolerance)
    covered = fragments.covered
    torch.testing.assert_close(fragments.depth[covered].double(), expected_depth[covered], **tolerance)
    assert torch.isinf(fragments.depth[~covered]).all() and (fragments.weights[~covered] == 0).all()
    torch.testing.assert_close(fragments.weights[covered].sum(-1).double(), torch.ones(int(covered.sum()), dtype=F64),
                               **tolerance)


def test_chunking_does_not_change_the_result():
    resolution = 20
    c2w, focal = camera(resolution, 0.2, 0.1)
    vertices, faces, values = random_triangles(30, resolution, c2w, focal, seed=5)
    whole = rasterize_mesh(vertices, faces, c2w, focal, resolution)
    for chunk in (1, 7, 1000):
        part = rasterize_mesh(vertices, faces, c2w, focal, resolution, max_candidates=chunk)
        assert torch.equal(part.face_index, whole.face_index) and torch.equal(part.weights, whole.weights)


def test_large_fronto_parallel_triangle_covers_exactly_its_pixel_centres_and_is_linear():
    resolution = 16
    c2w, focal = camera(resolution)
    corners = torch.tensor([[1.3, 2.2], [13.7, 4.1], [5.2, 14.6]], dtype=F64)        # pixel coordinates
    vertices = unproject(corners, torch.ones(3, dtype=F64), c2w, focal, resolution)  # all at depth 1
    values = torch.tensor([[1.0, -2.0], [2.0, 0.5], [3.0, 4.0]], dtype=F64)         # [V, K = 2]
    image, mask = rasterize_vertex_values(vertices, [[0, 1, 2]], values, c2w, focal, resolution)
    assert image.shape == (2, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.bool

    rows, cols = torch.meshgrid(torch.arange(16, dtype=F64) + 0.5, torch.arange(16, dtype=F64) + 0.5, indexing="ij")
    centres = torch.stack([cols, rows], -1)                                           # [r, r, 2] (x, y)
    def side(p, q):   # > 0 left of the directed edge p -> q in (x, y) coordinates
        return (q[0] - p[0]) * (centres[..., 1] - p[1]) - (q[1] - p[1]) * (centres[..., 0] - p[0])
    a, b, c = corners
    signs = torch.stack([side(a, b), side(b, c), side(c, a)])
    inside = (signs > 0).all(0) | (signs < 0).all(0)
    assert torch.equal(mask, inside) and 40 < int(inside.sum()) < 100

    # fronto-parallel: the values are an affine function of the pixel coordinates
    design = torch.cat([corners, torch.ones(3, 1, dtype=F64)], 1)                    # [3, 3]
    coefficients = torch.linalg.solve(design, values)                                 # [3, K]
    expected = torch.cat([centres, torch.ones(16, 16, 1, dtype=F64)], -1) @ coefficients   # [r, r, K]
    torch.testing.assert_close(image.permute(1, 2, 0)[mask], expected[mask], rtol=1e-10, atol=1e-10)
    assert (image[:, ~mask] == 0).all()


def test_perspective_correct_interpolation_of_a_slanted_triangle():
    """Values linear in camera space: a triangle whose value is its vertices' depth shows, at every
    covered pixel, the depth of the surface there, which interpolation in screen space misses."""
    resolution = 12
    c2w, focal = camera(resolution, 0.1, 0.05)
    corners = torch.tensor([[0.5, 0.8], [11.6, 3.0], [4.0, 11.7]], dtype=F64)
    depths = torch.tensor([0.9, 1.1, 1.02], dtype=F64)
    vertices = unproject(corners, depths, c2w, focal, resolution)
    fragments = rasterize_mesh(vertices, [[0, 1, 2]], c2w, focal, resolution)
    image = interpolate_vertex_values(fragments, [[0, 1, 2]], depths)
    covered = fragments.covered
    assert int(covered.sum()) > 30
    torch.testing.assert_close(image[covered], fragments.depth[covered], rtol=1e-12, atol=1e-12)
    rows, cols = torch.nonzero(covered, as_tuple=True)
    centres = torch.stack([cols + 0.5, rows + 0.5, torch.ones_like(rows, dtype=F64)], 1)     # [P, 3]
    design = torch.cat([corners, torch.ones(3, 1, dtype=F64)], 1)
    screen_linear = centres @ torch.linalg.solve(design, depths)
    points = unproject(centres[:, :2], image[covered], c2w, focal, resolution)      # on the triangle's plane
    normal = torch.linalg.cross(vertices[1] - vertices[0], vertices[2] - vertices[0])
    torch.testing.assert_close((points - vertices[0]) @ normal, torch.zeros(len(points), dtype=F64), rtol=0,
                               atol=1e-12)
    assert (screen_linear - image[covered]).abs().max() > 1e-4


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_triangle_wins_whatever_the_order(order):
    resolution = 10
    c2w, focal = camera(resolution)
    corners = torch.tensor([[-20.0, -5.0], [30.0, -5.0], [5.0, 40.0]], dtype=F64)  # both cover the image
    near = unproject(corners, torch.full((3,), 0.95, dtype=F64), c2w, focal, resolution)
    far = unproject(corners, torch.full((3,), 1.05, dtype=F64), c2w, focal, resolution)
    meshes = (near, far)
    vertices = torch.cat([meshes[order[0]], meshes[order[1]]])
    values = torch.cat([torch.full((3,), float(order[0])), torch.full((3,), float(order[1]))]).double()   # 0 = near
    image, mask = rasterize_vertex_values(vertices, [[0, 1, 2], [3, 4, 5]], values, c2w, focal, resolution)
    assert mask.all() and (image == 0).all()


def test_equal_depth_goes_to_the_lower_face_index():
    resolution = 8
    c2w, focal = camera(resolution)
    corners = torch.tensor([[-20.0, -5.0], [30.0, -5.0], [5.0, 40.0]], dtype=F64)
    vertices = unproject(corners, torch.ones(3, dtype=F64), c2w, focal, resolution)
    fragments = rasterize_mesh(vertices, [[0, 1, 2], [2, 1, 0], [1, 2, 0]], c2w, focal, resolution)
    assert fragments.covered.all() and (fragments.face_index == 0).all()


def test_shared_edges_leave_no_gap_even_through_pixel_centres():
    """A grid of quads whose vertices sit on pixel centres (so edges run through many centres) covers
    every pixel; back faces (the reversed copy) are kept, not culled."""
    resolution = 16
    c2w, focal = camera(resolution, 0.2, -0.1)
    steps = torch.arange(-1.5, 18.0, 2.0, dtype=F64)                                 # ... -1.5, 0.5, 2.5, ... 16.5
    y, x = torch.meshgrid(steps, steps, indexing="ij")
    pixels = torch.stack([x.reshape(-1), y.reshape(-1)], 1)
    depth = 1.0 + 0.05 * torch.sin(pixels[:, 0]) * torch.cos(pixels[:, 1])
    vertices = unproject(pixels, depth, c2w, focal, resolution).float()
    n = len(steps)
    index = torch.arange(n * n).reshape(n, n)
    quads = torch.stack([index[:-1, :-1], index[1:, :-1], index[:-1, 1:], index[1:, 1:]], -1).reshape(-1, 4)
    faces = torch.cat([quads[:, [0, 1, 2]], quads[:, [2, 1, 3]]])
    assert rasterize_mesh(vertices, faces, c2w, focal, resolution).covered.all()
    assert rasterize_mesh(vertices, faces.flip(1), c2w, focal, resolution).covered.all()


def test_a_point_seen_through_a_pixel_is_rasterised_at_that_pixel():
    """The renderer's ray through pixel (column 5, row 9) meets the world at p; a small triangle around
    p covers exactly that pixel, and p projects onto its centre at the ray's depth."""
    resolution = 16
    cams = generate_camera_params(resolution, "cpu", locations=torch.tensor([[0.35, -0.2]]))
    i, j = pixel_grid(resolution)
    origins, directions, _ = camera_rays(cams.c2w, cams.focal, i, j, resolution)
    point = origins[0, 9, 5] + 0.97 * directions[0, 9, 5]                            # [3] world, depth 0.97
    pixel, depth = project_points(point[None], cams.c2w[0], cams.focal[0], resolution)
    torch.testing.assert_close(pixel[0], torch.tensor([5.5, 9.5]), rtol=0, atol=2e-4)
    torch.testing.assert_close(depth[0], torch.tensor(0.97), rtol=0, atol=1e-6)
    x_axis, y_axis = cams.c2w[0, :, 0], cams.c2w[0, :, 1]
    size = 0.3 * 0.97 / float(cams.focal[0])                                         # 0.3 px around p
    triangle = torch.stack([point - size * x_axis - size * y_axis, point + size * x_axis - size * y_axis,
                            point + size * y_axis])
    fragments = rasterize_mesh(triangle, [[0, 1, 2]], cams.c2w[0], cams.focal[0], resolution)
    assert torch.nonzero(fragments.covered).tolist() == [[9, 5]]


def test_surface_points_of_the_volume_renderer_project_onto_their_pixels(tiny_full_ckpt):
    model = load_model(tiny_full_ckpt)
    w = renderer_latents(model.generator, identity_latents(1, 256, 0), 1.0, None)
    angles = torch.tensor([[0.25, -0.15]])
    surface = render_surface(model, w, angles, resolution=12, samples=8)
    cams = generate_camera_params(12, "cpu", locations=angles)
    pixel, depth = project_points(surface.xyz[0].permute(1, 2, 0).reshape(-1, 3), cams.c2w[0], cams.focal[0], 12)
    i, j = pixel_grid(12)
    torch.testing.assert_close(pixel, torch.stack([i.reshape(-1), j.reshape(-1)], 1), rtol=0, atol=1e-3)
    torch.testing.assert_close(depth, surface.depth[0].reshape(-1), rtol=0, atol=1e-5)


def test_marching_cubes_mesh_of_a_sphere_rasterises_where_the_rays_hit_it():
    """The whole geometric chain without a network: a sphere's SDF sampled on the frontal camera's
    frustum grid (as the surface renderer samples it), marching cubes placed in world coordinates
    (mesh.marching_cubes_mesh, as extract_mesh), rasterised from other cameras: coverage equals the
    analytic ray-sphere hits away from the silhouette and the depth is the hit's depth."""
    radius = 0.08

    def rays(resolution, angles):
        cams = generate_camera_params(resolution, "cpu", locations=torch.tensor([angles], dtype=F64), dtype=F64)
        i, j = pixel_grid(resolution, dtype=F64)
        origins, directions, _ = camera_rays(cams.c2w, cams.focal, i, j, resolution)
        return cams, origins[0], directions[0]                                      # [r, r, 3] each

    cams, origins, directions = rays(32, [0.0, 0.0])
    depths = 0.88 + 0.24 * torch.arange(32, dtype=F64) / 32                          # offset sampling
    samples = origins[:, :, None] + directions[:, :, None] * depths[:, None]         # [H, W, S, 3]
    mesh = marching_cubes_mesh(samples.norm(dim=-1) - radius, 0.88, 1.12, focal=cams.focal[0], c2w=cams.c2w[0])
    for angles in ([0.0, 0.0], [0.3, -0.15]):
        cams, origins, directions = rays(24, angles)
        fragments = rasterize_mesh(mesh.vertices, mesh.faces, cams.c2w[0], cams.focal[0], 24)
        a, b = (directions * directions).sum(-1), 2 * (origins * directions).sum(-1)
        discriminant = b * b - 4 * a * ((origins * origins).sum(-1) - radius ** 2)
        hit = discriminant > 0
        hit_depth = (-b - discriminant.clamp(min=0).sqrt()) / (2 * a)                 # directions have z = -1
        miss_distance = torch.linalg.cross(origins, directions, dim=-1).norm(dim=-1) / directions.norm(dim=-1)
        clear = (miss_distance - radius).abs() > 0.004                               # half a voxel off the silhouette
        assert torch.equal(fragments.covered[clear], hit[clear]) and int(hit.sum()) > 100
        assert (fragments.depth[hit & clear] - hit_depth[hit & clear]).abs().max() < 2e-3


def test_faces_behind_the_camera_or_off_screen_are_skipped():
    resolution = 8
    c2w, focal = camera(resolution)
    behind = unproject(torch.tensor([[1.0, 1.0], [7.0, 1.0], [4.0, 7.0]], dtype=F64),
                       torch.tensor([1.0, 1.0, -0.2], dtype=F64), c2w, focal, resolution)
    off_screen = unproject(torch.tensor([[9.0, 1.0], [15.0, 1.0], [12.0, 7.0]], dtype=F64), torch.ones(3, dtype=F64),
                           c2w, focal, resolution)
    fragments = rasterize_mesh(torch.cat([behind, off_screen]), [[0, 1, 2], [3, 4, 5]], c2w, focal, resolution)
    assert not fragments.covered.any()
    empty = rasterize_mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), c2w, focal, resolution)
    assert not empty.covered.any()


def test_rasteriser_bad_inputs():
    c2w, focal = camera(8)
    vertices, faces = torch.rand(3, 3), torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"rasterize_mesh: vertices must be \[N, 3\], got shape \(3, 2\)"):
        rasterize_mesh(vertices[:, :2], faces, c2w, focal, 8)
    with pytest.raises(TypeError, match="rasterize_mesh: vertices must be floating point, got dtype torch.int64"):
        rasterize_mesh(torch.ones(3, 3, dtype=torch.int64), faces, c2w, focal, 8)
    with pytest.raises(ValueError, match="rasterize_mesh: vertices contains NaN or infinite"):
        rasterize_mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, float("nan"), 0]]), faces, c2w, focal, 8)
    with pytest.raises(TypeError, match="rasterize_mesh: vertices must be a torch.Tensor, numpy array or nested list, "
                                        "got str"):
        rasterize_mesh("vertices", faces, c2w, focal, 8)
    with pytest.raises(TypeError, match="rasterize_mesh: faces must hold integer vertex indices, got dtype"):
        rasterize_mesh(vertices, faces.float(), c2w, focal, 8)
    with pytest.raises(ValueError, match=r"rasterize_mesh: faces must index vertices in \[0, 3\), got indices 0 .. 3"):
        rasterize_mesh(vertices, torch.tensor([[0, 1, 3]]), c2w, focal, 8)
    with pytest.raises(ValueError, match=r"rasterize_mesh: faces must be \[F, 3\]"):
        rasterize_mesh(vertices, torch.tensor([0, 1, 2]), c2w, focal, 8)
    with pytest.raises(ValueError, match=r"rasterize_mesh: c2w must be a camera-to-world matrix \[3, 4\]"):
        rasterize_mesh(vertices, faces, torch.eye(3), focal, 8)
    with pytest.raises(ValueError, match="rasterize_mesh: c2w's 3 x 3 rotation is singular"):
        rasterize_mesh(vertices, faces, torch.zeros(3, 4), focal, 8)
    with pytest.raises(ValueError, match="rasterize_mesh: focal must be > 0.0, got -1.0"):
        rasterize_mesh(vertices, faces, c2w, -1.0, 8)
    with pytest.raises(TypeError, match="rasterize_mesh: resolution must be an int, got float"):
        rasterize_mesh(vertices, faces, c2w, focal, 8.0)
    with pytest.raises(ValueError, match="rasterize_mesh: resolution must be >= 1, got 0"):
        rasterize_mesh(vertices, faces, c2w, focal, 0)
    with pytest.raises(ValueError, match="rasterize_mesh: max_candidates must be >= 1, got 0"):
        rasterize_mesh(vertices, faces, c2w, focal, 8, max_candidates=0)
    with pytest.raises(ValueError, match=r"rasterize_vertex_values: values must have one row per vertex \(3\), got 4"):
        rasterize_vertex_values(vertices, faces, torch.zeros(4), c2w, focal, 8)
    fragments = rasterize_mesh(vertices.double(), faces, c2w, focal, 8)
    with pytest.raises(TypeError, match="interpolate_vertex_values: values must be floating point"):
        interpolate_vertex_values(fragments, faces, torch.arange(3))
    with pytest.raises(ValueError, match=r"interpolate_vertex_values: values must be \[V\] or \[V, K\]"):
        interpolate_vertex_values(fragments, faces, torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"interpolate_vertex_values: faces must index vertices in \[0, 2\)"):
        interpolate_vertex_values(fragments, faces, torch.zeros(2))
    with pytest.raises(TypeError, match="interpolate_vertex_values: fragments must be a Fragments"):
        interpolate_vertex_values(None, faces, torch.zeros(3))
    assert isinstance(fragments, Fragments)


# --- the projector -----------------------------------------------------------------------------------

def sphere_mesh(subdivisions=1, radius=0.06):
    shape = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(shape.vertices, shape.faces)


def tiny_decoder(size, in_size=16):
    torch.manual_seed(0)
    return Decoder(size, style_dim=8, feature_channels=4, in_size=in_size, channel_max=4)


def test_subdivision_rule_and_subdivided_meshes():
    assert [subdivision_level(r) for r in (16, 64, 128, 256, 512, 1024)] == [0, 0, 0, 1, 3, 3]
    mesh = sphere_mesh(0)                                                              # 12 vertices, 20 faces
    vertices, faces = subdivide_mesh(mesh.vertices, mesh.faces, 1)
    assert faces.shape == (80, 3) and vertices.shape == (42, 3) and vertices.dtype == np.float32
    np.testing.assert_array_equal(vertices[:12], mesh.vertices)                        # originals keep their index
    expected = trimesh.remesh.subdivide(*trimesh.remesh.subdivide(mesh.vertices, mesh.faces))
    vertices, faces = subdivide_mesh(mesh.vertices, mesh.faces, 2)
    np.testing.assert_array_equal(faces, expected[1])
    with pytest.raises(ValueError, match="subdivision_level: resolution must be"):
        subdivision_level(0)


def test_projector_meshes_per_layer_resolution():
    decoder = tiny_decoder(512, in_size=64)                    # layers at 64, 128, 128, 256, 256, 512, 512
    mesh = sphere_mesh(0)
    projector = NoiseProjector(mesh, decoder, seed=1)
    assert projector.resolutions == [64, 128, 128, 256, 256, 512, 512]
    assert sorted(projector.meshes) == [0, 1, 3]
    faces = [int(projector.layer_mesh(k)[1].shape[0]) for k in range(7)]
    assert faces == [20, 20, 20, 80, 80, 20 * 64, 20 * 64]
    assert [len(noise) for noise in projector.vertex_noise] == [12, 12, 12, 42, 42, 642, 642]
    assert projector.layer_mesh(5)[0] is projector.layer_mesh(6)[0]                    # one mesh per level


def test_projected_noise_shapes_values_and_fixed_noise_off_the_mesh():
    decoder = tiny_decoder(64)                                                        # 16, 32, 32, 64, 64
    projector = NoiseProjector(sphere_mesh(2), decoder, seed=7)
    cams = generate_camera_params(16, "cpu", locations=torch.tensor([[0.3, 0.1], [-0.2, 0.0]]))
    noise, coverage = projector.project(cams.c2w, cams.focal, 16)
    assert [tuple(n.shape) for n in noise] == [(2, 1, r, r) for r in (16, 32, 32, 64, 64)]
    assert all(n.dtype == torch.float32 for n in noise) and all(c.dtype == torch.bool for c in coverage)
    for k, (layer_noise, covered) in enumerate(zip(noise, coverage)):
        fixed = getattr(decoder.noises, f"noise_{k}")[0, 0]
        resolution = fixed.shape[-1]
        vertices, faces = projector.layer_mesh(k)
        for view in range(2):
            assert 0.1 < float(covered[view].float().mean()) < 0.6                   # the sphere, then background
            assert torch.equal(layer_noise[view, 0][~covered[view, 0]], fixed[~covered[view, 0]])
            expected, mask = rasterize_vertex_values(vertices, faces, projector.vertex_noise[k], cams.c2w[view],
                                                     float(cams.focal[view]) * resolution / 16, resolution)
            assert torch.equal(mask, covered[view, 0])
            torch.testing.assert_close(layer_noise[view, 0][mask], expected[mask])
    # the two layers of one resolution share the raster but not the noise
    assert torch.equal(coverage[1], coverage[2]) and not torch.equal(noise[1], noise[2])
    assert torch.equal(projector(cams.c2w, cams.focal, 16)[3], noise[3])


def test_projected_noise_is_reproducible_for_a_seed_and_batching():
    decoder = tiny_decoder(32)
    mesh = sphere_mesh(1)
    cams = generate_camera_params(16, "cpu", locations=torch.tensor([[0.3, 0.1], [-0.2, 0.0]]))
    first = NoiseProjector(mesh, decoder, seed=3)(cams.c2w, cams.focal, 16)
    again = NoiseProjector(mesh, decoder, seed=3)(cams.c2w, cams.focal, 16)
    other = NoiseProjector(mesh, decoder, seed=4)(cams.c2w, cams.focal, 16)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    one_by_one = NoiseProjector(mesh, decoder, seed=3)(cams.c2w[1:], cams.focal[1:], 16)
    assert all(torch.equal(a[1:], b) for a, b in zip(first, one_by_one))
    # the same camera at twice the focal resolution is the same camera
    doubled = NoiseProjector(mesh, decoder, seed=3)(cams.c2w, cams.focal * 2, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, doubled))


def test_projector_bad_inputs():
    decoder = tiny_decoder(32)
    with pytest.raises(TypeError, match="NoiseProjector: mesh must be a Mesh"):
        NoiseProjector(trimesh.creation.icosphere(0), decoder)
    with pytest.raises(ValueError, match="NoiseProjector: mesh has no faces"):
        NoiseProjector(Mesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64)), decoder)
    with pytest.raises(TypeError, match="NoiseProjector: decoder must be the generator's Decoder.*renderer-only"):
        NoiseProjector(sphere_mesh(0), None)
    with pytest.raises(TypeError, match="NoiseProjector: seed must be an int, got float"):
        NoiseProjector(sphere_mesh(0), decoder, seed=1.5)
    with pytest.raises(ValueError, match="NoiseProjector: max_candidates must be >= 1, got 0"):
        NoiseProjector(sphere_mesh(0), decoder, max_candidates=0)
    projector = NoiseProjector(sphere_mesh(0), decoder)
    cams = generate_camera_params(16, "cpu", batch=2)
    with pytest.raises(ValueError, match=r"NoiseProjector: c2w must be a tensor \[B, 3, 4\]"):
        projector(cams.c2w[0], cams.focal, 16)
    with pytest.raises(ValueError, match=r"NoiseProjector: focal must be one positive finite number or one per camera"):
        projector(cams.c2w, torch.ones(3), 16)
    with pytest.raises(ValueError, match="NoiseProjector: resolution .* must be"):
        projector(cams.c2w, cams.focal, 0)


def test_generator_takes_the_projected_noise(tiny_full_ckpt):
    """The decoder adds weight * noise: with non-zero weights, the projected noise changes the image
    exactly where the mesh covers the noise maps (here a batch of two cameras in one call)."""
    model = load_model(tiny_full_ckpt)
    generator = model.generator
    decoder = generator.decoder
    with torch.no_grad():
        for conv in decoder.convs:
            conv.noise.weight.fill_(0.5)
    projector = NoiseProjector(sphere_mesh(2, radius=0.03), decoder, seed=0)
    cams = generate_camera_params(16, "cpu", locations=torch.tensor([[0.3, 0.1], [-0.2, 0.0]]))
    z = identity_latents(1, 256, 0).expand(2, -1)
    noise, coverage = projector.project(cams.c2w, cams.focal, 16)
    with torch.no_grad():
        fixed = generator([z], cams.c2w, cams.focal, cams.near, cams.far, randomize_noise=False)[0]
        projected = generator([z], cams.c2w, cams.focal, cams.near, cams.far, noise=noise)[0]
    changed = (fixed - projected).abs().amax(1)                                       # [2, 32, 32]
    assert changed.max() > 1e-3
    far_from_the_mesh = ~torch.nn.functional.max_pool2d(coverage[-1].float(), 9, 1, 4).bool()[:, 0]
    assert changed[far_from_the_mesh].max() < 1e-5


# --- the command line -------------------------------------------------------------------------------

TINY_MODEL = dict(depth=2, width=32, n_samples=8, renderer_spatial_output_dim=16)
MESH_RESOLUTION = 16


@pytest.fixture(scope="module")
def tiny_full_ckpt(tmp_path_factory):
    """A random full-pipeline checkpoint (32 px, noise layers at 16, 32, 32) whose SDF is shifted to
    cross zero in the frontal frustum of identity 0 (seed 0, truncation 1), so it has a mesh."""
    torch.manual_seed(0)
    generator = Generator(32, full_pipeline=True, channel_max=32, **TINY_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_full.pt"
    config = {"n_samples": 8, "renderer_size": 16}
    torch.save({"g_ema": generator.state_dict(), "config": config}, path)
    model = load_model(path)
    w = renderer_latents(model.generator, identity_latents(1, 256, 0), 1.0, None)
    sdf = render_surface(model, w, torch.zeros(1, 2), resolution=MESH_RESOLUTION, samples=MESH_RESOLUTION,
                         keep_sdf=True).sdf
    with torch.no_grad():
        generator.renderer.network.sigma_linear.bias -= sdf.median()
    torch.save({"g_ema": generator.state_dict(), "config": config}, path)
    return path


def run_video(ckpt, outdir, *extra):
    return render_video.main(["--ckpt", str(ckpt), "--frames", "2", "--samples", "8", "--seed", "0", "--truncation",
                              "1", "--mesh-resolution", str(MESH_RESOLUTION), "--device", "cpu", "--outdir",
                              str(outdir), *extra])


def test_cli_project_noise_end_to_end(tiny_full_ckpt, tmp_path):
    out = tmp_path / "vid"
    assert run_video(tiny_full_ckpt, out, "--project-noise", "--batch-size", "2", "--trajectory", "azimuth") == 0
    assert video_info(out / "video_000_azimuth.mp4") == (2, 32, 32)
    summary = json.loads((out / "videos.json").read_text())
    assert summary["project_noise"] is True and summary["mesh_resolution"] == MESH_RESOLUTION
    entry = summary["videos"][0]
    assert entry["noise"] == "projected" and entry["noise_seed"] == 0
    mesh = load_mesh(entry["mesh"])
    assert entry["mesh"] == str(out / "video_000_mesh.ply")
    assert mesh.num_faces == entry["mesh_faces"] > 0 and mesh.vertex_colors is not None
    assert sorted(p.name for p in out.iterdir()) == ["video_000_azimuth.mp4", "video_000_mesh.ply", "videos.json"]


def test_cli_official_spelling_and_fallback_without_a_surface(tiny_full_ckpt, tmp_path):
    state = torch.load(tiny_full_ckpt, weights_only=True)
    state["g_ema"]["renderer.network.sigma_linear.bias"].fill_(5.0)                 # SDF > 0 everywhere
    no_surface = tmp_path / "no_surface.pt"
    torch.save(state, no_surface)
    out = tmp_path / "vid"
    assert run_video(no_surface, out, "--project_noise", "--format", "gif") == 0
    entry = json.loads((out / "videos.json").read_text())["videos"][0]
    assert entry["noise"] == "fixed" and "zero crossing" in entry["noise_projection_error"]
    assert video_info(out / "video_000_ellipse.gif")[1:] == (32, 32)
    assert not list(out.glob("*.ply"))


def test_cli_project_noise_bad_arguments(tiny_full_ckpt, tmp_path, capsys):
    def error_of(ckpt, *argv):
        with pytest.raises(SystemExit) as exit_info:
            run_video(ckpt, tmp_path / "out", *argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "--mesh-resolution must be >= 8, got 4" in error_of(tiny_full_ckpt, "--project-noise", "--mesh-resolution",
                                                               "4")
    renderer_only = tmp_path / "renderer.pt"
    torch.save({"g_ema": Generator(32, full_pipeline=False, **TINY_MODEL).state_dict(),
                "config": {"n_samples": 8, "renderer_size": 16}}, renderer_only)
    assert "--project-noise needs a full-pipeline checkpoint" in error_of(renderer_only, "--project-noise")
    assert "--project-noise" in render_video.build_parser().format_help()

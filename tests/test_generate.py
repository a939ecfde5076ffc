"""Generation, meshes and videos from tiny checkpoints, on the CPU: the Python API and the two command
lines (python -m stylesdf_fast.generate / render_video) produce the files they promise, the mesh of a
sphere-initialised renderer is the sphere the initialisation fits, and bad input gives clear errors."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from stylesdf_fast import generate, render_video
from stylesdf_fast.generation import (generate_images, identity_latents, load_model, render_surface, renderer_latents,
                                      view_angles)
from stylesdf_fast.generation.mesh import NoSurfaceError
from stylesdf_fast.generation.shapes import extract_mesh
from stylesdf_fast.generation.video import video_info
from stylesdf_fast.models import Generator
from stylesdf_fast.training import loop, stages
from stylesdf_fast.training.config import preset_config
from stylesdf_fast.training.runtime import init_distributed

TINY_MODEL = dict(depth=2, width=32, n_samples=8, renderer_spatial_output_dim=16)
SPHERE_RADIUS = 0.06          # the sphere initialisation's target: |x| - (far - near) / 4 in world units


@pytest.fixture(scope="module")
def tiny_full_ckpt(tmp_path_factory):
    """A randomly initialised full-pipeline checkpoint (32 px) in our format."""
    torch.manual_seed(0)
    g = Generator(32, full_pipeline=True, channel_max=32, **TINY_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_full.pt"
    torch.save({"g_ema": g.state_dict(), "config": {"n_samples": 8, "renderer_size": 16}}, path)
    return path


@pytest.fixture(scope="module")
def sphere_ckpt(tmp_path_factory):
    """A renderer-only checkpoint after the trainer's own sphere initialisation (2000 iterations of the
    tiny network, about 10 s; a few hundred leave a rippled SDF with stray bubbles)."""
    cfg = preset_config("small", size=32, renderer_size=16, width=32, depth=2, n_samples=8, channel_max=32,
                        d1_channel_max=32, sphere_init_batch=2, sphere_init_iters=2000, g_lr1=5e-4)
    torch.manual_seed(0)
    state = stages.build_stage(1, cfg, init_distributed("cpu"))
    init = stages.sphere_init_view(state)
    for iteration in range(cfg.sphere_init_iters):
        loop.train_iteration(init, iteration, None)
    path = tmp_path_factory.mktemp("ckpt") / "sphere.pt"
    torch.save({"g": state.g.state_dict(), "g_ema": state.g.state_dict(), "config": dataclasses.asdict(cfg)}, path)
    return path


# --- Python API ---------------------------------------------------------------------------------------

def test_generate_images_shapes_and_fixed_noise(tiny_full_ckpt):
    model = load_model(tiny_full_ckpt)
    z = identity_latents(2, 256, seed=3)
    angles = view_angles(2, 3, model.cameras, seed=3)
    images, thumbnails = generate_images(model, z, angles, truncation=0.7)
    assert images.shape == (2, 3, 3, 32, 32) and thumbnails.shape == (2, 3, 3, 16, 16)
    assert torch.isfinite(images).all() and thumbnails.abs().max() <= 1.0 + 1e-5   # the renderer's rgb is in [-1, 1]
    fixed, _ = generate_images(model, z, angles, truncation=0.7, fixed_noise=True)
    again, _ = generate_images(model, z, angles, truncation=0.7, batch_size=1, fixed_noise=True)
    torch.testing.assert_close(fixed, again, rtol=1e-4, atol=1e-5)   # same noise whatever the batching
    assert torch.equal(identity_latents(2, 256, seed=3), z)


def _with_visible_noise(model):
    """The decoder's noise weights start at 0 (official init): make the noise show in the images."""
    with torch.no_grad():
        for name, parameter in model.generator.decoder.named_parameters():
            if name.endswith("noise.weight"):
                parameter.fill_(0.5)
    return model


def test_generated_views_draw_fresh_noise_unless_fixed(tiny_full_ckpt):
    """As the official generate script (randomize_noise=True): two renders of the same view differ by
    their decoder noise only; fixed_noise=True reuses the stored buffers; a seed makes it repeatable."""
    model = _with_visible_noise(load_model(tiny_full_ckpt))
    z = identity_latents(1, 256, seed=0)
    same_view_twice = torch.zeros(1, 2, 2)
    images, thumbnails = generate_images(model, z, same_view_twice, seed=5)
    assert not torch.allclose(images[0, 0], images[0, 1])
    torch.testing.assert_close(thumbnails[0, 0], thumbnails[0, 1])   # the renderer has no noise
    repeat, _ = generate_images(model, z, same_view_twice, seed=5)
    assert torch.equal(images, repeat)
    fixed, _ = generate_images(model, z, same_view_twice, fixed_noise=True)
    torch.testing.assert_close(fixed[0, 0], fixed[0, 1])


def test_fixed_angles_are_the_official_13_views(tiny_full_ckpt):
    model = load_model(tiny_full_ckpt)
    angles = view_angles(2, 1, model.cameras, fixed=True)
    assert angles.shape == (2, 13, 2) and torch.equal(angles[0], angles[1])
    assert torch.equal(angles[0, 0], torch.zeros(2))


def test_surface_render_bands_equal_one_band(tiny_full_ckpt):
    model = load_model(tiny_full_ckpt)
    w = renderer_latents(model.generator, identity_latents(1, 256, 0), 1.0, None)
    angles = torch.tensor([[0.2, -0.1]])
    whole = render_surface(model, w, angles, resolution=24, samples=16, keep_sdf=True)
    banded = render_surface(model, w, angles, resolution=24, samples=16, keep_sdf=True, memory_budget=1)
    assert whole.xyz.shape == (1, 3, 24, 24) and whole.sdf.shape == (1, 24, 24, 16)
    for a, b in ((whole.xyz, banded.xyz), (whole.depth, banded.depth), (whole.sdf, banded.sdf)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the generator's own renderer is untouched by the shared surface renderer
    assert model.generator.renderer.output_features and model.generator.renderer.out_im_res == 16


def test_sphere_initialised_renderer_gives_a_closed_sphere_mesh(sphere_ckpt):
    """One closed surface around the origin, every vertex on the network's own zero level set, and of
    about the radius the initialisation fits.

    Tolerances: the network's SDF at every vertex is below 0.0025, half a voxel of the 48^3 box (0.24
    wide, so 0.005 per voxel) for an SDF of unit gradient: this checks the extraction itself (measured:
    at most 0.0008). The mean vertex radius is within 0.01 of the target 0.06 and every vertex within
    0.03: this checks that it is the sphere the initialisation fits, whose L1 fit after 2000
    iterations still leaves a mean |SDF error| of ~0.004-0.005 at its samples and a bias of the zero
    level that varies with the seed and the float rounding of the training path (measured mean radii
    0.053-0.066 over seeds, identities and both kernel paths)."""
    model = load_model(sphere_ckpt)
    w = renderer_latents(model.generator, identity_latents(1, 256, 0), 1.0, None)
    mesh = extract_mesh(model, w, (0.0, 0.0), resolution=48)
    solid = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    assert len(solid.split(only_watertight=False)) == 1
    assert solid.is_watertight and solid.volume > 0
    network_points = torch.as_tensor(mesh.vertices).float() * (2 / 0.24)      # the renderer's z-normalisation
    with torch.no_grad():
        sdf_at_vertices = model.generator.renderer.network.sdf(network_points.unsqueeze(0), w)[0, :, 0]
    assert sdf_at_vertices.abs().max() < 0.0025, sdf_at_vertices.abs().max()
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - SPHERE_RADIUS) < 0.01, radii.mean()
    assert np.abs(radii - SPHERE_RADIUS).max() < 0.03, (radii.min(), radii.max())
    assert np.linalg.norm(mesh.vertices.mean(0)) < 0.01
    assert mesh.vertex_colors is not None and mesh.vertex_colors.shape == (len(mesh.vertices), 3)


def test_no_zero_crossing_is_a_clear_error(tiny_full_ckpt):
    model = load_model(tiny_full_ckpt)
    with torch.no_grad():
        model.generator.renderer.network.sigma_linear.bias.fill_(5.0)   # SDF > 0 everywhere: no surface
    w = renderer_latents(model.generator, identity_latents(1, 256, 0), 1.0, None)
    with pytest.raises(NoSurfaceError, match="zero crossing"):
        extract_mesh(model, w, resolution=16)


# --- command lines -----------------------------------------------------------------------------------

def test_generate_cli_writes_every_promised_file(tiny_full_ckpt, tmp_path):
    out = tmp_path / "gen"
    assert generate.main(["--ckpt", str(tiny_full_ckpt), "--identities", "2", "--views", "2", "--outdir", str(out),
                          "--mesh-resolution", "16", "--device", "cpu"]) == 0
    summary = json.loads((out / "generation.json").read_text())
    assert len(summary["identities"]) == 2
    assert Image.open(out / "images" / "0000000.png").size == (2 * 32, 32)
    assert Image.open(out / "images" / "0000001_thumb.png").size == (2 * 16, 16)
    assert Image.open(out / "depth" / "0000000.png").size == (2 * 16, 16)
    meshes = sorted((out / "depth_map_meshes").iterdir())
    assert len(meshes) == 4 and all(p.suffix == ".obj" for p in meshes)
    loaded = trimesh.load(meshes[0], process=False)
    assert len(loaded.vertices) == 16 * 16
    for entry in summary["identities"]:   # a random renderer may or may not have a zero crossing
        assert ("marching_cubes_mesh" in entry) != ("mesh_error" in entry)
        if "marching_cubes_mesh" in entry:
            assert (out / entry["marching_cubes_mesh"]).is_file()


def test_generate_cli_fixed_angles_without_meshes(tiny_full_ckpt, tmp_path):
    out = tmp_path / "gen"
    assert generate.main(["--ckpt", str(tiny_full_ckpt), "--identities", "1", "--fixed-angles", "--no-meshes",
                          "--outdir", str(out), "--mesh-format", "ply"]) == 0
    assert Image.open(out / "images" / "0000000.png").size == (13 * 32, 32)
    assert not (out / "marching_cubes_meshes").exists()


def test_generate_cli_renderer_only_checkpoint_meshes_the_sphere(sphere_ckpt, tmp_path):
    out = tmp_path / "gen"
    assert generate.main(["--ckpt", str(sphere_ckpt), "--identities", "1", "--outdir", str(out),
                          "--mesh-resolution", "24", "--mesh-format", "ply"]) == 0
    entry = json.loads((out / "generation.json").read_text())["identities"][0]
    assert entry["marching_cubes_mesh"].endswith(".ply")
    assert Image.open(out / "images" / "0000000.png").size == (16, 16)     # thumbnails are the images


def _official_grid_indices(vertices, resolution, near=0.88, far=1.12):
    """Inverts the official placement v -> (v / n - 0.5) (far - near) (y and z negated): [V, 3] indices."""
    extent = far - near
    return np.stack([(vertices[:, 0] / extent + 0.5) * resolution, (-vertices[:, 1] / extent + 0.5) * resolution,
                     (0.5 - vertices[:, 2] / extent) * resolution], axis=1)


def test_generate_cli_official_mesh_mapping(sphere_ckpt, tmp_path):
    """--official-mesh-mapping places the same marching-cubes mesh as the official script: in its grid,
    every vertex lies on a cube edge (two of its three indices whole numbers); ours does not."""
    meshes = {}
    for name, flags in (("ours", []), ("official", ["--official-mesh-mapping", "--fixed-noise"])):
        out = tmp_path / name
        assert generate.main(["--ckpt", str(sphere_ckpt), "--identities", "1", "--outdir", str(out),
                              "--mesh-resolution", "24", *flags]) == 0
        summary = json.loads((out / "generation.json").read_text())
        meshes[name] = trimesh.load(out / summary["identities"][0]["marching_cubes_mesh"], process=False)
    assert summary["mesh_mapping"] == "official" and summary["noise"] == "fixed buffers"
    assert np.array_equal(meshes["official"].faces, meshes["ours"].faces)   # the same SDF, the same cubes

    def on_cube_edges(mesh):
        indices = _official_grid_indices(np.asarray(mesh.vertices, dtype=np.float64), 24)
        whole = np.abs(indices - np.round(indices)) < 1e-3
        return whole.sum(axis=1) >= 2

    assert on_cube_edges(meshes["official"]).all()
    assert not on_cube_edges(meshes["ours"]).all()


def test_render_video_cli(tiny_full_ckpt, tmp_path):
    out = tmp_path / "vid"
    assert render_video.main(["--ckpt", str(tiny_full_ckpt), "--frames", "6", "--trajectory", "azimuth", "--depth",
                              "--depth-resolution", "16", "--samples", "8", "--outdir", str(out)]) == 0
    assert video_info(out / "video_000_azimuth.mp4") == (6, 32, 32)
    assert video_info(out / "video_000_azimuth_depth.mp4") == (6, 16, 16)
    gif = tmp_path / "gif"
    assert render_video.main(["--ckpt", str(tiny_full_ckpt), "--frames", "3", "--format", "gif",
                              "--outdir", str(gif)]) == 0
    assert video_info(gif / "video_000_ellipse.gif") == (3, 32, 32)


@pytest.mark.parametrize("command", [generate.main, render_video.main])
def test_bad_arguments_are_clear_errors(command, tiny_full_ckpt, tmp_path, capsys):
    def error_of(*argv):
        with pytest.raises(SystemExit) as exit_info:
            command([*argv, "--outdir", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "no such checkpoint file" in error_of("--ckpt", str(tmp_path / "missing.pt"))
    not_stylesdf = tmp_path / "other.pt"
    torch.save({"g_ema": {"conv.weight": torch.zeros(3)}}, not_stylesdf)
    assert "not a StyleSDF generator" in error_of("--ckpt", str(not_stylesdf))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "could not be read" in error_of("--ckpt", str(garbage))
    assert "--identities must be >= 1" in error_of("--ckpt", str(tiny_full_ckpt), "--identities", "0")
    assert "--truncation must be in [0, 1]" in error_of("--ckpt", str(tiny_full_ckpt), "--truncation", "1.5")


def test_existing_outdir_is_never_overwritten_silently(tiny_full_ckpt, tmp_path, capsys):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["--ckpt", str(tiny_full_ckpt), "--identities", "1", "--no-meshes", "--outdir", str(out)]
    with pytest.raises(SystemExit):
        generate.main(argv)
    assert "--overwrite" in capsys.readouterr().err
    assert generate.main(argv + ["--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "keep" and (out / "generation.json").is_file()

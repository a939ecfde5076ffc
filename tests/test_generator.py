"""The assembled Generator: official state_dict layout (manifest, key by key), strict loading of
official-layout checkpoints, load_generator, the official forward call and its return tuple,
truncation as the official code applies it, kernels vs reference ops end to end."""

import pytest
import torch

from stylesdf_fast.models.cameras import generate_camera_params
from stylesdf_fast.models.generator import Generator, generator_config_from_state_dict, load_generator

from _inputs import official_manifest
from _marks import requires_kernels

CONFIGS = {
    "vol_renderer.g_ema": dict(full_pipeline=False),
    "afhq512x512.g_ema": dict(size=512),
    "ffhq1024x1024.g_ema": dict(size=1024),
}


def manifest():
    return official_manifest()


def random_state(shapes):
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) * 0.1 for key, shape in shapes.items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_matches_the_official_manifest(name):
    expected = {key: tuple(shape) for key, shape in manifest()[name].items()}
    ours = {key: tuple(value.shape) for key, value in Generator(**CONFIGS[name]).state_dict().items()}
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, f"shape mismatches (ours, official): {wrong}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_is_inferred_from_the_keys(name):
    shapes = manifest()[name]
    config = generator_config_from_state_dict({k: torch.empty(v) for k, v in shapes.items()})
    assert config["full_pipeline"] == CONFIGS[name].get("full_pipeline", True)
    if config["full_pipeline"]:
        assert config["size"] == CONFIGS[name]["size"]


def test_load_generator_reads_an_official_layout_checkpoint(tmp_path):
    state = random_state(manifest()["vol_renderer.g_ema"])
    path = tmp_path / "vol_renderer.pt"
    torch.save({"g": state, "d": {}, "g_ema": state}, path)
    g = load_generator(path)
    assert not g.training and g.decoder is None
    assert g.renderer.force_background and g.renderer.static_viewdirs and g.renderer.perturb == 0
    for key, value in g.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_load_generator_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="first keys"):
        load_generator(tmp_path / "other.pt")
    state = random_state(manifest()["vol_renderer.g_ema"])
    del state["renderer.network.rgb_linear.bias"]
    torch.save({"g_ema": state}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_generator(tmp_path / "broken.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_generator(tmp_path / "text.pt")


@pytest.fixture(scope="module")
def small_generator():
    torch.manual_seed(0)
    return Generator(size=128, n_samples=6, perturb=0.0, static_viewdirs=True, force_background=True).eval()


def cameras(batch=2):
    generator = torch.Generator().manual_seed(1)
    return generate_camera_params(64, "cpu", batch=batch, generator=generator)


def test_official_call_returns_the_official_tuple(small_generator):
    cam = cameras()
    z = [torch.randn(2, 256)]
    with torch.no_grad():
        out = small_generator(z, cam.c2w, cam.focal, cam.near, cam.far, return_xyz=True, return_sdf=True,
                              randomize_noise=False)
    image, thumb, xyz, sdf, mask = out
    assert image.shape == (2, 3, 128, 128) and thumb.shape == (2, 3, 64, 64)
    assert xyz.shape == (2, 3, 64, 64) and sdf.shape == (2, 64, 64, 6, 1) and mask.shape == (2, 1, 64, 64)
    assert thumb.min() >= -1 - 1e-5 and thumb.max() <= 1 + 1e-5
    with torch.no_grad():
        image2, latent = small_generator(z, cam.c2w, cam.focal, cam.near, cam.far, return_latents=True,
                                         randomize_noise=False)
    torch.testing.assert_close(image2, image)
    assert latent.shape == (2, small_generator.decoder.n_latent, 512)


def test_eikonal_output_position(small_generator):
    cam = cameras(1)
    out = small_generator([torch.randn(1, 256)], cam.c2w, cam.focal, cam.near, cam.far, return_sdf=True,
                          return_eikonal=True, randomize_noise=False)
    assert len(out) == 4 and out[2].shape[-1] == 1 and out[3].shape == (1, 64, 64, 6, 3)
    assert out[3].requires_grad  # the eikonal loss trains through it


def test_truncation_as_the_official_code(small_generator):
    """w_r is pulled toward mean_r; the decoder styles of the truncated w_r toward mean_d."""
    torch.manual_seed(3)
    mean = small_generator.mean_latent(64)
    assert mean[0].shape == (1, 256) and mean[1].shape == (1, 512)
    z = torch.randn(2, 256)
    w = small_generator.renderer_latents([z], truncation=0.5, truncation_latent=mean)[0]
    torch.testing.assert_close(w, mean[0] + 0.5 * (small_generator.style(z) - mean[0]))
    with torch.no_grad():
        latent = small_generator.decoder.styles_and_noise_forward([w], truncation=0.5, truncation_latent=mean)[0]
    expected = mean[1] + 0.5 * (small_generator.decoder.style(w) - mean[1])
    torch.testing.assert_close(latent[:, 0], expected)
    with torch.no_grad():
        a = small_generator([z], *cameras(2)[:4], truncation=0.0, truncation_latent=mean, randomize_noise=False)
        b = small_generator([torch.randn(2, 256)], *cameras(2)[:4], truncation=0.0, truncation_latent=mean,
                            randomize_noise=False)
    torch.testing.assert_close(a[0], b[0])  # psi = 0: every z gives the mean image


@requires_kernels
def test_kernels_match_reference_ops_end_to_end():
    torch.manual_seed(0)
    kernel = Generator(size=128, n_samples=6, perturb=0.0, impl="kernel").eval()
    reference = Generator(size=128, n_samples=6, perturb=0.0, impl="reference").eval()
    reference.load_state_dict(kernel.state_dict())
    cam = cameras()
    z = [torch.randn(2, 256)]
    outs = []
    for g in (kernel, reference):
        outs.append(g(z, cam.c2w, cam.focal, cam.near, cam.far, return_xyz=True, return_sdf=True,
                      return_eikonal=True, randomize_noise=False))
    names = ("image", "thumbnail", "xyz", "sdf", "eikonal", "mask")
    for name, k, r in zip(names, *outs):
        # 1e-4 relative to each output's scale: the eikonal term, a gradient through 8 sine layers
        # at frequency ~30, amplifies float32 rounding elementwise, not in norm
        assert (k - r).abs().max() <= 1e-4 * r.abs().max(), name
        assert (k - r).norm() <= 1e-4 * r.norm(), name


def test_decoder_runs_under_bfloat16_autocast(small_generator):
    cam = cameras(1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image, thumb = small_generator([torch.randn(1, 256)], cam.c2w, cam.focal, cam.near, cam.far,
                                       randomize_noise=False)
    assert torch.isfinite(image.float()).all() and image.shape == (1, 3, 128, 128)


def test_bad_styles(small_generator):
    cam = cameras(1)
    with pytest.raises(ValueError, match="styles"):
        small_generator([torch.randn(1, 128)], cam.c2w, cam.focal, cam.near, cam.far)
    with pytest.raises(ValueError, match="truncation_latent"):
        small_generator([torch.randn(1, 256)], cam.c2w, cam.focal, cam.near, cam.far, truncation=0.5)

"""StyleGAN2 decoder and the two discriminators: official state_dict keys and shapes, forward
shapes, modulated-conv math against per-sample convolutions, latent mixing and truncation,
initialisation, and second-order gradients (R1, path length) with the kernels vs the reference."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from stylesdf_fast import reference
from stylesdf_fast.models.decoder import Decoder
from stylesdf_fast.models.discriminators import Discriminator, VolumeRenderDiscriminator
from stylesdf_fast.models.impl import set_impl
from stylesdf_fast.models.stylegan2 import (
    ModulatedConv2d,
    PixelNorm,
    StyledConv,
    ToRGB,
    minibatch_stddev,
    stddev_group_size,
)
from stylesdf_fast.ops import make_kernel

from _inputs import assert_close, official_manifest
from _marks import requires_kernels

# Counts of stored numbers given by docs/official.md sections 2.3 / 2.4 (the decoder's = full G minus the renderer's).
DOCUMENTED_NUMEL = {
    "ffhq1024x1024.g_ema": 10_797_117 - 1_910_789,
    "ffhq1024x1024.d": 29_012_769,
    "vol_renderer.d": 12_098_003,
}
STAT_TOL = 0.03  # relative tolerance of sample standard deviations of >= 100k N(0, 1) draws


@pytest.fixture(scope="module")
def manifest():
    return official_manifest()


@pytest.fixture(scope="module")
def decoders():
    torch.manual_seed(0)
    return {1024: Decoder(1024), 512: Decoder(512)}


@pytest.fixture(scope="module")
def small_decoder():
    torch.manual_seed(0)
    return Decoder(128, channel_multiplier=1)  # the official 64x64 input, but narrow and one block


def manifest_entries(manifest, name, prefix=""):
    return {k[len(prefix):]: tuple(v) for k, v in manifest[name].items() if k.startswith(prefix)}


def assert_state_dict_matches(model, expected):
    """Key by key, with a diff that names every missing, unexpected and mis-shaped entry."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    mismatched = [f"{k}: ours {ours[k]} vs official {expected[k]}" for k in sorted(set(ours) & set(expected))
                  if ours[k] != expected[k]]
    problems = ([f"missing (official, not ours): {k} {expected[k]}" for k in missing]
                + [f"unexpected (ours, not official): {k} {ours[k]}" for k in unexpected]
                + [f"shape mismatch {m}" for m in mismatched])
    assert not problems, f"{len(problems)} state_dict differences:\n" + "\n".join(problems)


def assert_loads_strict(model, expected):
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) for k, shape in expected.items()}
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    for key in (next(iter(state)), list(state)[-1]):
        assert torch.equal(loaded[key], state[key]), key


# --- (a) official keys and shapes -----------------------------------------------------------------

@pytest.mark.parametrize("name, size", [("ffhq1024x1024.g_ema", 1024), ("afhq512x512.g_ema", 512)])
def test_decoder_state_dict_matches_official(manifest, name, size):
    expected = manifest_entries(manifest, name, "decoder.")
    model = Decoder(size)  # not the shared fixture: random tensors are loaded into it
    assert_state_dict_matches(model, expected)
    if name in DOCUMENTED_NUMEL:
        assert sum(v.numel() for v in model.state_dict().values()) == DOCUMENTED_NUMEL[name]
    assert_loads_strict(model, expected)


@pytest.mark.parametrize("name, size", [("ffhq1024x1024.d", 1024), ("afhq512x512.d", 512)])
def test_discriminator_state_dict_matches_official(manifest, name, size):
    model = Discriminator(size)
    expected = manifest_entries(manifest, name)
    assert_state_dict_matches(model, expected)
    if name in DOCUMENTED_NUMEL:
        assert sum(v.numel() for v in model.state_dict().values()) == DOCUMENTED_NUMEL[name]
    assert_loads_strict(model, expected)


def test_volume_render_discriminator_state_dict_matches_official(manifest):
    model = VolumeRenderDiscriminator(64)
    expected = manifest_entries(manifest, "vol_renderer.d")
    assert_state_dict_matches(model, expected)
    assert sum(v.numel() for v in model.state_dict().values()) == DOCUMENTED_NUMEL["vol_renderer.d"]
    assert_loads_strict(model, expected)


# --- (c) structure: noise buffers, latents --------------------------------------------------------

@pytest.mark.parametrize("size, resolutions, n_latent", [
    (1024, [64, 128, 128, 256, 256, 512, 512, 1024, 1024], 10),
    (512, [64, 128, 128, 256, 256, 512, 512], 8),
])
def test_decoder_structure(decoders, size, resolutions, n_latent):
    model = decoders[size]
    noises = dict(model.noises.named_buffers())
    assert list(noises) == [f"noise_{k}" for k in range(len(resolutions))]
    assert [tuple(noises[f"noise_{k}"].shape) for k in range(len(resolutions))] == [(1, 1, r, r) for r in resolutions]
    assert model.n_latent == n_latent and model.num_layers == len(resolutions)
    assert len(model.convs) == 2 * len(model.to_rgbs) == n_latent - 2
    assert len(model.upsamples) == 0 and model.style_dim == 512
    assert [c.conv.upsample for c in model.convs] == [True, False] * len(model.to_rgbs)
    assert model.to_rgb1.upsample is None and all(t.upsample is not None for t in model.to_rgbs)


# --- (b) forward shapes ---------------------------------------------------------------------------

def test_decoder_forward_shapes_and_noise(small_decoder):
    model = small_decoder
    features, w = torch.randn(2, 256, 64, 64), torch.randn(2, 256)
    buffers = [getattr(model.noises, f"noise_{k}") for k in range(model.num_layers)]
    noise_weights = [conv.noise.weight for conv in [model.conv1, *model.convs]]
    with torch.no_grad():
        for weight in noise_weights:
            weight.fill_(1.0)  # make the noise visible (its weight starts at 0)
        image, latent = model(features, [w], return_latents=True, randomize_noise=False)
        again, none = model(features, [w], noise=buffers)
        fresh, _ = model(features, [w])
        for weight in noise_weights:
            weight.zero_()
    assert image.shape == (2, 3, 128, 128) and torch.isfinite(image).all()
    assert latent.shape == (2, model.n_latent, 512) and none is None
    assert torch.equal(image, again)  # stored buffers = the same list passed explicitly: deterministic
    assert not torch.allclose(image, fresh)  # fresh N(0, 1) noise per call


def test_styled_conv_extra_bias_is_unused(small_decoder):
    model = small_decoder
    features, w = torch.randn(1, 256, 64, 64), torch.randn(1, 256)
    model.zero_grad(set_to_none=True)
    image, _ = model(features, [w])
    image.sum().backward()
    assert model.conv1.bias.grad is None and all(c.bias.grad is None for c in model.convs)
    assert model.conv1.activate.bias.grad is not None and model.style[1].weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_discriminator_forward_shapes():
    torch.manual_seed(0)
    model = Discriminator(32)
    for batch in (1, 2, 4, 6, 8):
        out = model(torch.randn(batch, 3, 32, 32))
        assert out.shape == (batch, 1) and torch.isfinite(out).all()


def test_volume_render_discriminator_forward_shapes():
    torch.manual_seed(0)
    logit, view = VolumeRenderDiscriminator(64)(torch.randn(1, 3, 64, 64))
    assert logit.shape == (1, 1) and view.shape == (1, 2)
    logit, view = VolumeRenderDiscriminator(16, viewpoint_head=False)(torch.randn(3, 3, 16, 16))
    assert logit.shape == (3, 1) and view is None
    model = VolumeRenderDiscriminator(16, viewpoint_head=False)
    assert model.final_conv.conv.weight.shape == (1, 400, 2, 2)


# --- (c) modulated convolution vs per-sample convolutions (float64) -------------------------------

def per_sample_modulated_conv(module, x, style):
    """Independent reference: each sample's own weight, one conv2d per sample."""
    mod = module.modulation
    s = style @ (mod.weight * mod.scale).t() + mod.bias * mod.lr_mul  # [B, in]
    k = module.kernel_size
    outs = []
    for b in range(x.shape[0]):
        w = module.weight[0] * s[b].view(1, -1, 1, 1) / math.sqrt(module.in_channel * k * k)  # [out, in, k, k]
        if module.demodulate:
            w = w / torch.sqrt(w.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if module.upsample:
            y = F.conv_transpose2d(xb, w.transpose(0, 1), stride=2)
            y = reference.upfirdn2d(y, make_kernel([1, 3, 3, 1]).to(y) * 4, pad=(1, 1))
        elif module.downsample:
            xb = reference.upfirdn2d(xb, make_kernel([1, 3, 3, 1]).to(xb), pad=(2, 2))
            y = F.conv2d(xb, w, stride=2)
        else:
            y = F.conv2d(xb, w, padding=k // 2)
        outs.append(y)
    return torch.cat(outs)


@pytest.mark.parametrize("kernel_size, demodulate, upsample, downsample, out_hw", [
    (3, True, False, False, 8),
    (3, True, True, False, 16),
    (3, True, False, True, 4),
    (1, False, False, False, 8),  # ToRGB
])
def test_modulated_conv_matches_per_sample_conv(kernel_size, demodulate, upsample, downsample, out_hw):
    torch.manual_seed(0)
    module = ModulatedConv2d(5, 4, kernel_size, 6, demodulate=demodulate, upsample=upsample, downsample=downsample,
                             impl="reference").double()
    with torch.no_grad():
        module.modulation.bias.add_(0.3 * torch.randn_like(module.modulation.bias))
    x, style = torch.randn(3, 5, 8, 8, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    out = module(x, style)
    assert out.shape == (3, 4, out_hw, out_hw)
    assert_close(out, per_sample_modulated_conv(module, x, style))
    if demodulate:  # every sample's output filters have unit norm
        norms = module.modulated_weight(style).pow(2).sum([2, 3, 4])
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=0)


def test_pixel_norm_and_minibatch_stddev():
    x = torch.randn(4, 7, dtype=torch.float64)
    y = PixelNorm()(x)
    mean_square = x.pow(2).mean(1)
    assert_close(y.pow(2).mean(1), mean_square / (mean_square + 1e-8))
    feat = torch.randn(6, 5, 2, 2, dtype=torch.float64)
    out = minibatch_stddev(feat)  # B=6 -> group 3, members b and b+2 and b+4 (strided)
    assert out.shape == (6, 6, 2, 2)
    for start in range(2):
        members = feat[start::2]
        expected = torch.sqrt(members.var(0, correction=0) + 1e-8).mean()
        assert_close(out[start::2, 5], expected.expand(3, 2, 2))
    assert [stddev_group_size(b) for b in (1, 2, 3, 4, 6, 8, 9, 10, 12)] == [1, 2, 3, 4, 3, 4, 3, 2, 4]
    with pytest.raises(ValueError, match="batch 5"):
        stddev_group_size(5)


# --- latents: mixing, truncation, mean ------------------------------------------------------------

def test_style_mixing_and_broadcast(decoders):
    model = decoders[512]
    w1, w2 = torch.randn(2, 256), torch.randn(2, 256)
    with torch.no_grad():
        s1, s2 = model.style(w1), model.style(w2)
        latent, noise = model.styles_and_noise_forward([w1, w2], inject_index=3)
        assert latent.shape == (2, 8, 512) and noise == [None] * model.num_layers
        assert torch.equal(latent[:, :3], s1.unsqueeze(1).expand(2, 3, 512))
        assert torch.equal(latent[:, 3:], s2.unsqueeze(1).expand(2, 5, 512))
        single, _ = model.styles_and_noise_forward([w1])
        assert torch.equal(single, s1.unsqueeze(1).expand(2, 8, 512))
        w_plus = torch.randn(2, 8, 512)
        passed, _ = model.styles_and_noise_forward([w_plus], input_is_latent=True)
        assert torch.equal(passed, w_plus)
        random.seed(0)
        indices = set()
        for _ in range(60):
            mixed, _ = model.styles_and_noise_forward([s1, s2], input_is_latent=True)
            indices.add(int((mixed == s1.unsqueeze(1)).all(-1).all(0).sum()))
        assert indices == set(range(1, 8))  # uniform crossover in [1, n_latent - 1]


def test_truncation_and_mean_latent(decoders):
    model = decoders[512]
    renderer_samples = torch.randn(64, 256)
    with torch.no_grad():
        mean_d = model.mean_latent(renderer_samples)
        assert mean_d.shape == (1, 512)
        assert_close(mean_d, model.style(renderer_samples).mean(0, keepdim=True))  # mean of mapped samples
        w = torch.randn(3, 256)
        latent, _ = model.styles_and_noise_forward([w], truncation=0.5, truncation_latent=mean_d)
        as_pair, _ = model.styles_and_noise_forward([w], truncation=0.5, truncation_latent=[None, mean_d])
        expected = mean_d + 0.5 * (model.style(w) - mean_d)
    torch.testing.assert_close(latent[:, 0], expected)
    assert torch.equal(latent, as_pair)
    with pytest.raises(ValueError, match="truncation_latent"):
        model.styles_and_noise_forward([w], truncation=0.5)


def test_bad_input_raises(decoders):
    for size in (100, 2048, 32):
        with pytest.raises(ValueError, match="size"):
            Decoder(size)
    with pytest.raises(ValueError, match="size"):
        Discriminator(2048)
    with pytest.raises(ValueError, match="size"):
        VolumeRenderDiscriminator(256)
    model = decoders[512]
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(1, 128, 64, 64), [torch.randn(1, 256)])
    with pytest.raises(ValueError, match="styles"):
        model(torch.randn(1, 256, 64, 64), [torch.randn(1, 512)])
    with pytest.raises(TypeError, match="styles"):
        model(torch.randn(1, 256, 64, 64), [torch.randn(1, 256)] * 3)
    with pytest.raises(ValueError, match="noise"):
        model(torch.randn(1, 256, 64, 64), [torch.randn(1, 256)], noise=[None])
    with pytest.raises(ValueError, match="batch 5"):
        Discriminator(8)(torch.randn(5, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, 8, 8\]"):
        Discriminator(8)(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="impl"):
        set_impl(Discriminator(8), "fast")


# --- (d) initialisation ---------------------------------------------------------------------------

def test_decoder_initialisation(decoders):
    model = decoders[1024]
    mapping = model.style[1]
    assert mapping.lr_mul == 0.01 and mapping.scale == pytest.approx(0.01 / 16)
    assert mapping.weight.std().item() == pytest.approx(100.0, rel=STAT_TOL)  # N(0, 1) / lr_mul
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in model.style[1:])
    convs = [model.conv1, *model.convs]
    assert model.convs[1].conv.weight.std().item() == pytest.approx(1.0, rel=STAT_TOL)
    for layer in convs + [model.to_rgb1, *model.to_rgbs]:
        assert torch.equal(layer.conv.modulation.bias, torch.ones_like(layer.conv.modulation.bias))
        assert torch.count_nonzero(layer.bias) == 0
    for layer in convs:
        assert layer.noise.weight.item() == 0.0 and torch.count_nonzero(layer.activate.bias) == 0
        assert layer.activate.scale == pytest.approx(2**0.5)
    assert model.noises.noise_8.std().item() == pytest.approx(1.0, rel=STAT_TOL)
    blur = make_kernel([1, 3, 3, 1]) * 4
    assert torch.equal(model.convs[0].conv.blur.kernel, blur) and model.convs[0].conv.blur.pad == (1, 1)
    assert torch.equal(model.to_rgbs[0].upsample.kernel, blur) and tuple(model.to_rgbs[0].upsample.pad) == (2, 1)


def test_discriminator_initialisation():
    torch.manual_seed(0)
    model = Discriminator(64)
    assert model.convs[1].conv1[0].weight.std().item() == pytest.approx(1.0, rel=STAT_TOL)
    assert model.convs[1].conv1[0].bias is None and torch.count_nonzero(model.convs[1].conv1[1].bias) == 0
    assert torch.equal(model.convs[1].conv2[0].kernel, make_kernel([1, 3, 3, 1]))
    assert model.convs[1].conv2[0].pad == (2, 2) and model.convs[1].skip[0].pad == (1, 1)
    assert model.final_linear[0].weight.std().item() == pytest.approx(1.0, rel=STAT_TOL)
    assert model.final_linear[1].scale == pytest.approx(1 / math.sqrt(512))


def test_volume_render_discriminator_initialisation():
    torch.manual_seed(0)
    model = VolumeRenderDiscriminator(64)
    block = model.convs[2]  # 256 -> 400 at 32x32
    for layer, fan_in in ((model.convs[0], 3), (block.conv1, 256 * 9), (block.conv2, 400 * 9)):
        bias, bound = layer.activation.bias, 1 / math.sqrt(fan_in)
        assert bias.abs().max().item() <= bound and bias.abs().max().item() > 0.9 * bound
        assert layer.activation.scale == 1
    weight = block.conv1.conv.conv.weight  # PyTorch default init: U(+-1/sqrt(fan_in)), fan_in with coords
    bound = 1 / math.sqrt(258 * 9)
    assert weight.abs().max().item() <= bound and weight.abs().max().item() > 0.99 * bound
    coords = block.conv1.conv.addcoords(torch.zeros(1, 1, 4, 5))
    torch.testing.assert_close(coords[0, 1], torch.tensor([-1, -1 / 3, 1 / 3, 1.0]).view(4, 1).expand(4, 5))  # yy
    torch.testing.assert_close(coords[0, 2], torch.tensor([-1, -0.5, 0, 0.5, 1.0]).expand(4, 5))  # then xx


# --- (e) second-order gradients: kernels vs reference ---------------------------------------------

def r1_gradients(model, x):
    """R1 = sum of squared input gradients; returns (grad wrt input, R1, grads of R1 wrt parameters)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    logit = out[0] if isinstance(out, tuple) else out
    (grad,) = torch.autograd.grad(logit.sum(), x, create_graph=True)
    penalty = grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    param_grads = torch.autograd.grad(penalty, params, allow_unused=True)
    return grad.detach(), penalty.detach(), param_grads


def assert_impls_agree(make_model, x):
    torch.manual_seed(0)
    ref_model = set_impl(make_model().double(), "reference")
    kernel_model = set_impl(make_model().double(), "kernel")
    kernel_model.load_state_dict(ref_model.state_dict())
    ref, ker = r1_gradients(ref_model, x), r1_gradients(kernel_model, x)
    assert_close(ker[0], ref[0], msg="input gradient")
    assert_close(ker[1], ref[1], msg="R1 value")
    names = [n for n, p in ref_model.named_parameters() if p.requires_grad]
    for name, param, g_ker, g_ref in zip(names, ref_model.parameters(), ker[2], ref[2]):
        # A structurally zero gradient (e.g. of the last activation bias, through the piecewise
        # linear mask only) is None on one path and zeros on the other.
        g_ker = torch.zeros_like(param) if g_ker is None else g_ker
        g_ref = torch.zeros_like(param) if g_ref is None else g_ref
        assert_close(g_ker, g_ref, msg=f"d R1 / d {name}")
    assert ref[1] > 0


@requires_kernels
def test_discriminator_r1_double_backward_kernel_matches_reference():
    assert_impls_agree(lambda: Discriminator(8), torch.randn(2, 3, 8, 8, dtype=torch.float64))


@requires_kernels
def test_volume_render_discriminator_r1_kernel_matches_reference():
    assert_impls_agree(lambda: VolumeRenderDiscriminator(8), torch.randn(2, 3, 8, 8, dtype=torch.float64))


@requires_kernels
def test_decoder_blocks_path_length_double_backward_kernel_matches_reference():
    """Path-length regularisation differentiates d(image . y)/d(w) again. A narrow decoder block
    (upsampling StyledConv, StyledConv, ToRGB with its skip upsampling) runs every fused op of the
    decoder; a whole Decoder has >= 512 channels, too slow for a float64 double backward on CPU."""

    def make_blocks(impl):
        torch.manual_seed(0)
        blocks = torch.nn.ModuleList([
            StyledConv(6, 5, 3, 16, upsample=True, impl=impl),
            StyledConv(5, 5, 3, 16, impl=impl),
            ToRGB(5, 16, impl=impl),
        ]).double()
        with torch.no_grad():
            for block in blocks[:2]:
                block.noise.weight.fill_(0.5)
                block.activate.bias.normal_()
        return blocks

    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    skip = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    noise = [torch.randn(2, 1, 10, 10, dtype=torch.float64) for _ in range(2)]
    y = torch.randn(2, 3, 10, 10, dtype=torch.float64) / 10
    latent = torch.randn(2, 3, 16, dtype=torch.float64)

    def penalty_and_grads(blocks):
        w = latent.clone().requires_grad_(True)
        out = blocks[0](x, w[:, 0], noise=noise[0])
        out = blocks[1](out, w[:, 1], noise=noise[1])
        image = blocks[2](out, w[:, 2], skip=skip)
        (grad,) = torch.autograd.grad((image * y).sum(), w, create_graph=True)
        penalty = (grad.pow(2).sum(2).mean(1).sqrt() - 0.1).pow(2).mean()
        params = [p for p in blocks.parameters() if p.requires_grad]
        grads = torch.autograd.grad(penalty, params, allow_unused=True)
        return [penalty.detach(), grad.detach()] + [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    expected = penalty_and_grads(make_blocks("reference"))
    got = penalty_and_grads(make_blocks("kernel"))
    assert expected[0] > 0 and len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_close(g, e)

"""models/renderer.py: official state_dict keys and shapes, layer formulas and inits, rays and depth
sampling, a render against a transcription of the official renderer, the eikonal term, the sphere-init
pass, kernel vs reference, bad input."""
import math

import pytest
import torch
from torch.nn import functional as F

from stylesdf_fast.models.renderer import (
    FiLMSiren,
    LinearLayer,
    MappingLinear,
    VolumeFeatureRenderer,
    camera_rays,
    make_renderer_mapping,
    make_t_vals,
    sample_depths,
)

from _inputs import official_manifest
from _marks import requires_kernels

LEAKY_GAIN = math.sqrt(2 / (1 + 0.2**2))
NEAR, FAR = 0.88, 1.12
FOV_HALF_DEG = 6.0
F64_TOL = dict(rtol=1e-10, atol=1e-12)


# --- builders -------------------------------------------------------------------------------------

def look_at_c2w(azim, elev, dtype=torch.float64):
    """docs/official.md section 1.7: camera on the unit sphere looking at the origin, c2w [B, 3, 4]."""
    azim, elev = torch.as_tensor(azim, dtype=dtype), torch.as_tensor(elev, dtype=dtype)
    pos = torch.stack([torch.cos(elev) * torch.sin(azim), torch.sin(elev), torch.cos(elev) * torch.cos(azim)], -1)
    z_axis = pos / pos.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=dtype).expand_as(z_axis)
    x_axis = torch.linalg.cross(up, z_axis)
    x_axis = x_axis / x_axis.norm(dim=-1, keepdim=True)
    y_axis = torch.linalg.cross(z_axis, x_axis)
    return torch.stack([x_axis, y_axis, z_axis, pos], -1)  # columns


def cameras(batch, res, dtype=torch.float64):
    """(c2w [B, 3, 4], focal, near, far [B, 1, 1]) with a few degrees of azimuth/elevation."""
    azim = torch.linspace(-0.3, 0.3, batch, dtype=dtype)
    elev = torch.linspace(0.15, -0.1, batch, dtype=dtype)
    focal = 0.5 * res / math.tan(math.radians(FOV_HALF_DEG))
    full = lambda value: torch.full((batch, 1, 1), value, dtype=dtype)  # noqa: E731
    return look_at_c2w(azim, elev, dtype), full(focal), full(NEAR), full(FAR)


def tiny_renderer(**options):
    """A float64 renderer small enough for finite differences and exact comparisons."""
    settings = dict(style_dim=8, out_im_res=4, depth=3, width=16, n_samples=5, perturb=0.0, impl="reference")
    settings.update(options)
    return VolumeFeatureRenderer(**settings).double()


def film_formula(layer, x, style):
    """FiLMSiren as written in docs/official.md section 1.4, from the parameters."""
    gamma = 15 * (style @ layer.gamma.weight.T + layer.gamma.bias) + 30  # [B, out]
    beta = 0.25 * (style @ layer.beta.weight.T + layer.beta.bias)
    shape = (style.shape[0],) + (1,) * (x.dim() - 2) + (gamma.shape[-1],)
    return torch.sin(gamma.view(shape) * (x @ layer.weight.T + layer.bias) + beta.view(shape))


def official_render(r, c2w, focal, near, far, styles):
    """Transcription of the official get_rays / render_rays / SirenGenerator / volume_integration
    (volume_renderer.py) without jitter, with its [B, H, W, S, C] layout and in-line quadrature."""
    res, batch, n = r.out_im_res, c2w.shape[0], r.n_samples
    dtype = c2w.dtype
    i, j = torch.meshgrid(torch.linspace(0.5, res - 0.5, res, dtype=dtype),
                          torch.linspace(0.5, res - 0.5, res, dtype=dtype), indexing="ij")
    i, j = i.t().unsqueeze(0), j.t().unsqueeze(0)
    dirs = torch.stack([(i - res * .5) / focal, -(j - res * .5) / focal,
                        -torch.ones_like(i).expand(batch, res, res)], -1)
    rays_d = torch.sum(dirs[..., None, :] * c2w[:, None, None, :3, :3], -1)
    rays_o = c2w[:, None, None, :3, -1].expand(rays_d.shape)
    viewdirs = dirs if r.static_viewdirs else rays_d
    viewdirs = viewdirs / torch.norm(viewdirs, dim=-1, keepdim=True)
    near = near.unsqueeze(-1) * torch.ones_like(rays_d[..., :1])
    far = far.unsqueeze(-1) * torch.ones_like(rays_d[..., :1])
    end = 1. - 1 / n if r.offset_sampling else 1.   # --no_offset_sampling: NeRF's stratified t_vals
    t_vals = torch.linspace(0., end, steps=n, dtype=dtype).view(1, 1, 1, -1)
    z_vals = near * (1. - t_vals) + far * t_vals
    pts = rays_o.unsqueeze(3) + rays_d.unsqueeze(3) * z_vals.unsqueeze(-1)
    normalized_pts = pts * 2 / ((far - near).unsqueeze(3)) if r.z_normalize else pts
    x = torch.cat([normalized_pts, viewdirs.unsqueeze(3).expand(normalized_pts.shape)], -1)

    net = r.network
    h = x[..., :3]
    for layer in net.pts_linears:
        h = film_formula(layer, h, styles)
    sdf = h @ net.sigma_linear.weight.T + net.sigma_linear.bias
    features = film_formula(net.views_linears, torch.cat([h, x[..., 3:]], -1), styles)
    rgb = features @ net.rgb_linear.weight.T + net.rgb_linear.bias

    dists = z_vals[..., 1:] - z_vals[..., :-1]
    rays_d_norm = torch.norm(rays_d.unsqueeze(3), dim=-1)
    dists = torch.cat([dists, torch.full_like(rays_d_norm, 1e10)], -1) * rays_d_norm
    noise = torch.randn_like(sdf) * r.raw_noise_std if r.raw_noise_std > 0 else 0.
    if r.sdf:
        beta = r.sigmoid_beta
        sigma = torch.sigmoid(-sdf / beta) / beta
        alpha = 1 - torch.exp(-sigma * dists.unsqueeze(-1))
    else:   # --no_sdf: NeRF densities
        alpha = 1 - torch.exp(-F.softplus(sdf + noise) * dists.unsqueeze(-1))
    visibility = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1, :]), 1. - alpha + 1e-10], 3), 3)[..., :-1, :]
    weights = alpha * visibility
    if r.force_background:
        weights[..., -1, :] = 1 - weights[..., :-1, :].sum(3)
    rgb_map = -1 + 2 * torch.sum(weights * torch.sigmoid(rgb), 3)
    feature_map = torch.sum(weights * features, 3)
    xyz = torch.sum(weights * pts, 3)
    mask = weights[..., -1, :]
    nchw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    return dict(rgb=nchw(rgb_map), features=nchw(feature_map), sdf=sdf, mask=nchw(mask), xyz=nchw(xyz))


# --- (a) state_dict compatibility -----------------------------------------------------------------

def make_container(**options):
    container = torch.nn.Module()
    container.style = make_renderer_mapping()
    container.renderer = VolumeFeatureRenderer(**options)
    return container


def documented_keys():
    """The 65 keys and shapes of an official stage-1 `g_ema` (docs/official.md section 2.2), in checkpoint order."""
    keys = {}
    for index in range(3):
        keys[f"style.{index}.weight"], keys[f"style.{index}.bias"] = [256, 256], [256]
    keys["renderer.sigmoid_beta"] = [1]

    def film(prefix, fan_in):
        keys[f"{prefix}.weight"], keys[f"{prefix}.bias"] = [256, fan_in], [256]
        for part in ("gamma", "beta"):
            keys[f"{prefix}.{part}.weight"], keys[f"{prefix}.{part}.bias"] = [256, 256], [256]

    for index in range(8):
        film(f"renderer.network.pts_linears.{index}", 3 if index == 0 else 256)
    film("renderer.network.views_linears", 259)
    for head, out in (("rgb_linear", 3), ("sigma_linear", 1)):
        keys[f"renderer.network.{head}.weight"], keys[f"renderer.network.{head}.bias"] = [out, 256], [out]
    return keys


@pytest.fixture(scope="module")
def manifest():
    keys = official_manifest()["vol_renderer.g_ema"]
    assert keys == documented_keys() and list(keys) == list(documented_keys())
    return keys


@pytest.mark.parametrize("output_features", [True, False])
def test_state_dict_matches_official_manifest(manifest, output_features):
    state = make_container(output_features=output_features).state_dict()
    assert list(state) == list(manifest)  # same keys, same order
    for key, shape in manifest.items():
        assert list(state[key].shape) == shape, key
    assert len(state) == 65
    assert sum(t.numel() for t in state.values()) == 1_910_789


def test_buffers_are_not_persistent():
    renderer = VolumeFeatureRenderer(out_im_res=8, n_samples=6)
    assert {name for name, _ in renderer.named_buffers()} == {"i", "j", "t_vals"}
    assert not {"i", "j", "t_vals"} & set(renderer.state_dict())


def test_strict_load_of_official_shapes(manifest):
    container = make_container()
    random_state = {key: torch.randn(shape) for key, shape in manifest.items()}
    container.load_state_dict(random_state, strict=True)
    for key, value in container.state_dict().items():
        assert torch.equal(value, random_state[key]), key


# --- (b) layers: formulas and inits ---------------------------------------------------------------

@pytest.mark.parametrize("lead", [(2, 3, 4, 5), (2, 7)])
def test_film_siren_matches_formula(lead):
    layer = FiLMSiren(6, 10, style_dim=4).double()
    x = torch.randn(lead + (6,), dtype=torch.float64)
    style = torch.randn(lead[0], 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x, style), film_formula(layer, x, style), **F64_TOL)


def test_linear_layers_match_formula():
    x = torch.randn(5, 7, dtype=torch.float64)
    layer = LinearLayer(7, 3, bias_init=30, std_init=15).double()
    torch.testing.assert_close(layer(x), 15 * (x @ layer.weight.T + layer.bias) + 30, **F64_TOL)
    mapping = MappingLinear(7, 3, impl="reference").double()
    expected = F.leaky_relu(x @ mapping.weight.T + mapping.bias, 0.2)  # gain 1, not sqrt(2)
    torch.testing.assert_close(mapping(x), expected, **F64_TOL)
    style = make_renderer_mapping(7, impl="reference").double()
    assert isinstance(style, torch.nn.Sequential) and len(style) == 3
    out = x
    for layer in style:
        out = F.leaky_relu(out @ layer.weight.T + layer.bias, 0.2)
    torch.testing.assert_close(style(x), out, **F64_TOL)


def _assert_uniform(tensor, bound):
    assert tensor.abs().max() <= bound
    assert tensor.abs().max() > 0.9 * bound  # fills the range (thousands of draws)


def _assert_std(tensor, std):
    assert abs(tensor.std().item() / std - 1) < 0.03, (tensor.std().item(), std)


def test_init_statistics():
    renderer = VolumeFeatureRenderer(out_im_res=4, n_samples=4)
    net = renderer.network
    assert renderer.sigmoid_beta.tolist() == [pytest.approx(0.1)]
    _assert_uniform(net.pts_linears[0].weight, 1 / 3)
    for layer in list(net.pts_linears)[1:] + [net.views_linears]:
        fan_in = layer.weight.shape[1]
        _assert_uniform(layer.weight, math.sqrt(6 / fan_in) / 25)
        _assert_uniform(layer.bias, 1 / math.sqrt(fan_in))
    _assert_uniform(net.pts_linears[0].bias, 1 / math.sqrt(3))
    for head in (net.rgb_linear, net.sigma_linear):
        assert head.weight.abs().max() <= math.sqrt(6 / 256) / 25
    film = net.pts_linears[3]
    for modulation in (film.gamma, film.beta):
        _assert_std(modulation.weight, 0.25 * LEAKY_GAIN / 16)
        _assert_uniform(modulation.bias, 1 / 16)
    assert (film.gamma.std_init, film.gamma.bias_init, film.beta.std_init, film.beta.bias_init) == (15, 30, 0.25, 0)
    _assert_uniform(LinearLayer(50, 200, is_first=True).weight, 1 / 50)
    for layer in make_renderer_mapping():
        _assert_std(layer.weight, LEAKY_GAIN / 16)
        _assert_uniform(layer.bias, 1 / 16)


# --- rays and (e) depth sampling ------------------------------------------------------------------

def test_camera_rays_follow_the_opengl_pixel_convention():
    res, focal = 4, 10.0
    renderer = VolumeFeatureRenderer(style_dim=8, out_im_res=res, depth=1, width=8, n_samples=2)
    c2w = look_at_c2w(torch.tensor([0.4]), torch.tensor([-0.2]), torch.float32)
    rays_o, rays_d, dirs = camera_rays(c2w, torch.full((1, 1, 1), focal), renderer.i, renderer.j, res)
    # row 0 / column 0 is the top-left pixel: x < 0, y > 0, looking along -z
    torch.testing.assert_close(dirs[0, 0, 0], torch.tensor([-1.5 / focal, 1.5 / focal, -1.0]))
    torch.testing.assert_close(dirs[0, 2, 1], torch.tensor([-0.5 / focal, -0.5 / focal, -1.0]))
    torch.testing.assert_close(rays_d, dirs @ c2w[0, :, :3].T)  # world = R . camera, not normalised
    torch.testing.assert_close(rays_o, c2w[0, :, 3].expand(1, res, res, 3))


def test_offset_sampling_without_jitter_is_the_linspace():
    n = 6
    near, far = torch.full((3, 1), NEAR, dtype=torch.float64), torch.full((3, 1), FAR, dtype=torch.float64)
    t = make_t_vals(n).double()
    torch.testing.assert_close(t, torch.linspace(0, 1 - 1 / n, n, dtype=torch.float64))
    z = sample_depths(near, far, t, perturb=0.0)
    torch.testing.assert_close(z, (NEAR * (1 - t) + FAR * t).expand(3, n), **F64_TOL)
    torch.testing.assert_close(make_t_vals(n, offset_sampling=False), torch.linspace(0, 1, n))


def test_offset_sampling_shifts_each_ray_by_one_fraction_of_the_gap():
    n, rays = 8, 500
    near = torch.full((rays, 1), NEAR, dtype=torch.float64)
    far = torch.full((rays, 1), FAR, dtype=torch.float64)
    t = make_t_vals(n).double()
    base = sample_depths(near, far, t)
    z = sample_depths(near, far, t, perturb=1.0)
    gaps = torch.cat([base[:, 1:], far], -1) - base
    fraction = (z - base) / gaps  # [R, S]: one u per ray
    torch.testing.assert_close(fraction, fraction[:, :1].expand_as(fraction), **F64_TOL)
    assert fraction.min() >= 0 and fraction.max() < 1 and fraction.std() > 0.2
    assert (z[:, -1] <= FAR).all() and (z[:, 1:] > z[:, :-1]).all()


def test_stratified_sampling_draws_inside_midpoint_bins():
    n, rays = 8, 500
    near = torch.full((rays, 1), NEAR, dtype=torch.float64)
    far = torch.full((rays, 1), FAR, dtype=torch.float64)
    t = make_t_vals(n, offset_sampling=False).double()
    base = sample_depths(near, far, t, offset_sampling=False)
    z = sample_depths(near, far, t, perturb=1.0, offset_sampling=False)
    mids = 0.5 * (base[:, 1:] + base[:, :-1])
    lower, upper = torch.cat([base[:, :1], mids], -1), torch.cat([mids, base[:, -1:]], -1)
    assert ((z >= lower) & (z <= upper)).all()
    fraction = (z - lower) / (upper - lower)
    assert fraction.std(dim=1).min() > 0  # independent per sample, not one shift per ray


def test_renderer_depths_with_and_without_perturb():
    c2w, focal, near, far = cameras(2, 4)
    renderer = tiny_renderer()
    styles = torch.randn(2, 8, dtype=torch.float64)
    t = torch.linspace(0, 1 - 1 / 5, 5, dtype=torch.float64)
    z = renderer.render(c2w, focal, near, far, styles).z_vals
    torch.testing.assert_close(z, (NEAR * (1 - t) + FAR * t).expand(2, 4, 4, 5), **F64_TOL)
    renderer.perturb = 1.0
    z = renderer.render(c2w, focal, near, far, styles).z_vals
    assert (z[..., -1] <= FAR).all() and (z[..., 0] >= NEAR).all() and not torch.allclose(z[..., 0], z.new_tensor(NEAR))


# --- (c) renders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_width_renderer():
    torch.manual_seed(1)
    return VolumeFeatureRenderer(out_im_res=16, n_samples=8, perturb=0.0, return_xyz=True, return_sdf=True)


@pytest.mark.parametrize("force_background", [False, True])
def test_small_render_shapes_ranges_and_weights(full_width_renderer, force_background):
    renderer = full_width_renderer
    renderer.force_background = force_background
    c2w, focal, near, far = (t.float() for t in cameras(2, 16))
    styles = torch.randn(2, 256)
    with torch.no_grad():
        out = renderer(c2w, focal, near, far, styles)
        rays = renderer.render(c2w, focal, near, far, styles)
    renderer.force_background = False
    assert out.rgb.shape == (2, 3, 16, 16) and out.features.shape == (2, 256, 16, 16)
    assert out.sdf.shape == (2, 16, 16, 8, 1) and out.mask.shape == (2, 1, 16, 16) and out.xyz.shape == (2, 3, 16, 16)
    assert out.eikonal_term is None
    for value in (out.rgb, out.features, out.sdf, out.mask, out.xyz, rays.weights):
        assert torch.isfinite(value).all()
    assert out.rgb.abs().max() <= 1
    totals = rays.weights.sum(-1)
    if force_background:
        torch.testing.assert_close(totals, torch.ones_like(totals))
    else:
        assert totals.max() <= 1 + 1e-6
    torch.testing.assert_close(out.mask[:, 0], rays.weights[..., -1])
    torch.testing.assert_close(out.rgb, rays.rgb.permute(0, 3, 1, 2))
    rays_o, rays_d, _ = camera_rays(c2w, focal, renderer.i, renderer.j, 16)
    points = rays_o.unsqueeze(-2) + rays_d.unsqueeze(-2) * rays.z_vals.unsqueeze(-1)
    torch.testing.assert_close(out.xyz, (rays.weights.unsqueeze(-1) * points).sum(-2).permute(0, 3, 1, 2),
                               rtol=1e-5, atol=1e-6)


def test_stage1_outputs_have_no_features():
    renderer = tiny_renderer(output_features=False, return_sdf=True)
    c2w, focal, near, far = cameras(2, 4)
    out = renderer(c2w, focal, near, far, torch.randn(2, 8, dtype=torch.float64))
    assert out.features is None and out.sdf.shape == (2, 4, 4, 5, 1) and out.xyz is None and out.mask is None
    renderer.output_features = True
    assert renderer.network.output_features
    assert renderer(c2w, focal, near, far, torch.randn(2, 8, dtype=torch.float64)).features.shape == (2, 16, 4, 4)


@pytest.mark.parametrize("static_viewdirs, force_background", [(False, False), (True, True)])
def test_render_matches_official_transcription(static_viewdirs, force_background):
    renderer = tiny_renderer(static_viewdirs=static_viewdirs, force_background=force_background,
                             return_xyz=True, return_sdf=True)
    c2w, focal, near, far = cameras(3, 4)
    styles = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        out = renderer(c2w, focal, near, far, styles)
        expected = official_render(renderer, c2w, focal, near, far, styles)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(out, name), value, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("options", [
    dict(offset_sampling=False), dict(z_normalize=False), dict(sdf=False), dict(sdf=False, raw_noise_std=0.7),
    dict(sdf=True, raw_noise_std=0.7), dict(offset_sampling=False, z_normalize=False, static_viewdirs=True,
                                            force_background=True)])
def test_training_switches_match_official_transcription(options):
    """--no_offset_sampling, --no_z_normalize, --no_sdf with --raw_noise_std (the noise reaches the NeRF
    densities only, as the official), --static_viewdirs and --force_background, without jitter."""
    renderer = tiny_renderer(return_xyz=True, return_sdf=True, **options)
    c2w, focal, near, far = cameras(2, 4)
    styles = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(7)
        out = renderer(c2w, focal, near, far, styles)
        torch.manual_seed(7)
        expected = official_render(renderer, c2w, focal, near, far, styles)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(out, name), value, rtol=1e-9, atol=1e-11, msg=name)
    if not options.get("sdf", True):
        assert renderer.sigmoid_beta is None and "sigmoid_beta" not in renderer.state_dict()
        assert renderer(c2w, focal, near, far, styles, return_eikonal=True).eikonal_term is None


# --- (d) eikonal term -----------------------------------------------------------------------------

def _world_points(renderer, c2w, focal, z_vals):
    rays_o, rays_d, _ = camera_rays(c2w, focal, renderer.i, renderer.j, renderer.out_im_res)
    return rays_o.unsqueeze(-2) + rays_d.unsqueeze(-2) * z_vals.unsqueeze(-1)  # [B, H, W, S, 3]


@pytest.mark.parametrize("z_normalize", [True, False])
def test_eikonal_is_the_world_space_sdf_gradient(z_normalize):
    renderer = tiny_renderer(z_normalize=z_normalize, return_sdf=True)
    c2w, focal, near, far = cameras(2, 4)
    styles = torch.randn(2, 8, dtype=torch.float64)
    out = renderer.render(c2w, focal, near, far, styles, return_eikonal=True)
    assert out.eikonal_term.shape == (2, 4, 4, 5, 3) and out.eikonal_term.requires_grad
    scale = 2 / (FAR - NEAR) if z_normalize else 1.0

    points = _world_points(renderer, c2w, focal, out.z_vals).requires_grad_(True)
    net_points = points * scale
    sdf = renderer.network.sdf(net_points, styles)
    torch.testing.assert_close(out.sdf, sdf, **F64_TOL)
    expected, by_net_input = torch.autograd.grad(sdf.sum(), [points, net_points])
    torch.testing.assert_close(out.eikonal_term, expected, **F64_TOL)
    torch.testing.assert_close(out.eikonal_term, scale * by_net_input, **F64_TOL)  # the 1/0.12 factor

    # central differences in world units (each sample's SDF depends on its own point only)
    eps = 1e-6
    with torch.no_grad():
        for axis in range(3):
            step = torch.zeros(3, dtype=torch.float64)
            step[axis] = eps
            plus = renderer.network.sdf((points + step) * scale, styles)
            minus = renderer.network.sdf((points - step) * scale, styles)
            numeric = (plus - minus)[..., 0] / (2 * eps)
            torch.testing.assert_close(out.eikonal_term[..., axis], numeric, rtol=1e-6, atol=1e-6)


def test_eikonal_loss_trains_the_network():
    renderer = tiny_renderer()
    c2w, focal, near, far = cameras(2, 4)
    out = renderer(c2w, focal, near, far, torch.randn(2, 8, dtype=torch.float64), return_eikonal=True)
    loss = ((out.eikonal_term.norm(dim=-1) - 1) ** 2).mean()
    loss.backward()
    first = renderer.network.pts_linears[0]
    assert first.weight.grad.abs().sum() > 0 and first.gamma.weight.grad.abs().sum() > 0
    assert renderer.network.rgb_linear.weight.grad is None  # colour branch not in the eikonal graph


def test_eikonal_needs_grad_mode():
    renderer = tiny_renderer()
    c2w, focal, near, far = cameras(1, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="gradient mode"):
        renderer(c2w, focal, near, far, torch.randn(1, 8, dtype=torch.float64), return_eikonal=True)


# --- sphere initialisation pass -------------------------------------------------------------------

def test_mlp_init_pass_targets_the_world_sphere():
    renderer = tiny_renderer(perturb=0.0)  # the init pass jitters whatever perturb says
    c2w, focal, near, far = cameras(2, 4)
    styles = torch.randn(2, 8, dtype=torch.float64)
    torch.manual_seed(3)
    sdf, target = renderer.mlp_init_pass(c2w, focal, near, far, styles)
    assert sdf.shape == target.shape == (2, 4, 4, 5) and sdf.requires_grad and not target.requires_grad
    # Rebuild the samples from the same seed: one uniform draw per sample inside the midpoint bins
    # of the renderer's (offset) t_vals.
    torch.manual_seed(3)
    jitter = torch.rand(2, 4, 4, 5, dtype=torch.float64)
    t = torch.linspace(0, 1 - 1 / 5, 5, dtype=torch.float64)
    base = NEAR * (1 - t) + FAR * t
    mids = 0.5 * (base[1:] + base[:-1])
    lower, upper = torch.cat([base[:1], mids]), torch.cat([mids, base[-1:]])
    z_vals = lower + (upper - lower) * jitter
    points = _world_points(renderer, c2w, focal, z_vals)
    torch.testing.assert_close(target, points.norm(dim=-1) - (FAR - NEAR) / 4, **F64_TOL)
    torch.testing.assert_close(sdf, renderer.network.sdf(points * 2 / (FAR - NEAR), styles)[..., 0], **F64_TOL)


# --- (f) kernel vs reference ----------------------------------------------------------------------

@requires_kernels
def test_kernel_and_reference_renders_agree():
    # float64: the gradients pass through sine layers of frequency ~30, which amplify float32 rounding
    renderer = tiny_renderer(style_dim=32, out_im_res=8, depth=4, width=64, n_samples=8, return_xyz=True,
                             perturb=0.0)
    c2w, focal, near, far = cameras(2, 8)
    styles = torch.randn(2, 32, dtype=torch.float64)
    results = {}
    for impl in ("kernel", "reference"):
        renderer.impl = impl
        renderer.zero_grad()
        out = renderer(c2w, focal, near, far, styles)
        loss = out.rgb.square().sum() + out.features.sum() + out.xyz.sum() + out.mask.sum()
        loss.backward()
        grads = (renderer.sigmoid_beta.grad.clone(), renderer.network.pts_linears[2].weight.grad.clone())
        results[impl] = ([t.detach() for t in (out.rgb, out.features, out.xyz, out.mask)], grads)
    for got, expected in zip(results["kernel"][0] + list(results["kernel"][1]),
                             results["reference"][0] + list(results["reference"][1])):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@requires_kernels
def test_stage1_losses_and_every_gradient_agree_between_kernel_and_reference():
    """The stage-1 generator objective (a stand-in adversarial term on the thumbnail + 0.1 eikonal +
    0.05 minimal surface, through the eikonal double backward) and every parameter gradient are the
    same with impl="kernel" (fused FiLM-SIREN layers and quadrature) and impl="reference" (eager)."""
    from stylesdf_fast.models import Generator

    torch.manual_seed(0)
    models = {impl: Generator(full_pipeline=False, style_dim=32, renderer_spatial_output_dim=8, depth=3, width=32,
                              n_samples=6, perturb=0.0, impl=impl).double() for impl in ("kernel", "reference")}
    models["reference"].load_state_dict(models["kernel"].state_dict())
    assert models["kernel"].renderer.network.pts_linears[1].impl == "kernel"
    assert models["reference"].renderer.network.pts_linears[1].impl == "reference"
    c2w, focal, near, far = cameras(2, 8)
    z = torch.randn(2, 32, dtype=torch.float64)
    results = {}
    for impl, g in models.items():
        _, thumb, sdf, eikonal = g([z], c2w, focal, near, far, return_sdf=True, return_eikonal=True)
        terms = {"adversarial": thumb.square().mean(),
                 "eikonal": (eikonal.norm(dim=-1) - 1).square().mean(),
                 "min_surface": torch.exp(-100 * sdf.abs()).mean()}
        (terms["adversarial"] + 0.1 * terms["eikonal"] + 0.05 * terms["min_surface"]).backward()
        grads = {name: p.grad for name, p in g.named_parameters() if p.grad is not None}
        results[impl] = ({k: v.detach() for k, v in terms.items()}, grads)
    (kernel_terms, kernel_grads), (reference_terms, reference_grads) = results["kernel"], results["reference"]
    assert set(kernel_grads) == set(reference_grads) and len(kernel_grads) > 20
    for name in reference_terms:
        torch.testing.assert_close(kernel_terms[name], reference_terms[name], rtol=1e-10, atol=1e-12)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(kernel_grads[name], grad, rtol=1e-8, atol=1e-10, msg=name)


def test_fused_layers_do_not_keep_their_outputs_for_the_next_gemm():
    """With fused FiLM-SIREN layers the next GEMM recomputes its input from the fused op's own saved
    x_lin instead of keeping the layer output: after the forward (graph alive, eikonal included)
    nothing references the first layer's output any more (a reference kept by the saved-tensor hooks
    once made the recomputation save nothing)."""
    import gc
    import weakref

    renderer = tiny_renderer(impl="auto")
    outputs = []
    handle = renderer.network.pts_linears[0].register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    c2w, focal, near, far = cameras(2, 4)
    out = renderer(c2w, focal, near, far, torch.randn(2, 8, dtype=torch.float64), return_eikonal=True)
    handle.remove()
    gc.collect()
    assert outputs[0]() is None
    ((out.eikonal_term.norm(dim=-1) - 1) ** 2).mean().backward()    # and the graph still differentiates
    assert renderer.network.pts_linears[1].weight.grad.abs().sum() > 0


def test_layer_outputs_are_recomputed_only_for_the_weight_gradients(monkeypatch):
    """The eikonal pass (autograd.grad to the sample points, inside the forward) computes no weight
    gradient, so it must not recompute the fused layers' outputs; the final backward must."""
    import stylesdf_fast.models.recompute as renderer_module

    recomputed = []   # the phase ("forward" or "backward") of every film_siren call made by the engine
    phase = ["forward"]
    original = renderer_module.film_siren

    def counting_film_siren(*args, **kwargs):
        if torch._C._current_autograd_node() is not None:
            recomputed.append(phase[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(renderer_module, "film_siren", counting_film_siren)
    renderer = tiny_renderer(impl="auto")
    c2w, focal, near, far = cameras(2, 4)
    out = renderer(c2w, focal, near, far, torch.randn(2, 8, dtype=torch.float64), return_eikonal=True)
    phase[0] = "backward"
    (out.rgb.square().mean() + ((out.eikonal_term.norm(dim=-1) - 1) ** 2).mean()).backward()
    assert "forward" not in recomputed
    assert recomputed.count("backward") >= 2


def test_impl_switch_reconfigures_the_film_layers():
    renderer = tiny_renderer(impl="reference")
    layers = [layer for layer in renderer.network.modules() if isinstance(layer, FiLMSiren)]
    assert all(layer.impl == "reference" for layer in layers)
    renderer.impl = "auto"
    assert all(layer.impl == "auto" for layer in layers)
    with pytest.raises(ValueError, match="impl must be one of"):
        renderer.impl = "magic"


@requires_kernels
def test_set_impl_on_a_siren_subtree_switches_what_its_layers_run(monkeypatch):
    """set_impl on part of the network (one layer, or the SIREN alone) must switch the whole formula of
    those layers: "reference" runs the official op-by-op formula, never the fused path with the
    reference op (a layer used to keep a fused mode of its own that set_impl did not touch)."""
    import stylesdf_fast.models.siren as siren_module
    from stylesdf_fast.models.impl import set_impl

    renderer = tiny_renderer(impl="kernel")
    fused_calls = []
    original = siren_module.film_siren
    monkeypatch.setattr(siren_module, "film_siren", lambda *a, **k: fused_calls.append(k.get("impl")) or original(*a, **k))
    set_impl(renderer.network.pts_linears[1], "reference")
    set_impl(renderer.network.views_linears, "reference")
    c2w, focal, near, far = cameras(2, 4)
    styles = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        out = renderer(c2w, focal, near, far, styles)
    layers = len(renderer.network.pts_linears) + 1
    assert fused_calls == ["kernel"] * (layers - 2)   # the two switched layers ran the official formula
    set_impl(renderer.network, "reference")
    fused_calls.clear()
    with torch.no_grad():
        reference = renderer(c2w, focal, near, far, styles)
    assert fused_calls == []
    torch.testing.assert_close(out.rgb, reference.rgb, rtol=1e-9, atol=1e-11)


# --- bad input ------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors():
    renderer = tiny_renderer()
    c2w, focal, near, far = cameras(2, 4)
    styles = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="cam_poses"):
        renderer(c2w[:, :, :3], focal, near, far, styles)
    with pytest.raises(ValueError, match="styles"):
        renderer(c2w, focal, near, far, styles[:1])
    with pytest.raises(ValueError, match="near"):
        renderer(c2w, focal, torch.full((3, 1, 1), NEAR, dtype=torch.float64), far, styles)
    with pytest.raises(ValueError, match="far must be greater"):
        renderer(c2w, focal, far, near, styles)
    with pytest.raises(ValueError, match="impl"):
        VolumeFeatureRenderer(out_im_res=4, impl="fast")
    with pytest.raises(ValueError, match="n_samples"):
        VolumeFeatureRenderer(n_samples=0)
    # numbers are accepted for focal/near/far, as the official Generator's defaults
    out = renderer(c2w, float(focal[0]), NEAR, FAR, styles)
    assert out.rgb.shape == (2, 3, 4, 4)

"""sdf_volume_render / density_volume_render: kernel vs the StyleSDF reference (forward and gradients
of sdf, rgb, features and beta, also through the weights), the StyleSDF raw-output layout as strided
views, gradcheck, opcheck, half storage, extreme values, NeRF density mode, bad input."""
import ctypes
import itertools
import os
import subprocess
import sys
import zlib

import pytest
import torch

from stylesdf_fast import ops, reference

from _inputs import SAME_DTYPE_TOL, assert_close, leaf, pack_raw, volume_render_inputs
from _marks import DEVICES, requires_cuda, requires_kernels

pytestmark = requires_kernels

KERNEL = "kernel"
DIFFERENTIABLE = ("sdf", "rgb", "features", "beta")
OUTPUTS = ("rgb", "features", "weights")
LOW_PRECISION = (torch.float16, torch.bfloat16)


# --- inputs ---------------------------------------------------------------------------------------

def make_inputs(batch, samples, channels, dtype=torch.float64, device="cpu", *, beta=None, feature_dtype=None):
    """The shared builder (_inputs.volume_render_inputs), seeded by the shape: each case sees its own
    values, the same in every run and test selection."""
    seed = zlib.crc32(repr((tuple(batch), samples, channels)).encode())
    return volume_render_inputs(batch, samples, channels, dtype, device, beta=beta, feature_dtype=feature_dtype,
                                seed=seed)


def make_cotangents(inputs, out_dtype=None):
    """Random cotangents for rgb [..., 3], features [..., C] and weights [..., S]."""
    sdf, features = inputs["sdf"], inputs["features"]
    lead, samples = sdf.shape[:-1], sdf.shape[-1]
    out_dtype = out_dtype or inputs["rgb"].dtype

    def draw(shape, dtype):
        return torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=sdf.device)

    return dict(
        rgb=draw(lead + (3,), out_dtype),
        features=None if features is None else draw(lead + (features.shape[-1],), out_dtype),
        weights=draw(lead + (samples,), sdf.dtype),
    )


def run(impl, inputs, force_background=False, cotangents=None, wrt=DIFFERENTIABLE, outputs=OUTPUTS,
        density_mode=False, rgb_activation="sigmoid"):
    """(output, {name: grad}) of one implementation; fresh leaves for the names in `wrt`, random-free
    (the cotangents are given), gradients of the named outputs only. Missing grads become zeros."""
    args = dict(inputs)
    leaves = {}
    for name in wrt:
        if args.get(name) is not None:
            leaves[name] = args[name] = leaf(args[name])
    if density_mode:
        out = ops.density_volume_render(args["sigma"], args["rgb"], args["features"], args["z_vals"],
                                        args["ray_norm"], rgb_activation=rgb_activation,
                                        force_background=force_background, impl=impl)
    else:
        out = ops.sdf_volume_render(args["sdf"], args["rgb"], args["features"], args["z_vals"], args["ray_norm"],
                                    args["beta"], force_background=force_background, impl=impl)
    grads = {}
    if cotangents is not None and leaves:
        pairs = [(getattr(out, name), cotangents[name]) for name in outputs
                 if getattr(out, name) is not None and getattr(out, name).requires_grad]
        names = list(leaves)
        if pairs:
            values = torch.autograd.grad([p[0] for p in pairs], [leaves[n] for n in names], [p[1] for p in pairs],
                                         allow_unused=True, materialize_grads=True)
        else:
            values = [torch.zeros_like(leaves[n]) for n in names]
        grads = dict(zip(names, values))
    return out, grads


def check_same(got, expected, dtype=None, msg=""):
    """Kernel (got) vs reference (expected): shapes, dtypes, values (SAME_DTYPE_TOL or the low
    precision tolerance of `dtype` for the rgb/features outputs and grads)."""
    (out_k, grads_k), (out_r, grads_r) = got, expected
    for name in OUTPUTS:
        k, r = getattr(out_k, name), getattr(out_r, name)
        if r is None:
            assert k is None, f"{msg} out.{name} should be None"
            continue
        assert k.shape == r.shape, f"{msg} out.{name} shape {tuple(k.shape)} != {tuple(r.shape)}"
        low = dtype if name != "weights" else None
        expected_dtype = r.dtype if low is None else dtype
        assert k.dtype == expected_dtype, f"{msg} out.{name} dtype {k.dtype} != {expected_dtype}"
        assert_close(k, r, dtype=low, msg=f"{msg} out.{name}")
    assert set(grads_k) == set(grads_r)
    for name in grads_r:
        k, r = grads_k[name], grads_r[name]
        assert k.shape == r.shape, f"{msg} grad {name} shape {tuple(k.shape)} != {tuple(r.shape)}"
        low = dtype if name in ("rgb", "features") else None
        assert_close(k, r, dtype=low, msg=f"{msg} grad {name}")


def independent_transcription(sdf, rgb, features, z_vals, ray_norm, beta, force_background):
    """StyleSDF's volume_integration written per ray and per sample with scalar loops, from
    docs/kernels.md section 1, independently of stylesdf_fast.reference (small inputs only)."""
    lead, samples = sdf.shape[:-1], sdf.shape[-1]
    rays = sdf.reshape(-1, samples).shape[0]
    sdf2, z2, n2 = sdf.reshape(rays, samples), z_vals.reshape(rays, samples), ray_norm.reshape(rays)
    rgb2 = rgb.reshape(rays, samples, 3)
    feat2 = None if features is None else features.reshape(rays, samples, features.shape[-1])
    b = beta.reshape(())
    rgb_maps, feature_maps, weight_rows = [], [], []
    for r in range(rays):
        transmittance = torch.ones((), dtype=sdf.dtype)
        weights = []
        for i in range(samples):
            delta = (z2[r, i + 1] - z2[r, i]) * n2[r] if i + 1 < samples else 1e10 * n2[r]
            sigma = torch.sigmoid(-sdf2[r, i] / b) / b
            alpha = 1 - torch.exp(-sigma * delta)
            weights.append(alpha * transmittance)
            transmittance = transmittance * (1 - alpha + 1e-10)
        if force_background:
            weights[-1] = 1 - sum(weights[:-1], torch.zeros((), dtype=sdf.dtype))
        w = torch.stack(weights)
        weight_rows.append(w)
        rgb_maps.append(-1 + 2 * (w[:, None] * torch.sigmoid(rgb2[r])).sum(0))
        if feat2 is not None:
            feature_maps.append((w[:, None] * feat2[r]).sum(0))
    rgb_map = torch.stack(rgb_maps).reshape(*lead, 3)
    feature_map = None if feat2 is None else torch.stack(feature_maps).reshape(*lead, features.shape[-1])
    return ops.VolumeRenderOutput(rgb_map, feature_map, torch.stack(weight_rows).reshape(*lead, samples))


# --- the reference itself is StyleSDF --------------------------------------------------------------

@pytest.mark.parametrize("force_background", [False, True])
@pytest.mark.parametrize("batch, samples, channels", [((), 1, None), ((2,), 3, 2), ((2, 2), 6, 0), ((3,), 5, 4)],
                         ids=str)
def test_reference_matches_independent_transcription(batch, samples, channels, force_background):
    inputs = make_inputs(batch, samples, channels)
    cot = make_cotangents(inputs)
    expected_out = independent_transcription(**inputs, force_background=force_background)
    got_out, got_grads = run("reference", inputs, force_background, cot)
    for name in OUTPUTS:
        if getattr(expected_out, name) is not None:
            assert_close(getattr(got_out, name), getattr(expected_out, name))
    leaves = {n: leaf(inputs[n]) for n in DIFFERENTIABLE if inputs[n] is not None}
    out = independent_transcription(**{**inputs, **leaves}, force_background=force_background)
    # (with S = 1 and force_background the weights are the constant 1)
    pairs = [(getattr(out, n), cot[n]) for n in OUTPUTS
             if getattr(out, n) is not None and getattr(out, n).requires_grad]
    grads = torch.autograd.grad([p[0] for p in pairs], list(leaves.values()), [p[1] for p in pairs],
                                materialize_grads=True, allow_unused=True)
    for name, grad in zip(leaves, grads):
        assert_close(got_grads[name], grad)


# --- kernel vs reference ----------------------------------------------------------------------------

SMALL_BATCHES = [(), (7,), (2, 3, 5)]
FLOAT64_CASES = [
    *itertools.product(SMALL_BATCHES, [1, 2, 24], [None, 0, 1, 3]),
    # large S and C only with small batches
    ((7,), 128, None), ((7,), 128, 3), ((7,), 128, 256), ((), 128, 256), ((2, 3, 5), 24, 256), ((2,), 128, 1),
    ((64, 64), 24, 3),  # many rays: the CPU kernel's parallel split and the beta-gradient reduction
    # the CPU kernel sums channels in blocks of 64: no full block, a full block and a tail, several
    ((7,), 24, 63), ((2, 3), 24, 65), ((5,), 1, 100), ((3,), 24, 130),
]
FLOAT32_CASES = [
    *itertools.product([(7,), (2, 3, 5)], [2, 24], [None, 3, 256]),
    ((7,), 128, None), ((7,), 128, 256), ((2, 3), 128, 3), ((), 1, 1), ((64, 64), 24, None),
    ((7,), 24, 63), ((2, 3), 24, 65), ((5,), 1, 100), ((3,), 24, 130), ((16, 16), 24, 260),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("batch, samples, channels", FLOAT64_CASES, ids=str)
def test_matches_reference_float64(device, batch, samples, channels, force_background):
    inputs = make_inputs(batch, samples, channels, torch.float64, device)
    cot = make_cotangents(inputs)
    got = run(KERNEL, inputs, force_background, cot)
    check_same(got, run("reference", inputs, force_background, cot))
    if channels is None:
        assert got[0].features is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("batch, samples, channels", FLOAT32_CASES, ids=str)
def test_matches_reference_float32(device, batch, samples, channels, force_background):
    inputs = make_inputs(batch, samples, channels, torch.float32, device)
    cot = make_cotangents(inputs)
    check_same(run(KERNEL, inputs, force_background, cot), run("reference", inputs, force_background, cot))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("outputs", [("rgb",), ("features",), ("weights",), ("rgb", "weights"), OUTPUTS], ids=str)
@pytest.mark.parametrize("wrt", [("sdf",), ("rgb",), ("features",), ("beta",), ("sdf", "beta"), DIFFERENTIABLE],
                         ids=str)
def test_partial_outputs_and_inputs(device, outputs, wrt):
    """Only some outputs used (the others' grads arrive as None) and only some inputs requiring grad
    (the backward's output_mask)."""
    for force_background in (False, True):
        inputs = make_inputs((3,), 5, 2, torch.float64, device)
        cot = make_cotangents(inputs)
        got = run(KERNEL, inputs, force_background, cot, wrt=wrt, outputs=outputs)
        check_same(got, run("reference", inputs, force_background, cot, wrt=wrt, outputs=outputs),
                   msg=f"force_background={force_background}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beta_shape", [(), (1,), (1, 1)], ids=str)
@pytest.mark.parametrize("beta", [0.1, 0.01, 1.0])
def test_beta_shapes_and_values(device, beta_shape, beta):
    inputs = make_inputs((4,), 12, 3, torch.float64, device, beta=beta)
    inputs["beta"] = inputs["beta"].reshape(beta_shape)
    cot = make_cotangents(inputs)
    got = run(KERNEL, inputs, False, cot)
    assert got[1]["beta"].shape == beta_shape
    check_same(got, run("reference", inputs, False, cot))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [(0,), (0, 3), (3, 0)], ids=str)
def test_empty_batch(device, batch):
    inputs = make_inputs(batch, 6, 2, torch.float64, device)
    cot = make_cotangents(inputs)
    got = run(KERNEL, inputs, False, cot)
    assert got[0].rgb.shape == batch + (3,) and got[0].features.shape == batch + (2,)
    assert got[0].weights.shape == batch + (6,)
    assert got[1]["beta"].shape == (1,) and got[1]["beta"].item() == 0
    check_same(got, run("reference", inputs, False, cot))


# --- StyleSDF's raw network output as strided views -------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("batch, samples, channels", [((7,), 24, 0), ((2, 3), 24, 1), ((2, 3), 24, 8),
                                                      ((3,), 24, 256), ((4,), 5, None)], ids=str)
def test_raw_layout_views(device, dtype, batch, samples, channels, force_background):
    """raw [..., S, 4 + C] (rgb, sdf, features): rgb = raw[..., :3], sdf = raw[..., 3],
    features = raw[..., 4:]; gradients flow back into raw."""
    inputs = make_inputs(batch, samples, channels, dtype, device)
    raw = pack_raw(inputs)
    cot = make_cotangents(inputs)
    results = []
    for impl in (KERNEL, "reference"):
        raw_leaf, beta = leaf(raw), leaf(inputs["beta"])
        features = None if channels is None else raw_leaf[..., 4:]
        if impl == KERNEL:
            assert not raw_leaf[..., 3].is_contiguous() and not raw_leaf[..., :3].is_contiguous()
        out = ops.sdf_volume_render(raw_leaf[..., 3], raw_leaf[..., :3], features, inputs["z_vals"],
                                    inputs["ray_norm"], beta, force_background=force_background, impl=impl)
        pairs = [(getattr(out, n), cot[n]) for n in OUTPUTS if getattr(out, n) is not None]
        grad_raw, grad_beta = torch.autograd.grad([p[0] for p in pairs], (raw_leaf, beta), [p[1] for p in pairs])
        results.append((out, grad_raw, grad_beta))
    (out_k, raw_k, beta_k), (out_r, raw_r, beta_r) = results
    for name in OUTPUTS:
        if getattr(out_r, name) is not None:
            assert_close(getattr(out_k, name), getattr(out_r, name), msg=name)
    assert raw_k.shape == raw.shape
    assert_close(raw_k, raw_r, msg="grad raw")
    assert_close(beta_k, beta_r, msg="grad beta")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
def test_permuted_and_broadcast_inputs(device, force_background):
    """Batch dims stored transposed (not viewable as rays), and z_vals / ray_norm broadcast over the
    rays with stride 0 (the same depths for every ray, common in NeRF code)."""
    samples, channels = 9, 5
    inputs = make_inputs((4, 3), samples, channels, torch.float64, device)
    base = make_inputs((3, 4), samples, channels, torch.float64, device)
    for name in ("sdf", "rgb", "features"):
        inputs[name] = base[name].transpose(0, 1)  # [4, 3, ...] non-contiguous
    inputs["z_vals"] = torch.linspace(0.88, 1.12, samples, dtype=torch.float64, device=device).expand(4, 3, samples)
    inputs["ray_norm"] = torch.full((1, 1), 1.05, dtype=torch.float64, device=device).expand(4, 3)
    cot = make_cotangents(inputs)
    check_same(run(KERNEL, inputs, force_background, cot), run("reference", inputs, force_background, cot))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_non_unit_channel_stride(device, dtype):
    """rgb and features without a unit stride along their channels (every other element of a wider
    buffer, and channels-first storage): the kernel copies them; gradients still match."""
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = make_inputs((3, 4), 10, 6, scalar_dtype, device, feature_dtype=dtype)
    wide = torch.zeros(3, 4, 10, 12, dtype=dtype, device=device)
    wide[..., ::2] = inputs["features"]
    inputs["features"] = wide[..., ::2]
    inputs["rgb"] = inputs["rgb"].permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    assert inputs["features"].stride(-1) == 2 and inputs["rgb"].stride(-1) == 120
    cot = make_cotangents(inputs)
    low = dtype if dtype in LOW_PRECISION else None
    as_float = inputs if low is None else dict(inputs, rgb=inputs["rgb"].float(), features=inputs["features"].float())
    expected = run("reference", as_float, False, {k: v.to(as_float[k if k != "weights" else "sdf"].dtype)
                                                  for k, v in cot.items()})
    check_same(run(KERNEL, inputs, False, cot), expected, dtype=low)


# --- gradcheck ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("samples", [1, 3, 5])
@pytest.mark.parametrize("channels", [None, 0, 2])
def test_gradcheck(device, samples, channels, force_background):
    inputs = make_inputs((2,), samples, channels, torch.float64, device)
    names = [n for n in DIFFERENTIABLE if inputs[n] is not None]
    z_vals, ray_norm = inputs["z_vals"], inputs["ray_norm"]

    def fn(*tensors):
        args = dict(zip(names, tensors))
        out = ops.sdf_volume_render(args["sdf"], args["rgb"], args.get("features"), z_vals, ray_norm, args["beta"],
                                    force_background=force_background, impl=KERNEL)
        return tuple(t for t in out if t is not None)

    assert torch.autograd.gradcheck(fn, tuple(leaf(inputs[n]) for n in names))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("rgb_activation", ["sigmoid", "sigmoid_pm1", "none"])
@pytest.mark.parametrize("channels", [None, 2])
def test_gradcheck_density_mode(device, rgb_activation, force_background, channels):
    inputs = make_inputs((2,), 4, channels, torch.float64, device)
    sigma = torch.rand(2, 4, dtype=torch.float64, device=device) * 20 + 0.1
    z_vals, ray_norm = inputs["z_vals"], inputs["ray_norm"]
    tensors = (sigma, inputs["rgb"]) + (() if channels is None else (inputs["features"],))

    def fn(sigma, rgb, features=None):
        out = ops.density_volume_render(sigma, rgb, features, z_vals, ray_norm, rgb_activation=rgb_activation,
                                        force_background=force_background, impl=KERNEL)
        return tuple(t for t in out if t is not None)

    assert torch.autograd.gradcheck(fn, tuple(leaf(t) for t in tensors))


# --- opcheck -----------------------------------------------------------------------------------------

def _op_args(rays=3, samples=5, channels=2, beta=True, dtype=torch.float32, feature_dtype=None, grad=True):
    inputs = make_inputs((rays,), samples, channels, dtype, feature_dtype=feature_dtype)
    density = inputs["sdf"] if beta else torch.rand(rays, samples, dtype=dtype) * 10
    tensors = [density, inputs["rgb"], inputs["features"], inputs["beta"] if beta else None]
    if grad:
        tensors = [None if t is None else t.requires_grad_() for t in tensors]
    return tensors[0], tensors[1], tensors[2], inputs["z_vals"], inputs["ray_norm"], tensors[3]


OPCHECK_CASES = {
    "features": (dict(), False, 0),
    "features_none_force_bg": (dict(channels=None), True, 0),
    "density_mode_sigmoid": (dict(beta=False), False, 1),
    "density_mode_none_no_features": (dict(beta=False, channels=None), True, 2),
    "single_sample": (dict(samples=1, channels=1), True, 0),
    "float64": (dict(dtype=torch.float64), False, 0),
    "half_storage": (dict(feature_dtype=torch.float16), False, 0),
    "bfloat16_storage_density": (dict(feature_dtype=torch.bfloat16, beta=False), True, 1),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_forward(case):
    kwargs, force_background, activation = OPCHECK_CASES[case]
    args = _op_args(**kwargs) + (force_background, activation)
    torch.library.opcheck(torch.ops.stylesdf_fast.sdf_volume_render.default, args)


ALL_MASK = (True, True, True, True)
OPCHECK_BACKWARD_CASES = [
    *((case, ALL_MASK, "all") for case in OPCHECK_CASES),
    *itertools.product(["features", "features_none_force_bg", "density_mode_sigmoid"],
                       [ALL_MASK, (True, False, False, True), (False, True, True, False)],
                       ["rgb_only", "weights_only"]),
    ("features", (True, False, False, True), "all"),
    ("features", (False, True, True, False), "all"),
]


@pytest.mark.parametrize("case, mask, grads_given", OPCHECK_BACKWARD_CASES, ids=str)
def test_opcheck_backward(case, mask, grads_given):
    kwargs, force_background, activation = OPCHECK_CASES[case]
    density, rgb, features, z_vals, ray_norm, beta = _op_args(**kwargs, grad=False)
    rays, samples = density.shape
    out_dtype = rgb.dtype
    g_rgb = torch.randn(rays, 3).to(out_dtype)
    g_feat = None if features is None else torch.randn(rays, features.shape[2]).to(out_dtype)
    g_w = torch.randn(rays, samples, dtype=density.dtype)
    if grads_given == "rgb_only":
        g_feat = g_w = None
    elif grads_given == "weights_only":
        g_rgb = g_feat = None
    mask = [mask[0], mask[1], mask[2] and features is not None, mask[3] and beta is not None]
    args = (g_rgb, g_feat, g_w, density, rgb, features, z_vals, ray_norm, beta, force_background, activation, mask)
    torch.library.opcheck(torch.ops.stylesdf_fast.sdf_volume_render_backward.default, args)


# --- half storage -----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("batch, samples, channels", [((7,), 24, 8), ((2, 3), 24, 256), ((5,), 3, None),
                                                      ((4,), 24, 100)], ids=str)
def test_low_precision_against_float32(device, dtype, batch, samples, channels, force_background):
    """float16/bfloat16 rgb and features (float32 sdf, z, |d|, beta) vs the float32 reference on the
    same rounded values: rgb/features outputs and grads within a few ulps of their dtype, weights float32."""
    inputs = make_inputs(batch, samples, channels, torch.float32, device, feature_dtype=dtype)
    cot = make_cotangents(inputs)
    got = run(KERNEL, inputs, force_background, cot)
    as_float = dict(inputs, rgb=inputs["rgb"].float(),
                    features=None if channels is None else inputs["features"].float())
    cot_float = {k: None if v is None else v.float() for k, v in cot.items()}
    expected = run("reference", as_float, force_background, cot_float)
    assert got[1]["rgb"].dtype == dtype and got[1]["sdf"].dtype == torch.float32
    assert got[1]["beta"].dtype == torch.float32
    if channels is not None:
        assert got[1]["features"].dtype == dtype
    check_same(got, expected, dtype=dtype)


# --- extreme values ---------------------------------------------------------------------------------

def _extreme_case(name, dtype, device):
    inputs = make_inputs((6,), 16, 4, dtype, device)
    sdf, beta = inputs["sdf"], inputs["beta"]
    signs = torch.where(torch.rand(sdf.shape, dtype=torch.float64) < 0.5, -1.0, 1.0).to(dtype=dtype, device=device)
    if name == "sdf_pm_1e4":
        inputs["sdf"] = 1e4 * signs
    elif name == "sdf_pm_1e4_beta_1e-5":
        inputs["sdf"], inputs["beta"] = 1e4 * signs, torch.full_like(beta, 1e-5)
    elif name == "beta_1e-5":
        inputs["beta"] = torch.full_like(beta, 1e-5)
    elif name == "beta_1e-5_sdf_near_0":
        inputs["sdf"], inputs["beta"] = sdf * 1e-4, torch.full_like(beta, 1e-5)
    elif name == "equal_depths":
        inputs["z_vals"] = torch.ones_like(inputs["z_vals"])
    elif name == "some_equal_depths":
        inputs["z_vals"] = torch.round(inputs["z_vals"] * 20) / 20  # runs of repeated depths
    elif name == "transparent":
        inputs["sdf"] = torch.full_like(sdf, 1e4)
    elif name == "opaque":  # alpha = 1 from the first sample on
        inputs["sdf"], inputs["beta"] = torch.full_like(sdf, -1e4), torch.full_like(beta, 1e-5)
        inputs["z_vals"] = torch.linspace(0.88, 1.12, sdf.shape[-1], dtype=dtype, device=device).expand_as(sdf)
    elif name == "opaque_beta_0.1":
        inputs["sdf"] = torch.full_like(sdf, -1e4)
    elif name == "nearly_transparent":  # sigma * 1e10 |d| of order 1: the last alpha depends on the 1e10
        far = torch.empty(sdf.shape, dtype=torch.float64).uniform_(20, 26).to(dtype=dtype, device=device)
        inputs["sdf"] = far * beta
    elif name == "sharp_surface":
        inside = torch.arange(sdf.shape[-1], device=device) >= sdf.shape[-1] // 2
        inputs["sdf"] = torch.where(inside, -0.05, 0.05).to(sdf).expand_as(sdf).contiguous()
        inputs["beta"] = torch.full_like(beta, 1e-3)
    else:
        raise ValueError(name)
    return inputs


EXTREME_CASES = ["sdf_pm_1e4", "sdf_pm_1e4_beta_1e-5", "beta_1e-5", "beta_1e-5_sdf_near_0", "equal_depths",
                 "some_equal_depths", "transparent", "nearly_transparent", "opaque", "opaque_beta_0.1", "sharp_surface"]


def assert_close_where_finite(actual, expected, msg):
    assert torch.isfinite(actual).all(), f"{msg}: non-finite values {actual}"
    finite = torch.isfinite(expected)
    if not finite.any():
        return
    rtol, atol = SAME_DTYPE_TOL[torch.float32] if expected.dtype == torch.float32 else SAME_DTYPE_TOL[expected.dtype]
    scale = max(1.0, expected[finite].abs().max().item())
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol * 10, atol=atol * 10 * scale, msg=msg)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("case", EXTREME_CASES)
def test_extreme_values_are_finite(device, dtype, case, force_background):
    inputs = _extreme_case(case, dtype, device)
    cot = make_cotangents(inputs)
    (out_k, grads_k), (out_r, grads_r) = (run(impl, inputs, force_background, cot) for impl in (KERNEL, "reference"))
    for name in OUTPUTS:
        assert_close_where_finite(getattr(out_k, name), getattr(out_r, name), f"out.{name}")
    for name in DIFFERENTIABLE:
        assert_close_where_finite(grads_k[name], grads_r[name], f"grad {name}")
    weights = out_k.weights
    assert (weights >= -1e-6).all() or force_background
    if case == "transparent":  # sigma = 0 exactly: nothing but the forced background
        assert torch.all(weights[..., :-1] == 0)
        assert torch.all(weights[..., -1] == (1.0 if force_background else 0.0))
        background = -1 + 2 * torch.sigmoid(inputs["rgb"][..., -1, :])
        assert_close(out_k.rgb, background if force_background else -torch.ones_like(background))
    if case == "opaque":
        assert torch.allclose(weights[..., 0], torch.ones_like(weights[..., 0]))


# --- NeRF density mode ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("rgb_activation", ["sigmoid", "sigmoid_pm1", "none"])
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("batch, samples, channels", [((7,), 24, None), ((2, 3), 24, 16), ((), 1, 2),
                                                      ((4,), 64, 256)], ids=str)
def test_density_mode_matches_reference(device, dtype, rgb_activation, force_background, batch, samples, channels):
    inputs = make_inputs(batch, samples, channels, dtype, device)
    sigma = torch.rand(inputs["sdf"].shape, dtype=torch.float64) * 30
    sigma[sigma < 3] = 0  # exact zeros are common (relu/softplus of a density)
    inputs["sigma"] = sigma.to(dtype=dtype, device=device)
    cot = make_cotangents(inputs)
    wrt = ("sigma", "rgb", "features")
    kw = dict(density_mode=True, rgb_activation=rgb_activation, wrt=wrt)
    got = run(KERNEL, inputs, force_background, cot, **kw)
    expected = run("reference", inputs, force_background, cot, **kw)
    check_same(got, expected)
    assert_close(expected[0].rgb, reference.density_volume_render(
        inputs["sigma"], inputs["rgb"], inputs["features"], inputs["z_vals"], inputs["ray_norm"],
        rgb_activation=rgb_activation, force_background=force_background).rgb)


@pytest.mark.parametrize("device", DEVICES)
def test_sdf_mode_equals_density_mode_with_sigmoid_density(device):
    inputs = make_inputs((3,), 10, 4, torch.float64, device)
    beta = inputs["beta"]
    sigma = torch.sigmoid(-inputs["sdf"] / beta) / beta
    sdf_out = ops.sdf_volume_render(**inputs, impl=KERNEL)
    density_out = ops.density_volume_render(sigma, inputs["rgb"], inputs["features"], inputs["z_vals"],
                                            inputs["ray_norm"], rgb_activation="sigmoid_pm1", impl=KERNEL)
    for a, b in zip(sdf_out, density_out):
        assert_close(a, b)


# --- dispatch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
def test_auto_is_kernel(force_background):
    inputs = make_inputs((2, 3), 24, 8, torch.float32)
    cot = make_cotangents(inputs)
    (out_a, grads_a), (out_k, grads_k) = (run(impl, inputs, force_background, cot) for impl in ("auto", KERNEL))
    for a, k in zip(out_a, out_k):
        assert torch.equal(a, k)
    for name in grads_k:
        assert torch.equal(grads_a[name], grads_k[name])


def _render_and_grads(raw, inputs, channels):
    beta = leaf(inputs["beta"])
    out = ops.sdf_volume_render_raw(raw, inputs["z_vals"], inputs["ray_norm"], beta)
    maps = [out.rgb] + ([out.features] if channels else [])
    grads = torch.autograd.grad(maps, (raw, beta), [torch.ones_like(m) for m in maps])
    return (out.rgb, out.weights) + grads


@pytest.mark.parametrize("samples, channels", [(8, 0), (8, 17), (9, 1), (24, 32)], ids=str)
def test_cpu_results_do_not_depend_on_buffer_alignment(samples, channels):
    """Bitwise the same results call after call while the C heap shifts under the kernel's scratch
    buffers (a vectorised loop peels a few scalar iterations to reach alignment: with FMA contraction
    those rounded differently from the vector body, and the results changed from call to call)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    inputs = volume_render_inputs((3, 5), samples, channels or None, torch.float32)
    raw = leaf(pack_raw(inputs))
    first = _render_and_grads(raw, inputs, channels)
    held = []
    try:
        for shift in range(1, 24):
            held.append(libc.malloc(8 * shift + 4))   # moves where the next small allocations start
            for name, a, b in zip(("rgb", "weights", "grad raw", "grad beta"), first,
                                  _render_and_grads(raw, inputs, channels)):
                assert torch.equal(a, b), f"{name} changed after heap shift {shift}"
    finally:
        for pointer in held:
            libc.free(pointer)


HUGE_PAGE_PROBE = """
import torch
from stylesdf_fast import ops
raw = torch.randn(64, 64, 24, 40, requires_grad=True)   # a 15 MiB network output and gradient
z_vals = torch.linspace(0.88, 1.12, 24).expand(64, 64, 24)
out = ops.sdf_volume_render_raw(raw, z_vals, torch.ones(64, 64), torch.tensor([0.1]), impl="kernel")
(grad,) = torch.autograd.grad((out.rgb.sum() + out.features.sum(),), (raw,))
start, end = grad.data_ptr(), grad.data_ptr() + grad.nbytes
inside, huge_kib = False, 0
for line in open("/proc/self/smaps"):
    fields = line.split()
    if "-" in fields[0] and ":" not in fields[0]:
        low, high = (int(x, 16) for x in fields[0].split("-"))
        inside = low < end and start < high
    elif inside and fields[0] == "AnonHugePages:":
        huge_kib += int(fields[1])
print(huge_kib)
"""


def _transparent_huge_pages_setting() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as handle:
            return handle.read()
    except OSError:
        return ""


@pytest.mark.skipif("[madvise]" not in _transparent_huge_pages_setting(),
                    reason="needs Linux transparent huge pages in madvise mode")
def test_cpu_raw_gradient_is_on_huge_pages_without_the_allocator_setting():
    """With THP_MEM_ALLOC_ENABLE=0 (torch's allocator on 4 KiB pages), the op still asks for huge
    pages under the large gradient it writes: most of its time would otherwise be page faults."""
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}
    done = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 2048, done.stdout   # at least one 2 MiB page


def test_no_grad_and_inference_mode():
    inputs = make_inputs((3,), 8, 2, torch.float32)
    inputs["sdf"].requires_grad_()
    expected = ops.sdf_volume_render(**inputs, impl="reference")
    with torch.no_grad():
        out = ops.sdf_volume_render(**inputs, impl=KERNEL)
    assert not out.rgb.requires_grad
    with torch.inference_mode():
        out_inference = ops.sdf_volume_render(**inputs, impl=KERNEL)
    for a, b, r in zip(out, out_inference, expected):
        assert_close(a, r.detach())
        assert_close(b, r.detach())


# --- bad input ---------------------------------------------------------------------------------------

def _good(**changes):
    inputs = make_inputs((4,), 6, 2, torch.float32)
    inputs.update(changes)
    return inputs


BAD_INPUTS = [
    ("rgb_S_mismatch", lambda: _good(rgb=torch.randn(4, 5, 3)), ValueError, ["rgb"]),
    ("z_vals_S_mismatch", lambda: _good(z_vals=torch.rand(4, 7)), ValueError, ["z_vals"]),
    ("features_S_mismatch", lambda: _good(features=torch.randn(4, 5, 2)), ValueError, ["features"]),
    ("rgb_lead_mismatch", lambda: _good(rgb=torch.randn(3, 6, 3)), ValueError, ["rgb"]),
    ("ray_norm_lead_mismatch", lambda: _good(ray_norm=torch.ones(5)), ValueError, ["ray_norm"]),
    ("ray_norm_extra_dim", lambda: _good(ray_norm=torch.ones(4, 1)), ValueError, ["ray_norm"]),
    ("features_lead_mismatch", lambda: _good(features=torch.randn(2, 6, 2)), ValueError, ["features"]),
    ("rgb_last_dim_4", lambda: _good(rgb=torch.randn(4, 6, 4)), ValueError, ["rgb"]),
    ("rgb_missing_channel_dim", lambda: _good(rgb=torch.randn(4, 6)), ValueError, ["rgb"]),
    ("zero_samples", lambda: _good(sdf=torch.randn(4, 0), rgb=torch.randn(4, 0, 3), features=None,
                                   z_vals=torch.rand(4, 0)), ValueError, ["sdf"]),
    ("beta_two_elements", lambda: _good(beta=torch.tensor([0.1, 0.1])), ValueError, ["beta"]),
    ("beta_zero", lambda: _good(beta=torch.tensor([0.0])), ValueError, ["beta", "> 0"]),
    ("beta_negative", lambda: _good(beta=torch.tensor([-0.1])), ValueError, ["beta", "> 0"]),
    ("beta_nan", lambda: _good(beta=torch.tensor([float("nan")])), ValueError, ["beta"]),
    ("beta_not_tensor", lambda: _good(beta=0.1), TypeError, ["beta", "Tensor"]),
    ("beta_integer", lambda: _good(beta=torch.tensor([1])), TypeError, ["beta", "floating"]),
    ("sdf_integer", lambda: _good(sdf=torch.zeros(4, 6, dtype=torch.int64)), TypeError, ["sdf", "floating"]),
    ("sdf_not_tensor", lambda: _good(sdf=[[0.0] * 6] * 4), TypeError, ["sdf", "Tensor"]),
    ("rgb_integer", lambda: _good(rgb=torch.zeros(4, 6, 3, dtype=torch.int32)), TypeError, ["rgb", "floating"]),
    ("z_vals_float16", lambda: _good(z_vals=torch.rand(4, 6).half(), ray_norm=torch.ones(4).half()), TypeError,
     ["z_vals"]),
    ("ray_norm_float64", lambda: _good(ray_norm=torch.ones(4, dtype=torch.float64)), TypeError, ["ray_norm"]),
    ("features_dtype_differs", lambda: _good(features=torch.randn(4, 6, 2, dtype=torch.float64)), TypeError,
     ["features"]),
    ("rgb_half_with_float64_z", lambda: _good(rgb=torch.randn(4, 6, 3).half(), features=None,
                                              z_vals=torch.rand(4, 6, dtype=torch.float64),
                                              ray_norm=torch.ones(4, dtype=torch.float64)), TypeError, ["rgb"]),
    ("rgb_on_meta", lambda: _good(rgb=torch.randn(4, 6, 3, device="meta")), ValueError, ["rgb", "device"]),
    ("features_on_meta", lambda: _good(features=torch.randn(4, 6, 2, device="meta")), ValueError,
     ["features", "device"]),
    ("z_vals_on_meta", lambda: _good(z_vals=torch.rand(4, 6, device="meta")), ValueError, ["z_vals", "device"]),
    ("ray_norm_on_meta", lambda: _good(ray_norm=torch.ones(4, device="meta")), ValueError, ["ray_norm", "device"]),
    ("sdf_on_meta", lambda: _good(sdf=torch.randn(4, 6, device="meta")), ValueError, ["sdf", "device"]),
    ("beta_on_meta", lambda: _good(beta=torch.full((1,), 0.1, device="meta")), ValueError, ["beta", "device"]),
    ("z_vals_requires_grad", lambda: _good(z_vals=torch.rand(4, 6, requires_grad=True)), ValueError,
     ["z_vals", "grad"]),
    ("ray_norm_requires_grad", lambda: _good(ray_norm=torch.ones(4, requires_grad=True)), ValueError,
     ["ray_norm", "grad"]),
]


@pytest.mark.parametrize("impl", [KERNEL, "reference"])
@pytest.mark.parametrize("name, build, error, words", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input(name, build, error, words, impl):
    inputs = build()
    with pytest.raises(error) as info:
        ops.sdf_volume_render(**inputs, impl=impl)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_bad_input_density_mode():
    inputs = _good()
    sigma = torch.rand(4, 6)
    args = (inputs["rgb"], inputs["features"], inputs["z_vals"], inputs["ray_norm"])
    with pytest.raises(ValueError, match="rgb_activation"):
        ops.density_volume_render(sigma, *args, rgb_activation="relu", impl=KERNEL)
    with pytest.raises(ValueError, match="sigma"):
        ops.density_volume_render(torch.rand(4, 5), *args, impl=KERNEL)
    with pytest.raises(TypeError, match="sigma"):
        ops.density_volume_render(torch.ones(4, 6, dtype=torch.int64), *args, impl=KERNEL)
    with pytest.raises(ValueError, match="impl"):
        ops.density_volume_render(sigma, *args, impl="cuda")


def test_bad_impl():
    with pytest.raises(ValueError, match="impl"):
        ops.sdf_volume_render(**_good(), impl="fast")
    with pytest.raises(ValueError, match="impl"):
        ops.sdf_volume_render(**_good(), impl="Kernel")


# --- CPU vs CUDA ------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
@pytest.mark.parametrize("channels", [None, 3, 256])
def test_cpu_and_cuda_kernels_agree(dtype, force_background, channels):
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = make_inputs((5, 7), 24, channels, scalar_dtype, feature_dtype=dtype)
    cot = make_cotangents(inputs)
    cpu = run(KERNEL, inputs, force_background, cot)
    to_cuda = {k: None if v is None else v.cuda() for k, v in inputs.items()}
    cot_cuda = {k: None if v is None else v.cuda() for k, v in cot.items()}
    out_cuda, grads_cuda = run(KERNEL, to_cuda, force_background, cot_cuda)
    out_cuda = ops.VolumeRenderOutput(*(None if t is None else t.cpu() for t in out_cuda))
    grads_cuda = {k: v.cpu() for k, v in grads_cuda.items()}
    check_same((out_cuda, grads_cuda), cpu, dtype=dtype if dtype in LOW_PRECISION else None)


@requires_cuda
@pytest.mark.parametrize("rgb_activation", ["sigmoid", "sigmoid_pm1", "none"])
def test_cpu_and_cuda_density_mode_agree(rgb_activation):
    inputs = make_inputs((64,), 32, 16, torch.float32)
    inputs["sigma"] = torch.rand(64, 32) * 20
    cot = make_cotangents(inputs)
    kw = dict(density_mode=True, rgb_activation=rgb_activation, wrt=("sigma", "rgb", "features"))
    cpu = run(KERNEL, inputs, True, cot, **kw)
    to_cuda = {k: None if v is None else v.cuda() for k, v in inputs.items()}
    cot_cuda = {k: None if v is None else v.cuda() for k, v in cot.items()}
    out_cuda, grads_cuda = run(KERNEL, to_cuda, True, cot_cuda, **kw)
    out_cuda = ops.VolumeRenderOutput(*(None if t is None else t.cpu() for t in out_cuda))
    check_same((out_cuda, {k: v.cpu() for k, v in grads_cuda.items()}), cpu)


# --- the packed layout: StyleSDF's network output [..., S, 4 + C] --------------------------------------

def _packed_raw(inputs):
    parts = [inputs["rgb"], inputs["sdf"][..., None]] + ([inputs["features"]] if inputs["features"] is not None else [])
    return torch.cat(parts, -1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [None, 1, 5, 100])
@pytest.mark.parametrize("force_background", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "transposed_batch"])
def test_raw_layout_op_matches_reference(device, channels, force_background, layout):
    """sdf_volume_render_raw renders from the packed tensor and writes one gradient for it."""
    inputs = make_inputs((2, 3), 6, channels, device=device)
    raw = _packed_raw(inputs)
    z_vals, ray_norm = inputs["z_vals"], inputs["ray_norm"]
    if layout == "transposed_batch":  # a non-viewable [R, S, K] reshape: the op copies, gradients still flow
        raw, z_vals, ray_norm = raw.transpose(0, 1), z_vals.transpose(0, 1), ray_norm.transpose(0, 1)
    results = []
    for impl in ("kernel", "reference"):
        r, beta = leaf(raw), leaf(inputs["beta"])
        out = ops.sdf_volume_render_raw(r, z_vals, ray_norm, beta, force_background=force_background, impl=impl)
        assert (out.features is None) == (channels is None)
        loss = out.rgb.square().sum() + (out.weights * z_vals).sum()
        if out.features is not None:
            loss = loss + (out.features * 2).sum()
        results.append((out.rgb, out.weights) + torch.autograd.grad(loss, (r, beta)))
    for k, ref in zip(*results):
        assert_close(k, ref)


def test_raw_layout_uses_the_packed_op():
    inputs = make_inputs((4,), 5, 3)
    out = ops.sdf_volume_render_raw(leaf(_packed_raw(inputs)), inputs["z_vals"], inputs["ray_norm"], inputs["beta"],
                                    impl="kernel")
    assert "sdf_volume_render_packed" in out.rgb.grad_fn.next_functions[0][0].name()


def _slice_call(raw, inputs, impl="kernel", **kw):
    features = raw[..., 4:] if raw.shape[-1] > 4 else None
    return ops.sdf_volume_render(raw[..., 3], raw[..., :3], features, inputs["z_vals"], inputs["ray_norm"],
                                 inputs["beta"], impl=impl, **kw)


def _first_op_node(out):
    return out.rgb.grad_fn.next_functions[0][0].name()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("force_background", [False, True])
def test_slices_of_one_tensor_take_the_packed_path(device, channels, force_background):
    """sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:]) renders from raw with the packed op:
    the same outputs and the same gradient of raw (and beta) as the raw call, bit for bit, and as the
    reference within tolerance."""
    inputs = make_inputs((2, 3), 5, channels, device=device)
    results = {}
    for name in ("slices", "raw", "reference"):
        raw = leaf(_packed_raw(inputs).reshape(-1, 4 + (channels or 0)).reshape(2, 3, 5, -1))  # raw is a view
        beta = leaf(inputs["beta"])
        args = dict(inputs, beta=beta)
        if name == "raw":
            out = ops.sdf_volume_render_raw(raw, args["z_vals"], args["ray_norm"], beta,
                                            force_background=force_background, impl="kernel")
        else:
            out = _slice_call(raw, args, "kernel" if name == "slices" else "reference",
                              force_background=force_background)
        if name == "slices":
            assert "sdf_volume_render_packed" in _first_op_node(out)
        loss = out.rgb.square().sum() + (out.weights * args["z_vals"]).sum()
        if out.features is not None:
            loss = loss + out.features.sum()
        results[name] = (out.rgb, out.weights) + torch.autograd.grad(loss, (raw, beta))
    for got, same in zip(results["slices"], results["raw"]):
        assert torch.equal(got, same)
    for got, ref in zip(results["slices"], results["reference"]):
        assert_close(got, ref)


@pytest.mark.parametrize("layout", ["separate_tensors", "part_of_base", "overlapping", "permuted", "float32_sdf"])
def test_other_layouts_keep_the_plain_op(layout):
    """Slices that are not disjoint channel ranges of one whole contiguous tensor go through the plain
    op, with the gradients autograd assembles (overlapping slices: their gradients add up)."""
    inputs = make_inputs((3,), 4, 2)
    raw = leaf(_packed_raw(inputs))
    sdf, rgb, features = raw[..., 3], raw[..., :3], raw[..., 4:]
    if layout == "separate_tensors":
        sdf = leaf(inputs["sdf"])
    elif layout == "part_of_base":   # the rays are some rows of a larger tensor
        raw = leaf(torch.cat([_packed_raw(inputs), _packed_raw(inputs)[:1]], 0))
        sdf, rgb, features = raw[:3, :, 3], raw[:3, :, :3], raw[:3, :, 4:]
    elif layout == "overlapping":
        sdf = raw[..., 0]
    elif layout == "permuted":
        raw = leaf(_packed_raw(inputs).transpose(0, 1).contiguous()).transpose(0, 1)
        sdf, rgb, features = raw[..., 3], raw[..., :3], raw[..., 4:]
    elif layout == "float32_sdf":
        sdf = sdf.float()
    wrt = [t for t in {id(raw): raw, id(sdf): sdf}.values() if t.requires_grad and t.is_leaf] or [raw]
    results = []
    for impl in ("kernel", "reference"):
        out = ops.sdf_volume_render(sdf, rgb, features, inputs["z_vals"], inputs["ray_norm"], inputs["beta"],
                                    impl=impl)
        if impl == "kernel":
            assert "sdf_volume_render_packed" not in _first_op_node(out)
        loss = out.rgb.square().sum() + out.features.sum() + out.weights[..., 0].sum()
        results.append((out.rgb, out.features) + torch.autograd.grad(loss, wrt, allow_unused=True,
                                                                     materialize_grads=True))
    for got, ref in zip(*results):
        assert_close(got, ref)


def test_slices_whose_gradients_are_read_stay_in_the_graph():
    """A slice with retain_grad() or a hook keeps its own gradient: the plain op runs."""
    inputs = make_inputs((3,), 4, 2)
    raw = leaf(_packed_raw(inputs))
    sdf, rgb, features = raw[..., 3], raw[..., :3], raw[..., 4:]
    sdf.retain_grad()
    seen = []
    rgb.register_hook(lambda grad: seen.append(grad))
    out = ops.sdf_volume_render(sdf, rgb, features, inputs["z_vals"], inputs["ray_norm"], inputs["beta"], impl="kernel")
    assert "sdf_volume_render_packed" not in _first_op_node(out)
    (out.rgb.sum() + out.features.sum()).backward()
    assert sdf.grad is not None and sdf.grad.shape == sdf.shape
    assert len(seen) == 1 and seen[0].shape == rgb.shape


def test_slices_taken_without_autograd_keep_their_own_semantics():
    """Slices taken under no_grad are leaves of their own (no path back to raw): the plain op runs, and
    raw receives no gradient, as with the reference."""
    inputs = make_inputs((3,), 4, 2)
    raw = leaf(_packed_raw(inputs))
    with torch.no_grad():
        sdf, rgb, features = raw[..., 3], raw[..., :3], raw[..., 4:]
    out = ops.sdf_volume_render(sdf, rgb, features, inputs["z_vals"], inputs["ray_norm"], inputs["beta"], impl="kernel")
    assert "sdf_volume_render_packed" not in _first_op_node(out)
    out.rgb.sum().backward()
    assert raw.grad is None


def test_slices_of_a_tensor_without_grad_render_without_a_graph():
    inputs = make_inputs((3,), 4, 2)
    raw = _packed_raw(inputs)
    out = _slice_call(raw, dict(inputs, beta=inputs["beta"].detach()))
    assert out.rgb.grad_fn is None and out.features.grad_fn is None
    reference_out = _slice_call(raw, inputs, "reference")
    assert_close(out.features, reference_out.features)


def test_packed_op_rejects_overlapping_channel_ranges():
    inputs = make_inputs((2,), 3, 2, dtype=torch.float32)
    raw = _packed_raw(inputs)
    with pytest.raises(RuntimeError, match="overlap"):
        torch.ops.stylesdf_fast.sdf_volume_render_packed(raw, 0, 2, 4, 2, inputs["z_vals"], inputs["ray_norm"],
                                                         inputs["beta"], False)


@pytest.mark.parametrize("bad, error, words", [
    (lambda raw: raw[..., :3], ValueError, ["raw", "4 + C"]),
    (lambda raw: raw.float(), TypeError, ["raw", "z_vals"]),
])
def test_raw_layout_bad_input(bad, error, words):
    inputs = make_inputs((2,), 3, 2)
    with pytest.raises(error) as info:
        ops.sdf_volume_render_raw(bad(_packed_raw(inputs)), inputs["z_vals"], inputs["ray_norm"], inputs["beta"])
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("beta, error", [(torch.tensor([-0.1]), ValueError), (torch.tensor([0.1, 0.2]), ValueError),
                                         (0.1, TypeError)])
def test_raw_layout_bad_beta_names_the_raw_op(beta, error):
    inputs = make_inputs((2,), 3, 2, dtype=torch.float32)
    with pytest.raises(error, match=r"^sdf_volume_render_raw: beta"):
        ops.sdf_volume_render_raw(_packed_raw(inputs), inputs["z_vals"], inputs["ray_norm"], beta)


def test_opcheck_packed():
    inputs = make_inputs((4,), 5, 3, dtype=torch.float32)
    raw = torch.cat([inputs["rgb"], inputs["sdf"][..., None], inputs["features"]], -1).requires_grad_()
    beta = inputs["beta"].requires_grad_()
    for force_background in (False, True):
        torch.library.opcheck(
            torch.ops.stylesdf_fast.sdf_volume_render_packed.default,
            (raw, 0, 3, 4, 3, inputs["z_vals"], inputs["ray_norm"], beta, force_background),
        )


# --- CPU kernel internals: its vectorised exp, and results independent of the thread count ----------

def _float32_grid():
    """Float32 values over exp's whole float range [-104, 89] (every 2^9-th bit pattern from a random
    start, about 4 million), the ends of the range and of the normal/subnormal results, and the
    special values."""
    start = int(torch.randint(0, 512, ()).item())
    positive = torch.arange(start, 0x42B20000, 512, dtype=torch.int64)           # (0, 89]
    negative = torch.arange(0x80000000 + start, 0xC2D00000, 512, dtype=torch.int64)  # [-104, 0)
    grid = torch.cat([positive, negative]).to(torch.int32).view(torch.float32)
    edges = torch.tensor([0.0, -0.0, 88.0, 88.37, 88.72, 88.7228, 88.7229, 88.73, 89.0, 89.5, 1e4, -87.33, -87.34,
                          -103.0, -103.27, -103.28, -103.97, -103.98, -104.0, -105.0, -1e4, 1e-30, -1e-30,
                          float("inf"), float("-inf"), float("nan")])
    near = torch.cat([torch.nextafter(edges, torch.full_like(edges, float("inf"))),
                      torch.nextafter(edges, torch.full_like(edges, float("-inf")))])
    return torch.cat([grid, edges, near])


def _ulp_distance(a, b):
    """|a - b| in float32 units in the last place (0 where both are the same NaN or infinity)."""
    def ordered(x):
        bits = x.view(torch.int32).to(torch.int64)
        return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return torch.where(same, torch.zeros_like(a, dtype=torch.int64), (ordered(a) - ordered(b)).abs())


def test_cpu_exp_within_one_ulp():
    """The CPU kernel's float exp (csrc/common/cpu_exp.h), read off the density-mode gradient: with two
    samples at depths 0 and 1, |d| = 1 and a cotangent of 1 on w_0 only, d loss / d sigma_0 =
    delta_0 exp(-sigma_0 delta_0) = exp(-sigma_0) exactly. Against float64 exp rounded to float32."""
    x = _float32_grid()
    rays = x.numel()
    sigma = torch.stack([-x, torch.zeros_like(x)], -1).requires_grad_()
    z_vals = torch.tensor([0.0, 1.0]).expand(rays, 2)
    out = ops.density_volume_render(sigma, torch.zeros(rays, 2, 3), None, z_vals, torch.ones(rays),
                                    rgb_activation="none", impl=KERNEL)
    cotangent = torch.zeros(rays, 2)
    cotangent[:, 0] = 1
    (grad,) = torch.autograd.grad(out.weights, sigma, cotangent)
    got, expected = grad[:, 0], torch.exp(x.double()).float()
    ulps = _ulp_distance(got, expected)
    worst = int(ulps.argmax())
    assert ulps.max() <= 1, f"exp({x[worst].item()!r}) = {got[worst].item()!r}, expected {expected[worst].item()!r}"


def test_cpu_sigmoid_within_two_ulps():
    """sigmoid(x) = 1 / (1 + exp(-x)) of the CPU kernel's colours, read off rgb with one sample and
    force_background (w_0 = 1, activation sigmoid), against float64 rounded to float32. Below the
    normal floats (x < -87.3) float32 gives 0 once exp(-x) overflows, so there the error allowed is
    the smallest normal float."""
    x = _float32_grid()
    rays = x.numel()
    out = ops.density_volume_render(torch.ones(rays, 1), x.reshape(rays, 1, 1).expand(rays, 1, 3).contiguous(), None,
                                    torch.zeros(rays, 1), torch.ones(rays), rgb_activation="sigmoid",
                                    force_background=True, impl=KERNEL)
    got, expected = out.rgb[:, 0], torch.sigmoid(x.double()).float()
    tiny = torch.finfo(torch.float32).tiny
    ulps = torch.where((expected < tiny) & ((got - expected).abs() <= tiny), 0, _ulp_distance(got, expected))
    worst = int(ulps.argmax())
    assert ulps.max() <= 2, f"sigmoid({x[worst].item()!r}) = {got[worst].item()!r}, expected {expected[worst].item()!r}"


@pytest.mark.parametrize("dtype, channels", [(torch.float32, 256), (torch.float32, 100), (torch.float64, 65)],
                         ids=str)
@pytest.mark.parametrize("force_background", [False, True], ids=["no_bg", "force_bg"])
def test_cpu_bitwise_independent_of_threads(dtype, channels, force_background):
    """The packed op's outputs and gradients (beta's is a sum over all rays) are bitwise the same run
    to run and with 1 or several threads: fixed blocks of rays, fixed summation order."""
    inputs = make_inputs((3, 97), 24, channels, dtype)
    cot = make_cotangents(inputs)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, max(threads, 2), max(threads, 2)):
            torch.set_num_threads(count)
            raw, beta = leaf(_packed_raw(inputs)), leaf(inputs["beta"])
            out = ops.sdf_volume_render_raw(raw, inputs["z_vals"], inputs["ray_norm"], beta,
                                            force_background=force_background, impl=KERNEL)
            grads = torch.autograd.grad((out.rgb, out.features, out.weights), (raw, beta),
                                        (cot["rgb"], cot["features"], cot["weights"]))
            results.append(list(out) + list(grads))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)

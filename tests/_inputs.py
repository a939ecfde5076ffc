"""Input builders and tolerances shared by the tests and the benchmarks (docs/design.md sections 3.7,
3.10). Free of pytest, so that the benchmarks import it without the test extras; the pytest marks
(devices, kernels present) are in _marks.py."""
from __future__ import annotations

import json
from pathlib import Path

import torch

# --- the official checkpoints' keys and shapes (every official g, d and g_ema), kept with the tests ----
OFFICIAL_MANIFEST = Path(__file__).parent / "data" / "official_state_dict_manifest.json"


def official_manifest() -> dict:
    """{"<file>.<g|d|g_ema>": {key: shape}} of the released official checkpoints."""
    with open(OFFICIAL_MANIFEST) as handle:
        return json.load(handle)


# --- tolerances, named once ----------------------------------------------------------------------
# (rtol, atol) of kernel vs reference when both run in the same dtype (different summation order).
SAME_DTYPE_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
}
# Results whose absolute error scales with the tensor's largest value rather than with each entry:
# sums over many rows in two different orders (one entry can cancel to near zero), and sin/cos of
# arguments of tens of radians (film_siren at SIREN scale), rounded to eps * |u| before the sin.
SCALED_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}
# Half storage vs a float32 reference on the same (rounded) inputs: a few output ulps.
LOW_PRECISION_ULPS = 4


def low_precision_tol(dtype: torch.dtype, magnitude: float) -> tuple:
    """(rtol, atol) for a half/bfloat16 result vs float32: LOW_PRECISION_ULPS ulps of the dtype
    relative to the values' magnitude."""
    eps = torch.finfo(dtype).eps
    return LOW_PRECISION_ULPS * eps, LOW_PRECISION_ULPS * eps * max(magnitude, 1.0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, msg: str = "") -> None:
    dtype = dtype or expected.dtype
    if dtype in SAME_DTYPE_TOL:
        rtol, atol = SAME_DTYPE_TOL[dtype]
    else:
        rtol, atol = low_precision_tol(dtype, expected.abs().max().item() if expected.numel() else 1.0)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol, msg=msg or None)


def assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """SCALED_RTOL of expected's dtype, relative to each entry and to the largest one."""
    rtol = SCALED_RTOL[expected.dtype]
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=rtol * scale, msg=msg or None)


# --- layouts --------------------------------------------------------------------------------------
LAYOUTS = ("contiguous", "channels_last", "strided")


def with_layout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `tensor` ([N, C, H, W]) stored contiguous, channels_last, or as a
    non-contiguous view (every other column of a wider buffer)."""
    if layout == "contiguous":
        return tensor.contiguous()
    if layout == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*tensor.shape[:-1], tensor.shape[-1] * 2, dtype=tensor.dtype, device=tensor.device)
        wide[..., ::2] = tensor
        view = wide[..., ::2]
        assert not view.is_contiguous()
        return view
    raise ValueError(layout)


def leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(True)


# --- upfirdn2d cases: (name, input shape, kernel shape, up, down, pad) -----------------------------
# Every combination StyleGAN2 uses, then unusual ones.
UPFIRDN_CASES = [
    ("stylegan_upsample", (2, 3, 8, 8), (4, 4), 2, 1, (2, 1)),
    ("stylegan_downsample", (2, 3, 8, 8), (4, 4), 1, 2, (1, 1)),
    ("stylegan_blur_before_stride2_conv", (2, 3, 8, 8), (4, 4), 1, 1, (2, 2)),
    ("stylegan_blur_after_transposed_conv", (2, 3, 9, 9), (4, 4), 1, 1, (1, 1)),
    ("up3", (1, 2, 5, 6), (3, 3), 3, 1, (1, 1)),
    ("down3", (1, 2, 11, 10), (3, 3), 1, 3, (1, 1)),
    ("kernel_5x3_mixed_axes", (2, 2, 7, 5), (5, 3), (2, 1), (1, 2), (1, 2, 0, 3)),
    ("negative_pads", (1, 3, 9, 7), (4, 4), 2, 1, (-1, -2, 1, -1)),
    ("up2_down2", (1, 2, 6, 7), (4, 4), 2, 2, (1, 2)),
    ("odd_sizes_1x1_kernel", (3, 1, 5, 3), (1, 1), 1, 1, (0, 0)),
    ("empty_batch", (0, 3, 8, 8), (4, 4), 2, 1, (2, 1)),
]


def upfirdn_case_ids():
    return [case[0] for case in UPFIRDN_CASES]


def make_fir_kernel(shape, dtype=torch.float64, device="cpu", seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device) + 0.1


# --- film_siren cases: x_lin [B, ..., C], gamma and beta [B, C] ------------------------------------
FILM_SIREN_SHAPES = [
    (2, 5, 3),  # the gradcheck size
    (4, 7),  # rank 2: one row per batch item
    (2, 3, 4, 5),  # [B, H, W, C]
    (2, 2, 3, 2, 3),  # [B, H, W, S, C], as the renderer calls it
    (1, 1, 1),
    (3, 17, 33),  # odd sizes, channels past one 32-wide tile
    (2, 1000, 8),  # several row chunks per batch item
    (0, 4, 3),  # empty batch
    (2, 0, 3),  # no rows: gamma/beta gradients are zeros
    (2, 4, 0),  # no channels
    (2, 0, 5, 3),
]


def make_film_siren_inputs(shape, dtype=torch.float32, device="cpu", param_dtype=None, siren_scale=False, seed=0):
    """(x_lin, gamma, beta) for x_lin of `shape`. siren_scale: StyleSDF's magnitudes (gamma around 30,
    the FiLM offset), where sin runs through many periods; otherwise gamma around 1."""
    generator = torch.Generator().manual_seed(seed)
    batch, channels = shape[0], shape[-1]

    def randn(*size):
        return torch.randn(size, generator=generator, dtype=torch.float64)

    x = randn(*shape) * (0.5 if siren_scale else 1.0)
    gamma = (30.0 + 3.0 * randn(batch, channels)) if siren_scale else (1.0 + 0.5 * randn(batch, channels))
    beta = 0.25 * randn(batch, channels) if siren_scale else randn(batch, channels)
    param_dtype = param_dtype or dtype
    return x.to(dtype=dtype, device=device), gamma.to(param_dtype).to(device), beta.to(param_dtype).to(device)


# --- sdf_volume_render inputs: sdf [..., S], rgb [..., S, 3], features [..., S, C] -------------------
def volume_render_inputs(lead, samples, channels, dtype=torch.float64, device="cpu", *, beta=None,
                         feature_dtype=None, seed=0) -> dict:
    """Realistic StyleSDF inputs for `lead` rays: increasing depths in [0.88, 1.12] (StyleSDF's near and
    far), |d| in [1, 1.1], beta about 0.1, an SDF that crosses zero along the ray plus randn * 0.1
    noise. Drawn in float64 on the CPU from `seed`, then cast, so every dtype and device sees the same
    values. channels=None means features=None. Returns sdf, rgb, features, z_vals, ray_norm, beta [1]."""
    generator = torch.Generator().manual_seed(seed)
    lead = tuple(lead)
    shape = lead + (samples,)

    def uniform(size, low, high):
        return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)

    def randn(size):
        return torch.randn(size, generator=generator, dtype=torch.float64)

    z_vals = torch.sort(uniform(shape, 0.88, 1.12), dim=-1).values
    ray_norm = uniform(lead, 1.0, 1.1)
    surface = uniform(lead + (1,), 0.9, 1.1)
    sdf = 0.5 * (surface - z_vals) + 0.1 * randn(shape)
    rgb = randn(shape + (3,))
    features = None if channels is None else randn(shape + (channels,))
    if beta is None:
        beta = 0.1 * (0.8 + 0.4 * torch.rand((), generator=generator, dtype=torch.float64).item())
    feature_dtype = feature_dtype or dtype
    return dict(
        sdf=sdf.to(dtype=dtype, device=device),
        rgb=rgb.to(dtype=feature_dtype, device=device),
        features=None if features is None else features.to(dtype=feature_dtype, device=device),
        z_vals=z_vals.to(dtype=dtype, device=device),
        ray_norm=ray_norm.to(dtype=dtype, device=device),
        beta=torch.tensor([beta], dtype=dtype, device=device),
    )


def pack_raw(inputs: dict) -> torch.Tensor:
    """The network output layout StyleSDF renders from: raw [..., S, 4 + C] = (rgb, sdf, features)."""
    parts = [inputs["rgb"], inputs["sdf"].unsqueeze(-1).to(inputs["rgb"].dtype)]
    if inputs["features"] is not None:
        parts.append(inputs["features"])
    return torch.cat(parts, dim=-1)

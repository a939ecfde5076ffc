"""Fused SDF-to-density + volume aggregation (StyleSDF's `volume_integration`), forward and backward.

    out = sdf_volume_render(sdf, rgb, features, z_vals, ray_norm, beta, force_background=False)
    sdf [..., S], rgb [..., S, 3] (logits), features [..., S, C] or None, z_vals [..., S],
    ray_norm [...], beta (one element, learnable)
    out.rgb [..., 3] in [-1, 1], out.features [..., C] or None, out.weights [..., S]

sigma = sigmoid(-sdf / beta) / beta, alpha_i = 1 - exp(-sigma_i delta_i) with delta_i =
(z_{i+1} - z_i) |d| and 1e10 |d| for the last sample, T_i = prod_{j<i} (1 - alpha_j + 1e-10),
w_i = alpha_i T_i; force_background sets w_{S-1} = 1 - sum_{i<S-1} w_i. Then
rgb = -1 + 2 sum_i w_i sigmoid(rgb_i), features = sum_i w_i f_i. Depth, surface points and the
mask follow from the weights: depth = (w * z_vals).sum(-1), xyz = origin * w.sum(-1) + direction *
depth, mask = w[..., -1].

The kernel keeps nothing of size rays x samples x channels: the backward re-reads the inputs
(views, not copies), recomputes each ray's alpha and transmittance, and writes each input gradient
once, with a division-free reverse scan (docs/kernels.md section 1.4). Gradients reach sdf, rgb, features
and beta, also through out.weights; z_vals and ray_norm are constants.

When sdf, rgb and features are slices of one tensor (StyleSDF's network output raw [..., S, 4 + C]:
`sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:], ...)`), the op renders from that tensor
and its backward writes one gradient for it, instead of autograd building a full-size zero gradient
per slice and adding them up; `sdf_volume_render_raw(raw, ...)` is the same call spelled for the
packed tensor. `density_volume_render` is the same quadrature for NeRF code that has a density
instead of an SDF.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from .. import _extension
from .. import reference
from ..reference.sdf_volume_render import RGB_ACTIVATIONS, VolumeRenderOutput

OP = "sdf_volume_render"
RAW_OP = "sdf_volume_render_raw"
DENSITY_OP = "density_volume_render"
SCALAR_DTYPES = (torch.float32, torch.float64)
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)

__all__ = ["sdf_volume_render", "sdf_volume_render_raw", "density_volume_render", "VolumeRenderOutput"]


def sdf_volume_render(
    sdf: torch.Tensor,  # [..., S]
    rgb: torch.Tensor,  # [..., S, 3] colour logits
    features: Optional[torch.Tensor],  # [..., S, C] or None
    z_vals: torch.Tensor,  # [..., S] increasing along the ray
    ray_norm: torch.Tensor,  # [...] norm of the un-normalised ray direction
    beta: torch.Tensor,  # one element, > 0
    *,
    force_background: bool = False,
    impl: str = "auto",
) -> VolumeRenderOutput:
    """StyleSDF's volume integration of an SDF; see the module docstring for the formula.

    dtypes: sdf, z_vals, ray_norm and beta float32 or float64 (sdf/beta are cast to z_vals' dtype);
    rgb and features the same dtype as z_vals, or float16/bfloat16 (float32 math, outputs in their dtype).
    """
    _check_tensor_args(OP, "sdf", sdf, rgb, features, z_vals, ray_norm)
    _check_beta(OP, beta, sdf.device)
    beta = beta.reshape(1).to(z_vals.dtype)
    if not _extension.use_kernel(impl, OP, sdf.device):
        return reference.sdf_volume_render(sdf, rgb, features, z_vals, ray_norm, beta,
                                           force_background=force_background)
    packed = _packed_source(sdf, rgb, features, z_vals.dtype)
    if packed is not None:
        return _run_packed_kernel(*packed, z_vals, ray_norm, beta, force_background)
    return _run_kernel(sdf.to(z_vals.dtype), rgb, features, z_vals, ray_norm, beta, force_background, "sigmoid_pm1")


def density_volume_render(
    sigma: torch.Tensor,  # [..., S] non-negative densities
    rgb: torch.Tensor,  # [..., S, 3]
    features: Optional[torch.Tensor],  # [..., S, C] or None
    z_vals: torch.Tensor,  # [..., S]
    ray_norm: torch.Tensor,  # [...]
    *,
    rgb_activation: str = "sigmoid",
    force_background: bool = False,
    impl: str = "auto",
) -> VolumeRenderOutput:
    """The same quadrature with a given density (NeRF). rgb_activation: "sigmoid" (NeRF colours in
    [0, 1]), "sigmoid_pm1" (StyleSDF, -1 + 2 sum w sigmoid) or "none" (colours used as given)."""
    if rgb_activation not in RGB_ACTIVATIONS:
        raise ValueError(f"{DENSITY_OP}: rgb_activation must be one of {RGB_ACTIVATIONS}, got {rgb_activation!r}")
    _check_tensor_args(DENSITY_OP, "sigma", sigma, rgb, features, z_vals, ray_norm)
    sigma = sigma.to(z_vals.dtype)
    if _extension.use_kernel(impl, DENSITY_OP, sigma.device):
        return _run_kernel(sigma, rgb, features, z_vals, ray_norm, None, force_background, rgb_activation)
    return reference.density_volume_render(sigma, rgb, features, z_vals, ray_norm, rgb_activation=rgb_activation,
                                           force_background=force_background)


def _run_kernel(density, rgb, features, z_vals, ray_norm, beta, force_background, rgb_activation):
    """Flattens the leading dims into rays (views where the strides allow) and calls the op."""
    lead, samples = density.shape[:-1], density.shape[-1]
    rays = math.prod(lead)
    rgb_map, feature_map, weights = torch.ops.stylesdf_fast.sdf_volume_render(
        density.reshape(rays, samples),
        rgb.reshape(rays, samples, 3),
        None if features is None else features.reshape(rays, samples, features.shape[-1]),
        z_vals.reshape(rays, samples),
        ray_norm.reshape(rays),
        beta,
        force_background,
        RGB_ACTIVATIONS.index(rgb_activation),
    )
    return VolumeRenderOutput(
        rgb_map.reshape(*lead, 3),
        None if features is None else feature_map.reshape(*lead, features.shape[-1]),
        weights.reshape(*lead, samples),
    )


def sdf_volume_render_raw(
    raw: torch.Tensor,  # [..., S, 4 + C]: rgb logits (3), sdf (1), features (C >= 0), StyleSDF's network output
    z_vals: torch.Tensor,  # [..., S]
    ray_norm: torch.Tensor,  # [...]
    beta: torch.Tensor,  # one element, > 0
    *,
    force_background: bool = False,
    impl: str = "auto",
) -> VolumeRenderOutput:
    """`sdf_volume_render` of StyleSDF's packed network output, as its `volume_integration` takes it:
    rgb = raw[..., :3], sdf = raw[..., 3], features = raw[..., 4:] (None when C = 0).

    Gradients reach raw and beta; raw's gradient is written once, whole.
    """
    if not isinstance(raw, torch.Tensor) or raw.dim() < 2 or raw.shape[-1] < 4:
        shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise ValueError(f"{RAW_OP}: raw must be [..., S, 4 + C] (rgb 3, sdf 1, features C), got {shape}")
    sdf, rgb = raw[..., 3], raw[..., :3]
    features = raw[..., 4:] if raw.shape[-1] > 4 else None
    _check_tensor_args(RAW_OP, "raw[..., 3]", sdf, rgb, features, z_vals, ray_norm)
    _check_beta(RAW_OP, beta, raw.device)
    if raw.dtype != z_vals.dtype:
        raise TypeError(f"{RAW_OP}: raw dtype {raw.dtype} differs from z_vals dtype {z_vals.dtype}")
    beta = beta.reshape(1).to(z_vals.dtype)
    if not _extension.use_kernel(impl, RAW_OP, raw.device):
        return reference.sdf_volume_render_raw(raw, z_vals, ray_norm, beta, force_background=force_background)
    lead, samples, channels = raw.shape[:-2], raw.shape[-2], raw.shape[-1]
    packed = raw.reshape(math.prod(lead), samples, channels)
    if packed.stride(-1) != 1:
        packed = packed.contiguous()
    return _run_packed_kernel(packed, lead, PackedLayout(0, 3, 4, channels - 4), z_vals, ray_norm, beta,
                              force_background)


class PackedLayout(NamedTuple):
    """Where the three inputs sit in the channels of a packed [R, S, K] tensor."""
    rgb_offset: int
    sdf_offset: int
    feature_offset: int
    channels: int  # C; 0 without features


def _run_packed_kernel(packed, lead, layout: PackedLayout, z_vals, ray_norm, beta, force_background):
    """The packed op on packed [R, S, K] (R = prod(lead)); outputs reshaped to the leading dims."""
    rays, samples = packed.shape[:2]
    rgb_map, feature_map, weights = torch.ops.stylesdf_fast.sdf_volume_render_packed(
        packed, *layout, z_vals.reshape(rays, samples), ray_norm.reshape(rays), beta, force_background,
    )
    return VolumeRenderOutput(
        rgb_map.reshape(*lead, 3),
        feature_map.reshape(*lead, layout.channels) if layout.channels else None,
        weights.reshape(*lead, samples),
    )


def _packed_source(sdf, rgb, features, dtype) -> Optional[Tuple[torch.Tensor, Tuple[int, ...], PackedLayout]]:
    """(packed [R, S, K], leading dims, layout) when sdf, rgb and features are disjoint channel slices
    of one contiguous tensor [..., S, K], else None. Rendering from that tensor gives the same values
    and gradients as from its slices, with one gradient written for it."""
    views = [sdf, rgb] + ([] if features is None else [features])
    base = sdf._base
    if base is None or torch.compiler.is_compiling() or not base.is_contiguous():
        return None
    if any(v._base is not base or v.dtype != dtype for v in views) or base.dtype != dtype:
        return None
    if features is not None and features.shape[-1] == 0:
        return None   # the packed op has no "features of zero channels"; the plain op returns them
    if any(v.retains_grad or v._backward_hooks for v in views):
        return None   # the caller reads the slices' own gradients: keep the slices in the graph
    lead, samples, row = tuple(sdf.shape[:-1]), sdf.shape[-1], sdf.stride(-1)
    rays = math.prod(lead)
    if row < 4 or base.numel() != rays * samples * row or rays * samples == 0:
        return None
    strides = _contiguous_strides((*lead, samples, row))
    if sdf.stride() != strides[:-1] or any(v.stride() != strides for v in views[1:]):
        return None
    start = base.storage_offset()
    layout = PackedLayout(rgb.storage_offset() - start, sdf.storage_offset() - start,
                          features.storage_offset() - start if features is not None else 0,
                          features.shape[-1] if features is not None else 0)
    if not _disjoint_channel_ranges(layout, row):
        return None
    if not any(v.requires_grad for v in views):
        return base.detach().view(rays, samples, row), lead, layout
    if all(v.grad_fn is not None for v in views) and base.requires_grad:
        return base.view(rays, samples, row), lead, layout
    return None   # some slices were taken outside autograd (no grad_fn): their gradients reach no base


def _contiguous_strides(shape) -> Tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _disjoint_channel_ranges(layout: PackedLayout, row: int) -> bool:
    ranges = [(layout.rgb_offset, 3), (layout.sdf_offset, 1)]
    if layout.channels:
        ranges.append((layout.feature_offset, layout.channels))
    if any(start < 0 or start + count > row for start, count in ranges):
        return False
    ranges.sort()
    return all(first[0] + first[1] <= second[0] for first, second in zip(ranges, ranges[1:]))


# --- validation -----------------------------------------------------------------------------------

def _check_tensor_args(op, density_name, density, rgb, features, z_vals, ray_norm) -> None:
    named = [(density_name, density), ("rgb", rgb), ("z_vals", z_vals), ("ray_norm", ray_norm)]
    if features is not None:
        named.append(("features", features))
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {value.dtype}")
    for name, value in named[1:]:
        if value.device != density.device:
            raise ValueError(f"{op}: {name} is on device {value.device} but {density_name} is on device "
                             f"{density.device}; move them to the same device")
    if density.dim() < 1 or density.shape[-1] < 1:
        raise ValueError(f"{op}: {density_name} must be [..., S] with S >= 1, got shape {tuple(density.shape)}")
    lead, samples = tuple(density.shape[:-1]), density.shape[-1]
    expectations = [
        ("rgb", rgb, lead + (samples, 3), "[..., S, 3]"),
        ("z_vals", z_vals, lead + (samples,), "[..., S]"),
        ("ray_norm", ray_norm, lead, "[...]"),
    ]
    if features is not None:
        expectations.append(("features", features, lead + (samples, features.shape[-1] if features.dim() else 0),
                             "[..., S, C]"))
    for name, value, shape, legend in expectations:
        if tuple(value.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {legend} = {shape} to match {density_name} "
                             f"{tuple(density.shape)}, got {tuple(value.shape)}")
    if z_vals.dtype not in SCALAR_DTYPES:
        raise TypeError(f"{op}: z_vals must be float32 or float64 (the 1e10 last interval overflows half), "
                        f"got {z_vals.dtype}")
    if ray_norm.dtype != z_vals.dtype:
        raise TypeError(f"{op}: ray_norm dtype {ray_norm.dtype} differs from z_vals dtype {z_vals.dtype}")
    allowed = (z_vals.dtype,) + (LOW_PRECISION_DTYPES if z_vals.dtype == torch.float32 else ())
    if rgb.dtype not in allowed:
        raise TypeError(f"{op}: rgb must have dtype {' or '.join(map(str, allowed))} (z_vals is {z_vals.dtype}), "
                        f"got {rgb.dtype}")
    if features is not None and features.dtype != rgb.dtype:
        raise TypeError(f"{op}: features dtype {features.dtype} differs from rgb dtype {rgb.dtype}")
    for name, value in (("z_vals", z_vals), ("ray_norm", ray_norm)):
        if value.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{op}: {name} requires grad, but it is a constant of the quadrature (no gradient "
                             f"is computed for it); pass {name}.detach()")


def _check_beta(op: str, beta, device: torch.device) -> None:
    """beta: one positive element on the inputs' device. Its value is read on the CPU only: on a GPU,
    reading it would make every call wait for the device, so there an asynchronous device-side assert
    stops a non-positive beta instead (it fails at the next synchronisation)."""
    if not isinstance(beta, torch.Tensor):
        raise TypeError(f"{op}: beta must be a one-element torch.Tensor, got {type(beta).__name__}")
    if not beta.is_floating_point():
        raise TypeError(f"{op}: beta must be a floating-point tensor, got dtype {beta.dtype}")
    if beta.device != device:
        raise ValueError(f"{op}: beta is on device {beta.device} but sdf is on device {device}; "
                         "move them to the same device")
    if beta.numel() != 1:
        raise ValueError(f"{op}: beta must have exactly one element, got shape {tuple(beta.shape)}")
    if torch.compiler.is_compiling():
        return
    if beta.device.type == "cpu":
        value = float(beta.detach().reshape(()))
        if not value > 0:  # also catches NaN
            raise ValueError(f"{op}: beta must be > 0, got {value}")
    else:
        torch._assert_async(beta.detach().reshape(()) > 0)


# --- dispatcher registrations (only when the extension is loaded) ---------------------------------

def _register() -> None:
    from torch.library import register_autograd, register_fake

    name = "stylesdf_fast::sdf_volume_render"
    backward_name = "stylesdf_fast::sdf_volume_render_backward"

    @register_fake(name)
    def _(density, rgb, features, z_vals, ray_norm, beta, force_background, rgb_activation):
        rays, samples = density.shape
        channels = 0 if features is None else features.shape[2]
        feature_dtype = rgb.dtype if features is None else features.dtype
        return (
            rgb.new_empty((rays, 3)),
            density.new_empty((rays, channels), dtype=feature_dtype),
            density.new_empty((rays, samples)),
        )

    @register_fake(backward_name)
    def _(grad_rgb_map, grad_feature_map, grad_weights, density, rgb, features, z_vals, ray_norm, beta,
          force_background, rgb_activation, output_mask):
        return (
            density.new_empty(density.shape if output_mask[0] else (0,)),
            rgb.new_empty(rgb.shape if output_mask[1] else (0,)),
            (features.new_empty(features.shape) if features is not None and output_mask[2] else rgb.new_empty((0,))),
            density.new_empty((1,) if beta is not None and output_mask[3] else (0,)),
        )

    def setup_context(ctx, inputs, output):
        density, rgb, features, z_vals, ray_norm, beta, force_background, rgb_activation = inputs
        ctx.force_background, ctx.rgb_activation = force_background, rgb_activation
        ctx.has_features, ctx.has_beta = features is not None, beta is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(density, rgb, features, z_vals, ray_norm, beta)

    def backward(ctx, grad_rgb_map, grad_feature_map, grad_weights):
        density, rgb, features, z_vals, ray_norm, beta = ctx.saved_tensors
        needs = ctx.needs_input_grad
        output_mask = [needs[0], needs[1], ctx.has_features and needs[2], ctx.has_beta and needs[5]]
        if not any(output_mask) or (grad_rgb_map is None and grad_feature_map is None and grad_weights is None):
            return (None,) * 8
        grad_density, grad_rgb, grad_features, grad_beta = torch.ops.stylesdf_fast.sdf_volume_render_backward(
            grad_rgb_map, grad_feature_map, grad_weights, density, rgb, features, z_vals, ray_norm, beta,
            ctx.force_background, ctx.rgb_activation, output_mask,
        )
        return (
            grad_density if output_mask[0] else None,
            grad_rgb if output_mask[1] else None,
            grad_features if output_mask[2] else None,
            None,
            None,
            grad_beta if output_mask[3] else None,
            None,
            None,
        )

    register_autograd(name, backward, setup_context=setup_context)
    _register_packed()


def _register_packed() -> None:
    from torch.library import register_autograd, register_fake

    name = "stylesdf_fast::sdf_volume_render_packed"
    backward_name = "stylesdf_fast::sdf_volume_render_packed_backward"

    @register_fake(name)
    def _(raw, rgb_offset, sdf_offset, feature_offset, channels, z_vals, ray_norm, beta, force_background):
        rays, samples = raw.shape[:2]
        return raw.new_empty((rays, 3)), raw.new_empty((rays, channels)), raw.new_empty((rays, samples))

    @register_fake(backward_name)
    def _(grad_rgb_map, grad_feature_map, grad_weights, raw, rgb_offset, sdf_offset, feature_offset, channels,
          z_vals, ray_norm, beta, force_background, output_mask):
        return raw.new_empty(raw.shape if output_mask[0] else (0,)), raw.new_empty((1,) if output_mask[1] else (0,))

    def setup_context(ctx, inputs, output):
        raw, rgb_offset, sdf_offset, feature_offset, channels, z_vals, ray_norm, beta, force_background = inputs
        ctx.layout = (rgb_offset, sdf_offset, feature_offset, channels)
        ctx.force_background = force_background
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(raw, z_vals, ray_norm, beta)

    def backward(ctx, grad_rgb_map, grad_feature_map, grad_weights):
        raw, z_vals, ray_norm, beta = ctx.saved_tensors
        output_mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[7]]
        if not any(output_mask) or (grad_rgb_map is None and grad_feature_map is None and grad_weights is None):
            return (None,) * 9
        grad_raw, grad_beta = torch.ops.stylesdf_fast.sdf_volume_render_packed_backward(
            grad_rgb_map, grad_feature_map, grad_weights, raw, *ctx.layout, z_vals, ray_norm, beta,
            ctx.force_background, output_mask,
        )
        return (grad_raw if output_mask[0] else None,) + (None,) * 6 + (grad_beta if output_mask[1] else None, None)

    register_autograd(name, backward, setup_context=setup_context)


if _extension.status().loaded:
    _register()

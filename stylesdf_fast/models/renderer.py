"""StyleSDF's volume renderer: the renderer mapping network and the FiLM-SIREN SDF renderer.

    z [B, 256] --style (3 x MappingLinear)--> w_r [B, 256]
    w_r, camera --renderer (VolumeFeatureRenderer)--> rgb [B, 3, 64, 64] in [-1, 1],
                                                      features [B, 256, 64, 64], sdf, mask, xyz, eikonal

Class and attribute names reproduce the official keys: a module with `style = make_renderer_mapping()`
and `renderer = VolumeFeatureRenderer()` has exactly the 65 keys of an official stage-1 checkpoint's
`g_ema` (STYLESDF.md 2.2); the ray grid and the sample positions are non-persistent buffers.

The per-ray quadrature (SDF -> density -> alpha -> weights -> colour and feature sums) is the fused
op `ops.sdf_volume_render_raw`, and each FiLM-SIREN layer's modulation + sine the fused op
`ops.film_siren` after the layer's GEMM (impl="reference": the official formulas op by op); this
module generates rays and samples, runs the SIREN on the samples, and derives xyz, mask and the
eikonal term. Legend: B batch, H/W image height/width
(H = W = out_im_res), S samples per ray, C feature channels.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from .. import _extension
from ..ops.film_siren import film_siren
from ..ops.fused_leaky_relu import fused_leaky_relu
from ..ops.sdf_volume_render import density_volume_render, sdf_volume_render_raw

__all__ = [
    "MappingLinear",
    "RendererMapping",
    "make_renderer_mapping",
    "LinearLayer",
    "FiLMSiren",
    "linear_recomputing_input",
    "SirenGenerator",
    "VolumeFeatureRenderer",
    "RendererOutput",
    "RayRenderOutput",
    "pixel_grid",
    "camera_rays",
    "make_t_vals",
    "sample_depths",
]

LEAKY_SLOPE = 0.2  # negative slope of every leaky ReLU and of the Kaiming inits
SIGMOID_BETA_INIT = 0.1  # initial SDF-to-density temperature (STYLESDF.md 1.5)
FILM_GAMMA_SCALE, FILM_GAMMA_OFFSET = 15.0, 30.0  # gamma = 15 (A w + a) + 30
FILM_BETA_SCALE = 0.25  # beta = 0.25 (B w + b)
SIREN_FREQ_DIVISOR = 25.0  # non-first SIREN weights U(+-sqrt(6/in)/25)
FILM_MODES = ("eager", "fused", "folded")  # FiLMSiren.film_mode
FAST_FILM_MODE = "fused"  # the mode of impl "auto" / "kernel" (benchmarks/train_speed.py compares them)
Number = Union[float, int, torch.Tensor]


# --- init helpers ---------------------------------------------------------------------------------

def _uniform(shape, bound: float) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound)


def _kaiming_leaky(out_dim: int, in_dim: int) -> torch.Tensor:
    """N(0, gain^2 / in) with the leaky-ReLU gain sqrt(2 / (1 + 0.2^2)), shape [out, in]."""
    return nn.init.kaiming_normal_(torch.empty(out_dim, in_dim), a=LEAKY_SLOPE, mode="fan_in",
                                   nonlinearity="leaky_relu")


def _bias_init(out_dim: int, in_dim: int) -> torch.Tensor:
    return _uniform((out_dim,), 1 / math.sqrt(in_dim))


def _check_impl(name: str, impl: str) -> str:
    if impl not in _extension.IMPLS:
        raise ValueError(f"{name}: impl must be one of {_extension.IMPLS}, got {impl!r}")
    return impl


# --- renderer mapping network (STYLESDF.md 1.2) ---------------------------------------------------

class MappingLinear(nn.Module):
    """y = leaky_relu(x W^T + b, 0.2) with gain 1 (or x W^T + b when activate=False).

    Plain parameters, no equalised learning rate: W ~ Kaiming-normal (a=0.2, fan_in), b ~ U(+-1/sqrt(in)).
    """

    def __init__(self, in_dim: int, out_dim: int, activate: bool = True, *, impl: str = "auto"):
        super().__init__()
        self.weight = nn.Parameter(_kaiming_leaky(out_dim, in_dim))  # [out, in]
        self.bias = nn.Parameter(_bias_init(out_dim, in_dim))  # [out]
        self.activate = activate
        self.impl = _check_impl("MappingLinear", impl)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        if not self.activate:
            return F.linear(input, self.weight, self.bias)
        return fused_leaky_relu(F.linear(input, self.weight), self.bias, LEAKY_SLOPE, scale=1.0, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, activate={self.activate}"


class RendererMapping(nn.Sequential):
    """z [N, style_dim] -> w_r [N, style_dim]: n_layers MappingLinear, every one activated (the last
    too), no PixelNorm. An nn.Sequential so its keys are `0.weight`, `0.bias`, ... as the official."""

    def __init__(self, style_dim: int = 256, n_layers: int = 3, *, impl: str = "auto"):
        if style_dim < 1 or n_layers < 1:
            raise ValueError(f"RendererMapping: style_dim and n_layers must be >= 1, got {style_dim}, {n_layers}")
        super().__init__(*[MappingLinear(style_dim, style_dim, impl=impl) for _ in range(n_layers)])


def make_renderer_mapping(style_dim: int = 256, n_layers: int = 3, *, impl: str = "auto") -> RendererMapping:
    """The renderer mapping network `Generator.style` of the official code."""
    return RendererMapping(style_dim, n_layers, impl=impl)


# --- recomputing a fused layer's output instead of keeping it ------------------------------------------

_RECIPE = "_film_siren_recipe"   # attribute of a fused FiLM-SIREN output: (x_lin, gamma, beta, impl)


class _Recompute(NamedTuple):
    recipe: tuple
    shape: torch.Size


def _gemm_weight_gradient_wanted() -> bool:
    """Inside the backward of F.linear (AddmmBackward0 / MmBackward0, weight last among its inputs):
    whether this backward pass computes the weight's gradient, the only use of the saved input.
    True when it cannot tell (private autograd API missing or outside a backward)."""
    try:
        node = torch._C._current_autograd_node()
        weight_path = node.next_functions[-1][0] if node is not None else None
        return weight_path is None or bool(torch._C._will_engine_execute_node(weight_path))
    except (AttributeError, RuntimeError, IndexError):
        return True


def linear_recomputing_input(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(input, weight, bias); when input is a fused FiLM-SIREN output (it carries its recipe),
    the GEMM's saved copy of input is replaced by that recipe and recomputed in the backward: the op
    keeps x_lin for its own backward anyway, so the layer output need not be kept as well (one
    [points, width] tensor less per layer, for the weight gradient only)."""
    recipe = getattr(input, _RECIPE, None)
    if recipe is None or not torch.is_grad_enabled():
        return F.linear(input, weight, bias)
    # plain values only: the hooks may outlive this call, and a reference to input would keep it alive
    pointer, numel, dtype = input.data_ptr(), input.numel(), input.dtype

    def pack(tensor: torch.Tensor):
        if tensor.data_ptr() == pointer and tensor.numel() == numel and tensor.dtype == dtype:
            return _Recompute(recipe, tensor.shape)
        return tensor

    def unpack(packed):
        if not isinstance(packed, _Recompute):
            return packed
        x_lin, gamma, beta, impl = packed.recipe
        if not _gemm_weight_gradient_wanted():
            # a pass that skips the weight gradient (the eikonal autograd.grad to the sample points)
            # still unpacks every saved tensor: hand it a free stand-in, it is never read
            return x_lin.new_zeros(()).expand(packed.shape)
        return film_siren(x_lin, gamma, beta, impl=impl).reshape(packed.shape)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return F.linear(input, weight, bias)


# --- SIREN building blocks (STYLESDF.md 1.4) ------------------------------------------------------

class LinearLayer(nn.Module):
    """y = std_init (x W^T + b) + bias_init, the official SIREN "LinearLayer".

    Weight init: is_first U(+-1/in); freq_init U(+-sqrt(6/in)/25); otherwise 0.25 x Kaiming-normal
    (a=0.2, fan_in). Bias U(+-1/sqrt(in)) in every case.
    """

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, std_init: float = 1.0,
                 freq_init: bool = False, is_first: bool = False):
        super().__init__()
        if is_first:
            weight = _uniform((out_dim, in_dim), 1 / in_dim)
        elif freq_init:
            weight = _uniform((out_dim, in_dim), math.sqrt(6 / in_dim) / SIREN_FREQ_DIVISOR)
        else:
            weight = 0.25 * _kaiming_leaky(out_dim, in_dim)
        self.weight = nn.Parameter(weight)  # [out, in]
        self.bias = nn.Parameter(_bias_init(out_dim, in_dim))  # [out]
        self.bias_init = bias_init
        self.std_init = std_init

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        out = linear_recomputing_input(input, self.weight, self.bias)
        if self.std_init != 1:
            out = self.std_init * out
        if self.bias_init != 0:
            out = out + self.bias_init
        return out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, std_init={self.std_init}, bias_init={self.bias_init}"


class FiLMSiren(nn.Module):
    """y = sin(gamma(w) * (x W^T + b) + beta(w)), gamma = 15 (A w + a) + 30, beta = 0.25 (B w + b).

    gamma and beta are per output channel and per batch item, broadcast over every other dim of x.
    Weight init: is_first U(-1/3, 1/3) (in = 3), otherwise U(+-sqrt(6/in)/25); bias U(+-1/sqrt(in)).
    """

    def __init__(self, in_channel: int, out_channel: int, style_dim: int, is_first: bool = False):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        bound = 1 / 3 if is_first else math.sqrt(6 / in_channel) / SIREN_FREQ_DIVISOR
        self.weight = nn.Parameter(_uniform((out_channel, in_channel), bound))  # [out, in]
        self.bias = nn.Parameter(_bias_init(out_channel, in_channel))  # [out]
        self.gamma = LinearLayer(style_dim, out_channel, bias_init=FILM_GAMMA_OFFSET, std_init=FILM_GAMMA_SCALE)
        self.beta = LinearLayer(style_dim, out_channel, bias_init=0.0, std_init=FILM_BETA_SCALE)

    #: how FiLM + sine is computed (set by the renderer from its impl, FILM_MODES): "eager" the official
    #: formula op by op (the oracle), "fused" the GEMM then the fused film_siren op, "folded" the
    #: FiLM scale and shift folded into a batched GEMM, then sin
    film_mode: str = "eager"
    #: impl of the fused op ("auto", "kernel" or "reference")
    impl: str = "auto"

    def forward(self, input: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # input [B, ..., in], style [B, style_dim] -> [B, ..., out]
        per_item = input.dim() >= 2 and input.shape[0] == style.shape[0]
        if self.film_mode == "fused" and per_item:
            x_lin = linear_recomputing_input(input, self.weight, self.bias)  # [B, ..., out]: all the op keeps
            gamma, beta = self.gamma(style), self.beta(style)
            out = film_siren(x_lin, gamma, beta, impl=self.impl)
            if out.requires_grad:   # only then did the op keep x_lin (else the recipe would keep it alive)
                setattr(out, _RECIPE, (x_lin, gamma, beta, self.impl))   # the next GEMM recomputes, not keeps, out
            return out
        if self.film_mode == "folded" and per_item:
            return self._folded_forward(input, style)
        out = F.linear(input, self.weight, self.bias)
        # The official views gamma as [B, 1, 1, 1, style_dim]: right only for 5-d input and
        # out == style_dim; viewing by out_channel and input rank is the same there.
        shape = (style.shape[0],) + (1,) * (input.dim() - 2) + (self.out_channel,)
        gamma = self.gamma(style).view(shape)
        beta = self.beta(style).view(shape)
        return torch.sin(gamma * out + beta)

    def _folded_forward(self, input: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """sin((gamma W) x + (gamma b + beta)): the same function as the official
        sin(gamma (W x + b) + beta) with the per-item scale folded into one batched GEMM + bias, so
        no elementwise [B, ..., out] temporaries are written or kept for the (double) backward."""
        gamma = self.gamma(style)  # [B, out]
        beta = self.beta(style)  # [B, out]
        weight = gamma.unsqueeze(-1) * self.weight  # [B, out, in]
        bias = (gamma * self.bias + beta).unsqueeze(1)  # [B, 1, out]
        flat = input.reshape(input.shape[0], -1, self.in_channel)  # [B, N, in]
        out = torch.baddbmm(bias, flat, weight.transpose(1, 2))  # [B, N, out]
        return torch.sin(out).reshape(*input.shape[:-1], self.out_channel)

    def extra_repr(self) -> str:
        return f"{self.in_channel}, {self.out_channel}, film_mode={self.film_mode!r}"


class SirenGenerator(nn.Module):
    """The SDF/colour/feature MLP: per sample [rgb logits (3), sdf (1), features (W)].

    pts_linears: depth FiLMSiren layers (3 -> W, then W -> W); sigma_linear (W -> 1) on the trunk
    output is the SDF; views_linears (W + 3 -> W) on [trunk, view direction] is the feature vector;
    rgb_linear (W -> 3) on it gives the colour logits. output_features=False drops the features from
    the output (the parameters are the same).
    """

    def __init__(self, depth: int = 8, width: int = 256, style_dim: int = 256, input_ch: int = 3,
                 input_ch_views: int = 3, output_features: bool = True):
        super().__init__()
        self.depth = depth
        self.width = width
        self.style_dim = style_dim
        self.input_ch = input_ch
        self.input_ch_views = input_ch_views
        self.output_features = output_features
        self.pts_linears = nn.ModuleList(
            [FiLMSiren(input_ch, width, style_dim, is_first=True)]
            + [FiLMSiren(width, width, style_dim) for _ in range(depth - 1)]
        )
        self.views_linears = FiLMSiren(width + input_ch_views, width, style_dim)
        self.rgb_linear = LinearLayer(width, 3, freq_init=True)
        self.sigma_linear = LinearLayer(width, 1, freq_init=True)

    @property
    def out_channels(self) -> int:
        return 4 + (self.width if self.output_features else 0)

    def trunk(self, points: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        # points [B, ..., 3], styles [B, style_dim] -> [B, ..., W]
        out = points
        for layer in self.pts_linears:
            out = layer(out, styles)
        return out

    def sdf(self, points: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """Only the SDF [B, ..., 1] (skips the colour branch; for the sphere init and surface queries)."""
        return self.sigma_linear(self.trunk(points, styles))

    def forward_raw_and_sdf(self, points: torch.Tensor, viewdirs: torch.Tensor,
                            styles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw [B, ..., 4 + C], sdf [B, ..., 1]); sdf is the tensor before packing, so a gradient of
        it (the eikonal term) does not run zeros back through the colour branch."""
        trunk = self.trunk(points, styles)  # [B, ..., W]
        sdf = self.sigma_linear(trunk)  # [B, ..., 1]
        views = viewdirs.expand(*trunk.shape[:-1], viewdirs.shape[-1])  # per-ray directions to every sample
        features = self.views_linears(torch.cat([trunk, views], -1), styles)  # [B, ..., W]
        rgb = self.rgb_linear(features)  # [B, ..., 3]
        parts = [rgb, sdf, features] if self.output_features else [rgb, sdf]
        return torch.cat(parts, -1), sdf

    def forward(self, points: torch.Tensor, viewdirs: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """points [B, ..., 3] (normalised), viewdirs broadcastable to [B, ..., 3] (unit),
        styles [B, style_dim] -> raw [B, ..., 4 + C] = [rgb logits, sdf, features]."""
        return self.forward_raw_and_sdf(points, viewdirs, styles)[0]


# --- rays and samples (STYLESDF.md 1.6) -----------------------------------------------------------

def pixel_grid(resolution: int, *, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres (i, j), each [1, H, W] with values 0.5 .. res - 0.5: i the column (x), j the row (y)."""
    coords = torch.linspace(0.5, resolution - 0.5, resolution, dtype=dtype, device=device)
    j, i = torch.meshgrid(coords, coords, indexing="ij")
    return i.unsqueeze(0).contiguous(), j.unsqueeze(0).contiguous()   # meshgrid gives expanded views


def camera_rays(c2w: torch.Tensor, focal: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                resolution: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pinhole rays, OpenGL convention (camera looks along -z, +y up, row 0 at the top).

    c2w [B, 3, 4], focal [B, 1, 1] in pixels, i/j [1, H, W] pixel centres ->
    rays_o [B, H, W, 3] (camera position), rays_d [B, H, W, 3] = R ((i - res/2)/f, -(j - res/2)/f, -1)
    (not normalised: its norm scales the sample spacing), dirs [B, H, W, 3] (the camera-frame direction).
    """
    half = resolution * 0.5
    x = (i - half) / focal  # [B, H, W]
    y = -(j - half) / focal
    dirs = torch.stack([x, y, -torch.ones_like(x)], -1)  # [B, H, W, 3]
    # The official sum-of-products form of R . d (kept for bitwise-equal ray directions).
    rays_d = torch.sum(dirs[..., None, :] * c2w[:, None, None, :3, :3], -1)
    rays_o = c2w[:, None, None, :3, -1].expand(rays_d.shape)
    return rays_o, rays_d, dirs


def make_t_vals(n_samples: int, offset_sampling: bool = True, *, dtype: torch.dtype = torch.float32,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Sample fractions t [S]: linspace(0, 1 - 1/S, S) for offset sampling (every sample then owns
    the interval up to the next one, the last up to far), linspace(0, 1, S) for stratified."""
    end = 1.0 - 1.0 / n_samples if offset_sampling else 1.0
    return torch.linspace(0.0, end, n_samples, dtype=dtype, device=device)


def sample_depths(near: torch.Tensor, far: torch.Tensor, t_vals: torch.Tensor, *, perturb: float = 0.0,
                  offset_sampling: bool = True) -> torch.Tensor:
    """Depths along each ray, z [..., S] = near (1 - t) + far t, jittered when perturb > 0.

    near/far [..., 1] (one per ray), t_vals [S]. Offset sampling: one u ~ U(0, 1) per ray moves every
    sample by u times its gap to the next (the last one toward far), so z stays < far. Stratified: an
    independent uniform draw per sample inside the bin between the neighbouring midpoints.
    """
    z_vals = near * (1.0 - t_vals) + far * t_vals  # [..., S]
    if not perturb > 0:
        return z_vals
    if offset_sampling:
        upper = torch.cat([z_vals[..., 1:], far], -1)
        lower = z_vals
        t_rand = torch.rand(z_vals.shape[:-1] + (1,), dtype=z_vals.dtype, device=z_vals.device)  # one per ray
    else:
        mids = 0.5 * (z_vals[..., 1:] + z_vals[..., :-1])
        upper = torch.cat([mids, z_vals[..., -1:]], -1)
        lower = torch.cat([z_vals[..., :1], mids], -1)
        t_rand = torch.rand(z_vals.shape, dtype=z_vals.dtype, device=z_vals.device)
    return lower + (upper - lower) * t_rand


# --- the volume renderer --------------------------------------------------------------------------

class RendererOutput(NamedTuple):
    """VolumeFeatureRenderer.forward, in the official order and layout."""
    rgb: torch.Tensor  # [B, 3, H, W] in [-1, 1]
    features: Optional[torch.Tensor]  # [B, C, H, W], None when output_features=False
    sdf: Optional[torch.Tensor]  # [B, H, W, S, 1] when return_sdf
    mask: Optional[torch.Tensor]  # [B, 1, H, W] last-sample (background) weight, when return_xyz
    xyz: Optional[torch.Tensor]  # [B, 3, H, W] expected surface point (world), when return_xyz
    eikonal_term: Optional[torch.Tensor]  # [B, H, W, S, 3] d sdf / d world point, when return_eikonal


class RayRenderOutput(NamedTuple):
    """VolumeFeatureRenderer.render: channels-last per-ray results plus the weights and depths."""
    rgb: torch.Tensor  # [B, H, W, 3] in [-1, 1]
    features: Optional[torch.Tensor]  # [B, H, W, C]
    sdf: Optional[torch.Tensor]  # [B, H, W, S, 1]
    mask: Optional[torch.Tensor]  # [B, H, W, 1]
    xyz: Optional[torch.Tensor]  # [B, H, W, 3]
    eikonal_term: Optional[torch.Tensor]  # [B, H, W, S, 3]
    weights: torch.Tensor  # [B, H, W, S]
    z_vals: torch.Tensor  # [B, H, W, S]


class _Samples(NamedTuple):
    rays_o: torch.Tensor  # [B, H, W, 3]
    rays_d: torch.Tensor  # [B, H, W, 3]
    viewdirs: torch.Tensor  # [B, H, W, 3] unit
    z_vals: torch.Tensor  # [B, H, W, S]
    points: torch.Tensor  # [B, H, W, S, 3] world
    net_points: torch.Tensor  # [B, H, W, S, 3] network input (normalised when z_normalize)


class VolumeFeatureRenderer(nn.Module):
    """FiLM-SIREN SDF volume renderer, one image of out_im_res^2 rays per latent (STYLESDF.md 1.4-1.6).

    Options (official defaults): n_samples 24 per ray; perturb > 0 jitters the depths (1 in
    training, 0 for inference); offset_sampling (default) vs stratified (`--no_offset_sampling`);
    z_normalize: network points = world points x 2 / (far - near); static_viewdirs: the view
    direction is the camera-frame one (inference scripts) instead of the world one; force_background:
    the last sample takes the remaining weight; return_xyz / return_sdf add those outputs;
    output_features=False (stage 1) drops the 256-d feature map; sdf=False is the official NeRF mode
    (`--no_sdf`: sigma = softplus(raw + N(0, raw_noise_std^2)), no learnable beta, no eikonal term).
    impl picks the kernels ("auto", "kernel", "reference") of the quadrature op.
    """

    def __init__(self, style_dim: int = 256, out_im_res: int = 64, *, depth: int = 8, width: int = 256,
                 n_samples: int = 24, perturb: float = 1.0, offset_sampling: bool = True,
                 z_normalize: bool = True, static_viewdirs: bool = False, force_background: bool = False,
                 return_xyz: bool = False, return_sdf: bool = False, output_features: bool = True,
                 sdf: bool = True, raw_noise_std: float = 0.0, impl: str = "auto"):
        super().__init__()
        for name, value in (("style_dim", style_dim), ("out_im_res", out_im_res), ("depth", depth),
                            ("width", width), ("n_samples", n_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VolumeFeatureRenderer: {name} must be an int >= 1, got {value!r}")
        self.style_dim = style_dim
        self.out_im_res = out_im_res
        self.n_samples = n_samples
        self.perturb = perturb
        self.offset_sampling = offset_sampling
        self.z_normalize = z_normalize
        self.static_viewdirs = static_viewdirs
        self.force_background = force_background
        self.return_xyz = return_xyz
        self.return_sdf = return_sdf
        self.sdf = bool(sdf)
        self.raw_noise_std = float(raw_noise_std)
        self._impl = _check_impl("VolumeFeatureRenderer", impl)

        if self.sdf:
            self.sigmoid_beta = nn.Parameter(SIGMOID_BETA_INIT * torch.ones(1))
        else:   # the official NeRF mode has no beta, and no such key in its checkpoints
            self.register_parameter("sigmoid_beta", None)
        i, j = pixel_grid(out_im_res)
        # Derived constants: non-persistent, so the state_dict keeps the official 65 keys.
        self.register_buffer("i", i, persistent=False)  # [1, H, W] column centres
        self.register_buffer("j", j, persistent=False)  # [1, H, W] row centres
        self.register_buffer("t_vals", make_t_vals(n_samples, offset_sampling), persistent=False)  # [S]
        self.network = SirenGenerator(depth=depth, width=width, style_dim=style_dim,
                                      output_features=output_features)
        self.impl = self.impl   # the setter configures the FiLM-SIREN layers

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        # impl="reference" runs the official formulas op by op (the oracle); otherwise each layer's
        # FiLM + sine is one fused op after its GEMM (FAST_FILM_MODE), which keeps only the GEMM output
        # for the backward and the eikonal double backward.
        self._impl = _check_impl("VolumeFeatureRenderer", value)
        self.set_film_mode("eager" if self._impl == "reference" else FAST_FILM_MODE)

    def set_film_mode(self, mode: str) -> None:
        """How every FiLM-SIREN layer computes sin(gamma (W x + b) + beta): FILM_MODES (for benchmarks;
        the impl setter picks the mode)."""
        if mode not in FILM_MODES:
            raise ValueError(f"VolumeFeatureRenderer.set_film_mode: mode must be one of {FILM_MODES}, got {mode!r}")
        for layer in self.network.modules():
            if isinstance(layer, FiLMSiren):
                layer.film_mode, layer.impl = mode, self._impl

    @property
    def device(self) -> torch.device:
        return self.network.pts_linears[0].weight.device

    @property
    def output_features(self) -> bool:
        # Lives in the network, which packs (or drops) the features; settable after construction.
        return self.network.output_features

    @output_features.setter
    def output_features(self, value: bool) -> None:
        self.network.output_features = bool(value)

    def extra_repr(self) -> str:
        return (f"out_im_res={self.out_im_res}, n_samples={self.n_samples}, perturb={self.perturb}, "
                f"offset_sampling={self.offset_sampling}, z_normalize={self.z_normalize}, "
                f"static_viewdirs={self.static_viewdirs}, force_background={self.force_background}, "
                f"output_features={self.output_features}, sdf={self.sdf}, raw_noise_std={self.raw_noise_std}, "
                f"impl={self.impl!r}")

    # --- public entry points ----------------------------------------------------------------------

    def forward(self, cam_poses: torch.Tensor, focal: Number, near: Number, far: Number,
                styles: torch.Tensor, return_eikonal: bool = False) -> RendererOutput:
        """cam_poses (c2w) [B, 3, 4], focal/near/far [B, 1, 1] (or a number, or B/1 values),
        styles (w_r) [B, style_dim] -> RendererOutput(rgb [B, 3, H, W], features [B, C, H, W] | None,
        sdf [B, H, W, S, 1] | None, mask [B, 1, H, W] | None, xyz [B, 3, H, W] | None,
        eikonal_term [B, H, W, S, 3] | None), the tuple the official renderer returns."""
        out = self.render(cam_poses, focal, near, far, styles, return_eikonal=return_eikonal)
        return RendererOutput(
            rgb=_to_nchw(out.rgb),
            features=_to_nchw(out.features),
            sdf=out.sdf,
            mask=_to_nchw(out.mask),
            xyz=_to_nchw(out.xyz),
            eikonal_term=out.eikonal_term,
        )

    def render(self, cam_poses: torch.Tensor, focal: Number, near: Number, far: Number, styles: torch.Tensor,
               *, return_eikonal: bool = False, rows: Optional[Tuple[int, int]] = None) -> RayRenderOutput:
        """The same render, channels last per ray, with the quadrature weights and the depths.

        rows=(start, stop) renders only those pixel rows of the out_im_res^2 image (H = stop - start in
        every output): large surface renders go row band by row band to bound memory."""
        cam_poses, focal, near, far = self._check_inputs(cam_poses, focal, near, far, styles)
        if return_eikonal and not torch.is_grad_enabled():
            raise ValueError("VolumeFeatureRenderer: return_eikonal=True needs gradient mode (the eikonal term "
                             "is a gradient); call it outside torch.no_grad()/inference_mode()")
        return_eikonal = return_eikonal and self.sdf   # NeRF mode has no SDF to differentiate (official: None)
        samples = self._samples(cam_poses, focal, near, far, jitter=self.perturb > 0,
                                stratified=not self.offset_sampling, track_points=return_eikonal,
                                rows=self._check_rows(rows))
        raw, sdf = self.network.forward_raw_and_sdf(samples.net_points, samples.viewdirs.unsqueeze(-2), styles)
        eikonal = self._eikonal_term(sdf, samples.points) if return_eikonal else None

        # z_vals and |d| are constants of the quadrature (the op's contract); gradients reach the
        # points through the network instead.
        z_vals = samples.z_vals.detach()
        ray_norm = torch.linalg.vector_norm(samples.rays_d, dim=-1).detach()  # [B, H, W]
        if raw.dtype != z_vals.dtype:
            raw = raw.to(z_vals.dtype)  # autocast: the packed op wants one dtype
        rgb, features, weights = self._integrate(raw, z_vals, ray_norm)
        xyz = mask = None
        if self.return_xyz:
            # sum_i w_i (o + z_i d) without materialising the weighted points
            xyz = (samples.rays_o * weights.sum(-1, keepdim=True)
                   + samples.rays_d * (weights * z_vals).sum(-1, keepdim=True))  # [B, H, W, 3]
            mask = weights[..., -1:]  # [B, H, W, 1] background probability
        return RayRenderOutput(
            rgb=rgb,
            features=features,
            sdf=raw[..., 3:4] if self.return_sdf else None,
            mask=mask,
            xyz=xyz,
            eikonal_term=eikonal,
            weights=weights,
            z_vals=z_vals,
        )

    def _integrate(self, raw: torch.Tensor, z_vals: torch.Tensor, ray_norm: torch.Tensor):
        """The quadrature of raw [B, H, W, S, 4 + C]: (rgb [B, H, W, 3], features or None, weights)."""
        if self.sdf:
            return sdf_volume_render_raw(raw, z_vals, ray_norm, self.sigmoid_beta,
                                         force_background=self.force_background, impl=self.impl)
        # NeRF mode (official --no_sdf): the sdf channel is a density logit, sigma = softplus(raw + noise)
        logit = raw[..., 3]
        if self.raw_noise_std > 0:
            logit = logit + torch.randn_like(logit) * self.raw_noise_std
        features = raw[..., 4:] if raw.shape[-1] > 4 else None
        return density_volume_render(F.softplus(logit), raw[..., :3], features, z_vals, ray_norm,
                                     rgb_activation="sigmoid_pm1", force_background=self.force_background,
                                     impl=self.impl)

    def mlp_init_pass(self, cam_poses: torch.Tensor, focal: Number, near: Number, far: Number,
                      styles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sphere initialisation (STYLESDF.md 4.1): SDF at stratified samples along the rays and its
        target |x| - (far - near)/4 (a world sphere of radius 0.06, 0.5 after normalisation).

        Returns (sdf [B, H, W, S], target [B, H, W, S]); the loss is L1 between them. Always
        stratified with jitter (on the renderer's t_vals, as the official), whatever perturb says.
        """
        if not self.sdf:
            raise ValueError("VolumeFeatureRenderer.mlp_init_pass: the sphere initialisation fits an SDF; this "
                             "renderer is in NeRF density mode (sdf=False)")
        cam_poses, focal, near, far = self._check_inputs(cam_poses, focal, near, far, styles)
        samples = self._samples(cam_poses, focal, near, far, jitter=True, stratified=True, track_points=False)
        sdf = self.network.sdf(samples.net_points, styles).squeeze(-1)  # colour branch not needed
        radius = ((far - near) / 4).unsqueeze(-1)  # [B, 1, 1, 1]
        target = torch.linalg.vector_norm(samples.points.detach(), dim=-1) - radius  # [B, H, W, S]
        return sdf, target

    # --- internals --------------------------------------------------------------------------------

    def set_n_samples(self, n_samples: int) -> None:
        """Changes the samples per ray (e.g. 64 for videos, 128 for surfaces, as the official scripts do);
        the weights do not depend on it."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"VolumeFeatureRenderer.set_n_samples: n_samples must be an int >= 1, got {n_samples!r}")
        self.n_samples = n_samples
        self.t_vals = make_t_vals(n_samples, self.offset_sampling, device=self.t_vals.device)

    def _check_rows(self, rows) -> Optional[Tuple[int, int]]:
        if rows is None:
            return None
        if (not isinstance(rows, (tuple, list)) or len(rows) != 2
                or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows)
                or not 0 <= rows[0] < rows[1] <= self.out_im_res):
            raise ValueError(f"VolumeFeatureRenderer: rows must be (start, stop) with 0 <= start < stop <= "
                             f"{self.out_im_res}, got {rows!r}")
        return tuple(rows)

    def _samples(self, cam_poses, focal, near, far, *, jitter: bool, stratified: bool,
                 track_points: bool, rows: Optional[Tuple[int, int]] = None) -> _Samples:
        # cam_poses [B, 3, 4], focal/near/far [B, 1, 1]
        i, j, t_vals = self._grid_constants(cam_poses.dtype)
        if rows is not None:
            i, j = i[:, rows[0]:rows[1]], j[:, rows[0]:rows[1]]   # [1, rows, W]
        rays_o, rays_d, dirs = camera_rays(cam_poses, focal, i, j, self.out_im_res)
        viewdirs = dirs if self.static_viewdirs else rays_d
        viewdirs = viewdirs / torch.linalg.vector_norm(viewdirs, dim=-1, keepdim=True)
        ray_shape = rays_d.shape[:-1] + (1,)  # [B, H, W, 1]
        near_r, far_r = near.unsqueeze(-1).expand(ray_shape), far.unsqueeze(-1).expand(ray_shape)
        # The official init pass takes midpoint bins of the renderer's own t_vals, also when they are
        # the offset ones (the last bin then ends at z_{S-1}, not at far); so do we.
        z_vals = sample_depths(near_r, far_r, t_vals, perturb=1.0 if jitter else 0.0,
                               offset_sampling=not stratified)  # [B, H, W, S]
        points = rays_o.unsqueeze(-2) + rays_d.unsqueeze(-2) * z_vals.unsqueeze(-1)  # [B, H, W, S, 3]
        if track_points and not points.requires_grad:
            points.requires_grad_(True)  # a leaf: the eikonal term differentiates w.r.t. it
        net_points = points
        if self.z_normalize:
            # world ball of radius (far - near)/2 -> unit ball; part of d sdf / d world point
            net_points = points * (2 / (far_r - near_r)).unsqueeze(-1)
        return _Samples(rays_o, rays_d, viewdirs, z_vals, points, net_points)

    def _grid_constants(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(i, j, t_vals) in dtype: the buffers (float32, the official values) for float32 renders,
        recomputed for float64 ones (buffers cast by .double() would keep float32 rounding)."""
        if dtype == torch.float32 and self.t_vals.dtype == torch.float32:
            return self.i, self.j, self.t_vals
        i, j = pixel_grid(self.out_im_res, dtype=dtype, device=self.t_vals.device)
        return i, j, make_t_vals(self.n_samples, self.offset_sampling, dtype=dtype, device=self.t_vals.device)

    @staticmethod
    def _eikonal_term(sdf: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # sdf [B, H, W, S, 1], points [B, H, W, S, 3] -> d sdf / d points, kept in the graph so the
        # eikonal loss trains the network (double backward through the SIREN)
        return torch.autograd.grad(sdf, points, grad_outputs=torch.ones_like(sdf), create_graph=True)[0]

    def _check_inputs(self, cam_poses, focal, near, far, styles):
        name = "VolumeFeatureRenderer"
        if not isinstance(cam_poses, torch.Tensor) or cam_poses.dim() != 3 or tuple(cam_poses.shape[1:]) != (3, 4):
            got = tuple(cam_poses.shape) if isinstance(cam_poses, torch.Tensor) else type(cam_poses).__name__
            raise ValueError(f"{name}: cam_poses must be camera-to-world matrices [B, 3, 4], got {got}")
        batch = cam_poses.shape[0]
        if not isinstance(styles, torch.Tensor) or tuple(styles.shape) != (batch, self.style_dim):
            got = tuple(styles.shape) if isinstance(styles, torch.Tensor) else type(styles).__name__
            raise ValueError(f"{name}: styles must be [B, style_dim] = [{batch}, {self.style_dim}], got {got}")
        device = self.device
        # Rays and depths in float64 for a float64 module, else float32 (as the official's rays.float();
        # the quadrature op takes float32/float64 depths only).
        dtype = torch.float64 if self.network.pts_linears[0].weight.dtype == torch.float64 else torch.float32
        for label, tensor in (("cam_poses", cam_poses), ("styles", styles)):
            if tensor.device != device:
                raise ValueError(f"{name}: {label} is on {tensor.device} but the renderer is on {device}")
        cam_poses = cam_poses.to(dtype)
        scalars = [_per_batch(name, label, value, batch, dtype, device)
                   for label, value in (("focal", focal), ("near", near), ("far", far))]
        focal, near, far = scalars
        # Checked on the CPU only: on a GPU the comparison would cost a device sync per render.
        if near.device.type == "cpu" and not bool((far > near).all()):
            raise ValueError(f"{name}: far must be greater than near for every camera")
        return cam_poses, focal, near, far


def _per_batch(op: str, label: str, value: Number, batch: int, dtype, device) -> torch.Tensor:
    """A number, or a tensor of 1 or B values ([B, 1, 1], [B], ...) -> [B, 1, 1]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((batch, 1, 1), float(value), dtype=dtype, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {label} must be a number or a tensor [B, 1, 1], got {type(value).__name__}")
    if value.numel() not in (1, batch):
        raise ValueError(f"{op}: {label} must have 1 or B = {batch} values ([B, 1, 1]), got shape {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{op}: {label} is on {value.device} but the renderer is on {device}")
    return value.to(dtype).reshape(-1, 1, 1).expand(batch, 1, 1)


def _to_nchw(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # [B, H, W, C] -> [B, C, H, W], contiguous as the official
    return None if tensor is None else tensor.permute(0, 3, 1, 2).contiguous()

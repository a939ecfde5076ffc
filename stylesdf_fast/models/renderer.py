"""StyleSDF's volume renderer `VolumeFeatureRenderer`: rays and samples of a camera, the FiLM-SIREN
network on the samples, and the quadrature into an image, its features, and the SDF outputs.

    w_r, camera --renderer--> rgb [B, 3, 64, 64] in [-1, 1], features [B, 256, 64, 64], sdf, mask, xyz, eikonal

Attribute names reproduce the official keys: a module with `style = make_renderer_mapping()` and
`renderer = VolumeFeatureRenderer()` has exactly the 65 keys of an official stage-1 checkpoint's
`g_ema` (docs/official.md section 2); the ray grid and the sample positions are non-persistent buffers.
The per-ray quadrature (SDF -> density -> alpha -> weights -> colour and feature sums) is the fused
op `ops.sdf_volume_render_raw`; the network (siren.py) and the rays (rays.py) live beside it.
Legend: B batch, H/W image height/width (H = W = out_im_res), S samples per ray, C feature channels.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.sdf_volume_render import density_volume_render, sdf_volume_render_raw
from .impl import check_impl, set_impl
from .mapping import MappingLinear, RendererMapping, make_renderer_mapping
from .rays import camera_rays, make_t_vals, pixel_grid, sample_depths
from .recompute import linear_recomputing_input
from .siren import FiLMSiren, LinearLayer, SirenGenerator

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

SIGMOID_BETA_INIT = 0.1  # initial SDF-to-density temperature (docs/official.md section 1.5)
Number = Union[float, int, torch.Tensor]


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
    """FiLM-SIREN SDF volume renderer, one image of out_im_res^2 rays per latent (docs/official.md sections 1.4-1.6).

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
        self._impl = check_impl("VolumeFeatureRenderer", impl)

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
                                      output_features=output_features, impl=self._impl)

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        # "reference" runs the official formulas op by op (the oracle); otherwise the quadrature and each
        # FiLM-SIREN layer's modulation + sine are fused ops. set_impl reaches every layer of the network.
        self._impl = check_impl("VolumeFeatureRenderer", value)
        set_impl(self.network, value)

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
        """Sphere initialisation (docs/official.md section 4.1): SDF at stratified samples along the rays and its
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

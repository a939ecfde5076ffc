"""The StyleSDF generator: renderer mapping (`style`), SDF volume renderer (`renderer`) and, for the
full pipeline, the StyleGAN2 decoder (`decoder`), with the official call signature, and
`load_generator` for official checkpoints and ours."""
from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .decoder import Decoder
from .stylegan2 import stylegan2_channels
from .renderer import VolumeFeatureRenderer, make_renderer_mapping

Latents = Union[torch.Tensor, Sequence[torch.Tensor]]


class Generator(nn.Module):
    """z [B, 256] -> renderer mapping -> w_r -> 64x64 SDF volume render (thumbnail + 256 features) ->
    StyleGAN2 decoder (styles from its own mapping of w_r) -> image [B, 3, size, size].

    State-dict keys and shapes equal the official `g_ema` (docs/official.md section 2): 65 keys for the
    renderer alone (full_pipeline=False), 166 (size 1024) or 146 (size 512) for the full model.
    Renderer options keep their official meaning (see VolumeFeatureRenderer).
    """

    def __init__(self, size: int = 1024, *, full_pipeline: bool = True, style_dim: int = 256,
                 channel_multiplier: int = 2, lr_mapping: float = 0.01, renderer_spatial_output_dim: int = 64,
                 depth: int = 8, width: int = 256, n_samples: int = 24, perturb: float = 1.0,
                 offset_sampling: bool = True, z_normalize: bool = True, static_viewdirs: bool = False,
                 force_background: bool = False, sdf: bool = True, raw_noise_std: float = 0.0,
                 channel_max: int = 512, impl: str = "auto"):
        super().__init__()
        self.size = size
        self.full_pipeline = full_pipeline
        self.style_dim = style_dim
        self.style = make_renderer_mapping(style_dim, impl=impl)
        self.renderer = VolumeFeatureRenderer(
            style_dim, renderer_spatial_output_dim, depth=depth, width=width, n_samples=n_samples, perturb=perturb,
            offset_sampling=offset_sampling, z_normalize=z_normalize, static_viewdirs=static_viewdirs,
            force_background=force_background, output_features=full_pipeline, sdf=sdf, raw_noise_std=raw_noise_std,
            impl=impl,
        )
        self.decoder = (Decoder(size, style_dim, channel_multiplier, lr_mapping, feature_channels=width,
                                in_size=renderer_spatial_output_dim, channel_max=channel_max, impl=impl)
                        if full_pipeline else None)

    # --- latents ----------------------------------------------------------------------------------

    @torch.no_grad()
    def mean_latent(self, n_latent: int, device: Union[str, torch.device, None] = None) -> List[Optional[torch.Tensor]]:
        """[mean_r [1, 256], mean_d [1, 512] or None]: the truncation centres, from n_latent z's.

        mean_d is the mean of the decoder mapping over the mapped samples (the official fix), not the
        mapping of mean_r."""
        if n_latent < 1:
            raise ValueError(f"Generator.mean_latent: n_latent must be >= 1, got {n_latent}")
        device = device if device is not None else self.renderer.device
        w_r = self.style(torch.randn(n_latent, self.style_dim, device=device))
        mean_d = self.decoder.mean_latent(w_r) if self.decoder is not None else None
        return [w_r.mean(0, keepdim=True), mean_d]

    def renderer_latents(self, styles: Latents, truncation: float = 1.0, truncation_latent=None,
                         input_is_latent: bool = False) -> List[torch.Tensor]:
        """w_r for each style: mapped from z unless input_is_latent, then truncated toward mean_r."""
        styles = [styles] if isinstance(styles, torch.Tensor) else list(styles)
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"Generator: styles must be a list of 1 or 2 tensors [B, {self.style_dim}], got {len(styles)}")
        for i, style in enumerate(styles):
            if not isinstance(style, torch.Tensor) or style.dim() != 2 or style.shape[1] != self.style_dim:
                got = tuple(style.shape) if isinstance(style, torch.Tensor) else type(style).__name__
                raise ValueError(f"Generator: styles[{i}] must be [B, {self.style_dim}], got {got}")
        latents = styles if input_is_latent else [self.style(s) for s in styles]
        if truncation < 1:
            mean_r = _renderer_mean(truncation_latent)
            latents = [mean_r + truncation * (w - mean_r) for w in latents]
        return latents

    # --- forward ----------------------------------------------------------------------------------

    def forward(self, styles: Latents, cam_poses: torch.Tensor, focals, near=0.88, far=1.12, truncation: float = 1,
                truncation_latent=None, input_is_latent: bool = False, noise=None, randomize_noise: bool = True,
                return_latents: bool = False, return_xyz: bool = False, return_sdf: bool = False,
                return_eikonal: bool = False, inject_index: Optional[int] = None) -> Tuple:
        """The official call: styles = [z] or [z1, z2] ([B, 256] each; w_r with input_is_latent),
        cam_poses [B, 3, 4], focals/near/far [B, 1, 1] (or numbers).

        Returns (image [B, 3, size, size] or None without a decoder, thumbnail [B, 3, 64, 64]) plus,
        in this order, xyz [B, 3, 64, 64] if return_xyz, sdf [B, 64, 64, S, 1] if return_sdf,
        eikonal [B, 64, 64, S, 3] if return_eikonal, mask [B, 1, 64, 64] if return_xyz; or
        (image, W+ latents [B, n_latent, 512]) when return_latents. The renderer uses the first style;
        the decoder mixes both (inject_index, random when None). truncation < 1 pulls w_r toward
        truncation_latent[0] and the decoder styles toward truncation_latent[1] (mean_latent()).
        """
        latents = self.renderer_latents(styles, truncation, truncation_latent, input_is_latent)
        with _renderer_outputs(self.renderer, xyz=return_xyz, sdf=return_sdf):
            rendered = self.renderer(cam_poses, focals, near, far, latents[0], return_eikonal=return_eikonal)
        image, decoder_latent = None, None
        if self.decoder is not None:
            image, decoder_latent = self.decoder(
                rendered.features, latents, return_latents=return_latents, inject_index=inject_index,
                truncation=truncation, truncation_latent=truncation_latent, noise=noise,
                randomize_noise=randomize_noise,
            )
        if return_latents:
            return image, decoder_latent
        out = (image, rendered.rgb)
        if return_xyz:
            out += (rendered.xyz,)
        if return_sdf:
            out += (rendered.sdf,)
        if return_eikonal:
            out += (rendered.eikonal_term,)
        if return_xyz:
            out += (rendered.mask,)
        return out


def _renderer_mean(truncation_latent) -> torch.Tensor:
    if isinstance(truncation_latent, (list, tuple)) and len(truncation_latent) >= 1 and truncation_latent[0] is not None:
        return truncation_latent[0]
    if isinstance(truncation_latent, torch.Tensor):
        return truncation_latent
    raise ValueError("Generator: truncation < 1 needs truncation_latent = g.mean_latent(n) ([mean_r, mean_d])")


@contextlib.contextmanager
def _renderer_outputs(renderer: VolumeFeatureRenderer, *, xyz: bool, sdf: bool):
    """Asks the renderer for xyz/mask and sdf for one call (they are options of the official renderer)."""
    saved = renderer.return_xyz, renderer.return_sdf
    renderer.return_xyz, renderer.return_sdf = saved[0] or xyz, saved[1] or sdf
    try:
        yield
    finally:
        renderer.return_xyz, renderer.return_sdf = saved


# --- loading checkpoints --------------------------------------------------------------------------

def generator_config_from_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """Generator constructor arguments implied by an official-layout g_ema state_dict."""
    trunk = "renderer.network.pts_linears.0.weight"
    if "style.0.weight" not in state or trunk not in state:
        raise ValueError(f"not a StyleSDF generator state_dict: it lacks 'style.0.weight' / '{trunk}'")
    full_pipeline = any(key.startswith("decoder.") for key in state)
    config: Dict[str, object] = {
        "full_pipeline": full_pipeline,
        "sdf": "renderer.sigmoid_beta" in state,   # absent in the official NeRF mode (--no_sdf)
        "style_dim": state["style.0.weight"].shape[1],
        "width": state["renderer.network.pts_linears.0.weight"].shape[0],
        "depth": len({k.split(".")[3] for k in state if k.startswith("renderer.network.pts_linears.")}),
    }
    if full_pipeline:
        to_rgbs = {k.split(".")[2] for k in state if k.startswith("decoder.to_rgbs.")}
        in_size = state["decoder.noises.noise_0"].shape[-1]
        config["size"] = in_size * 2 ** len(to_rgbs)
        config["renderer_spatial_output_dim"] = in_size
        conv1_channels = state["decoder.conv1.conv.weight"].shape[1]
        if conv1_channels < stylegan2_channels()[in_size]:   # a model with capped channels (ours)
            config["channel_max"] = conv1_channels
    return config


def load_generator(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", *,
                   impl: str = "auto") -> Generator:
    """g_ema of an official StyleSDF checkpoint ({'g', 'd', 'g_ema'}) or one of ours, in eval mode,
    configured as the official generate script configures it: static view directions,
    force_background, no depth jitter. Output size and decoder presence come from the keys."""
    state, training_config = _generator_state(path)
    config = generator_config_from_state_dict(state)
    # ours: the samples per ray (and a renderer-only model's resolution) are not in the weights; the
    # training config stored beside them has them
    if "n_samples" in training_config:
        config["n_samples"] = int(training_config["n_samples"])
    if "renderer_size" in training_config:
        config["renderer_spatial_output_dim"] = int(training_config["renderer_size"])
    generator = Generator(**config, perturb=0.0, static_viewdirs=True, force_background=True, impl=impl)
    missing, unexpected = _key_mismatch(generator.state_dict(), state)
    if missing or unexpected:
        raise ValueError(
            f"{os.fspath(path)} is not a StyleSDF generator checkpoint of a known layout: "
            f"{len(missing)} missing keys (first: {missing[:5]}), {len(unexpected)} unexpected keys "
            f"(first: {unexpected[:5]})"
        )
    generator.load_state_dict(state, strict=True)
    return generator.to(device).eval()


def _generator_state(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, object]]:
    """(g_ema state_dict, our training config or {}) of a checkpoint file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_generator: no such checkpoint file: {os.fspath(path)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (re-raised with the path and the reason)
        raise ValueError(f"load_generator: {os.fspath(path)} could not be read as a torch checkpoint "
                         f"({type(error).__name__}: {error})") from error
    training_config = {}
    if isinstance(checkpoint, dict) and "g_ema" in checkpoint:
        if isinstance(checkpoint.get("config"), dict):
            training_config = checkpoint["config"]
        checkpoint = checkpoint["g_ema"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"load_generator: {os.fspath(path)} holds neither {{'g', 'd', 'g_ema'}} nor a state_dict")
    try:
        generator_config_from_state_dict(checkpoint)
    except ValueError as error:
        raise ValueError(f"load_generator: {os.fspath(path)}: {error}; its first keys: {list(checkpoint)[:5]}") from None
    return checkpoint, training_config


def _key_mismatch(expected: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor]) -> Tuple[List[str], List[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    unexpected += [f"{k} (shape {tuple(given[k].shape)}, expected {tuple(v.shape)})"
                   for k, v in expected.items() if k in given and given[k].shape != v.shape]
    return missing, unexpected

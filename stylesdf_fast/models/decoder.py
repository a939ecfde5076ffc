"""The official StyleSDF 2D StyleGAN2 decoder (`Generator.decoder`): mapping network + upsampling
styled convolutions from the renderer's 64x64 feature map to the full-resolution image.

Attributes and buffers match the official state_dict under the `decoder.` prefix (docs/official.md sections 1.3,
1.8, 2.3), and parameters are created in the official order. Shape legend: B batch, C channels,
H/W height/width, L = n_latent W+ latents, D = decoder style dimension (2 x style_dim = 512).
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .impl import set_impl
from .stylegan2 import (
    BLUR_KERNEL,
    EqualLinear,
    PixelNorm,
    StyledConv,
    ToRGB,
    log2_size,
    stylegan2_channels,
)

MAPPING_LAYERS = 5  # the official decoder mapping has 5 linear layers whatever --n_mlp says
MAX_SIZE = 1024

TruncationLatent = Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]


class Decoder(nn.Module):
    """StyleSDF's StyleGAN2 decoder.

    Args:
        size: output resolution, a power of two in [in_size, 1024] (512 for AFHQ, 1024 for FFHQ).
        style_dim: renderer latent size (256); the decoder styles have 2 x style_dim = 512 dims.
        channel_multiplier: StyleGAN2 channel multiplier (2).
        lr_mapping: learning-rate multiplier of the decoder mapping network (0.01).
        feature_channels: channels of the renderer feature map (renderer width, 256).
        in_size: spatial size of the feature map (renderer_spatial_output_dim, 64).
        channel_max: cap on every layer's channels (512: the official network).
        impl: fused-op implementation, "auto" | "kernel" | "reference".

    Layout: `style` = PixelNorm + 5 EqualLinear (lr_mul, fused lrelu); `conv1` (StyledConv at
    in_size) and `to_rgb1`; per doubling of resolution two StyledConvs (`convs`, the first
    upsampling) and a ToRGB (`to_rgbs`); `noises.noise_k` persistent buffers; `upsamples` empty.
    n_latent = 2 * (log2 size - log2 in_size) + 2 W+ latents: conv1 uses w[0], to_rgb1 w[1], block j
    w[2j+1], w[2j+2] and its ToRGB w[2j+3].
    """

    def __init__(self, size: int, style_dim: int = 256, channel_multiplier: int = 2, lr_mapping: float = 0.01,
                 feature_channels: int = 256, *, in_size: int = 64, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 channel_max: int = 512, impl: str = "auto"):
        super().__init__()
        self.channels = stylegan2_channels(channel_multiplier, channel_max)
        self.log_in_size = log2_size("in_size", in_size, 4, MAX_SIZE)
        self.log_size = log2_size("size", size, in_size, MAX_SIZE)
        if feature_channels < 1 or style_dim < 1:
            raise ValueError(f"feature_channels and style_dim must be positive, got {feature_channels}, {style_dim}")
        self.size = size
        self.in_size = in_size
        self.feature_channels = feature_channels
        self.renderer_style_dim = style_dim
        self.style_dim = style_dim * 2

        self.style = self._make_mapping(style_dim, lr_mapping, impl)
        in_channel = self.channels[in_size]
        self.conv1 = StyledConv(feature_channels, in_channel, 3, self.style_dim, blur_kernel=blur_kernel, impl=impl)
        self.to_rgb1 = ToRGB(in_channel, self.style_dim, upsample=False, impl=impl)

        self.num_layers = (self.log_size - self.log_in_size) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, kept because the official module has it
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = self.noise_resolution(layer_idx)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))

        for log_res in range(self.log_in_size + 1, self.log_size + 1):
            out_channel = self.channels[2**log_res]
            self.convs.append(StyledConv(in_channel, out_channel, 3, self.style_dim, upsample=True,
                                         blur_kernel=blur_kernel, impl=impl))
            self.convs.append(StyledConv(out_channel, out_channel, 3, self.style_dim, blur_kernel=blur_kernel,
                                         impl=impl))
            self.to_rgbs.append(ToRGB(out_channel, self.style_dim, blur_kernel=blur_kernel, impl=impl))
            in_channel = out_channel

        self.n_latent = (self.log_size - self.log_in_size) * 2 + 2
        set_impl(self, impl)

    def _make_mapping(self, style_dim: int, lr_mapping: float, impl: str) -> nn.Sequential:
        layers = [PixelNorm(), EqualLinear(style_dim, self.style_dim, lr_mul=lr_mapping, activation="fused_lrelu",
                                           impl=impl)]
        for _ in range(MAPPING_LAYERS - 1):
            layers.append(EqualLinear(self.style_dim, self.style_dim, lr_mul=lr_mapping, activation="fused_lrelu",
                                      impl=impl))
        return nn.Sequential(*layers)

    def noise_resolution(self, layer_idx: int) -> int:
        """Resolution of noise k: in_size for k = 0, then two per resolution (64, 128, 128, 256, ...)."""
        return 2 ** ((layer_idx + 2 * self.log_in_size + 1) // 2)

    # --- latents ----------------------------------------------------------------------------------

    def get_latent(self, renderer_latent: torch.Tensor) -> torch.Tensor:
        """Decoder mapping: w_r [B, style_dim] -> w [B, D]."""
        return self.style(renderer_latent)

    @torch.no_grad()
    def mean_latent(self, renderer_latent: torch.Tensor) -> torch.Tensor:
        """Truncation centre of the decoder: mean over samples of style(w_r); w_r [N, style_dim] -> [1, D].

        The mean is taken over the mapped samples (the official 2022-03-09 fix), not the mapping of
        the mean w_r. `Generator.mean_latent` passes the renderer's N mapped z's here.
        """
        return self.style(renderer_latent).mean(0, keepdim=True)

    def noise_list(self, randomize_noise: bool = True) -> List[Optional[torch.Tensor]]:
        """num_layers noise maps: None (fresh N(0, 1) each call) or the stored buffers."""
        if randomize_noise:
            return [None] * self.num_layers
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def styles_and_noise_forward(self, styles: Sequence[torch.Tensor], noise=None, inject_index: Optional[int] = None,
                                 truncation: float = 1.0, truncation_latent: Optional[TruncationLatent] = None,
                                 input_is_latent: bool = False, randomize_noise: bool = True,
                                 ) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        """W+ latent [B, L, D] and the noise list, in the official order of operations.

        styles: 1 or 2 tensors [B, style_dim] (w_r; mapped here) or, with input_is_latent, [B, D]
        (or a single [B, L, D]). Truncation (truncation < 1) pulls every mapped style toward the
        decoder mean: w <- mean_d + truncation * (w - mean_d). Two styles are mixed at inject_index
        (uniform in [1, L - 1] via Python's `random`, as the official, when None).
        """
        styles = self._check_styles(styles, input_is_latent)
        noise = self._check_noise(noise, randomize_noise)
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1:
            mean = self._decoder_mean(truncation_latent)
            styles = [mean + truncation * (style - mean) for style in styles]
        return self._broadcast_and_mix(styles, inject_index), noise

    def _broadcast_and_mix(self, styles: List[torch.Tensor], inject_index: Optional[int]) -> torch.Tensor:
        if len(styles) < 2:
            style = styles[0]
            return style if style.dim() == 3 else style.unsqueeze(1).repeat(1, self.n_latent, 1)
        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        elif not 0 <= inject_index <= self.n_latent:
            raise ValueError(f"Decoder: inject_index must be in [0, {self.n_latent}], got {inject_index}")
        latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
        latent2 = styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
        return torch.cat([latent, latent2], 1)

    @staticmethod
    def _decoder_mean(truncation_latent: Optional[TruncationLatent]) -> torch.Tensor:
        """mean_d from a tensor [1, D] or the official pair [mean_r, mean_d] (index 1 is used)."""
        if truncation_latent is None:
            raise ValueError("Decoder: truncation < 1 needs truncation_latent (mean_d [1, D] or [mean_r, mean_d])")
        if isinstance(truncation_latent, (list, tuple)):
            if len(truncation_latent) != 2 or truncation_latent[1] is None:
                raise ValueError("Decoder: truncation_latent as a sequence must be [mean_r, mean_d] with mean_d set")
            return truncation_latent[1]
        return truncation_latent

    def _check_styles(self, styles, input_is_latent: bool) -> List[torch.Tensor]:
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        if not isinstance(styles, (list, tuple)) or not 1 <= len(styles) <= 2:
            raise TypeError(f"Decoder: styles must be a list of 1 or 2 latent tensors, got {type(styles).__name__}"
                            + (f" of length {len(styles)}" if isinstance(styles, (list, tuple)) else ""))
        dim = self.style_dim if input_is_latent else self.renderer_style_dim
        for i, style in enumerate(styles):
            w_plus = input_is_latent and len(styles) == 1 and style.dim() == 3
            expected = f"[B, {self.n_latent}, {dim}]" if w_plus else f"[B, {dim}]"
            ok = (style.shape[1:] == (self.n_latent, dim)) if w_plus else (style.dim() == 2 and style.shape[1] == dim)
            if not ok:
                raise ValueError(f"Decoder: styles[{i}] must have shape {expected}, got {tuple(style.shape)}")
        if len(styles) == 2 and styles[0].shape[0] != styles[1].shape[0]:
            raise ValueError(f"Decoder: the two styles have batch sizes {styles[0].shape[0]} and {styles[1].shape[0]}")
        return list(styles)

    def _check_noise(self, noise, randomize_noise: bool) -> List[Optional[torch.Tensor]]:
        if noise is None:
            return self.noise_list(randomize_noise)
        if not isinstance(noise, (list, tuple)) or len(noise) != self.num_layers:
            raise ValueError(f"Decoder: noise must be a list of {self.num_layers} tensors [1 or B, 1, H, W] or None")
        return list(noise)

    # --- image ------------------------------------------------------------------------------------

    def forward(self, features: torch.Tensor, styles: Sequence[torch.Tensor], *, return_latents: bool = False,
                inject_index: Optional[int] = None, truncation: float = 1.0,
                truncation_latent: Optional[TruncationLatent] = None, input_is_latent: bool = False,
                noise: Optional[Sequence[Optional[torch.Tensor]]] = None, randomize_noise: bool = True,
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """features [B, feature_channels, in_size, in_size] + styles -> (image [B, 3, size, size], W+ [B, L, D] or None).

        styles, inject_index, truncation, truncation_latent, input_is_latent: see
        styles_and_noise_forward (the renderer-side truncation of w_r happens before, in the
        Generator). noise: a list of num_layers maps (None entries are drawn), or None for all
        drawn (randomize_noise) / the stored buffers (randomize_noise=False).
        The image is the sum of the ToRGB skips (no tanh), trained against images in [-1, 1].
        """
        self._check_features(features)
        latent, noise = self.styles_and_noise_forward(styles, noise, inject_index, truncation, truncation_latent,
                                                      input_is_latent, randomize_noise)
        if latent.shape[0] != features.shape[0]:
            raise ValueError(f"Decoder: features have batch {features.shape[0]} but styles {latent.shape[0]}")

        out = self.conv1(features, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])  # the official rgbd_in skip is always None
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2],
                                                        self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip=skip)
            i += 2
        return skip, (latent if return_latents else None)

    def _check_features(self, features: torch.Tensor) -> None:
        expected = (self.feature_channels, self.in_size, self.in_size)
        if not isinstance(features, torch.Tensor) or features.dim() != 4 or tuple(features.shape[1:]) != expected:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"Decoder: features must have shape [B, {', '.join(map(str, expected))}], got {got}")

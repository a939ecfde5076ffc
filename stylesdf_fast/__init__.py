"""stylesdf_fast: StyleSDF with fused CPU/CUDA kernels.

`stylesdf_fast.ops` holds the kernels (sdf_volume_render, fused_leaky_relu, upfirdn2d, ...), usable on
their own from any NeRF or GAN code; `stylesdf_fast.reference` holds their pure-PyTorch twins;
`stylesdf_fast.models` the StyleSDF networks, which load the official checkpoints
(`stylesdf_fast.load_generator`); `stylesdf_fast.data` the official LMDB dataset format and the built-in
synthetic 3D dataset.
"""
import torch  # noqa: F401  (the compiled extension needs libtorch loaded first)

from . import data, models, ops, reference
from .models import load_generator
from ._extension import KernelFallbackWarning, KernelUnavailableError, status as extension_status

__version__ = "0.1.0"
__all__ = ["ops", "reference", "models", "data", "load_generator", "extension_status", "KernelFallbackWarning", "KernelUnavailableError"]

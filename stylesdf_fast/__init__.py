"""stylesdf_fast: StyleSDF with fused CPU/CUDA kernels.

`stylesdf_fast.ops` holds the kernels (fused_leaky_relu, upfirdn2d, ...), usable on their own from
any NeRF or GAN code; `stylesdf_fast.reference` holds their pure-PyTorch twins.
"""
import torch  # noqa: F401  (the compiled extension needs libtorch loaded first)

from . import ops, reference
from ._extension import KernelFallbackWarning, KernelUnavailableError, status as extension_status

__version__ = "0.1.0"
__all__ = ["ops", "reference", "extension_status", "KernelFallbackWarning", "KernelUnavailableError"]

"""Public ops: validation, dispatch between the compiled kernels and the pure-PyTorch reference,
autograd and fake kernels for torch.compile. Every op takes impl="auto" | "kernel" | "reference"."""
from .film_siren import film_siren
from .fused_leaky_relu import FusedLeakyReLU, fused_leaky_relu
from .sdf_volume_render import (
    VolumeRenderOutput,
    density_volume_render,
    sdf_volume_render,
    sdf_volume_render_raw,
)
from .upfirdn2d import (
    Blur,
    Downsample,
    Upsample,
    blur2d,
    downsample2d,
    make_kernel,
    upfirdn2d,
    upsample2d,
)

__all__ = [
    "film_siren",
    "fused_leaky_relu",
    "FusedLeakyReLU",
    "upfirdn2d",
    "upsample2d",
    "downsample2d",
    "blur2d",
    "make_kernel",
    "Upsample",
    "Downsample",
    "Blur",
    "sdf_volume_render",
    "sdf_volume_render_raw",
    "density_volume_render",
    "VolumeRenderOutput",
]

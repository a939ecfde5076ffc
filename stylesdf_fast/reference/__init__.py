"""Pure-PyTorch twins of every op in stylesdf_fast.ops: same names, same signatures (without impl).
They are the oracle of the tests and the fallback when the compiled extension is unavailable."""
from .film_siren import film_siren
from .fused_leaky_relu import fused_leaky_relu
from .sdf_volume_render import (
    VolumeRenderOutput,
    density_volume_render,
    sdf_volume_render,
    sdf_volume_render_raw,
)
from .upfirdn2d import upfirdn2d

__all__ = ["film_siren", "fused_leaky_relu", "upfirdn2d", "sdf_volume_render", "sdf_volume_render_raw", "density_volume_render", "VolumeRenderOutput"]

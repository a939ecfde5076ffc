"""stylesdf_fast: StyleSDF with fused CPU/CUDA kernels.

`stylesdf_fast.ops` holds the kernels (sdf_volume_render, fused_leaky_relu, upfirdn2d, ...), usable on
their own from any NeRF or GAN code; `stylesdf_fast.reference` holds their pure-PyTorch twins;
`stylesdf_fast.models` the StyleSDF networks, which load the official checkpoints
(`stylesdf_fast.load_generator`); `stylesdf_fast.data` the official LMDB dataset format and the built-in
synthetic 3D dataset; `stylesdf_fast.generation` images, depth, meshes and videos of a trained model
(`stylesdf_fast.generate_images`, `stylesdf_fast.extract_mesh`, ...); `stylesdf_fast.evaluation` FID,
KID and depth consistency. Those two import scikit-image, trimesh and imageio on first use only.
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # Large CPU tensors on transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE, read once when
    # torch starts): a fresh 100 MB activation then costs 50 page faults, not 25,000; the CPU stage-1
    # step at the official shape takes 5.6 s instead of 7.1 s (README, Training, "CPU memory").
    # Set THP_MEM_ALLOC_ENABLE=0 to opt out.
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402,F401  (the compiled extension needs libtorch loaded first)

from . import data, models, ops, reference  # noqa: E402
from .models import load_generator
from ._extension import KernelFallbackWarning, KernelUnavailableError, status as extension_status

__version__ = "0.1.0"

# generation/evaluation names, imported on first access (they pull in scikit-image, trimesh, imageio)
_LAZY = {"generation": None, "evaluation": None, "load_model": "generation", "generate_images": "generation",
         "extract_mesh": "generation", "render_surface": "generation", "save_mesh": "generation",
         "write_video": "generation"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'stylesdf_fast' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = [*_LAZY, "ops", "reference", "models", "data", "load_generator", "extension_status", "KernelFallbackWarning", "KernelUnavailableError"]

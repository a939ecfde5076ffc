"""Finding the compiled extension and deciding, per call, between kernel and reference.

Nothing here compiles anything: `stylesdf_fast._C` is built ahead of time by `pip install .`.
A source checkout without its own build (Python started in the clone's root after `pip install .`)
uses the installed extension when it was built from the same csrc/ sources. When the extension is
missing, or was built without CUDA, `impl="auto"` falls back to the pure-PyTorch reference and warns
once per reason, saying why and what fixes it (STYLESDF_FAST_REQUIRE_KERNELS=1 makes that an error),
while `impl="kernel"` raises.

Environment:
  STYLESDF_FAST_REQUIRE_KERNELS=1   a fallback of impl="auto" raises instead of warning
  STYLESDF_FAST_DISABLE_KERNELS=1   behave as if the extension were absent (debugging, comparisons)
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ._sources import read_sidecar, sources_fingerprint

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
    path: Optional[str] = None  # the shared library in use (None when not loaded)

    def describe(self) -> str:
        """One line for logs: which kernels run, from where, or the reason they do not."""
        if not self.loaded:
            return f"stylesdf_fast kernels: unavailable, the pure-PyTorch reference runs instead: {self.reason}"
        devices = "C++ CPU and CUDA" if self.cuda else "C++ CPU (no CUDA)"
        return f"stylesdf_fast kernels: {devices} from {self.path} (built against torch {self.built_with_torch})"


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
    path, reason = _import_extension()
    if path is None:
        return ExtensionStatus(False, False, None, reason)
    info = _parse_build_info(torch.ops.stylesdf_fast._build_info())
    built_with = info.get("torch", "unknown")
    if _release(built_with) != _release(torch.__version__):
        reason = (
            f"stylesdf_fast._C ({path}) was built against torch {built_with} but torch {torch.__version__} is "
            f"running; {REINSTALL_HINT}"
        )
        return ExtensionStatus(False, False, built_with, reason)
    return ExtensionStatus(True, info.get("cuda") == "1", built_with, "", path)


# --- finding the shared library ----------------------------------------------------------------------
# After `pip install .`, Python started in the clone's root imports the source tree (the current
# directory comes first on sys.path), which holds no compiled _C. Such a checkout then loads the
# installed copy's _C, provided it was built from the same csrc/ (the fingerprint setup.py writes
# beside it), so the schemas and kernels match the Python code that calls them.

PACKAGE_DIR = Path(__file__).resolve().parent


def _import_extension() -> Tuple[Optional[str], str]:
    """(path of the loaded stylesdf_fast._C, "") or (None, the reason it could not be loaded)."""
    try:
        from stylesdf_fast import _C
        return _C.__file__, ""
    except ImportError as error:
        own_error = error
    own_files = [p for p in PACKAGE_DIR.iterdir() if _is_extension_file(p.name)]
    if own_files:   # present but unloadable: typically built against another torch
        return None, f"{own_files[0]} could not be loaded ({own_error}); {REINSTALL_HINT}"
    checkout = _source_checkout_root()
    if checkout is None:
        return None, f"the package in {PACKAGE_DIR} has no compiled extension (_C); {REINSTALL_HINT}"
    return _load_installed_for_checkout(checkout)


def _source_checkout_root() -> Optional[Path]:
    """The repository root when this package is imported from a source checkout, else None."""
    root = PACKAGE_DIR.parent
    return root if (root / "csrc").is_dir() and (root / "setup.py").is_file() else None


def _installed_extensions() -> List[Path]:
    """Compiled _C files of every installed stylesdf_fast distribution other than this checkout."""
    from importlib import metadata

    found = []
    for dist in metadata.distributions(name="stylesdf_fast"):
        for entry in dist.files or ():
            if entry.parent.as_posix() == "stylesdf_fast" and _is_extension_file(entry.name):
                path = Path(dist.locate_file(entry)).resolve()
                if path.is_file() and path.parent != PACKAGE_DIR and path not in found:
                    found.append(path)
    return found


def _is_extension_file(name: str) -> bool:
    return any(name == "_C" + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _load_installed_for_checkout(checkout: Path) -> Tuple[Optional[str], str]:
    candidates = _installed_extensions()
    fix = f"run `pip install .` in {checkout}"
    if not candidates:
        return None, (f"stylesdf_fast is imported from the source checkout {checkout}, which has no compiled "
                      f"extension, and no installed copy of stylesdf_fast was found; {fix}")
    wanted = sources_fingerprint(checkout / "csrc")
    for path in candidates:
        if read_sidecar(path) == wanted:
            _import_from_file(path)
            return str(path), ""
    return None, (f"stylesdf_fast is imported from the source checkout {checkout}, which has no compiled extension, "
                  f"and the installed extension ({candidates[0]}) was built from other kernel sources than "
                  f"{checkout / 'csrc'} (changed since it was installed); {fix} again")


def _import_from_file(path: Path) -> None:
    """Loads `path` as stylesdf_fast._C (its init function is PyInit__C whatever its folder)."""
    spec = importlib.util.spec_from_file_location("stylesdf_fast._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["stylesdf_fast._C"] = module


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

"""The one switch between our kernels and the pure-PyTorch reference ops, for every module.

Each module that calls a fused op keeps an `impl` attribute ("auto", "kernel" or "reference") and
decides from it alone what it runs; `set_impl(module, impl)` sets it on a whole tree (or any part of
one), so a subtree can never be left half switched.
"""
from __future__ import annotations

from torch import nn

from .._extension import IMPLS

__all__ = ["IMPLS", "check_impl", "set_impl"]


def check_impl(name: str, impl: str) -> str:
    """impl, or a ValueError naming `name` when it is not one of IMPLS."""
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl must be one of {IMPLS}, got {impl!r}")
    return impl


def set_impl(module: nn.Module, impl: str) -> nn.Module:
    """Sets the implementation of every module in `module` (itself included) that has one."""
    check_impl(type(module).__name__, impl)
    for child in module.modules():
        if hasattr(child, "impl"):
            child.impl = impl
    return module

"""Argument checks shared by the whole package: clear TypeError/ValueError messages that name the
function, the argument, what was expected and what came.

`fn` is the public name the user called ("upfirdn2d", "generate_camera_params", ...).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["real", "positive", "count", "int_pair", "check_number", "check_tensor", "check_same_device", "to_numpy"]


# --- numbers -------------------------------------------------------------------------------------------

def real(fn: str, name: str, value, *, low: Optional[float] = None, low_inclusive: bool = True,
         high: Optional[float] = None, allow_tensor: bool = False) -> float:
    """A finite real number (not a bool; a one-element tensor or array too when allow_tensor),
    optionally low <= value (low < value when not low_inclusive) and value < high."""
    if allow_tensor and _one_element(value):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a real number (or a one-element tensor)" if allow_tensor else "a real number"
        raise TypeError(f"{fn}: {name} must be {kind}, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{fn}: {name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{fn}: {name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    if high is not None and value >= high:
        raise ValueError(f"{fn}: {name} must be < {high}, got {value}")
    return value


def _one_element(value) -> bool:
    return (isinstance(value, torch.Tensor) and value.numel() == 1) or (isinstance(value, np.ndarray) and value.size == 1)


def positive(fn: str, name: str, value, *, allow_tensor: bool = False) -> float:
    """A finite real number > 0."""
    return real(fn, name, value, low=0.0, low_inclusive=False, allow_tensor=allow_tensor)


def count(fn: str, name: str, value, *, minimum: int) -> int:
    """An int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def int_pair(fn: str, name: str, value: Union[int, Sequence[int]], *, minimum: int) -> Tuple[int, int]:
    """An int or an (x, y) pair of ints, each >= minimum."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints (x, y), got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return pair


def check_number(fn: str, name: str, value, *, minimum: float, inclusive: bool) -> float:
    """A real number >= minimum (> minimum when not inclusive); infinities pass (the ops accept them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    ok = value >= minimum if inclusive else value > minimum
    if not ok:
        raise ValueError(f"{fn}: {name} must be {'>=' if inclusive else '>'} {minimum}, got {value}")
    return float(value)


# --- tensors -------------------------------------------------------------------------------------------

def check_tensor(fn: str, name: str, value, *, floating: bool = True) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got dtype {value.dtype}")


def check_same_device(fn: str, first: Tuple[str, torch.Tensor], *others: Tuple[str, torch.Tensor]) -> None:
    name0, tensor0 = first
    for name, tensor in others:
        if tensor is not None and tensor.device != tensor0.device:
            raise ValueError(f"{fn}: {name} is on device {tensor.device} but {name0} is on device {tensor0.device}; "
                             "move them to the same device")


def to_numpy(value) -> np.ndarray:
    """A tensor (detached, on the CPU) or anything array-like as a numpy array."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

"""Argument checks shared by the public ops: clear ValueError/TypeError messages that name the
argument, what was expected and what came (DESIGN.md item 5)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch


def check_tensor(op: str, name: str, value, *, floating: bool = True) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {value.dtype}")


def check_same_device(op: str, first: Tuple[str, torch.Tensor], *others: Tuple[str, torch.Tensor]) -> None:
    name0, tensor0 = first
    for name, tensor in others:
        if tensor is not None and tensor.device != tensor0.device:
            raise ValueError(f"{op}: {name} is on device {tensor.device} but {name0} is on device {tensor0.device}; move them to the same device")


def int_pair(op: str, name: str, value: Union[int, Sequence[int]], *, minimum: int) -> Tuple[int, int]:
    """An int or an (x, y) pair of ints, each >= minimum."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints (x, y), got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return pair


def check_number(op: str, name: str, value, *, minimum: float, inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    ok = value >= minimum if inclusive else value > minimum
    if not ok:
        raise ValueError(f"{op}: {name} must be {'>=' if inclusive else '>'} {minimum}, got {value}")
    return float(value)

"""Weight initialisations shared by the renderer's layers (the official distributions)."""
from __future__ import annotations

import math

import torch
from torch import nn

LEAKY_SLOPE = 0.2  # negative slope of every leaky ReLU and of the Kaiming inits


def uniform(shape, bound: float) -> torch.Tensor:
    """U(-bound, bound) of the given shape."""
    return torch.empty(shape).uniform_(-bound, bound)


def kaiming_leaky(out_dim: int, in_dim: int) -> torch.Tensor:
    """N(0, gain^2 / in) with the leaky-ReLU gain sqrt(2 / (1 + 0.2^2)), shape [out, in]."""
    return nn.init.kaiming_normal_(torch.empty(out_dim, in_dim), a=LEAKY_SLOPE, mode="fan_in",
                                   nonlinearity="leaky_relu")


def uniform_bias(out_dim: int, in_dim: int) -> torch.Tensor:
    """U(+-1/sqrt(in)), shape [out] (the official bias init)."""
    return uniform((out_dim,), 1 / math.sqrt(in_dim))

"""The FiLM-SIREN layers' memory trick: the GEMM after a fused layer does not keep that layer's output.

A fused FiLM-SIREN op keeps its input recipe (x_lin, gamma, beta) for its own backward anyway. The
next layer's F.linear would keep the layer output y as well, for its weight gradient. Through
saved-tensor hooks it keeps the recipe instead and recomputes y = film_siren(x_lin, gamma, beta) in
the backward that computes the weight gradient; a pass that computes no weight gradient (the eikonal
autograd.grad to the sample points) recomputes nothing. One [points, width] tensor less per layer.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch.nn import functional as F

from ..ops.film_siren import film_siren

__all__ = ["linear_recomputing_input", "attach_recipe"]

_RECIPE = "_film_siren_recipe"   # attribute of a fused FiLM-SIREN output: (x_lin, gamma, beta, impl)


class _Recompute(NamedTuple):
    recipe: tuple
    shape: torch.Size


def _gemm_weight_gradient_wanted() -> bool:
    """Inside the backward of F.linear (AddmmBackward0 / MmBackward0, weight last among its inputs):
    whether this backward pass computes the weight's gradient, the only use of the saved input.
    True when it cannot tell (private autograd API missing or outside a backward)."""
    try:
        node = torch._C._current_autograd_node()
        weight_path = node.next_functions[-1][0] if node is not None else None
        return weight_path is None or bool(torch._C._will_engine_execute_node(weight_path))
    except (AttributeError, RuntimeError, IndexError):
        return True


def linear_recomputing_input(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(input, weight, bias); when input is a fused FiLM-SIREN output (it carries its recipe),
    the GEMM's saved copy of input is replaced by that recipe and recomputed in the backward: the op
    keeps x_lin for its own backward anyway, so the layer output need not be kept as well (one
    [points, width] tensor less per layer, for the weight gradient only)."""
    recipe = getattr(input, _RECIPE, None)
    if recipe is None or not torch.is_grad_enabled():
        return F.linear(input, weight, bias)
    # plain values only: the hooks may outlive this call, and a reference to input would keep it alive
    pointer, numel, dtype = input.data_ptr(), input.numel(), input.dtype

    def pack(tensor: torch.Tensor):
        if tensor.data_ptr() == pointer and tensor.numel() == numel and tensor.dtype == dtype:
            return _Recompute(recipe, tensor.shape)
        return tensor

    def unpack(packed):
        if not isinstance(packed, _Recompute):
            return packed
        x_lin, gamma, beta, impl = packed.recipe
        if not _gemm_weight_gradient_wanted():
            # a pass that skips the weight gradient (the eikonal autograd.grad to the sample points)
            # still unpacks every saved tensor: hand it a free stand-in, it is never read
            return x_lin.new_zeros(()).expand(packed.shape)
        return film_siren(x_lin, gamma, beta, impl=impl).reshape(packed.shape)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return F.linear(input, weight, bias)


def attach_recipe(output: torch.Tensor, x_lin: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, impl: str) -> None:
    """Marks a fused layer's output so the next linear_recomputing_input recomputes it (only when it is
    in the autograd graph: otherwise the op kept nothing and the recipe would keep x_lin alive)."""
    if output.requires_grad:
        setattr(output, _RECIPE, (x_lin, gamma, beta, impl))

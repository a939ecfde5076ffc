"""The output memory format rule of every op, mirrored from csrc/common/memory_format.h so the fake
kernels (torch.compile) predict the real strides."""
import torch


def preferred_memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) when t is densely stored that way (and not also contiguous), else contiguous."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format

"""pytest marks shared by the tests: the devices to run on and what a test needs to run."""
import pytest
import torch

from stylesdf_fast import _extension

# CUDA cases skip where there is no GPU (calling is_available(), not testing the function object)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")),
]

requires_kernels = pytest.mark.skipif(
    not _extension.status().loaded, reason=f"compiled extension unavailable: {_extension.status().reason}"
)

requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _extension.status().cuda), reason="needs a CUDA GPU and the CUDA kernels"
)

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pretend_extension(monkeypatch, state):
    from stylesdf_fast import _extension

    monkeypatch.setattr(_extension, "status", lambda: state)
    monkeypatch.setattr(_extension, "_warned_reasons", set())
    monkeypatch.delenv("STYLESDF_FAST_REQUIRE_KERNELS", raising=False)
    return state


@pytest.fixture
def extension_absent(monkeypatch):
    """Pretend the compiled extension could not be imported."""
    from stylesdf_fast import _extension

    state = _extension.ExtensionStatus(False, False, None, "stylesdf_fast._C could not be imported (test)")
    return _pretend_extension(monkeypatch, state)


@pytest.fixture
def extension_without_cuda(monkeypatch):
    """Pretend the extension was built without its CUDA kernels."""
    from stylesdf_fast import _extension

    return _pretend_extension(monkeypatch, _extension.ExtensionStatus(True, False, torch.__version__, ""))

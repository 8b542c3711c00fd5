"""pytest set-up for the arraydrain Python suite.

Tests marked `cuda` (test_cuda.py) need a CUDA device that PyTorch can use; without one they are
skipped and listed as skipped. Everything else runs on any machine with torch and numpy.
"""

import os
import pathlib

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device usable by PyTorch")


def pytest_sessionstart(session):
    # The package under test must be the installed build, not the source folder (which lacks
    # the compiled `_native` module): fail loudly instead of testing the wrong thing.
    import arraydrain

    src = pathlib.Path(__file__).resolve().parent.parent / "arraydrain"
    here = pathlib.Path(arraydrain.__file__).resolve().parent
    if here == src and not any(p.name.startswith("_native") for p in here.iterdir()):
        raise pytest.UsageError(
            f"imported arraydrain from the source folder {src} without a built _native module; "
            "install it first (scripts/test.sh does: pip install ./python)"
        )
    # A GPU machine whose torch cannot see the GPU would skip every CUDA test silently.
    if os.path.exists("/dev/nvidia0") and not torch.cuda.is_available():
        raise pytest.UsageError(
            "/dev/nvidia0 exists but torch.cuda.is_available() is False: the CUDA tests would "
            "be skipped on a GPU machine; install a CUDA build of torch"
        )


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (tests reseed where it matters)."""
    torch.manual_seed(1234)

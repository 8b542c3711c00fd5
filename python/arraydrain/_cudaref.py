"""Where the package's CUDA helpers (device choice, device copies, the device drain) are found:
the package itself when it holds them, else its CUDA module. Looked up at call time, so that a
helper replaced on the package (as tests do) is the one called."""

from __future__ import annotations

import importlib
import sys


def cuda_helper(name: str):
    """The CUDA helper ``name``."""
    package = sys.modules[__package__]
    if hasattr(package, name):
        return getattr(package, name)
    return getattr(importlib.import_module("._cuda", __package__), name)

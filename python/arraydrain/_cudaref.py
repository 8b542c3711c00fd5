"""Where the package's CUDA helpers (device choice, device reads, the device drain) are found:
``arraydrain._cuda``, looked up at call time, so that a helper replaced there (as tests do) is the
one called."""

from __future__ import annotations

import importlib


def cuda_helper(name: str):
    """The CUDA helper ``name``."""
    return getattr(importlib.import_module("._cuda", __package__), name)

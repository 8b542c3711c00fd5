"""The options of the public functions, checked before anything is touched: what is not a
loader but would iterate as one, and the ``strategy``, ``items`` and ``strings`` values."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._errors import DrainTypeError, DrainValueError


_STRATEGIES = ("auto", "preallocated", "concat", "per-batch", "pinned")


_ITEMS = (None, "rows", "batches")


_STRINGS = ("auto", "U")


def _check_loader(loader: Any, what: str) -> None:
    """Refuses what is not a loader but would iterate as one, silently wrong: a ``Dataset``
    (its items are single samples), a tensor or an array (their items are single rows)."""
    if not (hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")):
        raise DrainTypeError(
            f"{what}() takes a DataLoader or an iterable of batches, not a "
            f"{type(loader).__name__}, which is not iterable"
        )
    if isinstance(loader, np.ndarray):
        raise DrainTypeError(
            f"{what}() takes a DataLoader or an iterable of batches, not a NumPy array (iterating "
            "it yields single rows); pass [array] for one batch, or wrap the data in a DataLoader"
        )
    torch = sys.modules.get("torch")
    if torch is not None:
        from torch.utils.data import Dataset, IterableDataset

        if isinstance(loader, torch.Tensor):
            raise DrainTypeError(
                f"{what}() takes a DataLoader, not a torch.Tensor (iterating it yields single "
                "rows); wrap it in a DataLoader: DataLoader(TensorDataset(tensor), batch_size=...)"
            )
        if isinstance(loader, IterableDataset):
            raise DrainTypeError(
                f"{what}() takes a DataLoader, not a {type(loader).__name__} (an IterableDataset "
                "may yield single samples or whole batches, and nothing says which); wrap it in "
                f"a DataLoader: {what}(DataLoader(dataset, batch_size=...)) for samples, or "
                f"{what}(DataLoader(dataset, batch_size=None), items='batches') for batches"
            )
        if isinstance(loader, Dataset):
            raise DrainTypeError(
                f"{what}() takes a DataLoader, not a {type(loader).__name__} (a Dataset yields "
                "single samples, not batches); wrap it in a DataLoader: "
                f"{what}(DataLoader(dataset, batch_size=...))"
            )
    hf = sys.modules.get("datasets")
    if hf is not None and isinstance(
        loader, tuple(getattr(hf, n) for n in ("Dataset", "IterableDataset") if hasattr(hf, n))
    ):
        raise DrainTypeError(
            f"{what}() takes a DataLoader, not a Hugging Face {type(loader).__name__} (it yields "
            "single rows); wrap it in a DataLoader: "
            f"{what}(DataLoader(dataset.with_format('torch'), batch_size=...))"
        )


def _check_items(items, strings) -> None:
    if items not in _ITEMS:
        raise DrainValueError(f"items must be None, 'rows' or 'batches', not {items!r}")
    if strings not in _STRINGS:
        raise DrainValueError(f"strings must be 'auto' or 'U', not {strings!r}")


def _check_strategy(strategy: str) -> None:
    if not isinstance(strategy, str):
        raise DrainTypeError(f"strategy must be a string, not {type(strategy).__name__}")
    if strategy not in _STRATEGIES:
        raise DrainValueError(f"unknown strategy {strategy!r} (one of: {', '.join(_STRATEGIES)})")

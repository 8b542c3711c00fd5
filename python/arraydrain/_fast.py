"""The fast path: a plain ``DataLoader`` over a ``TensorDataset`` (or ``Subset``s of one) read in
place. Planning (is this loader one, and if not, why), the epoch's row order over the tensors,
and the engine's gather into new or ``out=`` arrays."""

from __future__ import annotations

import logging
import sys
import warnings

import numpy as np

from . import _native
from ._cudaref import cuda_helper
from ._errors import DrainIndexError, DrainValueError
from ._leaves import Leaf, host_bytes, out_bytes, to_array, torch_numpy_dtype
from ._order import (
    as_index_array,
    checked_indices,
    epoch_order,
    order_and_count,
    replayable,
    wrap_indices,
)
from ._out import _check_overlaps, _out_leaves, _owner
from ._progress import progress_bar
from ._rng import _alongside, _run_all

_log = logging.getLogger("arraydrain")


class _FastPlan:
    __slots__ = ("leaves", "subsets", "tensors")

    def __init__(self, tensors, subsets):
        self.tensors = tensors
        self.subsets = subsets
        self.leaves = [
            Leaf(str(i), torch_numpy_dtype(t, str(i)), tuple(t.shape[1:]))
            for i, t in enumerate(tensors)
        ]


_HINTED: set = set()


def _route(loader, items) -> tuple[_FastPlan | None, str, str | None]:
    """``(plan, why, hint)``: the fast path's inputs when ``loader`` is a plain DataLoader over
    a TensorDataset (or Subsets of one) with the default collate and automatic batching (or the
    default convert and a replayed sampler), else ``None``; why, in words; and when the loader
    misses the fast path only because of a wrapper, a hint saying so. Exact types only: a
    subclass may fetch or collate differently."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None, "not a PyTorch DataLoader (PyTorch is not loaded)", None
    from torch.utils.data import DataLoader, IterableDataset, Subset, TensorDataset
    from torch.utils.data._utils.collate import default_collate, default_convert

    if not isinstance(loader, DataLoader):
        return None, f"a {type(loader).__name__}, not a DataLoader: its batches are copied", None
    ds = loader.dataset
    subsets = []
    while type(ds) is Subset:
        subsets.append(ds.indices)
        ds = ds.dataset
    tensor_ds = isinstance(ds, TensorDataset) and not isinstance(ds, IterableDataset)
    why = []
    wrappers = []
    if type(loader) is not DataLoader:
        why.append(f"the loader is a {type(loader).__name__}, a DataLoader subclass")
        wrappers.append(why[-1])
    if loader.batch_sampler is not None:
        if loader.collate_fn is not default_collate:
            name = _callable_name(loader.collate_fn)
            why.append(f"its collate_fn is {name}, not default_collate")
            if _wraps(loader.collate_fn, default_collate):
                wrappers.append(why[-1])
    elif items == "batches":
        why.append("items='batches': each item is a batch")
    elif loader.collate_fn is not default_convert:
        why.append(
            f"automatic batching is off and its collate_fn is {_callable_name(loader.collate_fn)}"
        )
    elif not replayable(loader.sampler):
        # Without automatic batching each item is one row, read by index from a sampler
        # replayed here (an unknown one might yield other things than single indices).
        why.append(
            f"automatic batching is off and its sampler is a {type(loader.sampler).__name__}"
        )
    if type(ds) is not TensorDataset:
        if tensor_ds:
            why.append(f"its dataset is a {type(ds).__name__}, a TensorDataset subclass")
            wrappers.append(why[-1])
        else:
            why.append(f"its dataset is a {type(ds).__name__}, not a TensorDataset")
    elif not ds.tensors:
        why.append("its TensorDataset holds no tensors")
    else:
        if len({t.device for t in ds.tensors}) != 1:
            why.append("its tensors are on different devices")
        if any(t.dim() == 0 for t in ds.tensors):
            why.append("a tensor of its TensorDataset is 0-dimensional")
    if (
        getattr(loader, "persistent_workers", False)
        and loader.num_workers > 0
        and getattr(loader, "_iterator", None) is None
    ):
        why.append(
            "persistent_workers=True and no epoch has started its workers yet: the first epoch "
            "creates the iterator later epochs reuse, so it is run through the loader itself"
        )
    if why:
        hint = None
        if wrappers and len(wrappers) == len(why):
            hint = (
                "arraydrain: this DataLoader takes the general path (each batch fetched, "
                "collated and copied in Python) only because "
                + "; ".join(wrappers)
                + ". Over a plain DataLoader(TensorDataset(...)) with the default collate_fn "
                "the fast path reads the tensors in place, typically many times faster."
            )
        return None, "; ".join(why), hint
    kind = "Subset of a TensorDataset" if subsets else "TensorDataset"
    return _FastPlan(ds.tensors, subsets), f"a DataLoader over a {kind}, read in place", None


def _wraps(f, inner) -> bool:
    """Whether ``f`` is a thin wrapper of ``inner``: a ``functools.partial`` of it, or a
    function (a lambda) that calls it by name or holds it in its closure."""
    if getattr(f, "func", None) is inner:
        return True
    code = getattr(f, "__code__", None)
    if code is None:
        return False
    if inner.__name__ in code.co_names:
        return True
    return any(getattr(c, "cell_contents", None) is inner for c in (f.__closure__ or ()))


def _callable_name(f) -> str:
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    if name is None:
        inner = getattr(f, "func", None)  # functools.partial
        return f"a partial of {_callable_name(inner)}" if inner is not None else type(f).__name__
    return name


def _choose(loader, items) -> _FastPlan | None:
    """The fast plan, or ``None``; logs the path taken, and hints once per reason when a
    wrapper alone costs the fast path."""
    plan, why, hint = _route(loader, items)
    _log.debug("%s path: %s", "fast" if plan is not None else "general", why)
    if hint is not None and why not in _HINTED:
        _HINTED.add(why)
        warnings.warn(hint, UserWarning, stacklevel=3)
    return plan


def _fast_order(
    plan: _FastPlan, loader, deferred: list | None = None
) -> tuple[np.ndarray | None, int]:
    """The epoch's rows of the tensors (``None`` for ``0..count``) and their count (see
    :func:`epoch_order` for ``deferred``)."""
    n = len(plan.tensors[0])
    for t in plan.tensors[1:]:
        if len(t) != n:
            raise DrainValueError(
                f"TensorDataset tensors have different lengths ({n} and {len(t)} rows)"
            )
    order = epoch_order(loader, deferred)
    for indices in plan.subsets:
        m = len(indices)
        base = as_index_array(indices, "Subset.indices")
        if base is None:
            base = checked_indices(indices, "Subset.indices")
        if isinstance(order, range) and order.stop <= m:
            order = base[order.start : order.stop]  # a sequential sampler over the Subset
        else:
            if isinstance(order, range):
                order = np.arange(order.start, order.stop, dtype=np.int64)
            order = base[wrap_indices(order, m, "a Subset")]
    if isinstance(order, range):
        if order.stop > n:
            raise DrainIndexError(
                f"index {order.stop - 1} is out of range for the TensorDataset of {n} rows"
            )
        return None, len(order)
    order = wrap_indices(order, n, "the TensorDataset")
    return order_and_count(order, n)


def _drain_fast(plan, loader, strategy, device, ordinal, out, progress):
    leaves = plan.leaves
    out_leaves = _out_leaves(out, [None] * len(leaves), leaves) if out is not None else None
    cuda = cuda_helper("_use_cuda")(device, ordinal, plan.tensors[0].device)
    if cuda is None:
        if strategy == "pinned":
            raise DrainValueError("strategy 'pinned' needs the CUDA engine (device='cuda')")
        sources = [
            (leaf.name, host_bytes(t, leaf.name)[0], leaf.engine, list(leaf.row_shape))
            for leaf, t in zip(leaves, plan.tensors)
        ]
    else:
        sources = [cuda_helper("_device_source")(leaf, t, cuda) for leaf, t in zip(leaves, plan.tensors)]
    deferred: list = []
    try:
        order, count = _fast_order(plan, loader, deferred)
        outs = None
        if out_leaves is not None:
            outs = [out_bytes(o, leaf, count) for o, leaf in zip(out_leaves, leaves)]
            _check_overlaps(outs, [s[1] for s in sources] if cuda is None else [], leaves)
    except BaseException:
        _run_all(deferred)
        raise
    batch_size = loader.batch_size or 1
    with _alongside(deferred), progress_bar(progress, count) as bar:
        if cuda is None:
            u8s = _native.gather(sources, count, order, batch_size, strategy, outs, bar)
        else:
            owners = [_owner(o) for o in out_leaves] if out_leaves is not None else None
            u8s = _native.cuda_gather(
                cuda, sources, count, order, batch_size, strategy, outs, bar, owners
            )
    if out is not None:
        return out
    return [to_array(u8, leaf, count) for u8, leaf in zip(u8s, leaves)]

"""arraydrain: drain a PyTorch ``DataLoader`` (or any iterable of batches) into NumPy arrays.

>>> import torch, arraydrain
>>> from torch.utils.data import DataLoader, TensorDataset
>>> loader = DataLoader(TensorDataset(torch.randn(1000, 8), torch.arange(1000)), batch_size=64)
>>> x, y = arraydrain.drain(loader)
>>> x.shape, y.dtype
((1000, 8), dtype('int64'))

:func:`drain` returns the structure of one batch with every leaf a NumPy array holding all rows,
in exactly the order one epoch of ``for batch in loader`` would yield them at that moment.
:func:`to_npz` and :func:`to_npy_dir` drain into NumPy files instead. :func:`load_shards`
reads back, as one dataset, the shard folder the ranks of ``arraydrain convert --distributed``
write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any

import numpy as np

from . import _native
from ._errors import (
    ArrayDrainError,
    DrainIndexError,
    DrainMemoryError,
    DrainOSError,
    DrainRuntimeError,
    DrainTypeError,
    DrainValueError,
)
from ._leaves import (
    Leaf,
    flatten,
    host_bytes,
    is_tensor,
    out_bytes,
    rebuild,
    same_structure,
    to_array,
    torch_numpy_dtype,
)
from ._order import (
    as_index_array,
    checked_indices,
    declared_rows,
    epoch_order,
    order_and_count,
    replayable,
    wrap_indices,
)
from . import _general
from ._cuda import _check_device, _cuda_general, _device_source, _use_cuda
from ._progress import progress_bar
from ._shards import load_shards

__version__ = _native.__version__

__all__ = [
    "ArrayDrainError",
    "DrainIndexError",
    "DrainMemoryError",
    "DrainOSError",
    "DrainRuntimeError",
    "DrainTypeError",
    "DrainValueError",
    "drain",
    "explain",
    "load_shards",
    "to_npy_dir",
    "to_npz",
]

_STRATEGIES = ("auto", "preallocated", "concat", "per-batch", "pinned")
_ITEMS = (None, "rows", "batches")
_STRINGS = ("auto", "U")

_log = logging.getLogger("arraydrain")


def drain(
    loader: Any,
    *,
    strategy: str = "auto",
    device: str = "auto",
    out: Any = None,
    progress: Any = False,
    items: str | None = None,
    strings: str = "auto",
) -> Any:
    """Every batch of one epoch of ``loader``, as NumPy arrays holding all rows.

    Returns the structure of one batch — the tuple, list, dict or namedtuple the collate function
    makes, nested as it is (a ``TensorDataset``'s batches are lists: ``x, y = drain(loader)``) —
    with every leaf a NumPy array of all rows, in exactly the order one epoch of
    ``for batch in loader`` would yield them at that moment: same sampler, same generator state,
    same ``drop_last``. Random generators (the global one, ``loader.generator``, a sampler's) are
    left exactly as that epoch would leave them, so the next real epoch is unchanged. (A loader
    with worker processes and ``in_order=False`` may deliver batches out of order: the fast path
    gives the sampler's order, the general path the order the batches arrive in.)

    **Fast path.** A ``DataLoader`` over a ``TensorDataset`` (or a ``Subset`` of one, nested or
    not) with the default collate function and automatic batching, whatever its sampler or batch
    sampler (or without automatic batching, ``batch_size=None``, over one of the well-known
    samplers): the index order is taken from the loader's samplers (the well-known samplers are
    replayed with the tensor operation they use; any other sampler is walked, indices only — no
    sample is fetched in Python), the tensors are read in place (a non-contiguous tensor is made
    contiguous once), and the engine gathers the rows in parallel with the GIL released. CUDA
    tensors go through the engine's CUDA gather kernel and asynchronous copies into pinned host
    memory (one device copy of the tensors first; see the package README). Reading is fastest
    from tensors on transparent huge pages: PyTorch allocates them so with the environment
    variable ``THP_MEM_ALLOC_ENABLE=1``.

    **General path.** Anything else iterable: map-style datasets with a Python ``__getitem__``,
    ``IterableDataset``, custom collate functions, dict or nested batches, NumPy batches, or a
    plain iterable of batches. The output is allocated from the first batch and the loader's
    length (``len(sampler)`` with the ``drop_last`` arithmetic, or an ``IterableDataset``'s
    ``len``), and each batch is copied into its slice as it comes. When the length is unknown
    (no ``__len__``, a custom batch sampler, a plain iterable) the output grows geometrically:
    its capacity doubles when full (one copy of the rows so far each time, so about one extra
    copy of the output in total), and the reserved but untouched tail costs address space only.
    A map-style loader yielding more or fewer rows than its declared length is an error, never a
    short array; an ``IterableDataset``'s ``len`` is a hint (PyTorch warns when an epoch yields
    another count, and so the drain returns what the epoch yields). Text leaves (lists of
    ``str``, NumPy string arrays) are collected and returned as NumPy string arrays. A
    ``persistent_workers=True`` loader whose workers have not started takes this path, so the
    next real epoch is unchanged. :func:`explain` tells which path a loader takes.

    **Without automatic batching** (``batch_size=None``) each item is what the sampler and
    dataset give: one row (stacked) for the well-known samplers' single indices, a whole batch
    (concatenated along the first axis) for a ``BatchSampler`` used as the sampler. When the
    loader does not say which (an ``IterableDataset``, another sampler), ``items`` must.

    Args:
        loader: a ``torch.utils.data.DataLoader`` or any iterable of batches whose leaves are
            tensors or NumPy arrays with a first axis of rows.
        strategy: ``"auto"`` (the fastest), or on the fast path one of the classic recipes the
            engine keeps for comparison — ``"concat"``, ``"per-batch"``, ``"preallocated"`` —
            and on CUDA also ``"pinned"``. All produce identical arrays. The general path always
            copies batches into preallocated output (``"auto"`` or ``"preallocated"``).
        device: ``"auto"`` (CUDA tensors on the GPU engine when it is usable, else the CPU
            with a ``RuntimeWarning`` naming why), ``"cpu"`` (always the CPU path; CUDA tensors
            are copied to the host first), ``"cuda"`` (the GPU engine on PyTorch's current
            device, ``torch.cuda.current_device()``) or ``"cuda:N"`` (device N); with these
            two, a GPU the engine cannot use is an error naming the reason.
        out: a previous result of ``drain`` on the same loader (or the same structure of
            writable C-contiguous arrays of the right dtypes and shapes) to refill in place —
            the epoch case; that same object is returned.
        progress: ``True`` for a progress bar on stderr (``tqdm`` when installed), or a
            callable taking the number of rows done.
        items: without automatic batching, whether each item is one row (``"rows"``) or a
            batch (``"batches"``); ``None`` tells from the loader, or refuses when it cannot.
        strings: text from lists of ``str`` as ``StringDType`` (``"auto"``, NumPy >= 2) or
            fixed-width ``<U`` (``"U"``).

    Returns:
        The batch structure with NumPy leaves. The arrays own their memory (the engine's
        buffer, released when the last array over it is gone) and share none with the loader.

    Raises:
        DrainTypeError: (a ``TypeError``) a ``Dataset``, tensor or array instead of a loader, a
            leaf that is not a tensor, array or text, an unsupported dtype (``bfloat16`` has no
            NumPy dtype), a batch whose dtype differs from the first, an index that is not an
            integer.
        DrainValueError: (a ``ValueError``) mismatched lengths, a batch unlike the first, a
            loader yielding more or fewer rows than declared, a bad option or ``out=``.
        DrainIndexError: (an ``IndexError`` and ``ValueError``) an index past the dataset.
        DrainMemoryError: (a ``MemoryError``) the output cannot be allocated.
        DrainRuntimeError: (a ``RuntimeError``) CUDA asked for but unusable, or a CUDA failure.
    """
    _check_loader(loader, "drain")
    _check_strategy(strategy)
    ordinal = _check_device(device)
    _check_items(items, strings)
    plan = _choose(loader, items)
    if plan is not None:
        return _drain_fast(plan, loader, strategy, device, ordinal, out, progress)
    return _drain_general(loader, strategy, device, ordinal, out, progress, None, items, strings)


def explain(loader: Any, *, items: str | None = None) -> str:
    """Which path :func:`drain` (and :func:`to_npz`, :func:`to_npy_dir`) would take for
    ``loader``, and why, as one line — without touching the loader (nothing is iterated, no
    random generator advances).

    ``"fast path: ..."`` — a ``DataLoader`` over a ``TensorDataset`` read in place by the
    engine; ``"general path: ..."`` — the loader is iterated and each batch copied, with the
    reason the fast path does not apply (a custom ``collate_fn``, a ``DataLoader`` subclass, a
    dataset other than a ``TensorDataset``, ...). ``drain`` logs the same line at ``DEBUG`` on
    the ``"arraydrain"`` logger, and warns once per reason when a loader misses the fast path
    only because of a wrapper (a subclass, a collate function wrapping the default one).

    Raises:
        DrainTypeError: ``loader`` is a ``Dataset``, a tensor or an array, not a loader.
    """
    _check_loader(loader, "explain")
    _check_items(items, "auto")
    plan, why, _ = _route(loader, items)
    if plan is not None:
        return f"fast path: {why}"
    return f"general path: {why}"


def to_npz(
    loader: Any,
    path: os.PathLike[str] | str,
    *,
    compress: bool = False,
    device: str = "auto",
    progress: Any = False,
    items: str | None = None,
) -> None:
    """Drains ``loader`` (as :func:`drain`) straight into a ``.npz`` archive at ``path``
    (``.npz`` is appended to a path that does not end with it, as ``numpy.savez`` does).

    Members are named by the leaves' paths in a batch: list and tuple positions and dict keys,
    joined by ``.`` for nested batches (``"0"``, ``"1"`` for a ``TensorDataset``; ``"image"``,
    ``"meta.label"`` for dicts); each name must be a plain file name and no two leaves may share
    one (refused before anything is created). On the fast path the rows are gathered about 32 MiB
    at a time into memory-mapped ``.npy`` files, so the output never has to fit in memory
    (outputs larger than RAM are fine), and the archive is packed from them. The general path
    does the same when the loader's length is known and there is no text leaf, and writes from
    memory otherwise. Every temporary file has an exclusive random name (``.arraydrain-XXXXXX``)
    beside the output and is removed if the write fails or is interrupted (Ctrl-C between blocks,
    ``SIGTERM`` on the main thread); the archive appears under its name only when complete.
    ``compress=True`` deflates the members. Every dtype ``drain`` takes is written, complex ones
    and datetimes with their NumPy descriptor, text as ``<U`` (or ``S``). ``progress`` counts
    rows, or on the fast path the bytes written.

    Raises:
        As :func:`drain`, and ``DrainOSError`` (an ``OSError``) when the file cannot be written.
    """
    _check_loader(loader, "to_npz")
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if isinstance(path, str) and not path.endswith(".npz"):
            path += ".npz"
    _to_files(loader, "npz", path, compress, device, progress, items)


def to_npy_dir(
    loader: Any,
    path: os.PathLike[str] | str,
    *,
    device: str = "auto",
    progress: Any = False,
    items: str | None = None,
) -> None:
    """Drains ``loader`` (as :func:`drain`) into a folder of ``.npy`` files, ``path/NAME.npy``
    per leaf, named as :func:`to_npz` names its members (the folder is created if needed; each
    file appears under its name when complete).

    Raises:
        As :func:`to_npz`.
    """
    _check_loader(loader, "to_npy_dir")
    _to_files(loader, "dir", path, False, device, progress, items)


# ---- options ----------------------------------------------------------------------------------


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


# ---- the fast path ----------------------------------------------------------------------------


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
    cuda = _use_cuda(device, ordinal, plan.tensors[0].device)
    if cuda is None:
        if strategy == "pinned":
            raise DrainValueError("strategy 'pinned' needs the CUDA engine (device='cuda')")
        sources = [
            (leaf.name, host_bytes(t, leaf.name)[0], leaf.engine, list(leaf.row_shape))
            for leaf, t in zip(leaves, plan.tensors)
        ]
    else:
        sources = [_device_source(leaf, t, cuda) for leaf, t in zip(leaves, plan.tensors)]
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


def _owner(array) -> Any | None:
    """The engine buffer (``_native.Buffer``) an array views, if any (via its ``base`` chain)."""
    b = getattr(array, "base", None)
    while b is not None and not isinstance(b, _native.Buffer):
        b = getattr(b, "base", None)
    return b


def _check_overlaps(outs, reads, leaves) -> None:
    """``out=`` arrays may overlap neither each other nor the data being drained."""
    for i, (o, leaf) in enumerate(zip(outs, leaves)):
        if any(np.may_share_memory(o, r) for r in reads):
            raise DrainValueError(f"out= leaf {leaf.name!r} overlaps the data being drained")
        if any(np.may_share_memory(o, p) for p in outs[:i]):
            raise DrainValueError(f"out= leaf {leaf.name!r} overlaps another out= leaf")


def _run_all(draws: list) -> None:
    for draw in draws:
        draw()


@contextlib.contextmanager
def _alongside(draws: list):
    """Runs ``draws`` (generator advances whose values are unused) on a thread while the body
    gathers with the GIL released; waits for them on the way out, whatever happens, so the
    generators are where one epoch leaves them when ``drain`` returns."""
    if not draws:
        yield
        return
    failed: list = []

    def run():
        try:
            _run_all(draws)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run, name="arraydrain-rng")
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


def _out_leaves(out, structure_or_none, leaves: list[Leaf]):
    """The leaves of ``out=``, checked against the drain's structure (a list for the fast
    path, or a flatten structure)."""
    if isinstance(structure_or_none, list):
        if not isinstance(out, (list, tuple)) or len(out) != len(leaves):
            raise DrainValueError(
                f"out= must be the previous result: a list of {len(leaves)} arrays"
            )
        return list(out)
    structure, got = flatten(out)
    if not same_structure(structure, structure_or_none):
        raise DrainValueError("out= does not have the structure of a batch of this loader")
    return [x for _, x in got]


# ---- the general path -------------------------------------------------------------------------


def _items_are_batches(loader, items) -> bool:
    """Whether each item the loader yields is a batch (concatenated along the first axis) or one
    row (stacked). With automatic batching, and for plain iterables, items are batches. With
    ``batch_size=None`` each item is whatever the sampler and dataset give: told from the
    sampler for map-style datasets (a ``BatchSampler`` yields batches of indices, the
    well-known samplers single indices); an ``IterableDataset``'s items, or an unknown
    sampler's, cannot be told apart from the loader, so ``items=`` must say."""
    if items is not None:
        torch = sys.modules.get("torch")
        if torch is not None:
            from torch.utils.data import DataLoader

            if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
                raise DrainValueError(
                    f"items={items!r} applies without automatic batching (batch_size=None); "
                    "this DataLoader batches its samples itself"
                )
        return items == "batches"
    if sys.modules.get("torch") is None:
        return True
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
        WeightedRandomSampler,
    )
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(loader, DataLoader) or loader.batch_sampler is not None:
        return True
    if isinstance(loader.dataset, IterableDataset):
        raise DrainValueError(
            "DataLoader(batch_size=None) over an IterableDataset: each item is whatever the "
            f"{type(loader.dataset).__name__} yields — one row or a whole batch — and the "
            "loader "
            "does not say which; pass items='batches' (each item a batch, concatenated along "
            "the first axis) or items='rows' (each item one row, stacked)"
        )
    sampler = loader.sampler
    if isinstance(sampler, BatchSampler):
        return True
    if isinstance(
        sampler,
        (SequentialSampler, RandomSampler, SubsetRandomSampler, WeightedRandomSampler,
         DistributedSampler),
    ):
        return False
    raise DrainValueError(
        f"DataLoader(batch_size=None) with a {type(sampler).__name__} sampler: each item is "
        "what the dataset returns for one index the sampler yields — one row for a single "
        "index, a batch for a list of them — and the sampler's type does not say which; pass "
        "items='rows' (stacked) or items='batches' (concatenated along the first axis)"
    )


def _drain_general(loader, strategy, device, ordinal, out, progress, files, items, strings):
    if strategy not in ("auto", "preallocated"):
        raise DrainValueError(
            f"strategy {strategy!r} applies to the fast path (a DataLoader over a TensorDataset); "
            "other loaders are copied batch by batch into preallocated output ('auto')"
        )
    batched = _items_are_batches(loader, items)
    rows, exact = declared_rows(loader, batched)
    it = iter(loader)
    try:
        first = next(it)
    except StopIteration:
        return _no_batches(loader, batched, out, files, strings)
    keys: list = []
    layout = _general.Layout(first, batched, keys)
    if files is not None:
        _general.check_file_names(layout, keys)
    if out is not None:
        return _general_into(layout, it, rows, exact, out, progress)
    values = layout.first_values
    leaves = layout.leaves
    if files is None and values and all(is_tensor(x) for x in values):
        devices = {x.device for x in values}
        if len(devices) == 1:
            cuda = _use_cuda(device, ordinal, next(iter(devices)))
            if cuda is not None:
                return _cuda_general(layout, it, rows, exact, cuda, progress)
    if files is not None:
        return _general_files(layout, it, rows, exact, files, progress)
    output = _general.Output(leaves, rows, exact)
    with progress_bar(progress, rows) as bar:
        _general.fill(layout, values, it, output, bar)
    return _general.rebuild_result(layout, _general.finish_arrays(layout, output, strings))


def _no_batches(loader, batched, out, files, strings):
    """An epoch of no batches: empty arrays of the batch structure (as ``np.empty((0, ...))``
    would be), taken from one sample of the dataset when the loader has one to take."""
    sample = _general.probe_structure(loader, batched)
    if sample is None:
        raise DrainValueError(
            "the loader yielded no batches, and has no sample to take the batch structure "
            "from (not a map-style DataLoader, or an empty dataset), so there is no batch "
            "structure to build"
        )
    keys: list = []
    layout = _general.Layout(sample, batched, keys)
    if files is not None:
        _general.check_file_names(layout, keys)
        return _general_files(layout, iter(()), 0, True, files, False, first=False)
    if out is not None:
        return _general_into(layout, iter(()), 0, True, out, False, first=False)
    arrays = [
        np.empty((0,) + leaf.row_shape, leaf.dtype)
        if leaf.kind == "num"
        else _general.text_array([], leaf, strings, False)
        for leaf in layout.leaves
    ]
    return _general.rebuild_result(layout, arrays)


def _general_into(layout, it, rows, exact, out, progress, first=True):
    """The general path into ``out=``: each batch checked not to read memory ``out`` holds, and
    copied into its slice of the caller's arrays."""
    leaves = layout.leaves
    outs = _out_leaves(out, layout.structure, leaves)
    if rows is None or not exact:
        rows = next((o.shape[0] for o in outs if isinstance(o, np.ndarray) and o.ndim), 0)
    for o, leaf in zip(outs, leaves):
        if leaf.kind == "num":
            out_bytes(o, _as_leaf(leaf), rows)
        elif not isinstance(o, np.ndarray) or o.dtype.kind not in "UST" or len(o) != rows:
            raise DrainValueError(
                f"out= leaf {leaf.name!r} must be a NumPy string array of {rows} rows"
            )
    nums = [o if leaf.kind == "num" else None for o, leaf in zip(outs, leaves)]
    _check_overlaps([o for o in nums if o is not None], [], [l for l in leaves if l.kind == "num"])
    output = _general.Output(leaves, rows, True, nums)
    with progress_bar(progress, rows) as bar:
        if first:
            _general.fill(layout, layout.first_values, it, output, bar, check_overlap=True)
        elif rows:
            raise DrainValueError(f"the loader yielded no batches, but out= holds {rows} rows")
    for i, (o, leaf) in enumerate(zip(outs, leaves)):
        if leaf.kind != "text":
            continue
        text = _general.text_array(
            output.text[i], leaf, "U" if o.dtype.kind == "U" else "auto", False
        )
        if o.dtype.kind in "US" and text.dtype.kind == o.dtype.kind:
            if text.dtype.itemsize > o.dtype.itemsize:
                raise DrainValueError(
                    f"out= leaf {leaf.name!r} holds {o.dtype}, too narrow for the drained text "
                    f"({text.dtype})"
                )
        o[...] = text
    return out


def _as_leaf(leaf) -> Leaf:
    return Leaf(leaf.name, leaf.dtype, leaf.row_shape)


def _general_files(layout, it, rows, exact, files, progress, first=True):
    """The general path into files: a known length and numbers only, straight into
    memory-mapped files (larger than RAM is fine); otherwise into memory, written at the end
    with the text leaves as ``<U``/``S`` arrays."""
    kind, path, compress = files
    leaves = layout.leaves
    nums = [leaf for leaf in leaves if leaf.kind == "num"]
    specs = [leaf.spec() for leaf in nums]
    mapped = exact and rows is not None and len(nums) == len(leaves)
    if mapped:
        sink = _native.Sink.to_files(specs, rows, kind, path, compress)
    else:
        sink = _native.Sink(specs, rows if exact else None, rows if not exact else None)
    try:
        text = [[] for _ in leaves]
        with progress_bar(progress, rows) as bar:
            batches = (
                _chain_first(
                    layout.first_values, (layout.values(b, k) for k, b in enumerate(it, 1))
                )
                if first
                else iter(())
            )
            for k, values in enumerate(batches):
                arrays = []
                n = None
                for i, (leaf, x) in enumerate(zip(leaves, values)):
                    if leaf.kind == "text":
                        m, chunk = _general._text_chunk(x, leaf, layout.batched, k)
                        text[i].append(chunk)
                    else:
                        _check_like(leaf, x, layout.batched, k)
                        a = host_bytes(x, leaf.name, layout.batched)[0]
                        m = a.shape[0]
                        arrays.append(a)
                    if n is None:
                        n, n_from = m, leaf.name
                    elif m != n:
                        raise DrainValueError(
                            f"batch {k}, leaf {leaf.name!r}: {m} rows, but the batch's leaf "
                            f"{n_from!r} has {n}"
                        )
                if arrays:
                    sink.push(arrays)
                if bar is not None:
                    bar(sink.rows)
        extra = []
        for i, leaf in enumerate(leaves):
            if leaf.kind != "text":
                continue
            arr = np.ascontiguousarray(_general.text_array(text[i], leaf, "U", True))
            row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
            extra.append(
                (i, leaf.name, repr(arr.dtype.str), list(arr.shape[1:]),
                 arr.reshape(-1).view(np.uint8).reshape(len(arr), row_bytes))
            )
        sink.finish_to_files(kind, path, compress, extra)
    except BaseException:
        sink.close()
        raise
    return None


def _check_like(leaf, x, batched, k) -> None:
    """A later batch's numeric leaf checked against the first batch's."""
    if not (is_tensor(x) or isinstance(x, np.ndarray)):
        raise DrainTypeError(
            f"batch {k}, leaf {leaf.name!r} is a {type(x).__name__}, not a tensor or NumPy array "
            "as in the first batch"
        )
    dtype = torch_numpy_dtype(x, leaf.name) if is_tensor(x) else x.dtype
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("=")
    if dtype != leaf.dtype:
        raise DrainTypeError(
            f"batch {k}, leaf {leaf.name!r}: dtype {dtype} differs from the first batch's "
            f"{leaf.dtype}"
        )
    shape = tuple(x.shape[1:]) if batched else tuple(x.shape)
    if batched and x.ndim == 0:
        raise DrainValueError(
            f"batch {k}, leaf {leaf.name!r} is 0-dimensional; every leaf needs a first axis of rows"
        )
    if shape != leaf.row_shape:
        raise DrainValueError(
            f"batch {k}, leaf {leaf.name!r}: row shape {shape} differs from the first batch's "
            f"{leaf.row_shape}"
        )


def _chain_first(first, rest):
    yield first
    yield from rest


# ---- files ------------------------------------------------------------------------------------


def _to_files(loader, kind, path, compress, device, progress, items) -> None:
    ordinal = _check_device(device)
    _check_items(items, "auto")
    path = os.fspath(path)
    with _cleanup_on_sigterm():
        plan = _choose(loader, items)
        if plan is not None:
            leaves = plan.leaves
            sources = [
                (leaf.name, host_bytes(t, leaf.name)[0], leaf.engine, list(leaf.row_shape))
                for leaf, t in zip(leaves, plan.tensors)
            ]
            order, count = _fast_order(plan, loader)
            total = count * sum(leaf.row_bytes for leaf in leaves)
            with progress_bar(progress, total, "B") as bar:
                _native.gather_to_files(sources, count, order, kind, path, compress, bar)
            return
        _drain_general(
            loader,
            "auto",
            "cpu" if ordinal is None else device,
            ordinal,
            None,
            progress,
            (kind, path, compress),
            items,
            "U",
        )


class _Terminated(BaseException):
    """Raised by the temporary ``SIGTERM`` handler of a file write, to unwind it."""


@contextlib.contextmanager
def _cleanup_on_sigterm():
    """While a file write runs on the main thread of a program that leaves ``SIGTERM`` to its
    default action (ending the process on the spot), a ``SIGTERM`` unwinds the write first —
    its temporary files and the folders it made are removed — and then ends the process with
    ``SIGTERM`` as before. (``SIGINT`` is Python's ``KeyboardInterrupt``, which unwinds the
    same way.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)

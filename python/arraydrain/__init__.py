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

# The package by job (the public functions are here; the work is in the modules):
#   _checks   the options of the public functions, checked first
#   _fast     the fast path: planning (and why not), the epoch's order, the engine's gather
#   _order    the order one epoch yields, replayed from the loader's own samplers
#   _paths    the general path's ways out (new arrays, out=, files) over any iterable
#   _general  the general path's pieces: batch layout, output buffers, text leaves
#   _files    to_npz / to_npy_dir, and unwinding a write on SIGTERM
#   _out      out= arrays checked against the drain;  _rng  deferred generator draws
#   _leaves   leaves: flattening batches, dtypes, the one tensor-to-NumPy conversion
#   _cuda     CUDA: the device choice, tensors lent to the engine in place, the device drain
#   _writer   Writer and indexed: model outputs to one array or file
#   _shards   load_shards;  _progress  progress bars;  _errors  the exception classes
#   _native   the engine (Rust); its stubs are _native.pyi

import os
from typing import Any

from . import _cuda, _native
from ._checks import _check_items, _check_loader, _check_strategy
from ._errors import (
    ArrayDrainError,
    DrainIndexError,
    DrainMemoryError,
    DrainOSError,
    DrainRuntimeError,
    DrainTypeError,
    DrainValueError,
)
from ._fast import _choose, _drain_fast, _route
from ._files import _to_files
from ._paths import _drain_general
from ._shards import load_shards
from ._writer import Writer, indexed

__version__ = _native.__version__

__all__ = [
    "ArrayDrainError",
    "DrainIndexError",
    "DrainMemoryError",
    "DrainOSError",
    "DrainRuntimeError",
    "DrainTypeError",
    "DrainValueError",
    "Writer",
    "drain",
    "explain",
    "indexed",
    "load_shards",
    "to_npy_dir",
    "to_npz",
]


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
    memory, reading the tensors in place after PyTorch's current stream (see the package README).
    Reading is fastest
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
    ordinal = _cuda._check_device(device)
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

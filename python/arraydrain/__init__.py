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
import os
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
    declared_rows,
    epoch_order,
    order_and_count,
    replayable,
    wrap_indices,
)
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
    "load_shards",
    "to_npy_dir",
    "to_npz",
]

_STRATEGIES = ("auto", "preallocated", "concat", "per-batch", "pinned")


def drain(
    loader: Any,
    *,
    strategy: str = "auto",
    device: str = "auto",
    out: Any = None,
    progress: Any = False,
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
    A loader yielding more or fewer rows than its declared length is an error, never a short
    array. Without automatic batching (``batch_size=None``) each item is one row.

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

    Returns:
        The batch structure with NumPy leaves. The arrays own their memory (the engine's
        buffer, released when the last array over it is gone) and share none with the loader.

    Raises:
        DrainTypeError: (a ``TypeError``) a leaf that is not a tensor or array, an unsupported
            dtype (``bfloat16`` has no NumPy dtype), a batch whose dtype differs from the first.
        DrainValueError: (a ``ValueError``) mismatched lengths, a batch unlike the first, a
            loader yielding more or fewer rows than declared, a bad option or ``out=``.
        DrainIndexError: (an ``IndexError`` and ``ValueError``) an index past the dataset.
        DrainMemoryError: (a ``MemoryError``) the output cannot be allocated.
        DrainRuntimeError: (a ``RuntimeError``) CUDA asked for but unusable, or a CUDA failure.
    """
    _check_strategy(strategy)
    ordinal = _check_device(device)
    plan = _fast_plan(loader)
    if plan is not None:
        return _drain_fast(plan, loader, strategy, device, ordinal, out, progress)
    return _drain_general(loader, strategy, device, ordinal, out, progress, None)


def to_npz(
    loader: Any,
    path: os.PathLike[str] | str,
    *,
    compress: bool = False,
    device: str = "auto",
    progress: Any = False,
) -> None:
    """Drains ``loader`` (as :func:`drain`) straight into a ``.npz`` archive at ``path``.

    Members are named by the leaves' paths in a batch: list and tuple positions and dict keys,
    joined by ``.`` for nested batches (``"0"``, ``"1"`` for a ``TensorDataset``; ``"image"``,
    ``"meta.label"`` for dicts). On the fast path the rows are gathered a few MiB at a time
    through one reused buffer and streamed into the file, so the output never exists in memory
    (outputs larger than RAM are fine). The general path writes each batch into memory-mapped
    ``.npy`` files when the loader's length is known (an archive is packed from them at the end),
    and into memory first when it is not. The archive appears under its name only when
    complete. ``compress=True`` deflates the members. Every dtype ``drain`` takes is written,
    complex ones with their NumPy descriptor. ``progress`` counts rows, or on the fast path the
    bytes written.

    Raises:
        As :func:`drain`, and ``DrainOSError`` (an ``OSError``) when the file cannot be written.
    """
    _to_files(loader, "npz", path, compress, device, progress)


def to_npy_dir(
    loader: Any, path: os.PathLike[str] | str, *, device: str = "auto", progress: Any = False
) -> None:
    """Drains ``loader`` (as :func:`drain`) into a folder of ``.npy`` files, ``path/NAME.npy``
    per leaf, named as :func:`to_npz` names its members (the folder is created if needed; each
    file appears under its name when complete).

    Raises:
        As :func:`to_npz`.
    """
    _to_files(loader, "dir", path, False, device, progress)


# ---- options ----------------------------------------------------------------------------------


def _check_strategy(strategy: str) -> None:
    if not isinstance(strategy, str):
        raise DrainTypeError(f"strategy must be a string, not {type(strategy).__name__}")
    if strategy not in _STRATEGIES:
        raise DrainValueError(f"unknown strategy {strategy!r} (one of: {', '.join(_STRATEGIES)})")


def _check_device(device: str) -> int | None:
    """The CUDA ordinal a ``"cuda"``/``"cuda:N"`` device names, ``None`` for auto/cpu."""
    if not isinstance(device, str):
        raise DrainTypeError(f"device must be a string, not {type(device).__name__}")
    if device in ("auto", "cpu"):
        return None
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if device == "cuda":
            # As in PyTorch: the current device (torch.cuda.set_device, e.g. each torchrun rank's).
            ordinal = _current_cuda_device()
        elif device[5:].isdigit():
            ordinal = int(device[5:])
        else:
            raise DrainValueError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)")
        ok, why = _cuda_status(ordinal)
        if not ok:
            raise DrainRuntimeError(f"device={device!r}: CUDA is not usable here: {why}")
        return ordinal
    raise DrainValueError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)")


def _cuda_status(ordinal: int) -> tuple[bool, str]:
    """Whether PyTorch and the engine can both use CUDA device ``ordinal``."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return False, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    if not _native.cuda_compiled():
        return False, "the engine was built without its CUDA backend"
    _preload_nvrtc()
    return _native.cuda_status(ordinal)


_NVRTC_LOADED = []


def _preload_nvrtc() -> None:
    """Loads NVRTC from the ``nvidia`` wheels PyTorch installs (``nvidia/*/lib``), once, so the
    engine, which opens ``libnvrtc.so.13`` by name to compile its kernels, finds it without
    ``LD_LIBRARY_PATH``. Nothing happens where there is no such wheel."""
    if _NVRTC_LOADED:
        return
    _NVRTC_LOADED.append(True)
    try:
        import nvidia
    except ImportError:
        return
    import ctypes
    import glob

    for base in list(nvidia.__path__):
        # The builtins first: libnvrtc opens them by name too.
        for pattern in ("libnvrtc-builtins.so.*", "libnvrtc.so.*"):
            for path in sorted(glob.glob(os.path.join(base, "*", "lib", pattern))):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue


def _current_cuda_device() -> int:
    """PyTorch's current CUDA device (0 where PyTorch or CUDA is missing: the status check that
    follows says why CUDA is not usable)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None:
            import torch
        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    except (ImportError, RuntimeError):
        return 0


_FALLBACK_WARNED: set = set()


def _use_cuda(device: str, ordinal: int | None, tensor_device) -> int | None:
    """The ordinal to run the GPU engine on, or ``None`` for the CPU path.

    With ``device="auto"``, CUDA tensors whose device the engine cannot use are drained on the
    CPU (PyTorch copies them to the host first): never silently — a ``RuntimeWarning`` naming
    the reason is issued once per device and reason."""
    if device == "cpu":
        return None
    if ordinal is not None:
        return ordinal
    if tensor_device is None or tensor_device.type != "cuda":
        return None
    o = tensor_device.index if tensor_device.index is not None else _current_cuda_device()
    ok, why = _cuda_status(o)
    if ok:
        return o
    if (o, why) not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add((o, why))
        warnings.warn(
            f"arraydrain: CUDA tensors on cuda:{o} are drained on the CPU (copied to the host "
            f"first) because the CUDA engine cannot start there: {why}. Pass device='cuda' to "
            "make this an error instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


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


def _fast_plan(loader) -> _FastPlan | None:
    """The fast path's inputs when ``loader`` is a plain DataLoader over a TensorDataset (or
    Subsets of one) with the default collate and automatic batching (or the default convert
    and a replayed sampler); ``None`` otherwise. Exact types only: a subclass may fetch or
    collate differently."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    from torch.utils.data import DataLoader, Subset, TensorDataset
    from torch.utils.data._utils.collate import default_collate, default_convert

    if type(loader) is not DataLoader:
        return None
    if loader.batch_sampler is not None:
        if loader.collate_fn is not default_collate:
            return None
    elif loader.collate_fn is not default_convert or not replayable(loader.sampler):
        # Without automatic batching each item is one row, read by index from a sampler
        # replayed here (an unknown one might yield other things than single indices).
        return None
    ds = loader.dataset
    subsets = []
    while type(ds) is Subset:
        subsets.append(ds.indices)
        ds = ds.dataset
    if type(ds) is not TensorDataset or not ds.tensors:
        return None
    tensors = ds.tensors
    if len({t.device for t in tensors}) != 1:
        return None
    if any(t.dim() == 0 for t in tensors):
        return None
    return _FastPlan(tensors, subsets)


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
            base = np.fromiter((int(indices[i]) for i in range(m)), dtype=np.int64, count=m)
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


def _device_source(leaf: Leaf, t, ordinal: int):
    """A tensor's bytes in an engine-owned device buffer (one device copy, made contiguous)."""
    import torch

    dev = torch.device("cuda", ordinal)
    src = t.detach()
    if src.is_conj():
        src = src.resolve_conj()
    if src.is_neg():
        src = src.resolve_neg()
    src = src.to(dev).contiguous().reshape(-1).view(torch.uint8)
    buf = _native.DeviceBuffer(src.numel(), ordinal)
    torch.as_tensor(buf, device=dev).copy_(src)
    torch.cuda.synchronize(dev)
    return (leaf.name, buf, leaf.engine, list(leaf.row_shape), leaf.row_bytes, len(t))


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


def _leaf_layout(x, name: str, batched: bool) -> tuple[np.dtype, tuple[int, ...]]:
    if is_tensor(x):
        dtype = torch_numpy_dtype(x, name)
    else:
        dtype = x.dtype.newbyteorder("=") if x.dtype.byteorder == ">" else x.dtype
    shape = tuple(x.shape)
    if batched:
        if not shape:
            raise DrainValueError(
                f"batch leaf {name!r} is 0-dimensional; every leaf needs a first axis of rows"
            )
        shape = shape[1:]
    return np.dtype(dtype), shape


def _batches(loader, batched: bool):
    """``(structure, leaves, generator of (k, [leaf values]))`` with every batch checked against
    the first: same structure, dtypes and row shapes."""
    it = iter(loader)
    try:
        first = next(it)
    except StopIteration:
        raise DrainValueError(
            "the loader yielded no batches, so there is no batch structure to build"
        ) from None
    structure, named = flatten(first)
    leaves = []
    for name, x in named:
        dtype, row_shape = _leaf_layout(x, name, batched)
        leaves.append(Leaf(name, dtype, row_shape))

    def checked():
        yield 0, [x for _, x in named]
        for k, batch in enumerate(it, 1):
            s, got = flatten(batch)
            if not same_structure(s, structure):
                raise DrainValueError(f"batch {k} does not have the structure of the first batch")
            for leaf, (name, x) in zip(leaves, got):
                dtype, row_shape = _leaf_layout(x, name, batched)
                if dtype != leaf.dtype:
                    raise DrainTypeError(
                        f"batch {k}, leaf {name!r}: dtype {dtype} differs from the first "
                        f"batch's {leaf.dtype}"
                    )
                if row_shape != leaf.row_shape:
                    raise DrainValueError(
                        f"batch {k}, leaf {name!r}: row shape {row_shape} differs from the "
                        f"first batch's {leaf.row_shape}"
                    )
            yield k, [x for _, x in got]

    return structure, leaves, checked()


def _is_unbatched(loader) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    from torch.utils.data import DataLoader

    return (
        isinstance(loader, DataLoader)
        and loader.batch_sampler is None
        and loader.batch_size is None
    )


def _drain_general(loader, strategy, device, ordinal, out, progress, files):
    if strategy not in ("auto", "preallocated"):
        raise DrainValueError(
            f"strategy {strategy!r} applies to the fast path (a DataLoader over a TensorDataset); "
            "other loaders are copied batch by batch into preallocated output ('auto')"
        )
    batched = not _is_unbatched(loader)
    rows = declared_rows(loader)
    structure, leaves, batches = _batches(loader, batched)
    if out is not None:
        return _general_into(structure, leaves, batches, rows, out, progress, batched)
    first = next(batches)
    batches = _chain_first(first, batches)
    specs = [leaf.spec() for leaf in leaves]
    cuda = None
    values = first[1]
    if files is None and values and all(is_tensor(x) for x in values):
        devices = {x.device for x in values}
        if len(devices) == 1:
            cuda = _use_cuda(device, ordinal, next(iter(devices)))
    with progress_bar(progress, rows) as bar:
        if cuda is not None:
            u8s = _native.cuda_drain(
                cuda, specs, rows, _device_batches(leaves, batches, cuda, batched, bar)
            )
        else:
            if files is not None and rows is not None and all(l.engine for l in leaves):
                # A known length: straight into memory-mapped files (larger than RAM is fine).
                kind, path, compress = files
                sink = _native.Sink.to_files(specs, rows, kind, os.fspath(path), compress)
            else:
                sink = _native.Sink(specs, rows)
            for _, values in batches:
                sink.push([host_bytes(x, l.name, batched)[0] for l, x in zip(leaves, values)])
                if bar is not None:
                    bar(sink.rows)
            if files is not None:
                kind, path, compress = files
                sink.finish_to_files(kind, os.fspath(path), compress)
                return None
            u8s = sink.finish()
    n = u8s[0].shape[0] if u8s else 0
    return rebuild(structure, [to_array(u8, l, n) for u8, l in zip(u8s, leaves)])


def _chain_first(first, rest):
    yield first
    yield from rest


def _device_batches(leaves, batches, ordinal, batched, bar):
    """Each CUDA batch's leaves copied into engine-owned device buffers (made contiguous), as
    ``[(buffer, rows), ...]`` for the engine's device drain."""
    import torch

    dev = torch.device("cuda", ordinal)
    done = 0
    for _, values in batches:
        parts = []
        for leaf, x in zip(leaves, values):
            src = x.detach()
            if src.is_conj():
                src = src.resolve_conj()
            if src.is_neg():
                src = src.resolve_neg()
            n = src.shape[0] if batched else 1
            src = src.to(dev).contiguous().reshape(-1).view(torch.uint8)
            buf = _native.DeviceBuffer(src.numel(), ordinal)
            torch.as_tensor(buf, device=dev).copy_(src)
            parts.append((buf, n))
        torch.cuda.synchronize(dev)
        done += parts[0][1] if parts else 0
        if bar is not None:
            bar(done)
        yield parts


def _general_into(structure, leaves, batches, rows, out, progress, batched):
    """The general path into ``out=``: each batch copied into its slice of the caller's arrays."""
    outs = _out_leaves(out, structure, leaves)
    if rows is None:
        rows = outs[0].shape[0] if outs and isinstance(outs[0], np.ndarray) else 0
    dsts = [out_bytes(o, leaf, rows) for o, leaf in zip(outs, leaves)]
    _check_overlaps(dsts, [], leaves)
    at = 0
    with progress_bar(progress, rows) as bar:
        for k, values in batches:
            srcs = [host_bytes(x, l.name, batched)[0] for l, x in zip(leaves, values)]
            n = srcs[0].shape[0] if srcs else 0
            for s, l in zip(srcs, leaves):
                if s.shape[0] != n:
                    raise DrainValueError(
                        f"batch {k}, column {l.name!r}: {s.shape[0]} rows, but the batch's "
                        f"first column has {n}"
                    )
            if at + n > rows:
                raise DrainValueError(
                    f"the stream declared {rows} rows but yielded {at + n} or more"
                )
            for s, d in zip(srcs, dsts):
                d[at : at + n] = s
            at += n
            if bar is not None:
                bar(at)
    if at != rows:
        raise DrainValueError(f"the stream declared {rows} rows but yielded {at}")
    return out


# ---- files ------------------------------------------------------------------------------------


def _to_files(loader, kind, path, compress, device, progress) -> None:
    ordinal = _check_device(device)
    path = os.fspath(path)
    plan = _fast_plan(loader)
    if plan is not None:
        leaves = plan.leaves
        sources = [
            (leaf.name, host_bytes(t, leaf.name)[0], leaf.engine, list(leaf.row_shape))
            for leaf, t in zip(leaves, plan.tensors)
        ]
        order, count = _fast_order(plan, loader)
        total = count * sum(leaf.row_bytes for leaf in leaves)
        with progress_bar(progress, total, "B") as bar:
            _native.gather_to_files(
                sources, count, order, loader.batch_size or 1, kind, path, compress, bar
            )
        return
    _drain_general(
        loader,
        "auto",
        "cpu" if ordinal is None else device,
        ordinal,
        None,
        progress,
        (kind, path, compress),
    )

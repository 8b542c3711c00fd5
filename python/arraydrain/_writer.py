"""The other direction: :class:`Writer` puts model outputs, batch after batch, at their dataset
indices of one output (a ``.npy`` file, a ``.npz`` archive, a folder of ``.npy`` files, or NumPy
arrays), which appears once, complete, when the writer closes; :func:`indexed` yields each batch
of a loader with the dataset indices it holds.

The engine does the work (``arraydrain._native.Writer``): ``write`` copies the batch into a
bounded ring of host blocks with the GIL released and returns; a background thread moves the
blocks into the destination. A bitmap of written rows is checked on close: a missing row fails
the close and nothing is committed. bfloat16 and the float8 formats are ``ml_dtypes`` arrays in
memory and are written to files exactly as ``numpy.save`` writes ``ml_dtypes`` arrays
(``'<V2'`` for bfloat16, ``'<V1'`` for float8: read back with ``.view(ml_dtypes.bfloat16)``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Iterator

import numpy as np

from . import _native
from ._errors import ArrayDrainError, DrainIndexError, DrainTypeError, DrainValueError
from ._leaves import _LEAF, engine_dtype, flatten, is_tensor, is_text, rebuild, same_structure
from ._order import epoch_order, replayable
from . import _rendezvous
from ._rendezvous import FsGroup, no_identity_message, run_identity

DEFAULT_RING_BYTES = 64 << 20

ML_DTYPES_HINT = (
    "{what} needs the ml_dtypes package (NumPy's bfloat16 and float8 dtypes, the ones JAX "
    "uses): pip install ml_dtypes"
)

# torch dtypes without a NumPy twin -> (ml_dtypes name, same-size torch integer dtype to view as)
_TORCH_EXTENSION = {
    "bfloat16": ("bfloat16", "int16"),
    "float8_e4m3fn": ("float8_e4m3fn", "uint8"),
    "float8_e5m2": ("float8_e5m2", "uint8"),
    "float8_e4m3fnuz": ("float8_e4m3fnuz", "uint8"),
    "float8_e5m2fnuz": ("float8_e5m2fnuz", "uint8"),
}


def _ml_dtypes(what: str):
    try:
        import ml_dtypes
    except ImportError:
        raise DrainTypeError(ML_DTYPES_HINT.format(what=what)) from None
    return ml_dtypes


def _extension_engine_name(dtype: np.dtype) -> str | None:
    """The engine dtype of an ``ml_dtypes`` dtype: ``bf16``, or an opaque ``'<V1'`` for the
    float8 formats (what ``numpy.save`` writes for them; for ``float8_e5m2`` it writes
    ``'<f1'``, which ``numpy.load`` refuses, so ``'<V1'`` there too). ``None`` for others."""
    if getattr(dtype.type, "__module__", "") != "ml_dtypes":
        return None
    if dtype.name == "bfloat16":
        return "bf16"
    if dtype.name.startswith("float8") and dtype.itemsize == 1:
        return "'<V1'"
    return None


_ENGINE_NAMES: dict[np.dtype, str] = {}


def engine_name(dtype: np.dtype, where: str) -> str:
    """The engine's dtype for a leaf of ``dtype`` (NumPy, or ``ml_dtypes`` extension)."""
    dtype = np.dtype(dtype)
    name = _ENGINE_NAMES.get(dtype)
    if name is not None:
        return name
    name = _extension_engine_name(dtype)
    if name is None:
        name = engine_dtype(dtype, where)
    if name is None:
        raise DrainTypeError(f"leaf {where!r}: dtype {dtype} is not supported")
    _ENGINE_NAMES[dtype] = name
    return name


def _fast_leaf(first: Any, dtype: np.dtype, row_shape: tuple[int, ...]):
    """For a batch that is one CPU tensor or NumPy array: a function that turns a later batch
    into the same ``uint8`` view :func:`leaf_bytes` makes, without its general checks, or
    returns None when the batch is anything else (another type, dtype or row shape, not
    C-contiguous, a tensor needing grad, conjugated or negated), for the general path to take
    (and to refuse, where it refuses). None when there is no such shortcut."""
    per_row = int(np.prod(row_shape, dtype=np.int64))
    ndim = len(row_shape) + 1
    if type(first) is np.ndarray:

        def from_array(x):
            if (
                type(x) is not np.ndarray
                or x.dtype != dtype
                or x.ndim != ndim
                or x.shape[1:] != row_shape
                or not x.flags.c_contiguous
            ):
                return None
            return x.reshape(x.shape[0], per_row).view(np.uint8)

        return from_array
    torch = sys.modules.get("torch")
    if torch is None or type(first) is not torch.Tensor:
        return None
    tdtype = first.dtype
    if tdtype.is_complex:
        return None
    ext = _TORCH_EXTENSION.get(str(tdtype).removeprefix("torch."))
    as_int = None if ext is None else getattr(torch, ext[1])
    strided = torch.strided

    def from_tensor(t):
        if (
            type(t) is not torch.Tensor
            or t.dtype is not tdtype
            or not t.is_cpu
            or t.requires_grad
            or t.layout is not strided
            or t.dim() != ndim
            or t.shape[1:] != row_shape
            or not t.is_contiguous()
            or t.is_neg()
        ):
            return None
        a = t.numpy() if as_int is None else t.view(as_int).numpy()
        return a.reshape(a.shape[0], per_row).view(np.uint8)

    return from_tensor


def _fast_batch(first: Any, structure: Any, leaves: list, layout: list):
    """For a first batch that is one CPU tensor or array, or a tuple, list or dict (with
    ``str`` keys) of them: a function that turns a later batch of the same structure, leaf
    types, dtypes and row shapes, every leaf with the same rows, into its leaves' ``uint8``
    views (:func:`_fast_leaf`), or returns None for anything else (which the general path
    then takes, and refuses where it refuses). None when there is no such shortcut."""
    fns = [_fast_leaf(x, d, s) for (_, x), (_, d, s) in zip(leaves, layout)]
    if not fns or any(f is None for f in fns):
        return None
    if structure is _LEAF:
        (fn,) = fns

        def one(batch):
            u8 = fn(batch)
            return None if u8 is None else [u8]

        return one
    kind = type(first)
    if (
        kind not in (tuple, list, dict)
        or structure[1] is not kind
        or any(sub is not _LEAF for sub in _children(structure))
    ):
        return None
    n = len(fns)
    keys = list(first) if kind is dict else None
    if keys is not None and not all(type(k) is str for k in keys):
        return None

    def several(batch):
        if type(batch) is not kind or len(batch) != n:
            return None
        if keys is not None:
            if list(batch) != keys:
                return None
            batch = batch.values()
        out = []
        for fn, x in zip(fns, batch):
            u8 = fn(x)
            if u8 is None or (out and u8.shape[0] != out[0].shape[0]):
                return None
            out.append(u8)
        return out

    return several


def _children(structure: Any) -> list:
    """The direct sub-structures of a tuple, list or dict structure from :func:`flatten`."""
    items = structure[2]
    return [sub for _, sub in items] if structure[1] is dict else list(items)


_INT64 = np.dtype(np.int64)


def leaf_bytes(x: Any, where: str) -> tuple[np.ndarray, np.dtype, tuple[int, ...]]:
    """A CPU leaf (tensor or NumPy array, any dtype the writer takes) as ``(uint8 array (rows,
    row_bytes) viewing it, dtype, row shape)``; one contiguous copy only when it is not
    C-contiguous."""
    if is_tensor(x):
        import torch

        t = x.detach()
        if t.layout != torch.strided:
            raise DrainTypeError(
                f"leaf {where!r}: a {t.layout} tensor; only dense (strided) tensors are written"
            )
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()
        name = str(t.dtype).removeprefix("torch.")
        if name in _TORCH_EXTENSION:
            ml, as_int = _TORCH_EXTENSION[name]
            ml_dtypes = _ml_dtypes(f"leaf {where!r} (torch.{name})")
            a = t.view(getattr(torch, as_int)).numpy().view(getattr(ml_dtypes, ml))
        else:
            try:
                a = t.numpy()
            except TypeError as e:
                raise DrainTypeError(
                    f"leaf {where!r}: torch dtype {t.dtype} has no NumPy dtype ({e})"
                ) from e
    elif isinstance(x, np.ndarray):
        a = x
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("="))
        a = np.ascontiguousarray(a)
    elif is_text(x):
        raise DrainTypeError(
            f"leaf {where!r} is text; the writer takes tensors and NumPy arrays"
        )
    else:
        raise DrainTypeError(
            f"leaf {where!r} is a {type(x).__name__}, not a tensor or NumPy array"
        )
    if a.ndim == 0:
        raise DrainValueError(
            f"leaf {where!r} is 0-dimensional; every leaf needs a first axis of rows"
        )
    engine_name(a.dtype, where)
    rows, row_shape = a.shape[0], tuple(a.shape[1:])
    per_row = int(np.prod(row_shape, dtype=np.int64))
    return a.reshape(rows, per_row).view(np.uint8), a.dtype, row_shape


class _Terminated(BaseException):
    """Raised by the ``SIGTERM`` handler a writer's ``with`` block installs, to unwind it."""


def _catch_sigterm():
    """In a program that leaves ``SIGTERM`` to its default action (ending the process on the
    spot: what a launcher sends the other ranks when one dies), makes it raise inside the
    ``with`` block instead, so the writer removes its files before the process ends. Returns
    the handler to restore, or None when nothing was installed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None

        def handler(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _rendezvous.process_ends()
            raise _Terminated()

        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return None
    return signal.SIG_DFL


def _distributed():
    """``torch.distributed`` when it is initialised with more than one process, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    d = torch.distributed
    if d.is_available() and d.is_initialized() and d.get_world_size() > 1:
        return d
    return None


class _DeviceLeaf:
    """One leaf of a batch for the engine's device writer: ``nbytes`` contiguous bytes at device
    address ``ptr``, or host bytes ``host`` (a ``uint8`` array ``(rows, row_bytes)``) for a host
    leaf of the same batch; its ``dtype`` and ``row_shape``, ``rows``; ``keep``: what must stay
    referenced until the copy is queued (a contiguous copy PyTorch made)."""

    __slots__ = ("dtype", "host", "keep", "nbytes", "ptr", "row_shape", "rows")

    def __init__(self, ptr, nbytes, host, dtype, row_shape, rows, keep=None):
        self.ptr, self.nbytes, self.host = int(ptr), int(nbytes), host
        self.dtype, self.row_shape, self.rows, self.keep = dtype, row_shape, rows, keep


def _device_dtype(t, where: str) -> np.dtype:
    """The NumPy (or ``ml_dtypes``) dtype of a CUDA tensor's elements, without copying it."""
    import torch

    from ._leaves import torch_numpy_dtype

    if t.layout != torch.strided:
        raise DrainTypeError(
            f"leaf {where!r}: a {t.layout} tensor; only dense (strided) tensors are written"
        )
    name = str(t.dtype).removeprefix("torch.")
    if name in _TORCH_EXTENSION:
        ml_dtypes = _ml_dtypes(f"leaf {where!r} (torch.{name})")
        return np.dtype(getattr(ml_dtypes, _TORCH_EXTENSION[name][0]))
    return torch_numpy_dtype(t, where)


def _cuda_ordinal(leaves) -> int | None:
    """The CUDA device of a batch's CUDA tensors (None when it has none; all on one device)."""
    devices = {x.device.index for _, x in leaves if is_tensor(x) and x.device.type == "cuda"}
    if not devices:
        return None
    if len(devices) != 1:
        raise DrainValueError(
            f"a batch's CUDA tensors are on {len(devices)} devices; write them separately"
        )
    (ordinal,) = devices
    return 0 if ordinal is None else ordinal


def _issue_device_copies(leaves, ordinal: int):
    """The leaves of a batch holding CUDA tensors on device ``ordinal``, for the engine's device
    writer: ``[(name, _DeviceLeaf)]``. Each CUDA tensor is read in place by the engine (one
    PyTorch copy only when it is not contiguous, or a conjugate or negative view); host leaves
    of the same batch go as bytes. Nothing here waits for the GPU: the engine's copies are
    ordered after PyTorch's current stream with an event, and that stream's later work after
    the copies."""
    import torch

    from ._cuda import _lendable

    dev = torch.device("cuda", ordinal)
    out = []
    for name, x in leaves:
        if is_tensor(x) and x.device.type == "cuda":
            t = x.detach()
            dtype = _device_dtype(t, name)
            if t.ndim == 0:
                raise DrainValueError(
                    f"leaf {name!r} is 0-dimensional; every leaf needs a first axis of rows"
                )
            engine_name(dtype, name)
            src = _lendable(t, dev, f"leaf {name!r}")
            nbytes = src.numel() * src.element_size()
            d = _DeviceLeaf(src.data_ptr(), nbytes, None, dtype, tuple(src.shape[1:]),
                            src.shape[0], keep=src)
        else:
            u8, dtype, shape = leaf_bytes(x, name)
            d = _DeviceLeaf(0, u8.nbytes, u8, dtype, shape, u8.shape[0], keep=u8)
        out.append((name, d))
    return out


_ENGINE_FALLBACK_WARNED: set = set()


def _engine_usable(ordinal: int) -> bool:
    """Whether the CUDA engine can run on ``ordinal``; if not, warns once per device and reason
    (the batch's CUDA tensors are then copied to the host by PyTorch, synchronously)."""
    from ._cuda import _cuda_status

    ok, why = _cuda_status(ordinal)
    if not ok and (ordinal, why) not in _ENGINE_FALLBACK_WARNED:
        import warnings

        _ENGINE_FALLBACK_WARNED.add((ordinal, why))
        warnings.warn(
            f"arraydrain.Writer: CUDA tensors on cuda:{ordinal} are copied to the host by "
            f"PyTorch (synchronously) because the CUDA engine cannot start there: {why}",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1]
    return {".npy": "npy", ".npz": "npz"}.get(ext, "dir")


def _indices(at: Any, rows: int) -> np.ndarray:
    """``at=`` as a C-contiguous ``int64`` array of ``rows`` entries."""
    if is_tensor(at):
        at = at.detach().cpu().numpy()
    a = np.asarray(at)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise DrainValueError(f"at= must be one index per row, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        if isinstance(at, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in at
        ):
            # Python ints past int64: NumPy made floats or objects of them.
            big = max(at, key=lambda v: abs(int(v)))
            raise DrainIndexError(f"index {int(big)} in at= is out of range")
        raise DrainTypeError(f"at= must hold integers, not {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise DrainIndexError(f"index {int(a.max())} in at= is too large")
    if len(a) != rows:
        raise DrainValueError(f"at= has {len(a)} indices for a batch of {rows} rows")
    return np.ascontiguousarray(a, dtype=np.int64)


class Writer:
    """Model outputs, batch after batch, to their rows of one output that appears complete on
    close (see the module docs). Use it as a context manager::

        with arraydrain.Writer("feats.npy", rows=len(dataset)) as w:
            for idx, (x, _) in arraydrain.indexed(loader):
                w.write(model(x), at=idx)
        # feats.npy now exists, row i = the output for dataset[i]

    ``path``: a ``.npy`` file (one leaf per batch), a ``.npz`` archive or a folder (one
    ``NAME.npy`` per leaf, named as :func:`arraydrain.drain` names leaves: ``"0"``, ``"logits"``,
    ``"meta.label"``), or ``None`` for NumPy arrays (:attr:`result`, the batch's structure with
    every leaf holding all rows). ``rows``: the output's rows (``len(dataset)``).
    ``ring_bytes``: host memory of the ring the batches pass through (CUDA tensors pass first
    through as many bytes of pinned staging memory). ``compress``: deflate a ``.npz``.

    A missing row fails :meth:`close` (``DrainValueError`` naming how many and the first ones)
    and nothing is committed; leaving the ``with`` block by an exception, or dropping the writer
    unclosed, commits nothing either. In a program that leaves ``SIGTERM`` to its default action,
    ``SIGTERM`` inside the block unwinds it (the files are removed) and then ends the process.

    **Many ranks, one file**: when ``torch.distributed`` is initialised with several processes
    (torchrun, Slurm, MPI), every rank opens the same ``path`` (on a file system all of them
    share) and writes its own rows in place: rank 0 creates the output under a temporary name
    at the first ``write`` and the others join it; on close every rank writes its rows back,
    rank 0 checks that the union of all ranks' rows covers every row, and renames the output
    into place once. ``DistributedSampler``'s padded duplicates write identical bytes to the
    same rows. Every rank must write at least one batch and close (collective calls);
    ``distributed=False`` makes each rank's writer independent. Under a launcher (its variables
    set, several ranks) without ``torch.distributed`` initialised, the ranks meet through the
    file system instead: small messages in a private folder beside the output, named from the
    launcher's run identity (torchrun's ``TORCHELASTIC_RUN_ID`` and master address, Open MPI's
    ``PMIX_NAMESPACE`` or ``OMPI_MCA_ess_base_jobid``, Slurm's job and step; MPICH's Hydra sets
    none, so an MPICH launch needs ``ARRAYDRAIN_RUN_ID``, set alike in every rank of a launch
    and to another value in the next; it overrides the others). Without one the writer is
    refused. A rank waits at most ``timeout`` seconds for the others at close, then fails and
    commits nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        rows: int | None = None,
        *,
        ring_bytes: int = DEFAULT_RING_BYTES,
        compress: bool = False,
        distributed: bool | None = None,
        timeout: float = 1800.0,
    ):
        if rows is None:
            raise DrainTypeError("Writer needs rows= (the output's row count, e.g. len(dataset))")
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
            raise DrainValueError(f"rows= must be a non-negative integer, not {rows!r}")
        if not isinstance(ring_bytes, (int, np.integer)) or ring_bytes < 1:
            raise DrainValueError(f"ring_bytes= must be a positive integer, not {ring_bytes!r}")
        self.path = None if path is None else os.fspath(path)
        self.rows = int(rows)
        self.result: Any = None
        self._ring_bytes = int(ring_bytes)
        self._compress = bool(compress)
        self._native: Any = None
        self._structure: Any = None
        self._leaves: list[tuple[str, np.dtype, tuple[int, ...]]] = []
        self._closed = False
        # One CPU tensor or array per batch: later batches like the first skip the general path.
        self._fast: Any = None
        self._dist = None if distributed is False else _distributed()
        if distributed and self._dist is None:
            raise DrainValueError(
                "distributed=True needs torch.distributed initialised with several processes"
            )
        if self._dist is None and distributed is None and self.path is not None:
            placement = _native.launcher_placement()
            if placement is not None and placement[1] > 1:
                rank, world, source = placement
                run_id = run_identity(launcher=source)
                if run_id is None:
                    raise DrainValueError(no_identity_message(rank, world, source))
                self._dist = FsGroup(self.path, rank, world, run_id, timeout)
        if self._dist is not None and self.path is None:
            raise DrainValueError(
                "an output in memory cannot be shared between ranks: give a path on a shared "
                "file system, or distributed=False for one output per rank"
            )

    # ---- writing ---------------------------------------------------------------------------

    def write(self, batch: Any, at: Any = None) -> None:
        """Writes one batch (a tensor, NumPy array, or a tuple/list/dict of them) to the output
        rows ``at`` (one dataset index per batch row), or after the rows appended so far when
        ``at`` is None. Returns once the rows are copied into the ring. A writer either appends
        every batch or places every batch by index (a batch given the other way is refused,
        :class:`DrainValueError`, and changes nothing); a writer shared by several ranks places
        by index only.

        CUDA tensors are read in place by the CUDA engine: their copy to pinned host memory
        (a pool of ``ring_bytes`` staging blocks) runs on the engine's own streams, after an
        event recorded on PyTorch's current stream (so after the kernels that produced them),
        and that stream waits for the copy before its later work, so the tensors' GPU memory can
        be reused as soon as ``write`` returns. ``write`` returns without synchronising the GPU;
        landed copies go into the ring at later writes (waited for only when the staging pool
        is full, and at close). Where the engine cannot start, PyTorch copies the tensors to the
        host instead (a ``RuntimeWarning`` says why). ``at`` is read at once."""
        if self._closed:
            raise DrainValueError("the writer is closed")
        if at is None and self._dist is not None:
            raise DrainValueError(
                "with several ranks writing one output, every write needs at= (the dataset "
                "indices of its rows, e.g. from arraydrain.indexed(loader)): appended rows "
                "would start at row 0 in every rank"
            )
        fast = self._fast
        if fast is not None:
            u8s = fast(batch)
            if u8s is not None:
                rows = u8s[0].shape[0]
                if at is None:
                    idx = None
                elif (
                    type(at) is np.ndarray
                    and at.dtype is _INT64
                    and at.ndim == 1
                    and at.shape[0] == rows
                    and at.flags.c_contiguous
                ):
                    idx = at  # the engine checks every index (negative or past the rows)
                else:
                    idx = self._checked_indices(at, rows)
                self._native.write(u8s, rows, idx)
                return
        structure, leaves = flatten(batch)
        ordinal = _cuda_ordinal(leaves)
        if ordinal is not None:
            if _engine_usable(ordinal):
                import torch

                from ._cuda import _stream_handle

                device_leaves = _issue_device_copies(leaves, ordinal)
                stream = _stream_handle(torch.device("cuda", ordinal))
                self._write_device(structure, device_leaves, ordinal, stream, at)
                return
            leaves = [(n, x.cpu() if is_tensor(x) else x) for n, x in leaves]
        self._complete_pending(wait_all=True)  # rows keep the order they were written in
        cols = [leaf_bytes(x, name) for name, x in leaves]
        if not cols:
            raise DrainValueError("the batch has no tensors or arrays to write")
        rows = cols[0][0].shape[0]
        for (name, _), (u8, _, _) in zip(leaves, cols):
            if u8.shape[0] != rows:
                raise DrainValueError(
                    f"leaf {name!r} has {u8.shape[0]} rows, the batch's first leaf {rows}"
                )
        layout = [(name, dtype, shape) for (name, _), (_, dtype, shape) in zip(leaves, cols)]
        if self._native is None:
            self._open(structure, layout)
            self._fast = _fast_batch(batch, structure, leaves, layout)
        else:
            self._check(structure, layout)
        idx = None if at is None else self._checked_indices(at, rows)
        arrays = [c[0] for c in cols]
        self._native.write(arrays, rows, idx)

    def _write_device(self, structure, leaves, ordinal: int, stream: int, at: Any) -> None:
        """One batch of :class:`_DeviceLeaf` leaves on device ``ordinal``, produced on raw
        stream ``stream``, through the engine's device writer (checked as :meth:`write` checks
        host batches first)."""
        rows = leaves[0][1].rows if leaves else 0
        for name, d in leaves:
            if d.rows != rows:
                raise DrainValueError(
                    f"leaf {name!r} has {d.rows} rows, the batch's first leaf {rows}"
                )
        layout = [(name, d.dtype, d.row_shape) for name, d in leaves]
        if self._native is None:
            self._open(structure, layout)
        else:
            self._check(structure, layout)
        idx = None if at is None else self._checked_indices(at, rows)
        self._native.write_device(
            ordinal,
            [d.ptr for _, d in leaves],
            [d.nbytes for _, d in leaves],
            [d.host for _, d in leaves],
            rows,
            stream,
            idx,
        )

    def _write_device_memory(self, columns: dict, at: Any = None, *, stream: int = 0,
                             ordinal: int = 0) -> None:
        """Internal, for the tests under the CUDA driver simulator (where PyTorch has no CUDA):
        :meth:`write` of one batch whose leaves are device memory given by address. ``columns``
        maps each leaf name to ``(address, dtype, shape)`` (the shape's first axis: the rows),
        contiguous bytes written on raw stream ``stream`` (a ``CUstream`` of device ``ordinal``'s
        primary context; 0: the legacy default stream). The engine's device writer copies them
        exactly as it copies CUDA tensors."""
        if self._closed:
            raise DrainValueError("the writer is closed")
        views = {
            n: np.broadcast_to(np.zeros((), np.dtype(d)), s) for n, (_, d, s) in columns.items()
        }
        structure, names = flatten(views)
        leaves = []
        for name, _ in names:
            ptr, dtype, shape = columns[name]
            dtype = np.dtype(dtype)
            engine_name(dtype, name)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            leaves.append((name, _DeviceLeaf(ptr, nbytes, None, dtype, tuple(shape[1:]),
                                             shape[0])))
        self._write_device(structure, leaves, ordinal, stream, at)

    def _checked_indices(self, at: Any, rows: int) -> np.ndarray:
        """``at=`` as ``int64``, every index checked against the output's rows (before any
        device copy is queued)."""
        idx = _indices(at, rows)
        if idx.size and (idx.min() < 0 or idx.max() >= self.rows):
            pos = int(np.argmax((idx < 0) | (idx >= self.rows)))
            raise DrainIndexError(
                f"index {int(idx[pos])} at position {pos} is out of range for {self.rows} rows"
            )
        return idx

    def _complete_pending(self, wait_all: bool) -> None:
        """With ``wait_all``: waits for every device batch in flight and hands it to the ring
        (the engine hands landed ones over at each device write by itself), so what is written
        next comes after them."""
        if wait_all and self._native is not None:
            self._native.flush_device()

    def _open(self, structure, layout) -> None:
        columns = [(n, engine_name(d, n), list(s)) for n, d, s in layout]
        kind = "npy" if self.path is None else _kind(self.path)
        if kind == "npy" and self.path is not None and len(columns) != 1:
            raise DrainValueError(
                f"{self.path}: a .npy file holds one array, the batch has {len(columns)} leaves "
                f"({', '.join(c[0] for c in columns)}); write a .npz or a folder"
            )
        args = (self.path, kind, self.rows, columns, self._ring_bytes, self._compress)
        if self._dist is None:
            self._native = _native.Writer(*args)
        else:
            self._native = self._open_shared(args)
        self._structure = structure
        self._leaves = layout

    def _open_shared(self, args):
        """Rank 0 creates the output, the others join it (its temporary path is broadcast)."""
        d = self._dist
        if d.get_rank() == 0:
            native, failure = None, None
            try:
                native = _native.Writer(*args)
                msg = ("ok", os.fspath(native.shared_path))
            except ArrayDrainError as e:
                failure, msg = e, ("error", f"{type(e).__name__}: {e}")
            box = [msg]
            d.broadcast_object_list(box, src=0)
            if failure is not None:
                raise failure
            return native
        box = [None]
        d.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status != "ok":
            raise DrainValueError(f"rank 0 could not create the output: {value}")
        return _native.Writer(*args, join=value)

    def _check(self, structure, layout) -> None:
        if not same_structure(self._structure, structure) or len(layout) != len(self._leaves):
            raise DrainValueError(
                "the batch's structure differs from the first batch's "
                f"(leaves {[n for n, _, _ in layout]}, first {[n for n, _, _ in self._leaves]})"
            )
        for (n, d, s), (n0, d0, s0) in zip(layout, self._leaves):
            if (n, d, s) != (n0, d0, s0):
                raise DrainValueError(
                    f"leaf {n!r}: {d} rows of shape {s}, the first batch's were {d0} of {s0}"
                )

    # ---- closing ---------------------------------------------------------------------------

    @property
    def rows_written(self) -> int:
        """Distinct rows written so far."""
        return 0 if self._native is None else self._native.rows_written

    def close(self) -> Any:
        """Waits for every row to reach the destination, checks every row was written, and puts
        the output in place (renamed once). Returns :attr:`result` (``None`` for files)."""
        if self._closed:
            return self.result
        try:
            self._complete_pending(wait_all=True)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        native, self._native = self._native, None
        if native is None:
            if self.rows:
                raise DrainValueError(
                    f"{self.rows} of {self.rows} rows were never written; nothing was committed"
                )
            if self.path is not None:
                raise DrainValueError(
                    f"{self.path}: no batch was written, so the output's columns are unknown; "
                    "nothing was committed"
                )
            return None
        if self._dist is not None:
            try:
                out = self._close_shared(native)
            except BaseException:
                # A collective that failed (a rank died) leaves this rank's files to remove now,
                # not when the exception's frames are collected (perhaps never, at exit).
                native.abort()
                if isinstance(self._dist, FsGroup):
                    self._dist.end()
                raise
            if isinstance(self._dist, FsGroup):
                self._dist.end()
            return out
        arrays = native.close()
        if arrays is not None:
            out = [
                u8.view(dtype).reshape((self.rows,) + shape)
                for u8, (_, dtype, shape) in zip(arrays, self._leaves)
            ]
            self.result = rebuild(self._structure, out)
        return self.result

    def _close_shared(self, native) -> None:
        """Every rank writes its rows back and sends its bitmap to all; rank 0 checks the
        union and commits, then tells the others how it went."""
        d = self._dist
        rank, world = d.get_rank(), d.get_world_size()
        try:
            native.sync()
            mine = ("ok", native.coverage(), native.rows_written)
        except ArrayDrainError as e:
            mine = ("error", f"rank {rank}: {type(e).__name__}: {e}", 0)
        every = [None] * world
        d.all_gather_object(every, mine)
        failure = None
        if rank == 0:
            errors = [m[1] for m in every if m[0] != "ok"]
            if errors:
                native.abort()
                outcome = ("error", "; ".join(errors))
            else:
                try:
                    native.close([m[1] for m in every[1:]])
                    outcome = ("ok", None)
                except ArrayDrainError as e:
                    counts = ", ".join(f"rank {r}: {m[2]}" for r, m in enumerate(every))
                    failure = type(e)(f"{e} (distinct rows each rank wrote: {counts})")
                    outcome = ("error", str(failure))
        else:
            native.close()  # a joined writer: its rows are written back, it commits nothing
            outcome = None
        box = [outcome]
        d.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        if box[0][0] != "ok":
            raise DrainValueError(f"the output was not committed: {box[0][1]}")
        return None

    def abort(self) -> None:
        """Drops everything written: no output appears, temporary files are removed."""
        self._closed = True
        native, self._native = self._native, None
        if native is not None:
            native.abort()
        if isinstance(self._dist, FsGroup):
            self._dist.leave()

    def __enter__(self) -> Writer:
        self._sigterm = _catch_sigterm()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        previous, self._sigterm = getattr(self, "_sigterm", None), None
        try:
            if exc_type is not None:
                self.abort()
            else:
                self.close()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if exc_type is _Terminated and previous is not None:
            # The writer that installed the handler (the outermost) ends the process as SIGTERM
            # would have, once every writer inside it has removed its files.
            os.kill(os.getpid(), signal.SIGTERM)

    def __del__(self):
        native = getattr(self, "_native", None)
        if native is not None:
            try:
                native.abort()
            except Exception:  # noqa: BLE001 - at interpreter exit; the files go regardless
                pass


def _rng_states(loader) -> list:
    """Every generator an epoch's order may draw from, with its state."""
    import torch

    gens = [torch.default_generator]
    for g in (
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator",
                None),
    ):
        if g is not None and all(g is not h for h in gens):
            gens.append(g)
    return [(g, g.get_state()) for g in gens]


def indexed(loader) -> Iterator[tuple[np.ndarray, Any]]:
    """Yields ``(indices, batch)`` for each batch of one epoch of ``loader``: the dataset
    indices (``int64``) of the batch's rows, for :meth:`Writer.write`'s ``at=``.

    The loader itself is iterated (its workers, collate and transforms run as always); the
    indices are the order its sampler yields, replayed as :func:`arraydrain.drain` replays it,
    for the samplers that can be replayed: ``SequentialSampler``, ``RandomSampler``,
    ``SubsetRandomSampler`` and ``DistributedSampler`` under the default ``BatchSampler``.
    Every random generator is left exactly as a plain epoch leaves it."""
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise DrainTypeError(
            "indexed() needs a map-style DataLoader (an IterableDataset has no indices)"
        )
    bs = loader.batch_sampler
    sampler = bs.sampler if type(bs) is BatchSampler else loader.sampler if bs is None else None
    if sampler is None or not replayable(sampler):
        what = type(bs).__name__ if sampler is None else type(sampler).__name__
        raise DrainTypeError(
            f"indexed() cannot know the indices a {what} yields; it replays SequentialSampler, "
            "RandomSampler, SubsetRandomSampler and DistributedSampler under a BatchSampler"
        )
    states = _rng_states(loader)
    try:
        order = epoch_order(loader)
    finally:
        for g, s in states:
            g.set_state(s)
    if isinstance(order, range):
        order = np.arange(order.start, order.stop, dtype=np.int64)
    size = 1 if bs is None else bs.batch_size
    pos = 0
    for batch in loader:
        if pos >= len(order):
            raise DrainValueError(
                f"the loader yielded more batches than its sampler's {len(order)} indices"
            )
        idx = order[pos : pos + size]
        pos += size
        yield (int(idx[0]) if bs is None else idx), batch
    if pos < len(order):
        raise DrainValueError(
            f"the loader yielded {pos} indices' worth of batches, its sampler {len(order)}"
        )

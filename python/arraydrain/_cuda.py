"""The CUDA side of the Python package: which device a drain uses, whether the engine can start
there, and how CUDA tensors reach the engine.

CUDA tensors are read **in place**: each tensor (made contiguous through PyTorch when it is not,
so the copy comes from PyTorch's caching allocator) is lent to the engine as its device address,
its row layout, the raw handle of PyTorch's current stream on its device and the tensor itself,
which the engine keeps referenced until it is done reading. The engine records an event on that
stream and makes its own streams wait for it on the device before their first read, so work
queued on PyTorch's stream (the kernel that produced the tensor, ``.contiguous()``) is ordered
before the reads without synchronising the device. The engine never frees lent memory."""

from __future__ import annotations

import os
import sys
import warnings

from . import _general, _native
from ._errors import DrainMemoryError, DrainRuntimeError, DrainTypeError, DrainValueError
from ._leaves import Leaf, is_tensor, to_array, torch_numpy_dtype
from ._progress import progress_bar


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


# ---- lending tensors to the engine ------------------------------------------------------------


def _retry_on_oom(make, what: str, nbytes: int):
    """``make()`` — a PyTorch copy (``.contiguous()``, ``.to(device)``, ``resolve_conj()``) —
    and, if PyTorch's caching allocator runs out of device memory, the same once more after
    ``torch.cuda.empty_cache()`` has handed PyTorch's cached, unused blocks back to the driver;
    a second out-of-memory error is a ``DrainMemoryError`` naming the tensor and the size."""
    import torch

    try:
        return make()
    except torch.cuda.OutOfMemoryError:
        pass
    torch.cuda.empty_cache()
    try:
        return make()
    except torch.cuda.OutOfMemoryError as e:
        raise DrainMemoryError(
            f"{what}: the engine reads CUDA tensors in place, but this one must first be copied "
            f"by PyTorch ({nbytes} bytes: it is not contiguous, is a conjugate or negative view, "
            "or lives on another device), and that copy ran out of device memory even after "
            f"torch.cuda.empty_cache(): {e}"
        ) from e


def _lendable(x, dev, what: str):
    """``x`` as a contiguous tensor on ``dev`` that the engine can read in place: ``x`` itself
    when it already is one, else one copy made by PyTorch (see :func:`_retry_on_oom`)."""
    src = x.detach()
    nbytes = src.numel() * src.element_size()
    if src.device != dev:
        src = _retry_on_oom(lambda: src.to(dev), what, nbytes)
    if src.is_conj():
        src = _retry_on_oom(src.resolve_conj, what, nbytes)
    if src.is_neg():
        src = _retry_on_oom(src.resolve_neg, what, nbytes)
    if not src.is_contiguous():
        src = _retry_on_oom(src.contiguous, what, nbytes)
    return src


def _stream_handle(dev) -> int:
    """The raw ``CUstream`` of PyTorch's current stream on ``dev``: the stream the tensors about
    to be lent were produced on (or ordered after), which the engine's streams wait for."""
    import torch

    return int(torch.cuda.current_stream(dev).cuda_stream)


def _device_source(leaf: Leaf, t, ordinal: int):
    """A TensorDataset tensor lent to the engine, read in place (one PyTorch copy only when it
    must be made contiguous or moved to device ``ordinal``): ``(name, tensor, address, stream,
    dtype, row shape, row bytes, rows)``."""
    import torch

    dev = torch.device("cuda", ordinal)
    src = _lendable(t, dev, f"tensor {leaf.name} of the TensorDataset")
    return (
        leaf.name,
        src,
        src.data_ptr(),
        _stream_handle(dev),
        leaf.engine,
        list(leaf.row_shape),
        leaf.row_bytes,
        len(t),
    )


def _cuda_general(layout, it, rows, exact, cuda, progress):
    """The general path's CUDA batches, drained by the engine as they come into pinned output
    (preallocated for ``rows``: exactly, or as a hint when ``exact`` is false)."""
    leaves = layout.leaves
    specs = [leaf.spec() for leaf in leaves]

    def batches():
        yield 0, layout.first_values
        for k, batch in enumerate(it, 1):
            vals = layout.values(batch, k)
            for leaf, x in zip(leaves, vals):
                if not is_tensor(x):
                    raise DrainTypeError(
                        f"batch {k}, leaf {leaf.name!r} is a {type(x).__name__}, not a tensor "
                        "as in the first batch"
                    )
                dtype = torch_numpy_dtype(x, leaf.name)
                shape = tuple(x.shape[1:]) if layout.batched else tuple(x.shape)
                if dtype != leaf.dtype:
                    raise DrainTypeError(
                        f"batch {k}, leaf {leaf.name!r}: dtype {dtype} differs from the first "
                        f"batch's {leaf.dtype}"
                    )
                if shape != leaf.row_shape:
                    raise DrainValueError(
                        f"batch {k}, leaf {leaf.name!r}: row shape {shape} differs from the "
                        f"first batch's {leaf.row_shape}"
                    )
            yield k, vals

    with progress_bar(progress, rows) as bar:
        u8s = _native.cuda_drain(
            cuda,
            specs,
            rows,
            _device_batches(leaves, batches(), cuda, layout.batched, bar),
            exact,
        )
    n = u8s[0].shape[0] if u8s else 0
    return _general.rebuild_result(layout, [to_array(u8, l, n) for u8, l in zip(u8s, leaves)])


def _device_batches(leaves, batches, ordinal, batched, bar):
    """Each CUDA batch's leaves lent to the engine in place (made contiguous on device
    ``ordinal`` through PyTorch where they are not), as ``[(tensor, address, stream, rows),
    ...]`` for the engine's device drain. Nothing here waits for the device: the engine orders
    its reads after PyTorch's current stream with an event."""
    import torch

    dev = torch.device("cuda", ordinal)
    done = 0
    for k, values in batches:
        parts = []
        for leaf, x in zip(leaves, values):
            src = _lendable(x, dev, f"batch {k}, leaf {leaf.name!r}")
            n = src.shape[0] if batched else 1
            parts.append((src, src.data_ptr(), _stream_handle(dev), n))
        done += parts[0][3] if parts else 0
        if bar is not None:
            bar(done)
        yield parts

"""Batch structures and their leaves: flattening a batch (tuple, list, dict, namedtuple, nested
as a collate function makes it) into named leaves, rebuilding the structure around the output
arrays, and the dtype rules for tensors and NumPy arrays."""

from __future__ import annotations

import collections.abc
from typing import Any

import numpy as np

from ._errors import DrainTypeError, DrainValueError

# NumPy dtype -> the engine's dtype: a numeric dtype's name, or a NumPy descriptor literal.
_ENGINE_NAMES = {
    np.dtype(np.float16): "f16",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
    np.dtype(np.int8): "i8",
    np.dtype(np.int16): "i16",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
    np.dtype(np.uint8): "u8",
    np.dtype(np.uint16): "u16",
    np.dtype(np.uint32): "u32",
    np.dtype(np.uint64): "u64",
    np.dtype(np.bool_): "bool",
    # Complex: an opaque engine dtype named by its NumPy descriptor (kept verbatim in files).
    np.dtype(np.complex64): repr(np.dtype(np.complex64).str),
    np.dtype(np.complex128): repr(np.dtype(np.complex128).str),
}

BFLOAT16_MESSAGE = (
    "{where}: torch.bfloat16 has no NumPy dtype of NumPy's own; it drains as an "
    "ml_dtypes.bfloat16 array, which needs the ml_dtypes package (pip install ml_dtypes). Or "
    "convert it first with tensor.float(), which is exact (a float16 copy is not: it overflows "
    "above 65504 and loses small values)"
)


def bfloat16_dtype(where: str) -> np.dtype:
    """``ml_dtypes.bfloat16`` (NumPy's bfloat16 extension dtype, the one JAX uses), or the
    message naming the package when it is missing."""
    try:
        import ml_dtypes
    except ImportError:
        raise DrainTypeError(BFLOAT16_MESSAGE.format(where=where)) from None
    return np.dtype(ml_dtypes.bfloat16)


# Fixed-size NumPy dtypes carried as opaque bytes, named by their descriptor: dates and times
# (with their unit), complex numbers, fixed-width strings.
_OPAQUE_KINDS = "cMmUS"


def engine_dtype(dtype: np.dtype, where: str) -> str | None:
    """The engine's dtype for a NumPy dtype: a numeric dtype's name, or for complex dtypes the
    NumPy descriptor literal (an opaque engine dtype)."""
    d = np.dtype(dtype).newbyteorder("=") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    if d.name == "bfloat16" and getattr(d.type, "__module__", "") == "ml_dtypes":
        return "bf16"  # written to files as numpy.save writes it: '<V2'
    if d in _ENGINE_NAMES:
        return _ENGINE_NAMES[d]
    if d.kind in _OPAQUE_KINDS and d.fields is None and d.subdtype is None and d.itemsize > 0:
        return repr(d.str)
    raise DrainTypeError(
        f"leaf {where!r}: dtype {dtype} is not supported (numbers, bool, datetime64, "
        "timedelta64 and strings are)"
    )


def torch_numpy_dtype(t, where: str) -> np.dtype:
    """The NumPy dtype of a tensor's elements, refusing those NumPy has no type for."""
    import torch

    if t.dtype == torch.bfloat16:
        return bfloat16_dtype(f"leaf {where!r}")
    if t.layout != torch.strided:
        raise DrainTypeError(
            f"leaf {where!r}: a {t.layout} tensor; only dense (strided) tensors drain "
            "(convert with .to_dense())"
        )
    try:
        d = torch.empty((), dtype=t.dtype).numpy().dtype
    except TypeError as e:
        raise DrainTypeError(
            f"leaf {where!r}: torch dtype {t.dtype} has no NumPy dtype ({e})"
        ) from e
    engine_dtype(d, where)
    return d


class Leaf:
    """One leaf of a batch: its name (a path), dtype, shape of one row."""

    __slots__ = ("dtype", "engine", "name", "row_bytes", "row_shape")

    def __init__(self, name: str, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.engine = engine_dtype(self.dtype, name)

    def spec(self):
        """``(name, engine dtype, row shape, row bytes)`` as the native sink takes it."""
        return (self.name, self.engine, list(self.row_shape), self.row_bytes)


def is_tensor(x) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_text(x) -> bool:
    """Whether ``x`` is a text leaf: a ``list`` or ``tuple`` of ``str`` (what the default
    collate makes of a ``str`` field), or a NumPy string array (``<U``, ``S``, ``StringDType``)."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "USTO" and _is_string_array(x)
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and not hasattr(x, "_fields")
        and all(isinstance(v, str) for v in x)
    )


def _is_string_array(x: np.ndarray) -> bool:
    return x.dtype.kind in "UST"


def _is_tensordict(x) -> bool:
    import sys

    td = sys.modules.get("tensordict")
    base = getattr(td, "TensorDictBase", None) if td is not None else None
    return base is not None and isinstance(x, base)


def flatten(
    batch: Any, path: str = "", single: bool = False, keys: list | None = None
) -> tuple[Any, list[tuple[str, Any]]]:
    """``(structure, [(name, leaf), ...])``: the structure is a tree of containers whose
    leaves are placeholders, rebuilt by :func:`rebuild`. Names are paths: list and tuple
    positions and dict keys joined by ``.`` (``"0"``, ``"image"``, ``"meta.label"``).

    Leaves are tensors, NumPy arrays and text: a list or tuple of ``str`` (a text column of a
    batch), or with ``single`` (each item one row) a ``str``. A TensorDict is a dict of its
    keys. With ``keys`` (a list), the key path of each leaf is appended to it, for messages."""
    leaves: list[tuple[str, Any]] = []

    def walk(x, p, kp):
        if (
            is_tensor(x)
            or isinstance(x, np.ndarray)
            or is_text(x)
            or (single and isinstance(x, str))
        ):
            leaves.append((p if kp else "0", x))
            if keys is not None:
                keys.append(kp)
            return _LEAF
        if _is_tensordict(x):
            items = [(k, x.get(k)) for k in x.keys()]
            return ("dict", dict, [(k, walk(v, _join(p, str(k)), kp + (k,))) for k, v in items])
        if isinstance(x, collections.abc.Mapping):
            return (
                "dict",
                type(x),
                [(k, walk(v, _join(p, str(k)), kp + (k,))) for k, v in x.items()],
            )
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return (
                "namedtuple",
                type(x),
                [walk(v, _join(p, str(i)), kp + (i,)) for i, v in enumerate(x)],
            )
        if isinstance(x, (list, tuple)):
            return (
                type(x).__name__ if type(x) in (list, tuple) else "seq",
                type(x),
                [walk(v, _join(p, str(i)), kp + (i,)) for i, v in enumerate(x)],
            )
        what = f"batch leaf {p or '<batch>'!r} is a {type(x).__name__}"
        if isinstance(x, str):
            raise DrainTypeError(
                f"{what} for the whole batch, not a column with a row per sample "
                "(text columns are lists of str, one per row)"
            )
        raise DrainTypeError(f"{what}, not a tensor, NumPy array or text")

    return walk(batch, path, ()), leaves


def key_path(keys: tuple) -> str:
    """A leaf's key path as indexing code: ``['a']['b']``, ``[0]``."""
    return "".join(f"[{k!r}]" for k in keys) or "the batch itself"


_LEAF = object()


def _join(p: str, k: str) -> str:
    return f"{p}.{k}" if p else k


def rebuild(structure: Any, arrays: list[Any]) -> Any:
    """The structure with its leaves replaced, in order, by ``arrays``."""
    it = iter(arrays)

    def build(s):
        if s is _LEAF:
            return next(it)
        kind, typ, children = s
        if kind == "dict":
            d = {k: build(v) for k, v in children}
            if typ is dict:
                return d
            try:
                return typ(d)
            except Exception:  # noqa: BLE001 - a mapping type without a dict constructor
                return d
        items = [build(c) for c in children]
        if kind == "namedtuple":
            return typ(*items)
        if kind == "tuple":
            return tuple(items)
        if kind == "list":
            return items
        try:
            return typ(items)
        except Exception:  # noqa: BLE001 - a sequence type without a list constructor
            return items

    return build(structure)


def same_structure(a: Any, b: Any) -> bool:
    """Whether two structures from :func:`flatten` match (containers, keys, arity)."""
    if a is _LEAF or b is _LEAF:
        return a is b
    if a[0] != b[0] or a[1] is not b[1] or len(a[2]) != len(b[2]):
        return False
    if a[0] == "dict":
        return all(ka == kb and same_structure(va, vb) for (ka, va), (kb, vb) in zip(a[2], b[2]))
    return all(same_structure(x, y) for x, y in zip(a[2], b[2]))


def resolved_tensor(x):
    """A tensor's values as a plain tensor (no autograd, no lazy conjugate or negation), on its
    own device; no copy when it already is one."""
    t = x.detach() if x.requires_grad else x
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def tensor_numpy(x, where: str, contiguous: bool = False) -> np.ndarray:
    """A tensor as a NumPy array on the host — the one place a tensor becomes NumPy: a view of a
    plain CPU tensor, one copy otherwise (a device tensor, a conjugate or negative view, and,
    with ``contiguous``, a tensor that is not C-contiguous). A dtype NumPy lacks raises the
    specific ``DrainTypeError``."""
    t = resolved_tensor(x)
    if t.device.type != "cpu":
        t = t.cpu()
    if contiguous and not t.is_contiguous():
        t = t.contiguous()
    import torch

    if t.dtype == torch.bfloat16:
        # NumPy has no bfloat16 of its own: the same bytes viewed as ml_dtypes.bfloat16.
        return t.view(torch.int16).numpy().view(bfloat16_dtype(f"leaf {where!r}"))
    try:
        return t.numpy()
    except TypeError as e:
        torch_numpy_dtype(t, where)  # raises the specific message
        raise DrainTypeError(f"leaf {where!r}: {e}") from e


def host_bytes(x, where: str, batched: bool = True) -> tuple[np.ndarray, np.dtype, tuple[int, ...]]:
    """A CPU leaf as ``(uint8 array (rows, row_bytes) viewing it, dtype, row shape)``; one
    contiguous copy when the leaf is not C-contiguous, none otherwise. ``batched=False`` treats
    the leaf as one row."""
    if is_tensor(x):
        dtype = torch_numpy_dtype(x, where)
        a = tensor_numpy(x, where, contiguous=True)
    elif isinstance(x, np.ndarray):
        dtype = x.dtype
        engine_dtype(dtype, where)
        if dtype.byteorder == ">":
            dtype = dtype.newbyteorder("=")
            x = x.astype(dtype)
        a = np.ascontiguousarray(x)
    else:
        raise DrainTypeError(
            f"batch leaf {where!r} is a {type(x).__name__}, not a tensor or NumPy array"
        )
    if not batched:
        a = a.reshape((1,) + a.shape)
    if a.ndim == 0:
        raise DrainValueError(
            f"batch leaf {where!r} is 0-dimensional; every leaf needs a first axis of rows"
        )
    rows, row_shape = a.shape[0], a.shape[1:]
    per_row = int(np.prod(row_shape, dtype=np.int64))
    return a.reshape(rows, per_row).view(np.uint8), dtype, tuple(row_shape)


def to_array(u8: np.ndarray, leaf: Leaf, rows: int) -> np.ndarray:
    """The engine's ``uint8`` output viewed as the leaf's dtype and shape (no copy)."""
    return u8[:rows].view(leaf.dtype).reshape((rows,) + leaf.row_shape)


def out_bytes(o: Any, leaf: Leaf, rows: int) -> np.ndarray:
    """An ``out=`` array as a writable ``uint8`` view ``(rows, row_bytes)``, checked."""
    if not isinstance(o, np.ndarray):
        raise DrainTypeError(f"out= leaf {leaf.name!r} is a {type(o).__name__}, not a NumPy array")
    if o.dtype != leaf.dtype:
        raise DrainTypeError(
            f"out= leaf {leaf.name!r} holds {o.dtype}, the drain yields {leaf.dtype}"
        )
    want = (rows,) + leaf.row_shape
    if o.shape != want:
        raise DrainValueError(
            f"out= leaf {leaf.name!r} has shape {o.shape}, the drain yields {want}"
        )
    if not o.flags.c_contiguous or not o.flags.writeable:
        raise DrainValueError(f"out= leaf {leaf.name!r} must be a writable C-contiguous array")
    return o.reshape(rows, int(np.prod(leaf.row_shape, dtype=np.int64))).view(np.uint8)

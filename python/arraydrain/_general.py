"""The general path: any iterable of batches, read batch by batch as one real epoch yields them,
each batch copied into preallocated NumPy output as it comes.

Leaves are numeric (tensors and NumPy arrays, copied into arrays allocated once from the loader's
length, or grown geometrically when it is unknown) or text (lists of ``str`` from the default
collate, NumPy string arrays), kept as Python lists or array chunks and made into one NumPy string
array at the end.
"""

from __future__ import annotations

import random
import sys

import numpy as np

from . import _native
from ._errors import DrainMemoryError, DrainTypeError, DrainValueError
from ._leaves import (
    _LEAF,
    engine_dtype,
    flatten,
    is_tensor,
    key_path,
    rebuild,
    same_structure,
    tensor_numpy,
    torch_numpy_dtype,
)


class GLeaf:
    """One leaf of the general path: name, kind (``"num"`` or ``"text"``), and for numeric
    leaves the dtype and the shape of one row; ``pylist`` for text from lists of ``str``."""

    __slots__ = ("dtype", "kind", "name", "pylist", "row_bytes", "row_shape")

    def __init__(self, name, kind, dtype=None, row_shape=(), pylist=False):
        self.name = name
        self.kind = kind
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.pylist = pylist
        self.row_bytes = (
            int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
            if self.dtype is not None
            else 0
        )

    def spec(self):
        """``(name, engine dtype, row shape, row bytes)`` as the native sink takes it."""
        engine = engine_dtype(self.dtype, self.name)
        return (self.name, engine, list(self.row_shape), self.row_bytes)


_TORCH_DTYPES: dict = {}


def _tensor_array(x, name: str) -> np.ndarray:
    """A CPU NumPy view (or, for CUDA, conjugated or negated views, one copy) of a tensor."""
    t = x.detach() if x.requires_grad else x
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.device.type != "cpu":
        t = t.cpu()
    try:
        return tensor_numpy(t)
    except TypeError as e:
        torch_numpy_dtype(t, name)  # raises the specific message
        raise DrainTypeError(f"leaf {name!r}: {e}") from e


def _layout(x, name: str, batched: bool) -> GLeaf:
    if isinstance(x, str) or (isinstance(x, (list, tuple))):
        return GLeaf(name, "text", pylist=True)
    if isinstance(x, np.ndarray) and x.dtype.kind in "UST":
        shape = x.shape[1:] if batched else x.shape
        if batched and x.ndim == 0:
            raise DrainValueError(
                f"batch leaf {name!r} is 0-dimensional; every leaf needs a first axis of rows"
            )
        return GLeaf(name, "text", x.dtype, shape)
    if is_tensor(x):
        dtype = torch_numpy_dtype(x, name)
    else:
        dtype = x.dtype.newbyteorder("=") if x.dtype.byteorder == ">" else x.dtype
        engine_dtype(dtype, name)
    shape = tuple(x.shape)
    if batched:
        if not shape:
            raise DrainValueError(
                f"batch leaf {name!r} is 0-dimensional; every leaf needs a first axis of rows"
            )
        shape = shape[1:]
    return GLeaf(name, "num", dtype, shape)


class Layout:
    """The structure and leaves of the first batch, and a fast check-and-extract of each
    later batch's leaves against them."""

    def __init__(self, first, batched: bool, keys: list | None = None):
        self.batched = batched
        self.structure, named = flatten(first, single=not batched, keys=keys)
        self.leaves = [_layout(x, name, batched) for name, x in named]
        self.first_values = [x for _, x in named]
        # The shapes of batch met most often: a list or tuple of leaves, a dict of leaves.
        s = self.structure
        self._kind = None
        if s is not _LEAF:
            if s[0] in ("list", "tuple") and all(c is _LEAF for c in s[2]):
                self._kind = ("seq", s[1], len(s[2]))
            elif s[0] == "dict" and s[1] is dict and all(v is _LEAF for _, v in s[2]):
                self._kind = ("dict", [k for k, _ in s[2]])

    def values(self, batch, k: int) -> list:
        """The leaves of batch ``k``, checked to have the first batch's structure."""
        kind = self._kind
        if kind is not None:
            # Only the container is checked here: a leaf of the wrong kind (a nested container
            # where the first batch had a tensor) is refused when it is copied.
            if kind[0] == "seq":
                if type(batch) is kind[1] and len(batch) == kind[2]:
                    return list(batch)
            elif type(batch) is dict and list(batch) == kind[1]:
                return list(batch.values())
        s, got = flatten(batch, single=not self.batched)
        if not same_structure(s, self.structure):
            raise DrainValueError(f"batch {k} does not have the structure of the first batch")
        return [x for _, x in got]


def _text_like(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and isinstance(v[0], str)


def check_file_names(layout: Layout, keys: list) -> None:
    """Leaf names become file names: each must be a plain name (the writers' rule), and no two
    leaves may share one (``{"a.b": …, "a": {"b": …}}``, ``{0: …, "0": …}``)."""
    seen: dict = {}
    for leaf, kp in zip(layout.leaves, keys):
        try:
            _native.check_name(leaf.name)
        except DrainValueError as e:
            raise DrainValueError(
                f"leaf {leaf.name!r} (the batch's {key_path(kp)}) cannot name a file: {e}"
            ) from None
        if leaf.name in seen:
            raise DrainValueError(
                f"the batch's {key_path(seen[leaf.name])} and {key_path(kp)} would both be "
                f"written as {leaf.name!r}; rename one of the keys"
            )
        seen[leaf.name] = kp


class Output:
    """Numeric output arrays (allocated from the declared rows, or grown) and text chunks."""

    def __init__(self, leaves, rows, exact, outs=None, strings="auto"):
        self.leaves = leaves
        self.exact = exact
        self.strings = strings
        self.at = 0
        self.text = [[] for _ in leaves]
        if outs is not None:
            self.arrays = outs
            self.capacity = rows
            self.fixed = True
        else:
            self.capacity = rows if rows is not None else 0
            self.fixed = False
            self.arrays = [
                _empty(self.capacity, leaf) if leaf.kind == "num" else None for leaf in leaves
            ]

    def grow(self, need: int) -> None:
        cap = max(need, 2 * self.capacity, 16)
        for i, (leaf, a) in enumerate(zip(self.leaves, self.arrays)):
            if leaf.kind != "num":
                continue
            b = _empty(cap, leaf)
            b[: self.at] = a[: self.at]
            self.arrays[i] = b
        self.capacity = cap


def _empty(rows: int, leaf: GLeaf) -> np.ndarray:
    """Uninitialised output for ``rows`` rows of ``leaf`` (every row is written before it is
    returned; pages never written are never backed by memory)."""
    try:
        return np.empty((rows,) + leaf.row_shape, leaf.dtype)
    except (MemoryError, ValueError) as e:
        raise DrainMemoryError(
            f"leaf {leaf.name!r}: cannot allocate {rows} rows of {leaf.row_bytes} bytes: {e}"
        ) from None


def _declared_error(declared: int, got: int, more: bool) -> DrainValueError:
    if more:
        return DrainValueError(
            f"the loader's length says {declared} rows, but it yielded {got} or more"
        )
    return DrainValueError(f"the loader's length says {declared} rows, but it yielded {got}")


def fill(layout: Layout, first, it, out: Output, bar, check_overlap=False):
    """Copies every batch (the first's values, then the rest of ``it``) into ``out``."""
    leaves = layout.leaves
    batched = layout.batched
    nleaves = len(leaves)
    torch = sys.modules.get("torch")
    tensor_type = torch.Tensor if torch is not None else None
    text = out.text
    k = 0
    values = first
    while True:
        if k:
            try:
                batch = next(it)
            except StopIteration:
                break
            values = layout.values(batch, k)
        arrays = []
        n = None
        for i in range(nleaves):
            leaf = leaves[i]
            x = values[i]
            if leaf.kind == "text":
                rows_here, chunk = _text_chunk(x, leaf, batched, k)
                arrays.append(chunk)
            else:
                if type(x) is tensor_type:
                    # A plain CPU tensor's NumPy view; .numpy() refuses the rest (a CUDA tensor,
                    # one needing grad, a conjugate or negative view), handled apart.
                    try:
                        a = x.numpy()
                    except (RuntimeError, TypeError):
                        a = _tensor_array(x, leaf.name)
                elif isinstance(x, np.ndarray):
                    a = x
                elif is_tensor(x):
                    a = _tensor_array(x, leaf.name)
                else:
                    raise DrainTypeError(
                        f"batch {k}, leaf {leaf.name!r} is a {type(x).__name__}, "
                        "not a tensor or NumPy array as in the first batch"
                    )
                d = a.dtype
                if d is not leaf.dtype and d != leaf.dtype:
                    if not (d.byteorder == ">" and d.newbyteorder("=") == leaf.dtype):
                        raise DrainTypeError(
                            f"batch {k}, leaf {leaf.name!r}: dtype {d} differs from the first "
                            f"batch's {leaf.dtype}"
                        )
                if batched:
                    if a.shape[1:] != leaf.row_shape:
                        if a.ndim == 0:
                            raise DrainValueError(
                                f"batch {k}, leaf {leaf.name!r} is 0-dimensional; every leaf "
                                "needs a first axis of rows"
                            )
                        raise DrainValueError(
                            f"batch {k}, leaf {leaf.name!r}: row shape {a.shape[1:]} differs "
                            f"from the first batch's {leaf.row_shape}"
                        )
                    rows_here = a.shape[0]
                else:
                    if a.shape != leaf.row_shape:
                        raise DrainValueError(
                            f"item {k}, leaf {leaf.name!r}: shape {a.shape} differs from the "
                            f"first item's {leaf.row_shape}"
                        )
                    rows_here = 1
                    a = a[None]
                arrays.append(a)
            if n is None:
                n = rows_here
                n_from = leaf.name
            elif rows_here != n:
                raise DrainValueError(
                    f"batch {k}, leaf {leaf.name!r}: {rows_here} rows, but the batch's leaf "
                    f"{n_from!r} has {n}"
                )
        n = n or 0
        at = out.at
        end = at + n
        if end > out.capacity:
            if out.fixed or out.exact:
                raise _declared_error(out.capacity, end, True)
            out.grow(end)
        dsts = out.arrays
        for i in range(nleaves):
            a = arrays[i]
            if leaves[i].kind == "text":
                text[i].append(a)
                continue
            d = dsts[i]
            if check_overlap:
                _check_overlap(a, dsts, leaves, k, i)
            d[at:end] = a
        out.at = end
        if bar is not None:
            bar(end)
        k += 1
    if out.exact and out.at != out.capacity:
        raise _declared_error(out.capacity, out.at, False)
    return k


def _check_overlap(a, dsts, leaves, k, i):
    for j, d in enumerate(dsts):
        if d is not None and np.may_share_memory(a, d):
            raise DrainValueError(
                f"batch {k}, leaf {leaves[i].name!r} shares memory with out= leaf "
                f"{leaves[j].name!r}: the drain would read rows it has already overwritten; "
                "drain without out= (or copy the data the loader reads from)"
            )


def _text_chunk(x, leaf, batched, k):
    if leaf.pylist:
        if not batched:
            if not isinstance(x, str):
                raise DrainTypeError(
                    f"item {k}, leaf {leaf.name!r} is a {type(x).__name__}, not a str as in "
                    "the first item"
                )
            return 1, [x]
        if not isinstance(x, (list, tuple)) or not all(isinstance(v, str) for v in x):
            raise DrainTypeError(
                f"batch {k}, leaf {leaf.name!r} is not a list of str as in the first batch"
            )
        return len(x), x
    if not isinstance(x, np.ndarray) or x.dtype.kind != leaf.dtype.kind:
        raise DrainTypeError(
            f"batch {k}, leaf {leaf.name!r}: not a NumPy {leaf.dtype.kind!r} string array as in "
            "the first batch"
        )
    shape = x.shape[1:] if batched else x.shape
    if shape != leaf.row_shape:
        raise DrainValueError(
            f"batch {k}, leaf {leaf.name!r}: row shape {shape} differs from the first "
            f"batch's {leaf.row_shape}"
        )
    if not batched:
        x = x[None]
    return x.shape[0], x


def string_dtype(strings: str):
    """The dtype text from lists of ``str`` becomes: NumPy 2's ``StringDType`` for ``"auto"``
    (fixed-width ``<U`` before NumPy 2), ``<U`` for ``"U"``."""
    if strings == "auto" and hasattr(np, "dtypes") and hasattr(np.dtypes, "StringDType"):
        return np.dtypes.StringDType()
    return np.str_


def text_array(chunks, leaf: GLeaf, strings: str, for_files: bool) -> np.ndarray:
    """One leaf's text as one NumPy array: lists of ``str`` as ``StringDType`` (or ``<U``),
    NumPy string arrays concatenated (``<U`` and ``S`` widened to the longest); in files
    ``<U`` always (readable without pickles)."""
    if leaf.pylist:
        flat = [s for c in chunks for s in c]
        dtype = np.str_ if for_files else string_dtype(strings)
        arr = np.array(flat, dtype=dtype) if flat else np.empty((0,), dtype=dtype)
        if arr.dtype.kind == "U" and arr.dtype.itemsize == 0:
            arr = arr.astype("<U1")
        return arr
    if chunks:
        arr = np.concatenate(chunks, axis=0)
    else:
        arr = np.empty((0,) + leaf.row_shape, leaf.dtype)
    if arr.dtype.kind == "T" and (for_files or strings == "U"):
        arr = arr.astype(np.str_)
    if arr.dtype.itemsize == 0 and arr.dtype.kind in "US":
        arr = arr.astype(arr.dtype.kind + "1")
    return arr


def probe_structure(loader, batched: bool):
    """For a map-style DataLoader whose epoch yields no batch: one sample, fetched and collated
    as the epoch would (with every random generator put back afterwards), to take the batch
    structure from; ``None`` when there is no sample to take."""
    if sys.modules.get("torch") is None:
        return None
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    try:
        n = len(loader.dataset)
    except TypeError:
        return None
    if n == 0:
        return None
    if loader.batch_sampler is None and batched:
        return None  # items are batches fetched by a batch index: no index to make up
    states = (
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state(),
        loader.generator.get_state() if loader.generator is not None else None,
    )
    try:
        sample = loader.dataset[0]
        if loader.batch_sampler is not None:
            return loader.collate_fn([sample])
        return loader.collate_fn(sample)
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if states[3] is not None:
            loader.generator.set_state(states[3])


def finish_arrays(layout: Layout, out: Output, strings: str) -> list:
    rows = out.at
    result = []
    for i, leaf in enumerate(layout.leaves):
        if leaf.kind == "text":
            result.append(text_array(out.text[i], leaf, strings, False))
        else:
            a = out.arrays[i]
            result.append(a if a.shape[0] == rows else a[:rows])
    return result


def rebuild_result(layout: Layout, arrays: list):
    return rebuild(layout.structure, arrays)

"""The general path's three ways out — new arrays (or the CUDA engine's device drain), ``out=``
arrays, files — over any iterable of batches, from the layout of its first batch."""

from __future__ import annotations

import sys

import numpy as np

from . import _general, _native
from ._cudaref import cuda_helper
from ._errors import DrainTypeError, DrainValueError
from ._leaves import Leaf, host_bytes, is_tensor, out_bytes, torch_numpy_dtype
from ._order import declared_rows
from ._out import _check_overlaps, _out_leaves
from ._progress import progress_bar


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
            cuda = cuda_helper("_use_cuda")(device, ordinal, next(iter(devices)))
            if cuda is not None:
                return cuda_helper("_cuda_general")(layout, it, rows, exact, cuda, progress)
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
                    # Numeric leaves' row counts are checked by the engine's sink (same error,
                    # same message); a text leaf's only here.
                    if n is None:
                        n, n_from, n_text = m, leaf.name, leaf.kind == "text"
                    elif m != n and (n_text or leaf.kind == "text"):
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

"""The order one epoch of ``for batch in loader`` yields, read from the loader's own sampler.

Creating a ``DataLoader`` iterator draws a base seed (from ``loader.generator``, or the global
RNG) *before* the sampler draws anything, and some samplers then draw their own seed; this module
replays exactly those draws, so the indices equal one real epoch's and every generator is left
in the state that epoch would leave it. The well-known samplers are replayed with the tensor
operations they use themselves (one ``torch.randperm`` instead of a million-step Python walk);
any other sampler or batch sampler is walked in Python.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _native
from ._errors import DrainIndexError, DrainTypeError


def _torch():
    import torch

    return torch


def _reuses_iterator(loader) -> bool:
    """Whether ``iter(loader)`` would reset a live persistent-workers iterator (no base seed)."""
    return bool(
        getattr(loader, "persistent_workers", False)
        and getattr(loader, "num_workers", 0) > 0
        and getattr(loader, "_iterator", None) is not None
    )


def _base_seed_draw(loader) -> None:
    """The draw ``_BaseDataLoaderIter.__init__`` makes, unless a persistent iterator is reused."""
    torch = _torch()
    if not _reuses_iterator(loader):
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)


def _index_iterator(loader, index_sampler):
    """The index iterator an epoch reads, made with the same ``iter`` calls and base-seed draw,
    in the same order, as ``iter(loader)`` (which matters for samplers that draw eagerly in
    ``__iter__``): a fresh iterator calls ``iter`` on the sampler, draws the base seed, and with
    worker processes calls ``iter`` once more (``_reset``); a reused persistent iterator only
    calls ``iter``."""
    if _reuses_iterator(loader):
        return iter(index_sampler)
    iterator = iter(index_sampler)
    _base_seed_draw(loader)
    if getattr(loader, "num_workers", 0) > 0:
        iterator = iter(index_sampler)
    return iterator


def replayable(sampler) -> bool:
    """Whether :func:`epoch_order` replays ``sampler`` (rather than walking it)."""
    from torch.utils.data import (
        DistributedSampler,
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
    )

    return type(sampler) in (
        SequentialSampler,
        RandomSampler,
        SubsetRandomSampler,
        DistributedSampler,
    )


def _sampler_replay(sampler, deferred: list):
    """A function giving the sampler's order (``int64`` array) with the draws its ``__iter__``
    makes, or ``None`` when the sampler is not one replayed here (exact types only: a subclass
    may iterate differently). Draws whose values the order does not need, made only to leave a
    generator where the epoch leaves it, are appended to ``deferred`` instead of run."""
    from torch.utils.data import (
        DistributedSampler,
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
    )

    torch = _torch()
    kind = type(sampler)
    if kind is SequentialSampler:
        n = len(sampler.data_source)
        return lambda: range(n)
    if kind is RandomSampler:

        def random_order():
            n = len(sampler.data_source)
            num = sampler.num_samples
            generator = sampler.generator
            if generator is None:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                generator = torch.Generator()
                generator.manual_seed(seed)
            parts = []
            if sampler.replacement:
                for _ in range(num // 32):
                    parts.append(
                        torch.randint(high=n, size=(32,), dtype=torch.int64, generator=generator)
                    )
                parts.append(
                    torch.randint(high=n, size=(num % 32,), dtype=torch.int64, generator=generator)
                )
            else:
                for _ in range(num // n):
                    parts.append(torch.randperm(n, generator=generator))
                if num % n:
                    parts.append(torch.randperm(n, generator=generator)[: num % n])
                elif sampler.generator is not None:
                    # The sampler always draws this last permutation, even to keep none of it,
                    # so the user's generator must advance by it; its values are unused, so the
                    # draw is left to run alongside the gather. (A generator made here is
                    # dropped afterwards: its unused draw is skipped.)
                    deferred.append(lambda: torch.randperm(n, generator=generator))
            order = parts[0] if len(parts) == 1 else torch.cat(parts)
            return order.numpy().astype(np.int64, copy=False)

        return random_order
    if kind is SubsetRandomSampler:
        indices = sampler.indices

        def subset_order():
            perm = torch.randperm(len(indices), generator=sampler.generator).numpy()
            base = as_index_array(indices, "SubsetRandomSampler.indices")
            if base is None:
                base = checked_indices(indices, "SubsetRandomSampler.indices")
            return base[perm]

        return subset_order
    if kind is DistributedSampler:

        def distributed_order():
            n = len(sampler.dataset)
            if sampler.shuffle:
                g = torch.Generator()
                g.manual_seed(sampler.seed + sampler.epoch)
                base = torch.randperm(n, generator=g).numpy().astype(np.int64, copy=False)
            else:
                base = np.arange(n, dtype=np.int64)
            # The padding (or cut) and striding: the library's one checked arithmetic.
            return _native.shard_order(
                np.ascontiguousarray(base), sampler.rank, sampler.num_replicas, sampler.drop_last
            )

        return distributed_order
    return None


def as_index_array(indices, what: str) -> np.ndarray | None:
    """``indices`` (list, range, tensor, array) as ``int64``, or ``None`` if not integers."""
    torch = _torch()
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    if isinstance(indices, range):
        return np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    try:
        arr = np.asarray(indices)
    except Exception:  # noqa: BLE001 - any odd sequence: walked instead
        return None
    if arr.ndim != 1 or not (arr.dtype.kind in "iu" or arr.size == 0):
        if arr.dtype == bool:
            raise DrainTypeError(f"{what} holds booleans, not indices")
        return None
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= 2**63:
        raise DrainIndexError(
            f"index {int(arr.max())} from {what} is out of range (the real epoch fails on it too)"
        )
    return arr.astype(np.int64, copy=False)


def checked_index(i, where: str) -> int:
    """One index as the real epoch takes it: an integer (a Python or NumPy int, or a 0-d
    integer tensor); anything else raises what indexing a tensor with it raises (a float: an
    ``IndexError``), as an ``ArrayDrainError``."""
    if isinstance(i, (bool, np.bool_)):
        raise DrainTypeError(f"{where} is a bool ({i!r}), not an integer index")
    if isinstance(i, (int, np.integer)):
        return int(i)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(i, torch.Tensor):
        integral = not (i.is_floating_point() or i.is_complex() or i.dtype == torch.bool)
        if i.dim() == 0 and integral:
            return int(i)
    if isinstance(i, (float, np.floating)) or (torch is not None and isinstance(i, torch.Tensor)):
        raise DrainIndexError(
            f"{where} is {i}, not an integer: the real epoch fails on it too (IndexError: only "
            "integers are valid indices)"
        )
    raise DrainTypeError(f"{where} is a {type(i).__name__} ({i!r}), not an integer index")


def checked_indices(indices, what: str) -> np.ndarray:
    """A sequence of indices (``Subset.indices`` and the like) as ``int64``, each checked."""
    out = [checked_index(indices[k], f"{what}[{k}]") for k in range(len(indices))]
    return as_int64(out, what)


def as_int64(values: list, what: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        big = next(v for v in values if not -(2**63) <= v < 2**63)
        raise DrainIndexError(
            f"index {big} from {what} is out of range (the real epoch fails on it too)"
        ) from None


def _walk(iterator) -> np.ndarray:
    """Flattens a batch sampler's iterator of batches of indices in Python, each batch and
    index checked as the real epoch would find them: a batch is a non-empty sequence of
    integers."""
    flat: list = []
    extend = flat.extend
    for k, b in enumerate(iterator):
        if isinstance(b, (int, np.integer)) or isinstance(b, (str, bytes)):
            raise DrainTypeError(
                f"the batch sampler yielded {b!r} as batch {k}, not a list of indices (the real "
                f"epoch fails on it too: TypeError: '{type(b).__name__}' object is not iterable)"
            )
        try:
            items = list(b)
        except TypeError:
            raise DrainTypeError(
                f"the batch sampler yielded a {type(b).__name__} as batch {k}, not a list of "
                "indices"
            ) from None
        if not items:
            raise DrainIndexError(
                f"the batch sampler yielded an empty batch (batch {k}); the real epoch's "
                "collate fails on it (IndexError: list index out of range)"
            )
        if all(type(i) is int for i in items):
            extend(items)
        else:
            extend(checked_index(i, f"index {j} of batch {k}") for j, i in enumerate(items))
    return as_int64(flat, "the batch sampler")


def epoch_order(loader, deferred: list | None = None) -> np.ndarray | range:
    """The dataset indices one epoch of ``for batch in loader`` yields, flattened in order, for a
    map-style loader (with automatic batching, or without it over a sampler :func:`replayable`
    replays); advances every RNG exactly as that epoch would.
    A sequential order is returned as a ``range``.

    With a ``deferred`` list, draws that only advance a generator (their values unused) are
    appended to it as callables, for the caller to run (in order) while it gathers; without
    one they run here."""
    from torch.utils.data import BatchSampler

    own = deferred is None
    deferred = [] if own else deferred
    batch_sampler = loader.batch_sampler
    replay = None
    if batch_sampler is None:
        # No automatic batching: each index of the sampler is one item (callers check first
        # that the sampler is one replayed here).
        replay = _sampler_replay(loader.sampler, deferred)
    elif type(batch_sampler) is BatchSampler:
        replay = _sampler_replay(batch_sampler.sampler, deferred)
    if replay is None:
        return _walk(_index_iterator(loader, batch_sampler))
    _base_seed_draw(loader)
    order = replay()
    if own:
        for draw in deferred:
            draw()
    if batch_sampler is not None and batch_sampler.drop_last:
        order = order[: _native.kept_rows(len(order), batch_sampler.batch_size, True)]
    if isinstance(order, range):
        return order  # a sequential order: no index array at all
    return np.ascontiguousarray(order, dtype=np.int64)


def wrap_indices(order: np.ndarray, n: int, what: str) -> np.ndarray:
    """Python-style negative indices made positive; anything still outside ``0..n`` is an
    error, as indexing the dataset would be."""
    if not order.size:
        return order
    given = order
    lo, hi = int(order.min()), int(order.max())
    if lo < 0:
        order = np.where(order < 0, order + n, order)
        lo, hi = int(order.min()), int(order.max())
    if lo < 0 or hi >= n:
        pos = int(np.argmax((order < 0) | (order >= n)))
        raise DrainIndexError(
            f"index {int(given[pos])} at position {pos} is out of range for {what} of {n} rows"
        )
    return order


def declared_rows(loader, items_are_batches: bool = True) -> tuple[int | None, bool]:
    """``(rows, exact)``: the rows one epoch yields from the loader's lengths alone (``None``
    when unknown), and whether that count is a contract (map-style loaders: the sampler's
    length cut by ``drop_last`` with a ``BatchSampler``, the sampler's length when each item is
    one row, the inner sampler's when the sampler itself is a ``BatchSampler``) or a hint (an
    ``IterableDataset``'s ``len``, which PyTorch treats as one: workers and ``drop_last`` make
    an epoch yield other counts, and it only warns)."""
    if sys.modules.get("torch") is None:
        return None, False  # without PyTorch loaded, `loader` is not a DataLoader
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset

    if not isinstance(loader, DataLoader):
        return None, False
    try:
        if isinstance(loader.dataset, IterableDataset):
            n = len(loader.dataset)
            if loader.batch_size is not None and loader.drop_last:
                return _native.kept_rows(n, loader.batch_size, True), False
            return n, False
        if loader.batch_sampler is None:
            if not items_are_batches:
                return len(loader.sampler), True
            inner = loader.sampler
            if type(inner) is BatchSampler:
                return _native.kept_rows(len(inner.sampler), inner.batch_size, inner.drop_last), True
            return None, False
        if type(loader.batch_sampler) is BatchSampler:
            bs = loader.batch_sampler
            return _native.kept_rows(len(bs.sampler), bs.batch_size, bs.drop_last), True
    except TypeError:
        return None, False
    return None, False


def order_and_count(order: np.ndarray | None, n: int) -> tuple[np.ndarray | None, int]:
    """``(None, n)`` when ``order`` is ``0..n-1`` exactly (a plain copy), else ``(order, len)``."""
    if order is None:
        return None, n
    k = len(order)
    if (
        k
        and k <= n
        and order[0] == 0
        and order[-1] == k - 1
        and np.array_equal(order, np.arange(k))
    ):
        return None, k
    return order, k

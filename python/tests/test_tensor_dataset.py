"""The fast path: a DataLoader over a TensorDataset (or a Subset of one) with the default collate.

Every test compares `arraydrain.drain(loader)` with one real epoch of the same loader from the
same RNG state (helpers.drain_vs_epoch), and checks that the RNG ends in the same state.
"""

import gc

import numpy as np
import pytest
import torch
from helpers import (
    DTYPES,
    assert_same,
    assert_same_state,
    capture,
    classic,
    drain_vs_epoch,
    features,
    labels,
    restore,
    values,
)
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import arraydrain

N = 1000


def dataset(rows=N, cols=8):
    return TensorDataset(features(rows, cols), labels(rows))


BATCHES = [1, 10, 256, N + 7]
# drop_last with a batch larger than the dataset yields nothing, which the classic recipe cannot
# concatenate: test_drop_last_larger_than_dataset_is_empty covers it.
BATCH_DROP = [(b, d) for b in BATCHES for d in (False, True) if not (d and b > N)]


@pytest.mark.parametrize("batch_size, drop_last", BATCH_DROP)
def test_sequential(batch_size, drop_last):
    loader = DataLoader(dataset(), batch_size=batch_size, drop_last=drop_last)
    got, _ = drain_vs_epoch(loader)
    rows = N // batch_size * batch_size if drop_last else N
    assert got[0].shape == (rows, 8) and got[1].shape == (rows,)


def test_default_batch_size_and_unpacking():
    x, y = arraydrain.drain(DataLoader(dataset()))
    assert x.shape == (N, 8) and y.shape == (N,)
    np.testing.assert_array_equal(x, features(N).numpy())
    np.testing.assert_array_equal(y, labels(N).numpy())


@pytest.mark.parametrize("batch_size, drop_last", BATCH_DROP)
@pytest.mark.parametrize("seed", [0, 7])
def test_shuffle_with_seeded_generator(batch_size, drop_last, seed):
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset(), batch_size=batch_size, shuffle=True, drop_last=drop_last, generator=g
    )
    got, _ = drain_vs_epoch(loader)
    # The order really is shuffled (the first column of x is the row number).
    assert not np.array_equal(got[0][:, 0], np.arange(len(got[0]), dtype=np.float32))


@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize("seed", [0, 3])
def test_shuffle_with_global_rng(batch_size, seed):
    torch.manual_seed(seed)
    loader = DataLoader(dataset(), batch_size=batch_size, shuffle=True)
    drain_vs_epoch(loader)


def test_consecutive_drains_follow_consecutive_epochs():
    """Two drains in a row give the orders of two epochs in a row (the RNG advances alike)."""
    torch.manual_seed(5)
    loader = DataLoader(dataset(), batch_size=32, shuffle=True)
    first = arraydrain.drain(loader)
    second = arraydrain.drain(loader)
    torch.manual_seed(5)
    assert_same(first, classic(loader))
    assert_same(second, classic(loader))
    assert not np.array_equal(first[1], second[1])


def test_generator_without_shuffle_still_advances_like_an_epoch():
    """A sequential loader with a generator still draws its base seed from that generator."""
    g = torch.Generator().manual_seed(3)
    drain_vs_epoch(DataLoader(dataset(), batch_size=64, generator=g))


@pytest.mark.parametrize("rank", [0, 1, 2])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("epoch", [0, 4])
def test_distributed_sampler_every_rank_of_three(rank, shuffle, drop_last, epoch):
    n = 1001  # not a multiple of 3: padding (or dropping) happens
    ds = dataset(n)
    sampler = DistributedSampler(
        ds, num_replicas=3, rank=rank, shuffle=shuffle, seed=11, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=16, sampler=sampler)
    got, _ = drain_vs_epoch(loader)
    assert len(got[1]) == len(sampler)


def test_distributed_ranks_cover_the_dataset():
    n = 999
    ds = dataset(n)
    parts = []
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=2)
        parts.append(arraydrain.drain(DataLoader(ds, batch_size=50, sampler=sampler))[1])
    assert sorted(np.concatenate(parts).tolist()) == sorted(labels(n).tolist())


@pytest.mark.parametrize("with_generator", [False, True])
def test_subset_random_sampler(with_generator):
    idx = list(range(0, N, 3)) + [5, 5, 999]  # repeated indices too
    g = torch.Generator().manual_seed(4) if with_generator else None
    sampler = SubsetRandomSampler(idx, generator=g)
    loader = DataLoader(dataset(), batch_size=20, sampler=sampler)
    got, _ = drain_vs_epoch(loader)
    assert len(got[0]) == len(idx)


def test_weighted_random_sampler_repeats_rows():
    w = torch.linspace(0.1, 1.0, N)
    sampler = WeightedRandomSampler(w, num_samples=3 * N, replacement=True)
    got, _ = drain_vs_epoch(DataLoader(dataset(), batch_size=100, sampler=sampler))
    assert len(got[1]) == 3 * N


@pytest.mark.parametrize("num_samples", [17, 2500])
def test_random_sampler_with_replacement_and_num_samples(num_samples):
    g = torch.Generator().manual_seed(9)
    sampler = RandomSampler(dataset(), replacement=True, num_samples=num_samples, generator=g)
    drain_vs_epoch(DataLoader(dataset(), batch_size=64, sampler=sampler))


def test_random_sampler_without_replacement_num_samples_larger_than_dataset():
    sampler = RandomSampler(dataset(), num_samples=2 * N + 3)
    drain_vs_epoch(DataLoader(dataset(), batch_size=64, sampler=sampler))


def test_index_list_as_sampler():
    order = [int(i) for i in np.random.default_rng(0).permutation(N)[:300]] + [0, 0]
    drain_vs_epoch(DataLoader(dataset(), batch_size=7, sampler=order))


class RaggedBatchSampler:
    """A user batch sampler: batches of growing size over a reversed order, some repeated."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        order = list(range(self.n - 1, -1, -1))
        start, size = 0, 1
        while start < len(order):
            yield order[start : start + size]
            start += size
            size = size * 2 % 37 + 1
        yield [3, 3, 3]

    def __len__(self):
        count, start, size = 0, 0, 1
        while start < self.n:
            count, start, size = count + 1, start + size, size * 2 % 37 + 1
        return count + 1


def test_user_batch_sampler():
    loader = DataLoader(dataset(), batch_sampler=RaggedBatchSampler(N))
    got, _ = drain_vs_epoch(loader)
    assert len(got[1]) == N + 3


def test_explicit_batch_sampler_over_random_sampler():
    g = torch.Generator().manual_seed(21)
    bs = BatchSampler(RandomSampler(dataset(), generator=g), batch_size=33, drop_last=True)
    drain_vs_epoch(DataLoader(dataset(), batch_sampler=bs))


def test_explicit_batch_sampler_over_sequential_sampler():
    bs = BatchSampler(SequentialSampler(dataset()), batch_size=33, drop_last=False)
    drain_vs_epoch(DataLoader(dataset(), batch_sampler=bs))


@pytest.mark.parametrize("kind", ["list", "tensor", "ndarray", "range"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_subset(kind, shuffle):
    base = dataset()
    picked = [int(i) for i in np.random.default_rng(1).permutation(N)[:400]]
    indices = {
        "list": picked,
        "tensor": torch.tensor(picked),
        "ndarray": np.array(picked),
        "range": range(100, 900, 2),
    }[kind]
    loader = DataLoader(Subset(base, indices), batch_size=30, shuffle=shuffle)
    drain_vs_epoch(loader)


def test_subset_of_a_subset():
    inner = Subset(dataset(), list(range(N - 1, -1, -2)))
    outer = Subset(inner, [5, 1, 4, 1, 300, 0])
    drain_vs_epoch(DataLoader(outer, batch_size=4, shuffle=True))


@pytest.mark.parametrize(
    "shapes",
    [
        [(N,)],  # labels only
        [(N, 8), (N,)],  # features + labels
        [(N, 3, 4, 5), (N,)],  # images + labels
        [(N, 3, 4, 5), (N, 2), (N,), (N, 1, 1)],  # several tensors
    ],
    ids=["1d", "2d+1d", "4d+1d", "mixed"],
)
def test_shapes(shapes):
    tensors = [values(s, torch.float32, seed=i) for i, s in enumerate(shapes)]
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(*tensors), batch_size=64, shuffle=True, generator=g)
    got, _ = drain_vs_epoch(loader)
    assert [a.shape for a in got] == list(shapes)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_dtype(dtype, shuffle):
    x = values((N, 3), dtype, seed=1)
    y = values((N,), dtype, seed=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=shuffle)
    got, _ = drain_vs_epoch(loader)
    assert got[0].dtype == x.numpy().dtype


def test_mixed_dtypes_in_one_loader():
    tensors = [values((N, 2), d, seed=i) for i, d in enumerate(DTYPES)]
    drain_vs_epoch(DataLoader(TensorDataset(*tensors), batch_size=50, shuffle=True))


def _noncontiguous():
    big = values((8, 2 * N), torch.float32, seed=3)
    img = values((N, 3, 6, 5), torch.float32, seed=4)
    return {
        "transposed": big.t()[:N],  # column-major rows
        "strided_columns": values((N, 16), torch.float64, seed=5)[:, ::3],
        "strided_rows": values((2 * N, 4), torch.int32, seed=6)[::2],
        "channels_last": img.contiguous(memory_format=torch.channels_last),
        "permuted": img.permute(0, 3, 1, 2),
        "offset": values((N + 10, 4), torch.int16, seed=7)[10:],
        "expanded": torch.arange(5, dtype=torch.int64).expand(N, 5),  # stride 0
        "strided_labels": labels(3 * N)[::3],
    }


@pytest.mark.parametrize("name", list(_noncontiguous()))
@pytest.mark.parametrize("shuffle", [False, True])
def test_non_contiguous_tensors(name, shuffle):
    t = _noncontiguous()[name]
    assert not t.is_contiguous() or name == "offset"
    loader = DataLoader(TensorDataset(t, labels(N)), batch_size=64, shuffle=shuffle)
    got, _ = drain_vs_epoch(loader)
    if not shuffle:
        np.testing.assert_array_equal(got[0], t.numpy())


def test_tensor_that_requires_grad():
    x = features(N).requires_grad_()
    drain_vs_epoch(DataLoader(TensorDataset(x, labels(N)), batch_size=64, shuffle=True))


def test_larger_table_parallel_gather():
    rows = 200_000
    x = values((rows, 64), torch.float32, seed=8)
    y = torch.arange(rows)
    g = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True, generator=g)
    got, _ = drain_vs_epoch(loader)
    # Row i of the output is row y[i] of the input.
    np.testing.assert_array_equal(got[0], x.numpy()[got[1]])


@pytest.mark.parametrize("shuffle", [False, True])
def test_out_refills_in_place_across_two_epochs(shuffle):
    g = torch.Generator().manual_seed(2)
    loader = DataLoader(dataset(), batch_size=50, shuffle=shuffle, generator=g)
    first, _ = drain_vs_epoch(loader)
    keep = [a.copy() for a in first]
    ptrs = [a.__array_interface__["data"][0] for a in first]
    second, _ = drain_vs_epoch(loader, out=first)
    for a, b, p in zip(first, second, ptrs):
        assert np.shares_memory(a, b), "out= refills the given arrays"
        assert b.__array_interface__["data"][0] == p
    if shuffle:
        assert not np.array_equal(keep[1], second[1]), "the second epoch has its own order"
    else:
        assert_same(second, keep)


def test_out_from_another_loader_with_the_same_shapes():
    a = arraydrain.drain(DataLoader(dataset(), batch_size=10))
    other = TensorDataset(features(N, seed=9), labels(N))
    b, _ = drain_vs_epoch(DataLoader(other, batch_size=10, shuffle=True), out=a)
    assert all(np.shares_memory(u, v) for u, v in zip(a, b))


def test_result_owns_its_memory():
    x, y = features(N), labels(N)
    expect = (x.numpy().copy(), y.numpy().copy())
    loader = DataLoader(TensorDataset(x, y), batch_size=N)  # one batch, identity order
    got = arraydrain.drain(loader)
    # Not a view of the input: changing one side leaves the other alone.
    assert not np.shares_memory(got[0], x.numpy())
    assert not np.shares_memory(got[1], y.numpy())
    x.add_(1)
    got[1][:] = -1
    assert (y.numpy() == expect[1]).all()
    np.testing.assert_array_equal(got[0], expect[0])
    # Outlives the loader, the dataset and the tensors.
    del loader, x, y
    gc.collect()
    np.testing.assert_array_equal(got[0], expect[0])
    assert got[0].flags.writeable and got[1].flags.writeable


def test_arrays_outlive_their_siblings():
    got = arraydrain.drain(DataLoader(dataset(), batch_size=64))
    y = got[1]
    del got
    gc.collect()
    np.testing.assert_array_equal(y, labels(N).numpy())


@pytest.mark.parametrize("strategy", ["auto", "concat", "per-batch", "preallocated"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_cpu_strategies_agree(strategy, shuffle):
    loader = DataLoader(dataset(), batch_size=37, shuffle=shuffle)
    drain_vs_epoch(loader, strategy=strategy)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_device_choice_on_cpu_tensors(device):
    drain_vs_epoch(DataLoader(dataset(), batch_size=64, shuffle=True), device=device)


def test_progress_bar_does_not_change_the_result():
    drain_vs_epoch(DataLoader(dataset(), batch_size=64, shuffle=True), progress=True)


def test_multi_worker_loader():
    g = torch.Generator().manual_seed(6)
    loader = DataLoader(dataset(), batch_size=64, shuffle=True, generator=g, num_workers=2)
    drain_vs_epoch(loader)


def test_loader_still_iterates_normally_after_drain():
    g = torch.Generator().manual_seed(8)
    loader = DataLoader(dataset(), batch_size=64, shuffle=True, generator=g)
    arraydrain.drain(loader)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == N


def test_drop_last_larger_than_dataset_is_empty():
    """No full batch: one real epoch yields nothing, and the drain has zero rows of each column."""
    loader = DataLoader(dataset(), batch_size=N + 1, drop_last=True)
    assert list(loader) == []
    x, y = arraydrain.drain(loader)
    assert x.shape == (0, 8) and x.dtype == np.float32
    assert y.shape == (0,) and y.dtype == np.int64


def test_structure_is_a_list_like_the_default_collate():
    """A TensorDataset yields tuples, which the default collate turns into lists."""
    loader = DataLoader(dataset(), batch_size=10)
    assert isinstance(next(iter(loader)), list)
    got = arraydrain.drain(loader)
    assert type(got) is list


def test_fast_path_fetches_no_sample_in_python(monkeypatch):
    """The indices come from the samplers; no TensorDataset.__getitem__ call is made."""
    for shuffle in (False, True):
        g = torch.Generator().manual_seed(3)
        loader = DataLoader(dataset(), batch_size=32, shuffle=shuffle, generator=g)
        ref = classic(loader)
        g.manual_seed(3)

        def refuse(self, index):
            raise AssertionError("a sample was fetched in Python")

        with monkeypatch.context() as m:
            m.setattr(TensorDataset, "__getitem__", refuse)
            got = arraydrain.drain(loader)
        assert_same(got, ref)


class PlusOne(TensorDataset):
    """A TensorDataset whose __getitem__ changes the data: the fast path must not bypass it."""

    def __getitem__(self, index):
        return tuple(t[index] + 1 for t in self.tensors)


def test_tensor_dataset_subclass_with_its_own_getitem():
    loader = DataLoader(PlusOne(features(N), labels(N)), batch_size=32, shuffle=True)
    got, _ = drain_vs_epoch(loader)
    np.testing.assert_array_equal(np.sort(got[1]), np.sort(labels(N).numpy() + 1))


def test_subset_of_a_dataset_with_its_own_getitem():
    inner = PlusOne(features(N), labels(N))
    drain_vs_epoch(DataLoader(Subset(inner, list(range(0, N, 2))), batch_size=32))


def test_out_returns_the_same_object():
    loader = DataLoader(dataset(), batch_size=32, shuffle=True)
    first = arraydrain.drain(loader)
    assert arraydrain.drain(loader, out=first) is first


def test_progress_callable_sees_every_row():
    seen = []
    loader = DataLoader(dataset(), batch_size=64, shuffle=True)
    drain_vs_epoch(loader, progress=seen.append)
    assert seen, "the progress callable was called"
    assert seen == sorted(seen) and seen[-1] == N


def test_without_automatic_batching_each_item_is_a_row():
    """batch_size=None: the loader yields single samples; the drain stacks them as rows."""
    g = torch.Generator().manual_seed(5)
    loader = DataLoader(dataset(), batch_size=None, shuffle=True, generator=g)
    before = capture(loader)
    got = arraydrain.drain(loader)
    after = capture(loader)
    restore(before)
    items = [(x.numpy(), y.numpy()) for x, y in loader]
    assert_same_state(after, capture(loader))
    ref = [np.stack([i[0] for i in items]), np.stack([i[1] for i in items])]
    assert_same(got, ref)


def test_persistent_workers_second_epoch():
    """With a live persistent iterator, the next epoch draws no new base seed: nor does drain."""
    g = torch.Generator().manual_seed(12)
    loader = DataLoader(
        dataset(), batch_size=64, shuffle=True, generator=g, num_workers=2, persistent_workers=True
    )
    for _ in loader:  # the first epoch starts the workers and keeps the iterator
        pass
    drain_vs_epoch(loader)


def test_concurrent_drains_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    loaders, refs = [], []
    for k in range(4):
        g = torch.Generator().manual_seed(k)
        ds = TensorDataset(features(20_000, 16, seed=k), labels(20_000))
        loaders.append(DataLoader(ds, batch_size=100, shuffle=True, generator=g))
        refs.append(classic(loaders[-1]))
        g.manual_seed(k)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(arraydrain.drain, loaders))
    for got, ref in zip(results, refs):
        assert_same(got, ref)


def test_the_gil_is_released_while_the_engine_gathers(monkeypatch):
    """Python threads run while the native gather runs (white-box: wraps `_native.gather`).

    Holding the GIL, the gather would let the main thread run only just before and just after
    the native call (a switch interval each); released, the main thread keeps counting through
    it. A worker thread drains several epochs; one native call with main-thread progress well
    inside it is enough (the OS may not schedule the main thread in every short window).
    """
    import threading
    import time

    from arraydrain import _native

    real = _native.gather
    windows = []

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            windows.append((t0, time.perf_counter()))

    rows = 800_000
    x = torch.arange(rows * 64, dtype=torch.float32).reshape(rows, 64)
    loader = DataLoader(TensorDataset(x), batch_size=256, shuffle=True)
    out = arraydrain.drain(loader)
    monkeypatch.setattr(_native, "gather", timed)

    def epochs():
        for _ in range(8):
            arraydrain.drain(loader, out=out)

    stamps = []
    worker = threading.Thread(target=epochs)
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    assert len(windows) == 8, "the fast path gathers through _native.gather once per drain"
    margin = 0.015  # a switch interval (5 ms) and a wake-up on each side
    inside = [(t0, t1) for t0, t1 in windows if any(t0 + margin < t < t1 - margin for t in stamps)]
    longest = max(t1 - t0 for t0, t1 in windows)
    assert inside, f"no Python progress inside any native gather (longest {1e3 * longest:.0f} ms)"
    assert longest > 3 * margin, "the gathers are long enough for the check to mean something"

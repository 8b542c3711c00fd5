"""The general path: any other iterable of batches (map-style datasets with Python __getitem__,
IterableDataset, custom collate functions, dict and nested batches, NumPy batches, generators).

The reference is always one real epoch of the loader from the same RNG state.
"""

import collections

import numpy as np
import pytest
import torch
from helpers import DTYPES, assert_same, classic, concat, drain_vs_epoch, features, labels, values
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import arraydrain

N = 500


class MapDataset(Dataset):
    """A map-style dataset with a Python __getitem__ returning `make(i)`."""

    def __init__(self, n, make):
        self.n, self.make = n, make

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


X = features(N, 6)
Y = labels(N)
IMG = values((N, 3, 4, 4), torch.float32, seed=3)
W = values((N, 2), torch.float64, seed=4)


def pair(i):
    return X[i], Y[i]


BATCH_DROP = [(b, d) for b in (1, 10, 256, N + 3) for d in (False, True) if not (d and b > N)]


@pytest.mark.parametrize("batch_size, drop_last", BATCH_DROP)
@pytest.mark.parametrize("shuffle", [False, True])
def test_map_style_dataset(batch_size, shuffle, drop_last):
    g = torch.Generator().manual_seed(batch_size)
    loader = DataLoader(
        MapDataset(N, pair),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=g,
    )
    got, _ = drain_vs_epoch(loader)
    assert got[0].shape == (N // batch_size * batch_size if drop_last else N, 6)


def test_map_style_with_global_rng():
    torch.manual_seed(17)
    drain_vs_epoch(DataLoader(MapDataset(N, pair), batch_size=32, shuffle=True))


def test_dict_batches():
    def item(i):
        return {"image": IMG[i], "label": Y[i], "weights": W[i]}

    loader = DataLoader(MapDataset(N, item), batch_size=16, shuffle=True)
    got, _ = drain_vs_epoch(loader)
    assert type(got) is dict and list(got) == ["image", "label", "weights"]
    assert got["image"].shape == (N, 3, 4, 4)


def test_nested_dict_batches():
    def item(i):
        return {"x": X[i], "meta": {"label": Y[i], "w": W[i]}}

    got, _ = drain_vs_epoch(DataLoader(MapDataset(N, item), batch_size=16, shuffle=True))
    assert got["meta"]["w"].shape == (N, 2)


def test_nested_tuple_batches():
    def item(i):
        return X[i], (Y[i], (IMG[i], W[i]))

    loader = DataLoader(MapDataset(N, item), batch_size=16, shuffle=True)
    got, _ = drain_vs_epoch(loader)
    # The default collate turns tuples into lists, at every level.
    assert type(got) is list and type(got[1]) is list and type(got[1][1]) is list
    assert got[1][1][0].shape == (N, 3, 4, 4)


Point = collections.namedtuple("Point", ["x", "y"])


def test_namedtuple_batches():
    loader = DataLoader(MapDataset(N, lambda i: Point(X[i], Y[i])), batch_size=16)
    got, _ = drain_vs_epoch(loader)
    assert type(got) is Point


def test_numpy_items_and_python_scalars():
    """The default collate turns NumPy items and Python numbers into tensors."""

    def item(i):
        return X[i].numpy(), int(Y[i]), float(i) / 3, bool(i % 2)

    got, _ = drain_vs_epoch(DataLoader(MapDataset(N, item), batch_size=16, shuffle=True))
    assert [a.dtype for a in got] == [np.float32, np.int64, np.float64, np.bool_]


def test_custom_collate_on_a_tensor_dataset():
    def collate(samples):
        xs, ys = zip(*samples)
        return {"y": torch.stack(ys), "x": torch.stack(xs) * 2}

    loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True, collate_fn=collate)
    got, _ = drain_vs_epoch(loader)
    np.testing.assert_array_equal(np.sort(got["x"][:, 0]), np.arange(N, dtype=np.float32) * 2)


def test_numpy_batches_from_a_collate_function():
    def collate(samples):
        xs, ys = zip(*samples)
        return np.stack([x.numpy() for x in xs]), np.array([int(y) for y in ys], dtype=np.int32)

    loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True, collate_fn=collate)
    got, _ = drain_vs_epoch(loader)
    assert type(got) is tuple and got[1].dtype == np.int32


def test_non_contiguous_batches():
    def collate(samples):
        xs, ys = zip(*samples)
        x = torch.stack(xs)
        return x.t().contiguous().t(), torch.stack(ys).repeat(2)[::2], x[:, ::2]

    loader = DataLoader(TensorDataset(X, Y), batch_size=16, collate_fn=collate)
    assert not next(iter(loader))[0].is_contiguous()
    drain_vs_epoch(loader)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype(dtype):
    v = values((N, 2), dtype, seed=5)
    loader = DataLoader(MapDataset(N, lambda i: {"v": v[i], "y": Y[i]}), batch_size=32)
    drain_vs_epoch(loader)


class Stream(IterableDataset):
    """An IterableDataset without a length: yields (x, y) samples."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield X[i % N], Y[i % N]


@pytest.mark.parametrize("n, batch_size", [(N, 10), (5 * N + 3, 7), (3, 64), (1, 1)])
def test_iterable_dataset_of_unknown_length(n, batch_size):
    loader = DataLoader(Stream(n), batch_size=batch_size)
    got, _ = drain_vs_epoch(loader)
    assert len(got[0]) == n


def test_iterable_dataset_with_workers():
    """Each worker runs its own copy of the stream; the real epoch interleaves their batches."""
    drain_vs_epoch(DataLoader(Stream(N), batch_size=16, num_workers=2))


class SizedStream(Stream):
    def __len__(self):
        return self.n


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterable_dataset_with_a_length(drop_last):
    drain_vs_epoch(DataLoader(SizedStream(N), batch_size=12, drop_last=drop_last))


class LyingStream(Stream):
    """Declares `declared` rows, yields `n`."""

    def __init__(self, n, declared):
        super().__init__(n)
        self.declared = declared

    def __len__(self):
        return self.declared


@pytest.mark.parametrize("n, declared", [(N - 5, N), (N + 5, N)], ids=["fewer", "more"])
def test_iterable_dataset_yielding_other_than_its_length(n, declared):
    """An IterableDataset's __len__ is a hint (PyTorch warns and goes on): the drain returns
    what the epoch yields."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's own warning about the length
        got, _ = drain_vs_epoch(DataLoader(LyingStream(n, declared), batch_size=12))
    assert len(got[0]) == n


def test_generator_of_tensor_batches():
    """A plain generator (no length): grown geometrically, every row kept."""
    batches = [(X[s : s + 9], Y[s : s + 9]) for s in range(0, N, 9)]
    got = arraydrain.drain(b for b in batches)
    assert type(got) is tuple
    assert_same(got, concat([(x.numpy(), y.numpy()) for x, y in batches]))


def test_list_of_numpy_dict_batches():
    batches = [
        {"a": np.full((k, 2), k, np.int16), "b": np.arange(k, dtype=np.float64)}
        for k in (1, 5, 2, 8)
    ]
    got = arraydrain.drain(batches)
    assert_same(got, concat(batches))


@pytest.mark.parametrize("shuffle", [False, True])
def test_out_reuse_across_two_epochs(shuffle):
    g = torch.Generator().manual_seed(1)
    loader = DataLoader(
        MapDataset(N, lambda i: {"x": X[i], "y": Y[i]}), batch_size=16, shuffle=shuffle, generator=g
    )
    first, _ = drain_vs_epoch(loader)
    keep = {k: v.copy() for k, v in first.items()}
    second, _ = drain_vs_epoch(loader, out=first)
    assert all(np.shares_memory(first[k], second[k]) for k in first)
    if shuffle:
        assert not np.array_equal(keep["y"], second["y"])


def test_multi_worker_map_style_loader():
    g = torch.Generator().manual_seed(2)
    loader = DataLoader(
        MapDataset(N, pair), batch_size=16, shuffle=True, generator=g, num_workers=2
    )
    drain_vs_epoch(loader)


def test_general_path_result_owns_its_memory():
    buf = [torch.arange(10), torch.arange(10, 20)]
    got = arraydrain.drain(iter([(buf[0],), (buf[1],)]))
    buf[0].zero_()
    np.testing.assert_array_equal(got[0], np.arange(20))


def test_classic_recipe_matches_a_manual_loop():
    """The reference itself: the classic recipe equals a hand-written loop."""
    loader = DataLoader(MapDataset(N, pair), batch_size=16)
    ref = classic(loader)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.numpy())
        ys.append(y.numpy())
    np.testing.assert_array_equal(ref[0], np.concatenate(xs))
    np.testing.assert_array_equal(ref[1], np.concatenate(ys))


def test_numpy_batches_without_pytorch(tmp_path):
    """numpy is the only hard dependency: plain iterables of NumPy batches drain without torch."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # import torch now fails
        import numpy as np
        import arraydrain
        batches = [(np.arange(k * 3, dtype=np.float32).reshape(k, 3), np.arange(k)) for k in (4, 1, 6)]
        x, y = arraydrain.drain(batches)
        assert x.shape == (11, 3) and y.tolist() == [0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5]
        assert (x[4] == np.arange(3)).all()
        try:
            arraydrain.drain(batches, device="cuda")
        except RuntimeError as e:
            print("cuda:", e)
        else:
            raise SystemExit("device='cuda' without torch did not raise")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")

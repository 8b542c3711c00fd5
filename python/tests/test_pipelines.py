"""`drain` on the pipelines people run, beyond a DataLoader over a TensorDataset: batches that
come whole without automatic batching, persistent workers, text columns, TensorDict, Hugging
Face `datasets`, torchvision, IterableDatasets whose length is a hint, and which path ran.

Each case is checked against one real epoch of the loader (values, dtypes, shapes, order and
the random generators), built on the real third-party package where the case comes from one.
Every data set is generated here; nothing is downloaded.
"""

import logging
import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import capture, drain_vs_epoch, features, labels, restore
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    get_worker_info,
)
from torch.utils.data._utils.collate import default_collate

import arraydrain

N = 1000
X = features(N, 8)
Y = labels(N)


class BulkDataset(Dataset):
    """A map-style dataset read in bulk: `ds[list of indices]` is a whole batch (a database or
    parquet read), used with `sampler=BatchSampler(...)` and `batch_size=None`."""

    def __len__(self):
        return N

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx)
        return {"x": X[idx], "y": Y[idx]}


# ---- batch_size=None over data that already comes in batches -------------------------------


@pytest.mark.parametrize("batch", [100, 128], ids=["equal", "short-last"])
def test_batch_sampler_as_sampler_concatenates_batches(batch):
    """The use PyTorch documents for batch_size=None: each item is a batch, concatenated along
    the first axis — (1000, 8), not (10, 100, 8) or a row-shape error."""
    loader = DataLoader(
        BulkDataset(),
        sampler=BatchSampler(SequentialSampler(range(N)), batch, drop_last=False),
        batch_size=None,
    )
    got, _ = drain_vs_epoch(loader)
    assert got["x"].shape == (N, 8) and got["y"].shape == (N,)
    np.testing.assert_array_equal(got["x"], X.numpy())


def test_shuffled_batch_sampler_as_sampler_keeps_the_epoch_order():
    g = torch.Generator().manual_seed(4)
    loader = DataLoader(
        BulkDataset(),
        sampler=BatchSampler(RandomSampler(range(N), generator=g), 64, drop_last=True),
        batch_size=None,
    )
    got, _ = drain_vs_epoch(loader)
    assert got["x"].shape == ((N // 64) * 64, 8)


def test_tensor_dataset_read_with_a_batch_sampler_as_sampler():
    loader = DataLoader(
        TensorDataset(X, Y),
        sampler=BatchSampler(SequentialSampler(range(N)), 300, drop_last=False),
        batch_size=None,
    )
    got, _ = drain_vs_epoch(loader)
    assert got[0].shape == (N, 8)


class RowGroups(IterableDataset):
    """An IterableDataset of row groups (chunks of `chunk` rows), as from parquet or a
    database cursor, declaring its length in samples."""

    def __init__(self, rows, chunk):
        self.rows, self.chunk = rows, chunk

    def __len__(self):
        return self.rows

    def __iter__(self):
        for s in range(0, self.rows, self.chunk):
            e = min(s + self.chunk, self.rows)
            yield {"x": torch.arange(s * 4, e * 4, dtype=torch.float32).reshape(-1, 4)}


def test_iterable_row_groups_without_automatic_batching():
    """A sized IterableDataset of 100k samples in chunks of 1,000: drained as (100000, 4) —
    not one row per chunk, not a terabyte asked for."""
    loader = DataLoader(RowGroups(100_000, 1000), batch_size=None)
    got, _ = drain_vs_epoch(loader, items="batches")
    assert got["x"].shape == (100_000, 4)
    assert got["x"][-1, -1] == 100_000 * 4 - 1


def test_iterable_items_without_automatic_batching_must_be_named():
    """Whether an IterableDataset's items are rows or batches is not in the loader: the drain
    says so rather than guess from shapes."""
    loader = DataLoader(RowGroups(1000, 100), batch_size=None)
    with pytest.raises(ValueError, match=r"items='batches'.*items='rows'") as e:
        arraydrain.drain(loader)
    assert isinstance(e.value, arraydrain.ArrayDrainError)
    assert "RowGroups" in str(e.value)


def test_iterable_single_samples_named_as_rows():
    class Samples(IterableDataset):
        def __iter__(self):
            for i in range(50):
                yield X[i], Y[i]

    got, _ = (arraydrain.drain(DataLoader(Samples(), batch_size=None), items="rows"), None)
    assert got[0].shape == (50, 8)
    np.testing.assert_array_equal(got[0], X[:50].numpy())
    np.testing.assert_array_equal(got[1], Y[:50].numpy())


# ---- persistent workers ------------------------------------------------------------------


def _epoch_indices(loader):
    return np.concatenate([b[1].numpy() for b in loader])


def test_persistent_workers_next_epoch_unchanged_after_a_drained_first_epoch():
    """Draining epoch 1 of a persistent-workers loader leaves epoch 2 as a real run has it."""

    def make():
        g = torch.Generator().manual_seed(21)
        ds = TensorDataset(X, torch.arange(N))
        return DataLoader(
            ds, batch_size=50, shuffle=True, generator=g, num_workers=2, persistent_workers=True
        )

    torch.manual_seed(99)
    real = make()
    first = _epoch_indices(real)
    second = _epoch_indices(real)

    torch.manual_seed(99)
    loader = make()
    assert "persistent_workers" in arraydrain.explain(loader)
    got = arraydrain.drain(loader)
    np.testing.assert_array_equal(got[1], first)
    np.testing.assert_array_equal(_epoch_indices(loader), second)


# ---- a Dataset or a tensor instead of a DataLoader ---------------------------------------


@pytest.mark.parametrize(
    "thing",
    [
        TensorDataset(X[:100, :16] if X.shape[1] >= 16 else torch.zeros(100, 16)),
        torch.zeros(100, 16),
        np.zeros((100, 16)),
    ],
    ids=["TensorDataset", "tensor", "ndarray"],
)
@pytest.mark.parametrize("call", ["drain", "to_npz", "explain"])
def test_a_dataset_or_tensor_is_refused_with_advice(thing, call, tmp_path):
    f = getattr(arraydrain, call)
    args = (thing, tmp_path / "o.npz") if call == "to_npz" else (thing,)
    with pytest.raises(TypeError, match="DataLoader") as e:
        f(*args)
    assert isinstance(e.value, arraydrain.ArrayDrainError)
    assert "wrap" in str(e.value) or "pass [array]" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_hugging_face_dataset_is_refused_with_advice():
    import datasets  # scripts/test-requirements.txt: a missing package fails, never skips
    ds = datasets.Dataset.from_dict({"x": [[1.0, 2.0]] * 10})
    with pytest.raises(TypeError, match=r"wrap it in a DataLoader"):
        arraydrain.drain(ds)


# ---- text columns ------------------------------------------------------------------------


class Records(Dataset):
    """Samples with an id string, a file path and a numeric feature."""

    def __len__(self):
        return 200

    def __getitem__(self, i):
        return {"id": f"sample-{i:04d}", "path": f"images/{i % 7}/ünï{i}.png", "x": X[i]}


def _strings(a):
    return [str(v) for v in a.tolist()]


def test_text_columns_from_the_default_collate():
    loader = DataLoader(Records(), batch_size=32, shuffle=True)
    before = capture(loader)
    got = arraydrain.drain(loader)
    restore(before)
    ref = list(loader)
    want_ids = [s for b in ref for s in b["id"]]
    assert got["id"].dtype.kind == "T", "NumPy 2's StringDType by default"
    assert _strings(got["id"]) == want_ids
    assert _strings(got["path"]) == [s for b in ref for s in b["path"]]
    np.testing.assert_array_equal(got["x"], np.concatenate([b["x"].numpy() for b in ref]))


def test_text_columns_as_fixed_width_unicode_when_asked():
    got = arraydrain.drain(DataLoader(Records(), batch_size=32), strings="U")
    assert got["id"].dtype == np.dtype("<U11")
    assert got["id"][5] == "sample-0005"


@pytest.mark.parametrize("write", ["npz", "npy_dir"])
def test_text_columns_in_files_are_fixed_width_unicode(tmp_path, write):
    loader = DataLoader(Records(), batch_size=32)
    if write == "npz":
        arraydrain.to_npz(loader, tmp_path / "o.npz")
        with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
            got = {k: z[k] for k in z.files}
    else:
        arraydrain.to_npy_dir(loader, tmp_path / "o")
        got = {
            n[:-4]: np.load(tmp_path / "o" / n, allow_pickle=False)
            for n in os.listdir(tmp_path / "o")
        }
    assert got["id"].dtype.kind == "U" and got["path"].dtype.kind == "U"
    assert got["id"].tolist() == [f"sample-{i:04d}" for i in range(200)]
    assert got["path"][3] == "images/3/ünï3.png"
    assert got["x"].shape == (200, 8)


def test_hugging_face_datasets_text_and_numbers():
    import datasets  # scripts/test-requirements.txt: a missing package fails, never skips
    n = 300
    ds = datasets.Dataset.from_dict(
        {
            "text": [f"review {i} " + "ok" * (i % 5) for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "emb": [[float(i), float(-i)] for i in range(n)],
        }
    ).with_format("torch")
    g = torch.Generator().manual_seed(8)
    loader = DataLoader(ds, batch_size=25, shuffle=True, generator=g)
    before = capture(loader)
    got = arraydrain.drain(loader)
    after = capture(loader)
    restore(before)
    ref = list(loader)
    for k in range(len(after["generators"])):
        assert torch.equal(after["generators"][k][1], capture(loader)["generators"][k][1])
    assert _strings(got["text"]) == [s for b in ref for s in b["text"]]
    np.testing.assert_array_equal(got["label"], np.concatenate([b["label"].numpy() for b in ref]))
    np.testing.assert_array_equal(got["emb"], np.concatenate([b["emb"].numpy() for b in ref]))


def test_numpy_string_and_datetime_leaves_pass_through(tmp_path):
    """NumPy `<U`, `S` and datetime64 leaves keep their dtype (strings widened to the longest)."""
    batches = [
        {
            "name": np.array(["a", "bb", "ccc"]),
            "raw": np.array([b"x", b"yy", b"z"]),
            "t": np.array(["2024-01-01", "2024-01-02", "2024-01-03"], dtype="datetime64[s]"),
            "v": np.arange(3.0),
        },
        {
            "name": np.array(["ddddd", "e"]),
            "raw": np.array([b"wwww", b"v"]),
            "t": np.array(["2025-06-01", "2025-06-02"], dtype="datetime64[s]"),
            "v": np.arange(2.0),
        },
    ]
    got = arraydrain.drain(batches)
    assert got["name"].dtype == np.dtype("<U5")
    assert got["name"].tolist() == ["a", "bb", "ccc", "ddddd", "e"]
    assert got["raw"].dtype == np.dtype("S4") and got["raw"][3] == b"wwww"
    assert got["t"].dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(got["t"], np.concatenate([b["t"] for b in batches]))
    arraydrain.to_npz(batches, tmp_path / "o.npz")
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        assert z["name"].dtype == np.dtype("<U5") and z["raw"].dtype == np.dtype("S4")
        assert z["t"].dtype == np.dtype("datetime64[s]")
        np.testing.assert_array_equal(z["t"], got["t"])


# ---- an IterableDataset's length is a hint -----------------------------------------------


class Sharded(IterableDataset):
    """Splits its rows among the workers; declares the total."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        info = get_worker_info()
        k, w = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(k, self.n, w):
            yield X[i], Y[i]


def test_sharded_iterable_with_workers_and_drop_last_returns_what_the_epoch_yields():
    """3 workers with drop_last=True each drop their own short batch: the epoch yields fewer
    rows than __len__ says, and PyTorch only warns. So does drain: it returns those rows."""
    loader = DataLoader(Sharded(N), batch_size=32, num_workers=3, drop_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, ref = drain_vs_epoch(loader)
    assert len(got[0]) == len(ref[0]) < N


# ---- TensorDict --------------------------------------------------------------------------


def test_tensordict_batches_become_dicts_of_numpy_arrays():
    import tensordict
    td = tensordict.TensorDict(
        {"x": X, "y": Y, "meta": {"w": torch.arange(N, dtype=torch.float64)}}, batch_size=[N]
    )
    g = torch.Generator().manual_seed(2)
    loader = DataLoader(td, batch_size=64, shuffle=True, generator=g, collate_fn=lambda b: b)
    before = capture(loader)
    got = arraydrain.drain(loader)
    restore(before)
    ref = list(loader)
    assert type(got) is dict and type(got["meta"]) is dict
    for key, arr in (("x", got["x"]), ("y", got["y"]), ("meta", got["meta"]["w"])):
        assert isinstance(arr, np.ndarray), key
        assert arr.shape[0] == N, key
    np.testing.assert_array_equal(got["x"], np.concatenate([b["x"].numpy() for b in ref]))
    np.testing.assert_array_equal(
        got["meta"]["w"], np.concatenate([b["meta", "w"].numpy() for b in ref])
    )


# ---- torchvision -------------------------------------------------------------------------


def test_torchvision_image_folder_of_generated_pngs(tmp_path):
    """ImageFolder over PNGs made here, with a random flip, labels and file paths."""
    import torchvision as tv
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(12):
            img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / c / f"{i}.png")
    tf = tv.transforms.Compose(
        [tv.transforms.RandomHorizontalFlip(), tv.transforms.PILToTensor()]
    )

    class WithPath(tv.datasets.ImageFolder):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x, y, self.samples[i][0]

    g = torch.Generator().manual_seed(1)
    loader = DataLoader(WithPath(str(tmp_path), transform=tf), batch_size=5, shuffle=True,
                        generator=g)
    before = capture(loader)
    got = arraydrain.drain(loader)
    restore(before)
    ref = list(loader)
    np.testing.assert_array_equal(got[0], np.concatenate([b[0].numpy() for b in ref]))
    np.testing.assert_array_equal(got[1], np.concatenate([b[1].numpy() for b in ref]))
    assert _strings(got[2]) == [p for b in ref for p in b[2]]
    assert got[0].shape == (24, 3, 16, 16) and got[0].dtype == np.uint8


def test_torchvision_fake_data_with_workers():
    import torchvision as tv
    ds = tv.datasets.FakeData(size=40, image_size=(3, 8, 8), transform=tv.transforms.ToTensor())
    got, _ = drain_vs_epoch(DataLoader(ds, batch_size=8, num_workers=2))
    assert got[0].shape == (40, 3, 8, 8)


# ---- which path ran ----------------------------------------------------------------------


def test_explain_names_the_path_and_the_reason():
    fast = DataLoader(TensorDataset(X, Y), batch_size=10)
    assert arraydrain.explain(fast).startswith("fast path: a DataLoader over a TensorDataset")
    wrapped = DataLoader(
        TensorDataset(X, Y), batch_size=10, collate_fn=lambda b: default_collate(b)
    )
    why = arraydrain.explain(wrapped)
    assert why.startswith("general path:") and "collate_fn is" in why and "<lambda>" in why

    class MyLoader(DataLoader):
        pass

    assert "MyLoader, a DataLoader subclass" in arraydrain.explain(MyLoader(TensorDataset(X)))
    assert "not a DataLoader" in arraydrain.explain([X])


def test_drain_logs_the_path_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="arraydrain"):
        arraydrain.drain(DataLoader(TensorDataset(X, Y), batch_size=10))
        arraydrain.drain(DataLoader(Records(), batch_size=10))
    lines = [r.getMessage() for r in caplog.records if r.name == "arraydrain"]
    assert any(m.startswith("fast path: ") for m in lines), lines
    assert any(m.startswith("general path: its dataset is a Records") for m in lines), lines


def test_a_wrapper_that_costs_the_fast_path_is_hinted_once():
    def collate(b):
        return default_collate(b)

    loader = DataLoader(TensorDataset(X, Y), batch_size=10, collate_fn=collate)
    with pytest.warns(UserWarning, match=r"only because its collate_fn is .*collate") as seen:
        arraydrain.drain(loader)
    assert len([w for w in seen if "only because" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arraydrain.drain(loader)  # once per reason: no second hint


def test_a_real_custom_collate_is_not_called_a_wrapper():
    def collate(b):
        x = torch.stack([s[0] for s in b])
        return x * 2, torch.stack([s[1] for s in b])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = arraydrain.drain(DataLoader(TensorDataset(X, Y), batch_size=10, collate_fn=collate))
    np.testing.assert_array_equal(got[0], X.numpy() * 2)


# ---- zero batches, file names, messages --------------------------------------------------


class Small(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return X[i], Y[i]


def test_zero_batches_give_empty_arrays_on_both_paths():
    fast = arraydrain.drain(DataLoader(TensorDataset(X[:5], Y[:5]), batch_size=16, drop_last=True))
    general = arraydrain.drain(DataLoader(Small(), batch_size=16, drop_last=True))
    for f, g in zip(fast, general):
        assert f.shape == g.shape and f.dtype == g.dtype
    assert general[0].shape == (0, 8) and general[1].shape == (0,)


def test_zero_batches_leave_the_random_generators_as_the_epoch_does():
    class Noisy(Small):
        def __getitem__(self, i):
            return X[i] + torch.rand(8), Y[i]

    loader = DataLoader(Noisy(), batch_size=16, drop_last=True, shuffle=True)
    before = capture(loader)
    got = arraydrain.drain(loader)
    after = capture(loader)
    restore(before)
    assert list(loader) == []
    assert torch.equal(after["torch"], torch.get_rng_state())
    assert got[0].shape == (0, 8)


def test_zero_batches_to_files(tmp_path):
    arraydrain.to_npz(DataLoader(Small(), batch_size=16, drop_last=True), tmp_path / "e.npz")
    with np.load(tmp_path / "e.npz") as z:
        assert z["0"].shape == (0, 8) and z["1"].shape == (0,)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_to_npz_adds_the_extension_as_numpy_savez_does(tmp_path, fast):
    loader = DataLoader(TensorDataset(X, Y) if fast else Small(), batch_size=16)
    arraydrain.to_npz(loader, tmp_path / "noext")
    assert sorted(os.listdir(tmp_path)) == ["noext.npz"]
    with np.load(tmp_path / "noext.npz") as z:
        assert sorted(z.files) == ["0", "1"]


def test_bfloat16_message_does_not_suggest_float16(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # bfloat16 drains only with ml_dtypes
    x = X.to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"tensor\.float\(\)") as e:
        arraydrain.drain(DataLoader(TensorDataset(x), batch_size=16))
    assert "use a float16 copy" not in str(e.value)
    assert "leaf '0'" in str(e.value)


@pytest.mark.parametrize("where", ["drain", "to_npz", "to_npz-unknown-length"])
def test_leaves_are_named_one_way_in_messages(tmp_path, where):
    calls = []

    def collate(b):
        x, y = default_collate(b)
        calls.append(1)
        return (x, y[:-1]) if len(calls) == 3 else (x, y)

    loader = DataLoader(TensorDataset(X, Y), batch_size=16, collate_fn=collate)
    with pytest.raises(ValueError) as e:
        if where == "drain":
            arraydrain.drain(loader)
        elif where == "to_npz":
            arraydrain.to_npz(loader, tmp_path / "o.npz")
        else:
            arraydrain.to_npz((b for b in loader), tmp_path / "o.npz")
    assert "batch 2, leaf '1': 15 rows, but the batch's leaf '0' has 16" in str(e.value)
    assert 'column "' not in str(e.value)


def test_general_path_out_reuse_is_exact_with_text():
    loader = DataLoader(Records(), batch_size=32)
    got = arraydrain.drain(loader, strings="U")
    again = arraydrain.drain(loader, out=got)
    assert again is got
    assert got["id"][199] == "sample-0199"
    assert math.isclose(float(got["x"][3, 0]), float(X[3, 0]))


def test_items_is_refused_where_the_loader_batches_itself():
    with pytest.raises(ValueError, match=r"items='rows' applies without automatic batching"):
        arraydrain.drain(DataLoader(Records(), batch_size=8), items="rows")
    with pytest.raises(ValueError, match=r"items must be None, 'rows' or 'batches'"):
        arraydrain.drain(DataLoader(Records(), batch_size=None), items="row")


def test_an_iterable_dataset_is_refused_with_both_ways_to_wrap_it():
    with pytest.raises(TypeError, match=r"batch_size=None\), items='batches'\) for batches"):
        arraydrain.drain(RowGroups(100, 10))

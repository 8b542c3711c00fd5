"""Wrong inputs raise the right Python exception with a clear message, never crash, and leave
the module usable (every test ends with a good drain)."""

import sys

import numpy as np
import pytest
import torch
from helpers import drain_vs_epoch, features, labels, values
from torch.utils.data import DataLoader, Dataset, TensorDataset

import arraydrain

N = 200


def good():
    return DataLoader(TensorDataset(features(N), labels(N)), batch_size=16, shuffle=True)


@pytest.fixture(autouse=True)
def _still_works_afterwards():
    yield
    drain_vs_epoch(good())


class MapDataset(Dataset):
    def __init__(self, n, make):
        self.n, self.make = n, make

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


@pytest.mark.parametrize("thing", [42, None, 3.5, object()])
def test_not_a_loader(thing):
    with pytest.raises(TypeError, match=r"takes a DataLoader or an iterable of batches"):
        arraydrain.drain(thing)


def test_bfloat16_fast_path_drains_as_ml_dtypes_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = values((N, 4), torch.float32).to(torch.bfloat16)
    got, _ = arraydrain.drain(DataLoader(TensorDataset(x, labels(N)), batch_size=16))
    assert got.dtype == ml_dtypes.bfloat16
    assert got.view(np.int16).tobytes() == x.view(torch.int16).numpy().tobytes()


def test_bfloat16_general_path_drains_as_ml_dtypes_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = values((N, 4), torch.float32).to(torch.bfloat16)
    loader = DataLoader(MapDataset(N, lambda i: (x[i], i)), batch_size=16)
    got, _ = arraydrain.drain(loader)
    assert got.dtype == ml_dtypes.bfloat16
    assert got.view(np.int16).tobytes() == x.view(torch.int16).numpy().tobytes()


def test_bfloat16_without_ml_dtypes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    x = values((N, 4), torch.float32).to(torch.bfloat16)
    for loader in (
        DataLoader(TensorDataset(x, labels(N)), batch_size=16),
        DataLoader(MapDataset(N, lambda i: (x[i], i)), batch_size=16),
    ):
        with pytest.raises(TypeError, match=r"pip install ml_dtypes.*tensor\.float\(\)"):
            arraydrain.drain(loader)


def test_mismatched_lengths_in_a_tensor_dataset():
    ds = TensorDataset(features(N), labels(N))
    ds.tensors = (ds.tensors[0], ds.tensors[1][:-1])  # TensorDataset checks this only when built
    with pytest.raises(ValueError, match=r"different lengths \(200 and 199 rows\)"):
        arraydrain.drain(DataLoader(ds, batch_size=16))


def test_mismatched_lengths_within_a_batch():
    def collate(samples):
        xs, ys = zip(*samples)
        return torch.stack(xs), torch.stack(ys)[:-1]

    loader = DataLoader(TensorDataset(features(N), labels(N)), batch_size=16, collate_fn=collate)
    with pytest.raises(ValueError, match=r"batch 0, leaf '1': 15 rows, but the batch's leaf '0' has 16"):
        arraydrain.drain(loader)


def _collate_changing_one_batch(change):
    calls = {"n": 0}

    def collate(samples):
        xs, ys = zip(*samples)
        x, y = torch.stack(xs), torch.stack(ys)
        calls["n"] += 1
        if calls["n"] == 3:
            x, y = change(x, y)
        return x, y

    return collate


@pytest.mark.parametrize("where", ["middle", "last"])
def test_loader_yielding_fewer_rows_than_its_length(where):
    ds = TensorDataset(features(N), labels(N))
    target = 3 if where == "middle" else (N + 15) // 16
    calls = {"n": 0}

    def collate(samples):
        calls["n"] += 1
        xs, ys = zip(*samples)
        if calls["n"] == target:
            xs, ys = xs[:-1], ys[:-1]
        return torch.stack(xs), torch.stack(ys)

    with pytest.raises(ValueError, match=r"says 200 rows, but it yielded 199"):
        arraydrain.drain(DataLoader(ds, batch_size=16, collate_fn=collate))


def test_loader_yielding_more_rows_than_its_length():
    collate = _collate_changing_one_batch(
        lambda x, y: (torch.cat([x, x[:1]]), torch.cat([y, y[:1]]))
    )
    ds = TensorDataset(features(N), labels(N))
    with pytest.raises(ValueError, match=r"says 200 rows, but it yielded 201 or more"):
        arraydrain.drain(DataLoader(ds, batch_size=16, collate_fn=collate))


def test_batch_whose_trailing_shape_changes():
    collate = _collate_changing_one_batch(lambda x, y: (x[:, :-1], y))
    ds = TensorDataset(features(N), labels(N))
    with pytest.raises(ValueError, match=r"batch 2, leaf '0': row shape \(7,\) differs from the first batch's \(8,\)"):
        arraydrain.drain(DataLoader(ds, batch_size=16, collate_fn=collate))


def test_batch_whose_dtype_changes():
    collate = _collate_changing_one_batch(lambda x, y: (x.double(), y))
    ds = TensorDataset(features(N), labels(N))
    with pytest.raises(TypeError, match=r"batch 2, leaf '0': dtype float64 differs from the first batch's float32"):
        arraydrain.drain(DataLoader(ds, batch_size=16, collate_fn=collate))


def test_batch_whose_structure_changes():
    batches = [{"a": torch.zeros(2)}, {"b": torch.zeros(2)}]
    with pytest.raises(ValueError, match=r"batch 1 does not have the structure of the first batch"):
        arraydrain.drain(batches)


def test_non_tensor_leaf_from_the_default_collate():
    """Python ints in a batch the collate left alone (a custom collate) are not a column."""
    loader = DataLoader(
        MapDataset(N, lambda i: (features(N)[i], i)), batch_size=16, collate_fn=lambda b: b
    )
    with pytest.raises(TypeError, match="batch leaf '0.1' is a int"):
        arraydrain.drain(loader)


@pytest.mark.parametrize("leaf", ["text", 3, [1.0, 2.0], None], ids=["str", "int", "list", "None"])
def test_non_tensor_leaf_in_a_batch(leaf):
    with pytest.raises(TypeError, match=r"batch leaf '1(\.0)?' is a"):
        arraydrain.drain([(torch.zeros(2), leaf)])


def test_empty_stream_has_no_structure():
    with pytest.raises(ValueError, match=r"yielded no batches"):
        arraydrain.drain(iter([]))


def test_exception_from_the_dataset_propagates_unchanged():
    class Boom(KeyError):
        pass

    def item(i):
        if i == 37:
            raise Boom("row 37 is missing")
        return torch.tensor([i])

    with pytest.raises(Boom, match="row 37"):
        arraydrain.drain(DataLoader(MapDataset(N, item), batch_size=16))


def test_exception_from_a_batch_sampler_propagates_unchanged():
    class Sampler:
        def __iter__(self):
            yield [0, 1]
            raise LookupError("sampler broke")

        def __len__(self):
            return 3

    ds = TensorDataset(features(N), labels(N))
    with pytest.raises(LookupError, match="sampler broke"):
        arraydrain.drain(DataLoader(ds, batch_sampler=Sampler()))


def test_batch_sampler_index_out_of_range():
    """The real loader raises IndexError for this index; so does the drain (no wild read)."""
    ds = TensorDataset(features(N), labels(N))
    loader = DataLoader(ds, batch_sampler=[[0, 1], [N]])
    with pytest.raises(IndexError):
        list(loader)
    with pytest.raises(IndexError, match=r"index 200 at position 2 is out of range for the TensorDataset of 200 rows"):
        arraydrain.drain(loader)


def test_negative_index_matches_the_loader():
    """Python indexing accepts -1 (the last row); the drain gives what the loader gives."""
    ds = TensorDataset(features(N), labels(N))
    drain_vs_epoch(DataLoader(ds, batch_sampler=[[0, -1], [-N, 5]]))


@pytest.mark.parametrize("strategy", ["fastest", "", "PINNED!"])
def test_unknown_strategy(strategy):
    with pytest.raises(ValueError, match=r"unknown strategy"):
        arraydrain.drain(good(), strategy=strategy)


def test_strategy_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"strategy must be a string, not int"):
        arraydrain.drain(good(), strategy=3)


@pytest.mark.parametrize("device", ["tpu", "gpu0", ""])
def test_unknown_device(device):
    with pytest.raises(ValueError, match=r"unknown device"):
        arraydrain.drain(good(), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cuda_without_a_gpu():
    with pytest.raises(RuntimeError, match=r"CUDA is not usable here"):
        arraydrain.drain(good(), device="cuda")


def test_out_of_the_wrong_shape():
    out = arraydrain.drain(DataLoader(TensorDataset(features(N + 1), labels(N + 1)), batch_size=16))
    with pytest.raises(ValueError, match=r"out= leaf '0' has shape \(201, 8\), the drain yields \(200, 8\)"):
        arraydrain.drain(good(), out=out)


def test_out_of_the_wrong_trailing_shape():
    out = arraydrain.drain(DataLoader(TensorDataset(features(N, 7), labels(N)), batch_size=16))
    with pytest.raises(ValueError, match=r"out= leaf '0' has shape \(200, 7\), the drain yields \(200, 8\)"):
        arraydrain.drain(good(), out=out)


def test_out_of_the_wrong_dtype():
    out = arraydrain.drain(
        DataLoader(TensorDataset(features(N).double(), labels(N)), batch_size=16)
    )
    with pytest.raises(TypeError, match=r"out= leaf '0' holds float64, the drain yields float32"):
        arraydrain.drain(good(), out=out)


def test_out_of_the_wrong_structure():
    out = arraydrain.drain(DataLoader(TensorDataset(features(N)), batch_size=16))
    with pytest.raises(ValueError, match=r"out= must be the previous result: a list of 2 arrays"):
        arraydrain.drain(good(), out=out)


def test_out_that_is_not_arrays():
    with pytest.raises(TypeError, match=r"out= leaf '1' is a str, not a NumPy array"):
        arraydrain.drain(good(), out=[np.zeros((N, 8), np.float32), "nope"])


def test_out_that_is_read_only():
    out = arraydrain.drain(good())
    out[0].flags.writeable = False
    with pytest.raises(ValueError, match=r"out= leaf '0' must be a writable C-contiguous array"):
        arraydrain.drain(good(), out=out)


def test_out_that_is_not_contiguous():
    out = [np.zeros((8, N), np.float32).T, np.zeros(N, np.int64)]
    with pytest.raises(ValueError, match=r"out= leaf '0' must be a writable C-contiguous array"):
        arraydrain.drain(good(), out=out)


def test_a_failed_drain_into_out_reports_the_error():
    """The error is an exception, not a silently half-filled array returned as a result."""
    out = tuple(arraydrain.drain(good()))  # the collate below makes tuples
    collate = _collate_changing_one_batch(lambda x, y: (x[:-1], y[:-1]))
    loader = DataLoader(TensorDataset(features(N), labels(N)), batch_size=16, collate_fn=collate)
    with pytest.raises(ValueError, match=r"says 200 rows, but it yielded 199"):
        arraydrain.drain(loader, out=out)


def _raises(exc, fn):
    with pytest.raises(exc) as info:
        fn()
    return info.value


def test_every_error_is_an_arraydrain_error_and_the_builtin_kind():
    bad_dtype = DataLoader(TensorDataset(features(N).to(torch.complex32)), batch_size=16)
    ds = TensorDataset(features(N), labels(N))
    ds.tensors = (ds.tensors[0], ds.tensors[1][:-1])
    cases = [
        (TypeError, lambda: arraydrain.drain(bad_dtype), arraydrain.DrainTypeError),
        (ValueError, lambda: arraydrain.drain(good(), strategy="x"), arraydrain.DrainValueError),
        (ValueError, lambda: arraydrain.drain(DataLoader(ds)), arraydrain.DrainValueError),
        (
            IndexError,
            lambda: arraydrain.drain(DataLoader(TensorDataset(features(N)), batch_sampler=[[N]])),
            arraydrain.DrainIndexError,
        ),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (
                RuntimeError,
                lambda: arraydrain.drain(good(), device="cuda"),
                arraydrain.DrainRuntimeError,
            )
        )
    for builtin, fn, cls in cases:
        e = _raises(builtin, fn)
        assert isinstance(e, arraydrain.ArrayDrainError), f"{e!r} is not an ArrayDrainError"
        assert isinstance(e, cls), f"{e!r} is not a {cls.__name__}"
        assert str(e), "the message is not empty"


def test_index_errors_are_also_value_errors():
    loader = DataLoader(TensorDataset(features(N)), batch_sampler=[[0], [N + 5]])
    e = _raises(ValueError, lambda: arraydrain.drain(loader))
    assert isinstance(e, IndexError)


def test_pinned_strategy_on_the_cpu_path():
    with pytest.raises(ValueError, match=r"strategy 'pinned' needs the CUDA engine"):
        arraydrain.drain(good(), strategy="pinned", device="cpu")


@pytest.mark.parametrize("strategy", ["concat", "per-batch"])
def test_fast_path_only_strategies_on_the_general_path(strategy):
    loader = DataLoader(MapDataset(N, lambda i: torch.tensor([i])), batch_size=16)
    with pytest.raises(ValueError, match=r"applies to the fast path"):
        arraydrain.drain(loader, strategy=strategy)


def test_out_overlapping_the_loader_tensors():
    """Refilling the source in place would read rows already overwritten."""
    x, y = features(N), labels(N)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    with pytest.raises(ValueError, match="overlap"):
        arraydrain.drain(loader, out=[x.numpy(), y.numpy()])
    assert (y.numpy() == labels(N).numpy()).all(), "the source is untouched"


def test_out_arrays_overlapping_each_other():
    buf = np.zeros(N * 9 + 8, np.float32)
    x = buf[: N * 8].reshape(N, 8)
    y = buf[N * 7 : N * 9].view(np.int64)  # shares bytes with x
    assert y.shape == (N,)
    with pytest.raises(ValueError, match="overlap"):
        arraydrain.drain(good(), out=[x, y])


@pytest.mark.parametrize("device", ["cuda:x", "cuda:", "cuda:-1"])
def test_malformed_cuda_device(device):
    with pytest.raises(ValueError, match=r"unknown device"):
        arraydrain.drain(good(), device=device)


@pytest.mark.parametrize("path", ["fast", "general"])
def test_sparse_tensors_are_refused(path):
    dense = features(N)
    dense[dense.abs() < 1] = 0
    sparse = dense.to_sparse()
    if path == "fast":
        loader = DataLoader(TensorDataset(sparse, labels(N)), batch_size=16)
    else:
        loader = [(dense[:16].to_sparse(), labels(16))]
    with pytest.raises(TypeError, match="sparse"):
        arraydrain.drain(loader)

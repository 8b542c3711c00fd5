"""`arraydrain.to_npz` / `arraydrain.to_npy_dir`: the same drain straight into NumPy files, read
back with np.load and compared with one real epoch of the loader from the same RNG state."""

import os

import numpy as np
import pytest
import torch
from helpers import (
    DTYPES,
    assert_same,
    assert_same_state,
    capture,
    classic,
    features,
    labels,
    restore,
    values,
)
from torch.utils.data import DataLoader, Dataset, TensorDataset

import arraydrain

N = 300


class MapDataset(Dataset):
    def __init__(self, n, make):
        self.n, self.make = n, make

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


X = features(N, 5)
Y = labels(N)
IMG = values((N, 2, 3, 3), torch.float16, seed=2)


def dict_loader(shuffle=True):
    g = torch.Generator().manual_seed(3)
    return DataLoader(
        MapDataset(N, lambda i: {"x": X[i], "y": Y[i], "img": IMG[i]}),
        batch_size=32,
        shuffle=shuffle,
        generator=g,
    )


def tensor_loader(shuffle=True):
    g = torch.Generator().manual_seed(4)
    return DataLoader(TensorDataset(X, Y, IMG), batch_size=32, shuffle=shuffle, generator=g)


def write_vs_epoch(write, loader, path, **kwargs):
    """Writes with `write(loader, path)`, then the reference epoch from the same RNG state."""
    before = capture(loader)
    ret = write(loader, path, **kwargs)
    after = capture(loader)
    restore(before)
    ref = classic(loader)
    assert_same_state(after, capture(loader))
    return ret, ref


def read_npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_npy_dir(path):
    names = sorted(os.listdir(path))
    assert all(n.endswith(".npy") for n in names), names
    return {n[: -len(".npy")]: np.load(os.path.join(path, n), allow_pickle=False) for n in names}


@pytest.mark.parametrize("shuffle", [False, True])
def test_to_npz_dict_batches(tmp_path, shuffle):
    path = tmp_path / "out.npz"
    _, ref = write_vs_epoch(arraydrain.to_npz, dict_loader(shuffle), str(path))
    got = read_npz(path)
    assert sorted(got) == sorted(ref)
    assert_same({k: got[k] for k in ref}, ref)


@pytest.mark.parametrize("shuffle", [False, True])
def test_to_npy_dir_dict_batches(tmp_path, shuffle):
    path = tmp_path / "out"
    _, ref = write_vs_epoch(arraydrain.to_npy_dir, dict_loader(shuffle), str(path))
    got = read_npy_dir(path)
    assert sorted(got) == sorted(ref)
    assert_same({k: got[k] for k in ref}, ref)


@pytest.mark.parametrize(
    "write, read",
    [(arraydrain.to_npz, read_npz), (arraydrain.to_npy_dir, read_npy_dir)],
    ids=["npz", "npy_dir"],
)
def test_fast_path_list_batches(tmp_path, write, read):
    path = tmp_path / ("out.npz" if write is arraydrain.to_npz else "out")
    _, ref = write_vs_epoch(write, tensor_loader(), str(path))
    got = read(path)
    assert len(got) == len(ref)
    # Positional columns are named by their position.
    assert sorted(got) == ["0", "1", "2"]
    assert_same([got["0"], got["1"], got["2"]], ref)


def test_pathlib_path_is_accepted(tmp_path):
    path = tmp_path / "p.npz"
    _, ref = write_vs_epoch(arraydrain.to_npz, dict_loader(), path)
    assert_same({k: read_npz(path)[k] for k in ref}, ref)


def test_to_npz_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.npz"
    np.savez(path, old=np.zeros(3))
    _, ref = write_vs_epoch(arraydrain.to_npz, dict_loader(), str(path))
    got = read_npz(path)
    assert "old" not in got
    assert_same({k: got[k] for k in ref}, ref)


def test_a_failed_write_leaves_no_file(tmp_path):
    bad = DataLoader(MapDataset(N, lambda i: {"x": X[i].to(torch.complex32)}), batch_size=32)
    path = tmp_path / "bad.npz"
    with pytest.raises(TypeError, match=r"leaf 'x': torch dtype torch.complex32 has no NumPy"):
        arraydrain.to_npz(bad, str(path))
    assert list(tmp_path.iterdir()) == [], "no file, not even a temporary one, is left behind"


@pytest.mark.parametrize("write", [arraydrain.to_npz, arraydrain.to_npy_dir])
@pytest.mark.parametrize("known_length", [True, False])
def test_a_loader_error_midway_leaves_no_file(tmp_path, write, known_length):
    """Known length: batches go straight into mapped files; unknown: into memory first."""

    def item(i):
        if i == N - 5:
            raise KeyError("late failure")
        return {"x": X[i], "y": Y[i]}

    loader = DataLoader(MapDataset(N, item), batch_size=32)
    source = loader if known_length else (b for b in loader)
    with pytest.raises(KeyError, match="late failure"):
        write(source, str(tmp_path / "late"))
    assert list(tmp_path.iterdir()) == [], "no file or temporary folder is left behind"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "write, read",
    [(arraydrain.to_npz, read_npz), (arraydrain.to_npy_dir, read_npy_dir)],
    ids=["npz", "npy_dir"],
)
def test_every_file_dtype(tmp_path, dtype, write, read):
    v = values((N, 3), dtype, seed=6)
    loader = DataLoader(TensorDataset(v, Y), batch_size=64, shuffle=True)
    path = tmp_path / ("out.npz" if write is arraydrain.to_npz else "out")
    _, ref = write_vs_epoch(write, loader, str(path))
    got = read(path)
    assert_same([got["0"], got["1"]], ref)


def test_member_names_follow_the_batch_structure(tmp_path):
    loader = DataLoader(
        MapDataset(N, lambda i: {"x": X[i], "meta": {"y": Y[i], "pair": (IMG[i], X[i])}}),
        batch_size=50,
    )
    _, ref = write_vs_epoch(arraydrain.to_npz, loader, str(tmp_path / "n.npz"))
    got = read_npz(tmp_path / "n.npz")
    assert sorted(got) == ["meta.pair.0", "meta.pair.1", "meta.y", "x"]
    assert_same(
        {
            "x": got["x"],
            "meta": {"y": got["meta.y"], "pair": [got["meta.pair.0"], got["meta.pair.1"]]},
        },
        ref,
    )


@pytest.mark.parametrize("compress", [False, True])
def test_compressed_and_stored_npz(tmp_path, compress):
    import zipfile

    path = tmp_path / "c.npz"
    _, ref = write_vs_epoch(arraydrain.to_npz, tensor_loader(), str(path), compress=compress)
    with zipfile.ZipFile(path) as z:
        kinds = {i.compress_type for i in z.infolist()}
    assert kinds == ({zipfile.ZIP_DEFLATED} if compress else {zipfile.ZIP_STORED})
    got = read_npz(path)
    assert_same([got["0"], got["1"], got["2"]], ref)


def test_unwritable_destination(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "out.npz"
    with pytest.raises(OSError, match="no/such/dir"):
        arraydrain.to_npz(dict_loader(), str(missing))

"""The Python writers and drains as an attacker and an unlucky user would try them: batch keys
that are paths, leaf names that collide, `out=` arrays the loader reads from, planted temporary
names, signals in the middle of a write, and indices the real epoch would refuse.

Every error is an `ArrayDrainError` (and the built-in kind), and its message names what was
wrong; nothing is left behind on disk."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import features, labels
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

import arraydrain

N = 200
X = features(N, 4)
Y = labels(N)


def listing(root):
    """Every path under `root` (relative), folders included."""
    out = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


class Keyed(Dataset):
    """Samples whose dict keys the test chooses."""

    def __init__(self, make):
        self.make = make

    def __len__(self):
        return N

    def __getitem__(self, i):
        return self.make(i)


WRITERS = [
    ("npz", lambda loader, root: arraydrain.to_npz(loader, root / "out" / "o.npz")),
    ("npy_dir", lambda loader, root: arraydrain.to_npy_dir(loader, root / "out" / "d")),
]


# ---- batch keys are data, not paths --------------------------------------------------------


@pytest.mark.parametrize(
    "key, why",
    [
        ("../escaped", "path separator"),
        ("/abs/victim", "path separator"),
        ("..", "relative folder"),
        ("new\nline", "control character"),
        ("", "empty"),
    ],
    ids=["dotdot", "absolute", "parent", "newline", "empty"],
)
@pytest.mark.parametrize("known_length", [True, False], ids=["known", "unknown"])
@pytest.mark.parametrize("kind, write", WRITERS, ids=[w[0] for w in WRITERS])
def test_batch_keys_that_are_not_plain_names_are_refused(
    tmp_path, key, why, known_length, kind, write
):
    (tmp_path / "out").mkdir()
    victim = tmp_path / "escaped.npy"
    victim.write_bytes(b"precious")
    loader = DataLoader(Keyed(lambda i: {"x": X[i], key: Y[i]}), batch_size=50)
    source = loader if known_length else (b for b in loader)
    with pytest.raises(ValueError, match="cannot name a file") as e:
        write(source, tmp_path)
    assert isinstance(e.value, arraydrain.ArrayDrainError)
    assert repr(key) in str(e.value) and why in str(e.value)
    assert victim.read_bytes() == b"precious"
    assert listing(tmp_path) == ["escaped.npy", "out"], "nothing created, nothing replaced"


# ---- leaf names that collide -------------------------------------------------------------


@pytest.mark.parametrize(
    "make, a, b",
    [
        (lambda i: {"a.b": X[i], "a": {"b": Y[i]}}, "['a.b']", "['a']['b']"),
        (lambda i: {0: X[i], "0": Y[i]}, "[0]", "['0']"),
    ],
    ids=["dotted", "int-and-str"],
)
@pytest.mark.parametrize("kind, write", WRITERS, ids=[w[0] for w in WRITERS])
def test_colliding_leaf_names_are_refused_naming_both_keys(tmp_path, make, a, b, kind, write):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError) as e:
        write(DataLoader(Keyed(make), batch_size=50), tmp_path)
    assert isinstance(e.value, arraydrain.ArrayDrainError)
    msg = str(e.value)
    assert a in msg and b in msg and "both be written as" in msg, msg
    assert listing(tmp_path) == ["out"]


def test_colliding_names_are_fine_in_memory():
    got = arraydrain.drain(DataLoader(Keyed(lambda i: {0: X[i], "0": Y[i]}), batch_size=50))
    np.testing.assert_array_equal(got[0], X.numpy())
    np.testing.assert_array_equal(got["0"], Y.numpy())


# ---- out= arrays the loader reads --------------------------------------------------------


def test_general_path_out_that_the_batches_view_is_refused():
    """A second epoch over the previous result, read through views in a shuffled order: the
    drain would overwrite rows it reads later. Refused, naming the leaf."""
    out = arraydrain.drain(DataLoader(Keyed(lambda i: {"x": X[i]}), batch_size=20))
    perm = np.random.default_rng(0).permutation(N // 20)
    views = [{"x": out["x"][p * 20 : (p + 1) * 20]} for p in perm]
    with pytest.raises(ValueError, match=r"leaf 'x' shares memory with out= leaf 'x'") as e:
        arraydrain.drain(iter(views), out=out)
    assert isinstance(e.value, arraydrain.ArrayDrainError)


def test_general_path_out_from_a_dataset_over_it_is_refused():
    """A zero-copy dataset over the previous result (each batch a view of its rows), read in
    another order."""
    out = arraydrain.drain(DataLoader(Keyed(lambda i: (X[i], Y[i])), batch_size=25))
    xs, ys = torch.from_numpy(out[0]), torch.from_numpy(out[1])

    class Rows(Dataset):
        def __len__(self):
            return N

        def __getitem__(self, idx):
            return xs[idx[0] : idx[-1] + 1], ys[idx[0] : idx[-1] + 1]

    chunks = [list(range(s, s + 25)) for s in (100, 0, 175, 25, 150, 50, 125, 75)]
    loader = DataLoader(Rows(), sampler=Fixed(chunks), batch_size=None)
    with pytest.raises(ValueError, match="leaf '0' shares memory with out= leaf '0'"):
        arraydrain.drain(loader, out=out, items="batches")


# ---- temporary files ---------------------------------------------------------------------


@pytest.mark.parametrize("known_length", [True, False], ids=["mapped", "memory"])
def test_a_planted_entry_at_the_old_predictable_name_does_not_block_or_get_used(
    tmp_path, known_length
):
    """The sink's temporary files had a predictable name (`.NAME.arraydrain-PID`); a planted
    entry there blocked to_npz. Now each temporary name is exclusive and random."""
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    planted = tmp_path / f".o.npz.arraydrain-{os.getpid()}"
    planted.symlink_to(target)
    loader = DataLoader(Keyed(lambda i: {"x": X[i], "y": Y[i]}), batch_size=50)
    arraydrain.to_npz(loader if known_length else (b for b in loader), tmp_path / "o.npz")
    with np.load(tmp_path / "o.npz") as z:
        np.testing.assert_array_equal(z["x"], X.numpy())
    assert target.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == sorted([planted.name, "o.npz", "victim.txt"])


@pytest.mark.parametrize("kind, write", WRITERS, ids=[w[0] for w in WRITERS])
def test_temporary_names_are_random_and_prefixed(tmp_path, kind, write):
    seen = []
    folder = tmp_path / "out" / ("d" if kind == "npy_dir" else "")
    (tmp_path / "out").mkdir()

    def progress(done):
        if done and not seen:
            seen.extend(n for n in os.listdir(folder) if n.startswith("."))

    loader = DataLoader(Keyed(lambda i: {"x": X[i], "y": Y[i]}), batch_size=50)
    if kind == "npz":
        arraydrain.to_npz(loader, tmp_path / "out" / "o.npz", progress=progress)
    else:
        arraydrain.to_npy_dir(loader, tmp_path / "out" / "d", progress=progress)
    assert seen, "temporary files exist while the write runs"
    for name in seen:
        assert name.startswith(".arraydrain-") and len(name) == len(".arraydrain-") + 6, name
    assert len(set(seen)) == len(seen) == 2
    assert not [n for n in listing(tmp_path) if os.path.basename(n).startswith(".")]


# ---- signals -----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, time, torch
    from torch.utils.data import DataLoader, Dataset, TensorDataset
    import arraydrain

    kind, fast, out, marker = sys.argv[1], sys.argv[2] == "fast", sys.argv[3], sys.argv[4]

    class Slow(Dataset):
        def __len__(self):
            return 400
        def __getitem__(self, i):
            if i >= 100:
                time.sleep(0.05)
            return {"x": torch.full((4,), float(i)), "y": torch.tensor(i)}

    def progress(done):
        if done and not os.path.exists(marker):
            open(marker, "w").close()
        if fast:
            time.sleep(0.5)

    if fast:
        ds = TensorDataset(torch.zeros(3_000_000, 8))
        loader = DataLoader(ds, batch_size=1000, shuffle=True)
    else:
        loader = DataLoader(Slow(), batch_size=10)
    write = arraydrain.to_npz if kind == "npz" else arraydrain.to_npy_dir
    write(loader, out, progress=progress)
    print("finished")
    """
)


@pytest.mark.parametrize("fast", [False, True], ids=["general", "fast"])
@pytest.mark.parametrize("kind", ["npz", "npy_dir"])
def test_sigterm_during_a_write_leaves_nothing(tmp_path, kind, fast):
    work = tmp_path / "work"
    work.mkdir()
    out = work / ("o.npz" if kind == "npz" else "made" + os.sep + "d")
    marker = tmp_path / "started"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, "fast" if fast else "general", str(out), str(marker)],
        stdout=subprocess.PIPE,
    )
    try:
        for _ in range(600):
            if marker.exists() or child.poll() is not None:
                break
            import time

            time.sleep(0.05)
        assert marker.exists(), "the write started"
        child.send_signal(signal.SIGTERM)
        stdout, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGTERM, (child.returncode, stdout)
    assert b"finished" not in stdout
    assert listing(work) == [], "no temporary file, no output, no folder it made"


def test_ctrl_c_during_a_fast_path_to_npz_commits_nothing(tmp_path):
    """Ctrl-C (SIGINT) in the middle of a fast-path write stops it between blocks: a
    `KeyboardInterrupt`, and no archive."""
    loader = DataLoader(TensorDataset(torch.zeros(2_000_000, 8)), batch_size=500, shuffle=True)
    calls = []

    def progress(done):
        calls.append(done)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        arraydrain.to_npz(loader, tmp_path / "o.npz", progress=progress)
    assert listing(tmp_path) == []
    assert len(calls) == 1, "stopped at the first block"


def test_ctrl_c_during_a_fast_path_drain_stops_it():
    loader = DataLoader(TensorDataset(torch.zeros(4_000_000, 8)), batch_size=500)
    calls = []

    def progress(done):
        calls.append(done)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        arraydrain.drain(loader, progress=progress)
    assert len(calls) == 1


# ---- indices the real epoch refuses ------------------------------------------------------


class Fixed(Sampler):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _real_epoch_error(loader):
    try:
        list(loader)
    except Exception as e:  # noqa: BLE001 - the test compares the classes
        return e
    return None


@pytest.mark.parametrize(
    "batches, cls, words",
    [
        ([[1.0, 2.0]], IndexError, "not an integer"),
        ([["1", "2"]], TypeError, "is a str"),
        ([[True, False]], TypeError, "is a bool"),
        ([[1], []], IndexError, "empty batch"),
        ([3], TypeError, "not a list of indices"),
        ([[2**70]], ValueError, "out of range"),
        ([[2**63 - 1]], IndexError, "out of range"),
    ],
    ids=["float", "str", "bool", "empty", "int", "huge", "past-the-end"],
)
def test_invalid_indices_from_a_batch_sampler(batches, cls, words):
    loader = DataLoader(TensorDataset(X), batch_sampler=Fixed(batches))
    real = _real_epoch_error(loader)
    assert real is not None, "the real epoch fails too"
    with pytest.raises(arraydrain.ArrayDrainError, match=words) as e:
        arraydrain.drain(loader)
    assert isinstance(e.value, cls)
    if not isinstance(real, RuntimeError):  # PyTorch's bool case fails later, in collate
        assert isinstance(e.value, type(real)), (type(e.value), type(real))


@pytest.mark.parametrize("indices", [[1.0, 2.0], np.array([0.0, 3.0])], ids=["list", "array"])
def test_float_subset_indices(indices):
    loader = DataLoader(Subset(TensorDataset(X), indices), batch_size=2)
    assert isinstance(_real_epoch_error(loader), IndexError)
    with pytest.raises(IndexError, match=r"Subset.indices\[0\] is [01]\.0, not an integer") as e:
        arraydrain.drain(loader)
    assert isinstance(e.value, arraydrain.ArrayDrainError)


def test_huge_unsigned_subset_index_is_not_wrapped():
    huge = np.array([2**64 - 1], dtype=np.uint64)
    loader = DataLoader(Subset(TensorDataset(X), huge), batch_size=1)
    with pytest.raises(IndexError, match="18446744073709551615") as e:
        arraydrain.drain(loader)
    assert isinstance(e.value, arraydrain.ArrayDrainError)

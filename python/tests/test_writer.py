"""`arraydrain.Writer` and `arraydrain.indexed`: model outputs written at their dataset indices
equal the classic recipe (collect the outputs, concatenate, reorder by index), for every sampler
`indexed` replays and every dtype (bfloat16 included); a missing row fails the close and commits
nothing; `indexed` leaves every RNG as a plain epoch does."""

import io
import os
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
)

import arraydrain
from helpers import DTYPES, values

N = 203


def model():
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def dataset(n=N):
    x = values((n, 4), torch.float32).nan_to_num(0.0).clamp(-9, 9)
    return TensorDataset(x, torch.arange(n))


def loaders():
    ds = dataset()
    g = torch.Generator().manual_seed(3)
    return {
        "sequential": DataLoader(ds, batch_size=16),
        "shuffled": DataLoader(ds, batch_size=16, shuffle=True, generator=g),
        "shuffled-global-rng": DataLoader(ds, batch_size=10, shuffle=True, drop_last=True),
        "subset-sampler": DataLoader(
            ds, batch_size=7, sampler=SubsetRandomSampler(list(range(0, N, 2)))
        ),
        "subset-dataset": DataLoader(Subset(ds, list(range(N - 1, -1, -3))), batch_size=9),
    }


def classic(loader, f):
    """The recipe people write: collect outputs and indices, concatenate, reorder."""
    outs, idxs = [], []
    for idx, batch in arraydrain.indexed(loader):
        outs.append(f(batch))
        idxs.append(idx)
    idx = np.concatenate(idxs)
    leaves = [o if isinstance(o, tuple) else (o,) for o in outs]
    result = []
    for k in range(len(leaves[0])):
        cat = np.concatenate([o[k].numpy() if torch.is_tensor(o[k]) else o[k] for o in leaves])
        full = np.zeros((len(loader.dataset),) + cat.shape[1:], cat.dtype)
        full[idx] = cat
        result.append(full)
    return idx, result


@pytest.mark.parametrize("name", list(loaders()))
@pytest.mark.parametrize("dest", ["memory", "x.npy", "x.npz", "xdir"])
def test_outputs_equal_the_classic_recipe(tmp_path, name, dest):
    loader = loaders()[name]
    net = model()
    with torch.no_grad():
        torch.manual_seed(11)
        idx, (want,) = classic(loader, lambda b: net(b[0]))
        rows = len(loader.dataset)
        covered = np.zeros(rows, bool)
        covered[idx] = True
        if not covered.all():
            # A subset or drop_last leaves rows no batch holds: the writer's output has only the
            # rows the epoch covers, addressed by their position among them.
            pos = np.cumsum(covered) - 1
            want = want[covered]
        else:
            pos = np.arange(rows)
        path = None if dest == "memory" else tmp_path / dest
        torch.manual_seed(11)
        with arraydrain.Writer(path, rows=int(covered.sum())) as w:
            for i, (x, _) in arraydrain.indexed(loader):
                w.write(net(x), at=pos[i])
    if path is None:
        got = w.result
    elif dest.endswith(".npy"):
        got = np.load(path)
    elif dest.endswith(".npz"):
        got = np.load(path)["0"]
    else:
        got = np.load(path / "0.npy")
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    assert sorted(os.listdir(tmp_path)) == ([] if path is None else [dest])


def test_every_dtype_and_structures_in_memory_and_in_files(tmp_path):
    ds_idx = np.random.default_rng(0).permutation(N)
    leaves = {f"c{k}": values((N, 2), d, seed=k) for k, d in enumerate(DTYPES)}
    leaves["bf16"] = values((N, 3), torch.float32, seed=99).to(torch.bfloat16)
    leaves["f8"] = values((N,), torch.float32, seed=98).nan_to_num(0.0).clamp(-100, 100).to(
        torch.float8_e4m3fn
    )
    leaves["np_c64"] = values((N, 2), torch.complex64, seed=97).numpy()
    leaves["np_dt"] = np.arange(N).astype("datetime64[s]")

    def batches():
        for s in range(0, N, 25):
            at = ds_idx[s : s + 25]
            t = torch.as_tensor(at)
            yield at, {k: v[t] if torch.is_tensor(v) else v[at] for k, v in leaves.items()}

    for path in [None, tmp_path / "all.npz", tmp_path / "all"]:
        with arraydrain.Writer(path, rows=N, ring_bytes=4096) as w:
            for at, b in batches():
                w.write(b, at=at)
        if path is None:
            got = w.result
        elif str(path).endswith(".npz"):
            got = dict(np.load(path))
        else:
            got = {f[:-4]: np.load(path / f) for f in os.listdir(path)}
        assert set(got) == set(leaves)
        for k, v in leaves.items():
            if torch.is_tensor(v) and v.dtype == torch.bfloat16:
                want = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            elif torch.is_tensor(v) and v.dtype == torch.float8_e4m3fn:
                want = v.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
            else:
                want = v.numpy() if torch.is_tensor(v) else v
            g = got[k]
            if path is not None and want.dtype.type.__module__ == "ml_dtypes":
                # In files, as numpy.save writes them: voids, restored by a view.
                assert g.dtype.kind == "V" and g.dtype.itemsize == want.dtype.itemsize
                g = g.view(want.dtype)
            assert g.dtype == want.dtype and g.shape == want.shape, k
            assert g.tobytes() == want.tobytes(), k


def test_bfloat16_file_is_what_numpy_with_ml_dtypes_writes_byte_for_byte(tmp_path):
    x = values((40, 3), torch.float32, seed=5).to(torch.bfloat16)
    with arraydrain.Writer(tmp_path / "b.npy", rows=40) as w:
        for s in range(0, 40, 16):
            w.write(x[s : s + 16])
    ref = io.BytesIO()
    np.save(ref, x.view(torch.int16).numpy().view(ml_dtypes.bfloat16))
    assert (tmp_path / "b.npy").read_bytes() == ref.getvalue()
    assert b"'descr': '<V2'" in ref.getvalue()
    back = np.load(tmp_path / "b.npy").view(ml_dtypes.bfloat16)
    assert torch.equal(torch.from_numpy(back.view(np.int16)), x.view(torch.int16))


def test_in_memory_bfloat16_is_an_ml_dtypes_array():
    x = torch.linspace(-3, 3, 12).to(torch.bfloat16).reshape(6, 2)
    with arraydrain.Writer(None, rows=6) as w:
        w.write(x[3:], at=[3, 4, 5])
        w.write(x[:3], at=np.array([0, 1, 2]))
    assert w.result.dtype == ml_dtypes.bfloat16
    assert np.array_equal(w.result.astype(np.float32), x.float().numpy())


def test_missing_ml_dtypes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    w = arraydrain.Writer(None, rows=2)
    with pytest.raises(arraydrain.DrainTypeError, match=r"pip install ml_dtypes"):
        w.write(torch.zeros(2, dtype=torch.bfloat16))
    w.abort()


def test_a_missing_row_fails_close_and_commits_nothing(tmp_path):
    path = tmp_path / "out.npy"
    missing = r"1 of 10 rows were never written \(the first: \[7\]\)"
    with pytest.raises(arraydrain.DrainValueError, match=missing):
        with arraydrain.Writer(path, rows=10) as w:
            w.write(torch.ones(9, 2), at=[0, 1, 2, 3, 4, 5, 6, 8, 9])
            assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_an_exception_in_the_block_commits_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="model failed"):
        with arraydrain.Writer(tmp_path / "o.npz", rows=4) as w:
            w.write({"a": torch.ones(4), "b": torch.zeros(4, 2)}, at=[0, 1, 2, 3])
            raise RuntimeError("model failed")
    assert os.listdir(tmp_path) == []


def test_bad_batches_are_refused_and_lose_nothing():
    w = arraydrain.Writer(None, rows=4)
    w.write(torch.arange(2.0), at=[0, 1])
    with pytest.raises(arraydrain.DrainIndexError, match="index 4 at position 1"):
        w.write(torch.arange(2.0), at=[2, 4])
    with pytest.raises(arraydrain.DrainIndexError, match="index -1 at position 0"):
        w.write(torch.arange(2.0), at=[-1, 2])
    with pytest.raises(arraydrain.DrainValueError, match="3 indices for a batch of 2 rows"):
        w.write(torch.arange(2.0), at=[1, 2, 3])
    with pytest.raises(arraydrain.DrainIndexError, match=f"index {2**64} in at= is out of range"):
        w.write(torch.arange(2.0), at=[0, 2**64])
    with pytest.raises(arraydrain.DrainTypeError, match="integers, not float64"):
        w.write(torch.arange(2.0), at=[0, 1.0])
    with pytest.raises(arraydrain.DrainValueError, match="float64"):
        w.write(torch.arange(2.0, dtype=torch.float64), at=[2, 3])
    with pytest.raises(arraydrain.DrainValueError, match="structure differs"):
        w.write((torch.arange(2.0), torch.arange(2.0)), at=[2, 3])
    with pytest.raises(arraydrain.DrainTypeError, match="text"):
        w.write(["a", "b"], at=[2, 3])
    # An append after rows placed by index would land on rows 0 and 1, over them.
    with pytest.raises(arraydrain.DrainValueError, match="append after rows placed by index"):
        w.write(torch.arange(7.0, 9.0))
    assert w.rows_written == 2
    w.write(torch.arange(2.0, 4.0), at=[3, 2])
    assert np.array_equal(w.close(), [0.0, 1.0, 3.0, 2.0])
    # And rows by index after appended ones (the shortcut's path too: same batch shape).
    w = arraydrain.Writer(None, rows=4)
    w.write(np.arange(2.0))
    with pytest.raises(arraydrain.DrainValueError, match="by index after 2 appended rows"):
        w.write(np.arange(2.0), at=[2, 3])
    w.write(np.arange(2.0, 4.0))
    assert np.array_equal(w.close(), [0.0, 1.0, 2.0, 3.0])


def test_later_batches_like_the_first_take_the_shortcut_and_others_the_checked_path():
    """After a first batch of one CPU tensor, batches like it skip the general path; every other
    kind of batch (an array, a view, a tensor needing grad, another dtype, int64 indices out of
    range, negative or as a list) still lands, or is refused, exactly as on the general path."""
    rows = 24
    ref = torch.arange(rows * 6, dtype=torch.float32).reshape(rows, 2, 3)
    perm = np.random.default_rng(3).permutation(rows).astype(np.int64)
    w = arraydrain.Writer(None, rows=rows)
    w.write(ref[perm[:4]], at=perm[:4])
    assert w._fast is not None
    w.write(ref[perm[4:8]], at=perm[4:8])  # the shortcut
    w.write(ref[perm[8:12]].numpy(), at=perm[8:12].tolist())  # an array, a list
    wide = torch.zeros(4, 2, 6)
    wide[:, :, ::2] = ref[perm[12:16]]
    w.write(wide[:, :, ::2], at=torch.from_numpy(perm[12:16]))  # not contiguous, a tensor
    w.write(ref[perm[16:20]].clone().requires_grad_(), at=perm[16:20].astype(np.int32))
    w.write(torch._neg_view(-ref[perm[20:22]]), at=perm[20:22])  # a negative bit: resolved
    with pytest.raises(arraydrain.DrainIndexError, match="index 24 at position 1"):
        w.write(ref[:2], at=np.array([0, 24], dtype=np.int64))
    with pytest.raises(arraydrain.DrainIndexError, match="index -3 at position 0"):
        w.write(ref[:2], at=np.array([-3, 0], dtype=np.int64))
    with pytest.raises(arraydrain.DrainValueError, match="3 indices for a batch of 2 rows"):
        w.write(ref[:2], at=np.array([0, 1, 2], dtype=np.int64))
    with pytest.raises(arraydrain.DrainValueError, match="float64"):
        w.write(ref[:2].double(), at=np.array([0, 1], dtype=np.int64))
    with pytest.raises(arraydrain.DrainValueError, match="shape"):
        w.write(ref[:2].reshape(2, 3, 2), at=np.array([0, 1], dtype=np.int64))
    assert w.rows_written == 22
    w.write(ref[perm[22:]][None][0], at=perm[22:])
    assert np.array_equal(w.close(), ref.numpy())


def test_the_shortcut_keeps_bfloat16_and_arrays_exact():
    rows = 10
    bf = torch.randn(rows, 3).to(torch.bfloat16)
    w = arraydrain.Writer(None, rows=rows)
    for lo in range(0, rows, 3):
        w.write(bf[lo : lo + 3], at=np.arange(lo, min(lo + 3, rows)))
    assert w._fast is not None
    out = w.close()
    assert out.dtype == ml_dtypes.bfloat16
    assert np.array_equal(out.view(np.int16), bf.view(torch.int16).numpy())
    a = np.arange(rows * 2, dtype=">i4").reshape(rows, 2)
    w = arraydrain.Writer(None, rows=rows)
    w.write(a[:5].astype("<i4"))
    w.write(a[5:])  # big-endian: the checked path turns it around
    assert np.array_equal(w.close(), a)


def test_batches_of_several_leaves_take_the_shortcut_and_stay_exact():
    rows = 30
    emb = torch.randn(rows, 2, 3)
    half = torch.randn(rows, 4).to(torch.bfloat16)
    label = torch.arange(rows) * 7
    perm = np.random.default_rng(5).permutation(rows).astype(np.int64)
    w = arraydrain.Writer(None, rows=rows)
    t = arraydrain.Writer(None, rows=rows)
    for lo in range(0, 24, 4):
        i = perm[lo : lo + 4]
        w.write({"emb": emb[i], "half": half[i]}, at=i)
        t.write((label[i], emb[i].numpy()), at=i)
    assert w._fast is not None and t._fast is not None
    i = perm[24:28]
    # Keys in another order, a leaf of other rows or dtype: the checked path (and its verdict).
    with pytest.raises(arraydrain.DrainValueError, match="rows"):
        w.write({"emb": emb[i], "half": half[i][:3]}, at=i)
    with pytest.raises(arraydrain.DrainValueError, match="float32"):
        w.write({"emb": emb[i], "half": half[i].float()}, at=i)
    with pytest.raises(arraydrain.DrainValueError, match="structure differs"):
        t.write([label[i], emb[i].numpy()], at=i)
    same = arraydrain.Writer(None, rows=4)
    same.write({"a": torch.zeros(2, 3), "b": torch.ones(2, 3)}, at=[0, 1])
    with pytest.raises(arraydrain.DrainValueError, match="structure differs"):
        same.write({"b": torch.ones(2, 3), "a": torch.zeros(2, 3)}, at=[2, 3])
    same.abort()
    w.write({"emb": emb[i], "half": half[i]}, at=i)
    t.write((label[i], emb[i].numpy()), at=i)
    i = perm[28:]
    w.write({"emb": emb[i], "half": half[i]}, at=i)
    t.write((label[i], emb[i].numpy()), at=i)
    out, (lab, em) = w.close(), t.close()
    assert np.array_equal(out["emb"], emb.numpy())
    assert np.array_equal(out["half"].view(np.int16), half.view(torch.int16).numpy())
    assert np.array_equal(lab, label.numpy()) and np.array_equal(em, emb.numpy())


def test_several_leaves_refuse_a_npy_file(tmp_path):
    w = arraydrain.Writer(tmp_path / "x.npy", rows=2)
    with pytest.raises(arraydrain.DrainValueError, match=r"holds one array.*2 leaves \(0, 1\)"):
        w.write((torch.ones(2), torch.ones(2)))
    assert os.listdir(tmp_path) == []


def test_rows_are_required():
    with pytest.raises(arraydrain.DrainTypeError, match="rows="):
        arraydrain.Writer("x.npy")


# ---- indexed ---------------------------------------------------------------------------------


def plain_epoch(loader):
    return [b for b in loader]


@pytest.mark.parametrize(
    "kind", ["sequential", "shuffled", "global", "subset", "distributed", "workers"]
)
def test_indexed_yields_each_batchs_indices_and_leaves_the_rng_as_a_plain_epoch(kind):
    ds = TensorDataset(torch.arange(50) * 10)
    g = torch.Generator().manual_seed(5)
    make = {
        "sequential": lambda: DataLoader(ds, batch_size=8),
        "shuffled": lambda: DataLoader(ds, batch_size=8, shuffle=True, generator=g),
        "global": lambda: DataLoader(ds, batch_size=7, shuffle=True),
        "subset": lambda: DataLoader(ds, batch_size=6, sampler=SubsetRandomSampler(range(3, 40))),
        "distributed": lambda: DataLoader(
            ds,
            batch_size=4,
            sampler=DistributedSampler(ds, num_replicas=3, rank=2, shuffle=True, seed=4),
        ),
        "workers": lambda: DataLoader(ds, batch_size=8, shuffle=True, num_workers=2),
    }[kind]
    torch.manual_seed(21)
    g.manual_seed(5)
    loader = make()
    pairs = list(arraydrain.indexed(loader))
    after_indexed = (torch.get_rng_state(), g.get_state())
    next_indexed = [b[0] for b in loader]
    torch.manual_seed(21)
    g.manual_seed(5)
    loader = make()
    plain = plain_epoch(loader)
    after_plain = (torch.get_rng_state(), g.get_state())
    next_plain = [b[0] for b in loader]
    assert len(pairs) == len(plain)
    for (idx, (b,)), (p,) in zip(pairs, plain):
        assert np.array_equal(b.numpy(), idx * 10)  # the batch holds dataset[idx]
        assert torch.equal(b, p)
    assert all(torch.equal(a, b) for a, b in zip(after_indexed, after_plain))
    assert all(torch.equal(a, b) for a, b in zip(next_indexed, next_plain))


def test_indexed_refuses_samplers_it_cannot_replay():
    ds = TensorDataset(torch.arange(10))

    class Mine(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(9, -1, -1))

        def __len__(self):
            return 10

    with pytest.raises(arraydrain.DrainTypeError, match="cannot know the indices a Mine yields"):
        next(arraydrain.indexed(DataLoader(ds, batch_size=2, sampler=Mine())))


# ---- drain's bfloat16 ------------------------------------------------------------------------


def test_drain_gives_ml_dtypes_bfloat16_and_files_as_numpy_with_ml_dtypes_writes(tmp_path):
    import zipfile

    x = values((N, 3), torch.float32, seed=4).to(torch.bfloat16)
    g = torch.Generator()
    loader = DataLoader(TensorDataset(x), batch_size=16, shuffle=True, generator=g)
    g.manual_seed(2)
    (got,) = arraydrain.drain(loader)
    g.manual_seed(2)
    order = np.concatenate([i for i, _ in arraydrain.indexed(loader)])
    assert got.dtype == ml_dtypes.bfloat16
    assert got.view(np.int16).tobytes() == x[order].view(torch.int16).numpy().tobytes()
    g.manual_seed(2)
    arraydrain.to_npz(loader, str(tmp_path / "x.npz"))
    ref = io.BytesIO()
    np.save(ref, got)
    with zipfile.ZipFile(tmp_path / "x.npz") as z:
        assert z.read("0.npy") == ref.getvalue()  # the member is numpy.save's file, byte for byte


# ---- the README's example ----------------------------------------------------------------------


def test_the_readme_writer_example_runs(tmp_path):
    import pathlib
    import re
    import subprocess

    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    start = text.index("## Writing model outputs")
    section = text[start : text.find("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    blocks = [b for b in blocks if not b.startswith("# torchrun")]  # needs a launch
    assert any("arraydrain.Writer(" in b and "arraydrain.indexed(" in b for b in blocks)
    for code in blocks:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["feats.npy"]


def test_sigterm_inside_the_block_removes_the_files_then_ends_the_process(tmp_path):
    import signal
    import subprocess

    code = (
        "import os, signal, sys, numpy as np, arraydrain\n"
        "d = sys.argv[1]\n"
        "W = arraydrain.Writer\n"
        "with W(d + '/x.npy', rows=4) as w, W(d + '/y', rows=4) as v:\n"
        "    w.write(np.arange(2.0), at=[0, 1])\n"
        "    v.write({'a': np.arange(2.0)}, at=[0, 1])\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "not reached" not in done.stdout
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process: untouched


# The CUDA path's ordering (copies handed over in order once landed, back-pressure when the
# staging pool is full, host writes after device ones) is the engine's device writer's: tested
# under the CUDA simulator in tests/cudasim_writer.rs and test_writer_cuda_sim.py.


def test_cuda_tensors_the_engine_cannot_take_are_copied_by_pytorch_with_a_warning(monkeypatch):
    import arraydrain._cuda as cmod

    monkeypatch.setattr(cmod, "_cuda_status", lambda ordinal: (False, "no engine on this test"))

    class Cuda:  # makes write() take the CUDA route for a tensor leaf
        type, index = "cuda", 0

    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: Cuda()), raising=False)
    w = arraydrain.Writer(None, rows=4)
    with pytest.warns(RuntimeWarning, match="cuda:0 are copied to the host.*no engine on this"):
        w.write(torch.full((2, 3), 1.0), at=[2, 3])
    w.write(torch.full((2, 3), 2.0), at=[0, 1])
    monkeypatch.undo()
    np.testing.assert_array_equal(w.close()[:, 0], [2, 2, 1, 1])

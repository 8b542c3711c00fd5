"""The writer's file-system meeting of ranks (arraydrain._rendezvous), in one process: two ranks
as two threads exchange what the writer exchanges, and the meeting folder is treated as
untrusted (a link or a foreign folder is refused, a message is data, a missing rank times out)."""

import os
import threading

import pytest

import arraydrain
from arraydrain._rendezvous import FsGroup, run_identity


def pair(path, timeout=5.0):
    return [FsGroup(str(path), r, 2, "run-1", timeout) for r in range(2)]


def run_both(groups, job):
    out, errors = [None, None], []

    def one(r):
        try:
            out[r] = job(groups[r])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    if errors:
        raise errors[0]
    return out


def test_two_ranks_exchange_what_the_writer_exchanges_and_the_folder_goes(tmp_path):
    groups = pair(tmp_path / "out.npy")
    assert groups[0].dir == groups[1].dir and os.path.dirname(groups[0].dir) == str(tmp_path)

    def job(g):
        box = [("ok", "/shared/.tmp-x") if g.get_rank() == 0 else None]
        g.broadcast_object_list(box, src=0)
        every = [None, None]
        g.all_gather_object(every, ("ok", bytes([g.get_rank(), 255]), 7))
        g.broadcast_object_list([("ok", None) if g.get_rank() == 0 else None], src=0)
        g.end()
        return box[0], every

    (b0, e0), (b1, e1) = run_both(groups, job)
    assert b0 == b1 == ("ok", "/shared/.tmp-x")
    assert e0 == e1 == [("ok", b"\x00\xff", 7), ("ok", b"\x01\xff", 7)]
    assert os.listdir(tmp_path) == []


def test_another_run_or_output_meets_elsewhere(tmp_path):
    a = FsGroup(str(tmp_path / "a.npy"), 0, 2, "run-1", 1)
    assert FsGroup(str(tmp_path / "a.npy"), 0, 2, "run-2", 1).dir != a.dir
    assert FsGroup(str(tmp_path / "b.npy"), 0, 2, "run-1", 1).dir != a.dir


def test_a_link_at_the_meeting_folder_is_refused(tmp_path):
    probe = FsGroup(str(tmp_path / "out.npy"), 0, 2, "run-1", 1)
    probe.remove()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, probe.dir)
    with pytest.raises(arraydrain.DrainOSError, match="not a folder of this user's"):
        FsGroup(str(tmp_path / "out.npy"), 1, 2, "run-1", 1)
    assert os.listdir(elsewhere) == []


def test_a_message_that_is_not_the_writers_is_an_error_not_data(tmp_path):
    g = FsGroup(str(tmp_path / "out.npy"), 1, 2, "run-1", 1)
    with open(os.path.join(g.dir, "0-0.json"), "w") as f:
        f.write("cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle, not JSON
    with pytest.raises(arraydrain.DrainValueError, match="rank 0's message is not one"):
        g.broadcast_object_list([None], src=0)


def test_a_rank_that_never_comes_times_out_naming_it(tmp_path):
    g = FsGroup(str(tmp_path / "out.npy"), 0, 3, "run-1", 0.2)
    with pytest.raises(arraydrain.DrainRuntimeError, match=r"waited 0.2 s for rank\(s\) \[1, 2\] of 3"):
        g.all_gather_object([None] * 3, ("ok", b"", 0))
    g.end()
    assert os.listdir(tmp_path) == []


def test_the_run_identity_comes_from_the_launcher():
    assert run_identity({}) is None
    assert run_identity({"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "1"}) == (
        "TORCHELASTIC_RUN_ID=abc:TORCHELASTIC_RESTART_COUNT=1"
    )
    assert "SLURM_JOB_ID=9:SLURM_STEP_ID=0" in run_identity({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0"})
    assert run_identity({"ARRAYDRAIN_RUN_ID": "x", "SLURM_JOB_ID": "9"}) == "arraydrain:x"

"""The writer's file-system meeting of ranks (arraydrain._rendezvous), in one process: two ranks
as two threads exchange what the writer exchanges, and the meeting folder is treated as
untrusted (a link or a foreign folder is refused, a message is data, a missing rank times out)."""

import os
import threading
import time

import pytest

import arraydrain
from arraydrain import _rendezvous
from arraydrain._rendezvous import FsGroup, no_identity_message, run_identity


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
    FsGroup(str(tmp_path / "out.npy"), 0, 2, "run-1", 1)  # rank 0 makes the folder
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
        "TORCHELASTIC_RUN_ID=abc:TORCHELASTIC_RESTART_COUNT=1:MASTER_ADDR=:MASTER_PORT="
    )
    assert "SLURM_JOB_ID=9:SLURM_STEP_ID=0" in run_identity({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0"})
    assert run_identity({"ARRAYDRAIN_RUN_ID": "x", "SLURM_JOB_ID": "9"}) == "arraydrain:x"


# What `mpiexec --allow-run-as-root -n 2 env` shows of Open MPI 4.1.4 (rank 1), and what
# MPICH 5.0.2's Hydra shows: rank variables and a socket, no job.
OPEN_MPI_4 = {
    "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_MCA_ess_base_jobid": "1292435457", "OMPI_MCA_ess_base_vpid": "1",
    "PMIX_NAMESPACE": "1292435457", "PMIX_RANK": "1", "PMIX_ID": "1292435457.1",
}
MPICH = {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_FD": "9", "MPI_LOCALRANKID": "1",
         "PMI_HOSTNAME": "vm"}


def test_open_mpi_launches_are_named_by_their_pmix_namespace_or_job_id():
    assert run_identity(OPEN_MPI_4, "openmpi") == "PMIX_NAMESPACE=1292435457"
    # Open MPI 5 (PRRTE): a namespace naming the launcher process, no ORTE job id.
    ompi5 = {"OMPI_COMM_WORLD_RANK": "0", "PMIX_NAMESPACE": "prterun-node1-4242@1"}
    assert run_identity(ompi5, "openmpi") == "PMIX_NAMESPACE=prterun-node1-4242@1"
    # Open MPI 4 without PMIx in the environment: ORTE's job id.
    orte = {k: v for k, v in OPEN_MPI_4.items() if not k.startswith("PMIX")}
    assert run_identity(orte, "openmpi") == "OMPI_MCA_ess_base_jobid=1292435457"
    # Two launches differ; the ranks of one agree (rank 0 sees the same namespace).
    other = dict(OPEN_MPI_4, PMIX_NAMESPACE="1292500993", OMPI_MCA_ess_base_jobid="1292500993")
    assert run_identity(other, "openmpi") != run_identity(OPEN_MPI_4, "openmpi")
    rank0 = dict(OPEN_MPI_4, OMPI_COMM_WORLD_RANK="0", PMIX_RANK="0", PMIX_ID="1292435457.0")
    assert run_identity(rank0, "openmpi") == run_identity(OPEN_MPI_4, "openmpi")
    # Unknown launcher: the first identity found, Open MPI's among them.
    assert run_identity(OPEN_MPI_4) == "PMIX_NAMESPACE=1292435457"


def test_the_identity_is_the_placing_launchers_not_an_outer_ones():
    # MPICH inside a Slurm job: Slurm's job and step name the allocation, not this mpiexec
    # (two launches in one step would meet): no identity, ARRAYDRAIN_RUN_ID is needed.
    assert run_identity(MPICH, "mpich") is None
    assert run_identity(dict(MPICH, SLURM_JOB_ID="9", SLURM_STEP_ID="0"), "mpich") is None
    assert run_identity(dict(MPICH, ARRAYDRAIN_RUN_ID="launch-7"), "mpich") == "arraydrain:launch-7"
    # Open MPI inside Slurm: Open MPI's own.
    inside = dict(OPEN_MPI_4, SLURM_JOB_ID="9", SLURM_STEP_ID="0")
    assert run_identity(inside, "openmpi") == "PMIX_NAMESPACE=1292435457"
    # Slurm: its own; torchrun: its run id and master, which tells apart runs whose id is
    # torchrun's default "none".
    assert run_identity({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "3"}, "slurm").startswith(
        "SLURM_JOB_ID=9:SLURM_STEP_ID=3"
    )
    a = {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    assert run_identity(a, "torchrun") != run_identity(dict(a, MASTER_PORT="29501"), "torchrun")
    assert run_identity(dict(OPEN_MPI_4), "slurm") is None


def test_the_refusal_says_what_to_set_for_each_launcher():
    m = no_identity_message(1, 3, "mpich")
    assert "rank 1 of 3 (mpich)" in m and "Hydra" in m and "set ARRAYDRAIN_RUN_ID" in m
    o = no_identity_message(0, 2, "openmpi")
    assert "PMIX_NAMESPACE, OMPI_MCA_ess_base_jobid, ARRAYDRAIN_RUN_ID" in o
    assert "distributed=False" in o and "initialise torch.distributed" in o


def test_a_rank_that_fails_leaves_its_messages_for_the_others_and_the_last_removes_the_folder(
    tmp_path,
):
    # Rank 0 could not create the output: it says so and leaves at once. Its message must
    # still reach rank 1, which reads it after rank 0 is gone.
    r0, r1 = pair(tmp_path / "out.npy")
    r0.broadcast_object_list([("error", "DrainOSError: not enough space on /dev/x")], src=0)
    r0.leave()
    assert os.path.isdir(r0.dir)  # kept for rank 1
    box = [None]
    r1.broadcast_object_list(box, src=0)
    assert box[0] == ("error", "DrainOSError: not enough space on /dev/x")
    r1.leave()  # the last to leave
    assert os.listdir(tmp_path) == []


def test_waiting_for_a_rank_that_left_fails_at_once_naming_it(tmp_path):
    g = [FsGroup(str(tmp_path / "out.npy"), r, 3, "run-1", 600) for r in range(3)]
    g[2].leave()
    # Rank 0 waits for ranks 1 and 2 at the close's exchange; rank 2 has left: no 600 s wait.
    with pytest.raises(arraydrain.DrainRuntimeError, match=r"rank 2 of 3 failed and left the run"):
        g[0].all_gather_object([None] * 3, ("ok", b"", 0))
    g[0].leave()
    assert os.path.isdir(g[0].dir)  # rank 1 has not left yet
    g[1].leave()
    assert os.listdir(tmp_path) == []


def test_a_rank_that_timed_out_removes_the_folder_of_ranks_presumed_dead(tmp_path):
    g = FsGroup(str(tmp_path / "out.npy"), 1, 3, "run-1", 0.1)
    with pytest.raises(arraydrain.DrainRuntimeError, match=r"waited 0.1 s for rank\(s\) \[0\]"):
        g.broadcast_object_list([None], src=0)
    g.leave()
    assert os.listdir(tmp_path) == []


def killed_launch(path, world=2):
    """What a launch killed mid-run leaves: rank 0's output path, rank 1's row bitmap."""
    a = [FsGroup(str(path), r, world, "run-1", 0.2) for r in range(world)]
    a[0].broadcast_object_list([("ok", "/A-temporary")], src=0)
    box = [None]
    a[1].broadcast_object_list(box, src=0)
    assert box[0] == ("ok", "/A-temporary")
    with pytest.raises(arraydrain.DrainRuntimeError, match="waited"):
        a[1].all_gather_object([None] * world, ("ok", b"A-rows", 5))
    # ... and then every rank was killed: nothing removed.
    assert os.path.isdir(a[0].dir)
    new_processes()
    return a[0].dir


def new_processes():
    """The next launch's processes start counting their writers afresh."""
    _rendezvous._OPENED.clear()


def test_a_killed_launchs_messages_are_not_read_by_the_next_with_the_same_identity(tmp_path):
    stale = killed_launch(tmp_path / "out.npy")
    # The next launch with the same identity (ARRAYDRAIN_RUN_ID reused, torchrun's "none"):
    # its rank 0 clears what the killed one left before anything is exchanged.
    b = [FsGroup(str(tmp_path / "out.npy"), r, 2, "run-1", 5) for r in range(2)]
    assert b[0].dir == stale

    def job(g):
        box = [("ok", "/B-temporary") if g.get_rank() == 0 else None]
        g.broadcast_object_list(box, src=0)
        every = [None, None]
        g.all_gather_object(every, ("ok", bytes([g.get_rank()]), 1))
        return box[0], every

    (b0, e0), (b1, e1) = run_both(b, job)
    assert b0 == b1 == ("ok", "/B-temporary")
    assert e0 == e1 == [("ok", b"\x00", 1), ("ok", b"\x01", 1)]  # not the killed launch's rows


def test_a_rank_misled_by_a_killed_launchs_path_fails_every_rank_instead_of_mixing(tmp_path):
    killed_launch(tmp_path / "out.npy")
    # Rank 1 of the next launch comes first and reads the killed launch's output path (nothing
    # tells it apart yet); rank 0 then starts this launch afresh.
    b1 = FsGroup(str(tmp_path / "out.npy"), 1, 2, "run-1", 600)
    box = [None]
    b1.broadcast_object_list(box, src=0)
    assert box[0] == ("ok", "/A-temporary")
    b0 = FsGroup(str(tmp_path / "out.npy"), 0, 2, "run-1", 600)
    b0.broadcast_object_list([("ok", "/B-temporary")], src=0)
    # The rows rank 1 wrote went to the killed launch's file: both ranks must fail, at once
    # (not after their 600 s), instead of rank 0 committing without rank 1's rows.

    def job(g):
        try:
            g.all_gather_object([None, None], ("ok", b"", 1))
        except arraydrain.DrainRuntimeError as e:
            return str(e)
        return "no error"

    for msg in run_both([b0, b1], job):
        assert "another launch" in msg, msg


def test_consecutive_writers_of_one_path_in_one_launch_meet_in_their_own_folders(tmp_path):
    first = FsGroup(str(tmp_path / "out.npy"), 0, 2, "run-1", 1)
    second = FsGroup(str(tmp_path / "out.npy"), 0, 2, "run-1", 1)
    assert first.dir != second.dir and os.path.isdir(first.dir) and os.path.isdir(second.dir)


def test_a_rank_whose_process_ends_removes_the_folder_and_the_waiting_ranks_notice(tmp_path):
    # A rank was killed; the launcher sends SIGTERM to the others. Rank 0, ended, removes the
    # folder at once (rank 1 never leaves: nothing would remove it later); rank 2, waiting for
    # rank 1 at the close's exchange, fails at once instead of at its 600 s timeout.
    g = [FsGroup(str(tmp_path / "out.npy"), r, 3, "run-1", 600) for r in range(3)]
    g[0].broadcast_object_list([("ok", "/temporary")], src=0)
    g[2].broadcast_object_list([None], src=0)
    failed = []

    def wait_at_close():
        try:
            g[2].all_gather_object([None] * 3, ("ok", b"", 1))
        except arraydrain.DrainRuntimeError as e:
            failed.append(str(e))

    t = threading.Thread(target=wait_at_close)
    t.start()
    while not os.path.exists(os.path.join(g[2].dir, "1-2.json")):  # rank 2 is waiting
        time.sleep(0.001)
    try:
        _rendezvous.process_ends()
        g[0].leave()
    finally:
        _rendezvous._PROCESS_ENDING = False
    t.join(30)
    assert not t.is_alive()
    assert os.listdir(tmp_path) == []
    assert len(failed) == 1, failed
    # It saw rank 0's marker, or the folder gone.
    assert ("rank 0 of 3 failed and left the run" in failed[0]
            or "meeting folder was removed while rank 2 waited" in failed[0]), failed


def test_a_waiting_rank_notices_the_folder_removed(tmp_path):
    g = [FsGroup(str(tmp_path / "out.npy"), r, 2, "run-1", 600) for r in range(2)]
    g[0].broadcast_object_list([("ok", "/temporary")], src=0)
    g[1].broadcast_object_list([None], src=0)
    g[0].remove()  # without a marker: a rank whose folder was removed by another
    with pytest.raises(arraydrain.DrainRuntimeError, match="meeting folder was removed while rank 1"):
        g[1].broadcast_object_list([None], src=0)

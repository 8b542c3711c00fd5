"""Coordination of a :class:`~arraydrain.Writer`'s ranks through the file system, for runs
launched by torchrun, Slurm or MPI without ``torch.distributed`` initialised.

The writer needs three collectives (rank 0's temporary output path to every rank, every rank's
row bitmap to every rank, rank 0's outcome to every rank). :class:`FsGroup` offers them with the
names ``torch.distributed`` uses, through small JSON messages in a private folder beside the
output: ``.arraydrain-rdv-<key>``, where the key hashes the output's absolute path with the
launcher's run identity (:func:`run_identity`: torchrun's run id, Open MPI's PMIx namespace or
job id, Slurm's job and step, or ``ARRAYDRAIN_RUN_ID``) and the writer's place among this
launch's writers of that path, so the ranks of one writer meet and two runs never do.

Only rank 0 makes the folder (mode 0700; it must be a real folder owned by this user): one
already there was left by a launch with the same identity killed before its end, and is cleared
first. Rank 0 draws a random launch token that every message carries (the others learn it from
rank 0's first message), so a message of another launch is refused, never taken for this one's:
a rank that came before rank 0 and read a killed launch's output path makes every rank fail at
the next exchange, before anything is committed.
Messages are data (JSON, never pickle), each written under a temporary name and renamed into
place, so a reader sees a whole message or none. A rank that fails leaves an empty marker
(``gone-<rank>``, which needs no room on a full disk) instead of removing the folder under the
others' feet: a rank waiting for it fails at once, naming it, and the last rank to leave
removes the folder. A rank that waits longer than ``timeout`` for another gives up with an
error naming the ranks it waited for (and removes the folder: those ranks are presumed dead);
rank 0 removes the folder when the run ends, whatever the outcome. On a file system too full
for a message (the output's own space is reserved when it is created, the messages' is not),
the rank that cannot write one fails with ``DrainOSError`` and the others with it: nothing is
committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import threading
import time
from typing import Any

from ._errors import DrainOSError, DrainRuntimeError, DrainValueError

# The writer's collectives, in order: rank 0's output path, every rank's rows, rank 0's outcome.
OUTCOME_SHARED = 3

# The variables that name one launch, for each launcher that places a process (the source names
# of ``_native.launcher_placement``), innermost first; the first group set is the identity.
# Open MPI: PMIx's namespace (Open MPI 5 / PRRTE, and 4 built with PMIx), else ORTE's job id
# (Open MPI 4). MPICH's Hydra sets no job identity in the environment (PMI_RANK, PMI_SIZE and
# a PMI_FD socket only; asking the process manager over that socket would disturb a later
# MPI_Init), so an MPICH launch needs ARRAYDRAIN_RUN_ID.
RUN_ID_VARIABLES = {
    "torchrun": (
        # The run id is "none" unless --rdzv-id or --standalone gave one: the master's address
        # and port tell two such runs apart.
        ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT"),
    ),
    "openmpi": (("PMIX_NAMESPACE",), ("OMPI_MCA_ess_base_jobid",)),
    "mpich": (),
    "slurm": (("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT"),),
}


def run_identity(env=os.environ, launcher: str | None = None) -> str | None:
    """What the ranks of one launch share and another launch does not, read from the variables
    of ``launcher`` (the launcher that placed this process: ``torchrun``, ``openmpi``,
    ``mpich``, ``slurm``), or of the first launcher whose variables are set when it is None:
    torchrun's run id, restart count and master address; Open MPI's PMIx namespace or job id;
    Slurm's job, step and restart count. ``ARRAYDRAIN_RUN_ID`` overrides them. ``None`` when
    none is set (always for MPICH without ``ARRAYDRAIN_RUN_ID``)."""
    if env.get("ARRAYDRAIN_RUN_ID"):
        return "arraydrain:" + env["ARRAYDRAIN_RUN_ID"]
    if launcher is None:
        groups = [g for gs in RUN_ID_VARIABLES.values() for g in gs]
    else:
        groups = list(RUN_ID_VARIABLES.get(launcher, ()))
    for names in groups:
        if env.get(names[0]):
            return ":".join(f"{n}={env.get(n, '')}" for n in names)
    return None


def no_identity_message(rank: int, world: int, launcher: str) -> str:
    """Why a rank placed by ``launcher`` without ``torch.distributed`` and without a run
    identity is refused, and what to do."""
    if launcher == "mpich":
        why = (
            "MPICH's launcher (Hydra) names no job in the environment, so the ranks of one "
            "launch cannot tell themselves from another's: set ARRAYDRAIN_RUN_ID"
        )
    else:
        names = [g[0] for g in RUN_ID_VARIABLES.get(launcher, ())]
        why = "none of " + ", ".join(names + ["ARRAYDRAIN_RUN_ID"]) + " is set"
    return (
        f"this process is rank {rank} of {world} ({launcher}), but neither is torch.distributed "
        f"initialised nor a run identity known for the ranks to meet through the file system "
        f"({why}): initialise torch.distributed, set ARRAYDRAIN_RUN_ID to the same value in "
        "every rank of the launch (and another in the next launch), or pass distributed=False "
        "for an output of this rank's own"
    )


def _encode(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"bytes": x.hex()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise DrainValueError(f"cannot send a {type(x).__name__} between ranks")


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        return bytes.fromhex(x["bytes"])
    if isinstance(x, list):
        return tuple(_decode(v) for v in x)
    return x


_PROCESS_ENDING = False


def process_ends() -> None:
    """This process is being ended (``SIGTERM``: what a launcher sends every other rank when
    one died): the run is over, so its ranks leaving remove their folders at once instead of
    keeping them for ranks that may never leave (a killed one)."""
    global _PROCESS_ENDING
    _PROCESS_ENDING = True


# How many meetings each (output, run identity, world size, rank) has opened in this process.
_OPENED: dict[tuple[str, str, int, int], int] = {}
_OPENED_LOCK = threading.Lock()


class FsGroup:
    """``rank`` of ``world`` ranks writing ``path``, meeting in a folder beside it."""

    def __init__(self, path: str, rank: int, world: int, run_id: str, timeout: float):
        target = os.path.abspath(path)
        # The writers of one path in one launch are told apart by their order (every rank opens
        # them in the same order): a second writer never meets in the first one's folder.
        with _OPENED_LOCK:
            nth = _OPENED.get((target, run_id, world, rank), 0)
            _OPENED[(target, run_id, world, rank)] = nth + 1
        key = hashlib.sha256(f"{target}\0{run_id}\0{world}\0{nth}".encode()).hexdigest()[:24]
        self.dir = os.path.join(os.path.dirname(target), f".arraydrain-rdv-{key}")
        self.rank, self.world, self.timeout = rank, world, float(timeout)
        self._seq = 0
        self._timed_out = False
        # What every message of this launch carries: drawn by rank 0, learnt by the others
        # from its first message.
        self._launch: str | None = None
        self._checked = False
        if rank == 0:
            self._fresh_folder()
        elif os.path.lexists(self.dir):
            self._check_folder()

    def _check_folder(self) -> None:
        st = os.lstat(self.dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise DrainOSError(
                f"{self.dir}: the ranks' meeting folder is not a folder of this user's "
                "(a link, a file, or another user's): refusing to use it"
            )
        self._checked = True

    def _fresh_folder(self) -> None:
        """Rank 0 makes the meeting folder. Only rank 0 makes it, so one already there was
        left by a launch with the same identity that was killed before its end: it is cleared
        first, so that none of its messages is taken for this launch's."""
        try:
            try:
                os.mkdir(self.dir, 0o700)
            except FileExistsError:
                self._check_folder()
                stale = f"{self.dir}-stale-{secrets.token_hex(6)}"
                os.rename(self.dir, stale)
                shutil.rmtree(stale, ignore_errors=True)
                os.mkdir(self.dir, 0o700)
        except OSError as e:
            raise DrainOSError(f"{self.dir}: cannot make the ranks' meeting folder: {e}") from e
        self._check_folder()
        self._launch = secrets.token_hex(16)

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return self.world

    def _file(self, seq: int, rank: int) -> str:
        return os.path.join(self.dir, f"{seq}-{rank}.json")

    def _gone(self, rank: int) -> str:
        return os.path.join(self.dir, f"gone-{rank}")

    def _put(self, seq: int, obj: Any) -> None:
        tmp = os.path.join(self.dir, f".tmp-{self.rank}-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"launch": self._launch, "message": _encode(obj)}, f)
            os.replace(tmp, self._file(seq, self.rank))
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise DrainOSError(
                f"{self.dir}: cannot leave rank {self.rank}'s message for the other ranks (the "
                f"run may have ended without this rank): {e}"
            ) from e

    def _get(self, seq: int, ranks: list[int]) -> dict[int, Any]:
        got: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            if not self._checked and os.path.lexists(self.dir):
                self._check_folder()
            elif self._checked and not os.path.lexists(self.dir):
                raise DrainRuntimeError(
                    f"{self.dir}: the ranks' meeting folder was removed while rank "
                    f"{self.rank} waited at step {seq}: another rank's process was ended or "
                    "gave up; nothing was committed"
                )
            for r in ranks:
                if r in got:
                    continue
                try:
                    fd = os.open(self._file(seq, r), os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    if os.path.lexists(self._gone(r)):
                        raise DrainRuntimeError(
                            f"rank {r} of {self.world} failed and left the run (its own error "
                            f"says why) before step {seq} of the writer's meeting; nothing was "
                            "committed"
                        ) from None
                    continue
                except OSError as e:
                    raise DrainOSError(f"{self.dir}: cannot read rank {r}'s message: {e}") from e
                with os.fdopen(fd) as f:
                    text = f.read(1 << 28)
                try:
                    data = json.loads(text)
                    launch, got[r] = data["launch"], _decode(data["message"])
                except (ValueError, KeyError, TypeError) as e:
                    raise DrainValueError(
                        f"{self.dir}: rank {r}'s message is not one this writer sent: {e}"
                    ) from None
                if self._launch is None:
                    self._launch = launch
                elif launch != self._launch:
                    raise DrainRuntimeError(
                        f"{self.dir}: rank {r}'s message at step {seq} belongs to another launch "
                        "with the same run identity (one killed before its end, whose output "
                        "path this rank or rank 0 took, or one running now): nothing was "
                        "committed; give every launch its own ARRAYDRAIN_RUN_ID"
                    )
            if len(got) == len(ranks):
                return got
            if time.monotonic() > deadline:
                self._timed_out = True
                missing = [r for r in ranks if r not in got]
                raise DrainRuntimeError(
                    f"waited {self.timeout:g} s for rank(s) {missing} of {self.world} at step "
                    f"{seq} of the writer's close: a rank died, or never opened the writer; "
                    "nothing was committed"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def broadcast_object_list(self, box: list, src: int = 0) -> None:
        seq, self._seq = self._seq, self._seq + 1
        if self.rank == src:
            self._put(seq, box[0])
        else:
            box[0] = self._get(seq, [src])[src]

    def all_gather_object(self, every: list, mine: Any) -> None:
        seq, self._seq = self._seq, self._seq + 1
        self._put(seq, mine)
        others = [r for r in range(self.world) if r != self.rank]
        got = self._get(seq, others)
        for r in range(self.world):
            every[r] = mine if r == self.rank else got[r]

    def finish(self) -> None:
        """The run's last step: every rank says it is done; rank 0 waits for them (briefly),
        then removes the folder."""
        seq, self._seq = self._seq, self._seq + 1
        if self.rank != 0:
            try:
                self._put(seq, "done")
            except OSError:
                pass
            return
        wait, self.timeout = self.timeout, min(self.timeout, 60.0)
        try:
            self._get(seq, list(range(1, self.world)))
        except (DrainRuntimeError, DrainOSError, DrainValueError):
            pass
        finally:
            self.timeout = wait
            self.remove()

    def end(self) -> None:
        """The run ends, committed or not: once rank 0's outcome has been shared (the writer's
        last collective), the usual goodbye (:meth:`finish`), so that no rank misses it;
        before that, the run failed midway: the folder goes at once."""
        if self._seq >= OUTCOME_SHARED:
            self.finish()
        else:
            self.leave()

    def leave(self) -> None:
        """This rank fails before the run's end: it leaves its marker, so that the ranks
        waiting for it fail at once instead of at their timeout, and keeps the folder (with
        the messages they may still have to read, such as rank 0's error) until the last rank
        has left. A rank that gave up waiting (the ranks it waited for are presumed dead), or
        whose process is being ended (:func:`process_ends`), removes it at once."""
        try:
            fd = os.open(self._gone(self.rank), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except OSError:
            self.remove()  # no marker can be left: at least nothing stays behind
            return
        if (
            self._timed_out
            or _PROCESS_ENDING
            or all(os.path.lexists(self._gone(r)) for r in range(self.world))
        ):
            self.remove()

    def remove(self) -> None:
        """Removes the meeting folder (after the run, or when it failed)."""
        shutil.rmtree(self.dir, ignore_errors=True)

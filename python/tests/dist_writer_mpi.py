"""One rank of the MPI launch tests in test_writer_mpi.py (run as ``mpiexec -n 3 python
dist_writer_mpi.py OUT N MODE``): no process group, no MPI_Init; the writers' ranks meet through
the file system under the run identity of the launch (Open MPI's PMIx namespace or job id, or
ARRAYDRAIN_RUN_ID under MPICH).

MODE ``ok``: every rank writes its DistributedSampler shard (shuffled, padded) to ``feats.npy``
and ``both.npz``; ``skip``: rank 2 leaves out its last batch; ``kill``: rank 1 is killed
(``SIGKILL``) mid-run. Each rank saves what it wrote
(``rankR.npz``) and any error (``errorR.txt``)."""

import os
import signal
import sys

import numpy as np
import torch
from dist_writer import rank_workload

import arraydrain
from arraydrain import _native


def main(out: str, n: int, mode: str) -> None:
    rank, world, source = _native.launcher_placement()
    loader, net = rank_workload(n, world, rank, mod=13, div=3, seed=11)
    feats, idxs = [], []
    try:
        with torch.no_grad(), arraydrain.Writer(
            os.path.join(out, "feats.npy"), rows=n, timeout=60
        ) as w, arraydrain.Writer(os.path.join(out, "both.npz"), rows=n, timeout=60) as w2:
            batches = list(arraydrain.indexed(loader))
            for k, (idx, (xb, _)) in enumerate(batches):
                if mode == "skip" and rank == 2 and k == len(batches) - 1:
                    continue
                if mode == "kill" and rank == 1 and k == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                f = net(xb)
                w.write(f, at=idx)
                w2.write({"feats": f, "x": xb}, at=idx)
                feats.append(f.numpy())
                idxs.append(idx)
    except arraydrain.ArrayDrainError as e:
        with open(os.path.join(out, f"error{rank}.txt"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
    np.savez(os.path.join(out, f"rank{rank}.npz"), feats=np.concatenate(feats),
             idx=np.concatenate(idxs), source=source, world=world)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])

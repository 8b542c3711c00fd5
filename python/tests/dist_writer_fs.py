"""One rank of the file-system coordination tests in test_writer_dist.py (run as
``torchrun --standalone --nproc_per_node=3 dist_writer_fs.py OUT N MODE``): like dist_writer.py,
but no process group is initialised, so the writers' ranks meet through the file system.

MODE ``ok``: every rank writes its DistributedSampler shard (shuffled, padded); ``skip``: rank 2
leaves out its last batch; ``late``: rank 1 never closes its writer within rank 0's timeout
(it sleeps past it), so the others give up and commit nothing."""

import os
import sys
import time

import numpy as np
import torch
from dist_writer import rank_workload

import arraydrain


def main(out: str, n: int, mode: str) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    loader, net = rank_workload(n, world, rank)
    feats, idxs = [], []
    try:
        with torch.no_grad(), arraydrain.Writer(
            os.path.join(out, "feats.npy"), rows=n, timeout=20
        ) as w:
            batches = list(arraydrain.indexed(loader))
            for k, (idx, (xb, _)) in enumerate(batches):
                if mode == "skip" and rank == 2 and k == len(batches) - 1:
                    continue
                f = net(xb)
                w.write(f, at=idx)
                feats.append(f.numpy())
                idxs.append(idx)
            if mode == "late" and rank == 1:
                time.sleep(30)
    except arraydrain.ArrayDrainError as e:
        with open(os.path.join(out, f"error{rank}.txt"), "w") as f:
            f.write(str(e))
    np.savez(os.path.join(out, f"rank{rank}.npz"), feats=np.concatenate(feats),
             idx=np.concatenate(idxs))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])

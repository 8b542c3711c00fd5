"""One rank of the torchrun test in test_shards.py (run as
``torchrun --standalone --nproc_per_node=3 dist_drain.py OUT N``).

Each rank joins the process group (gloo), builds a ``DataLoader(TensorDataset(x, y),
sampler=DistributedSampler(ds, shuffle=, seed=7, drop_last=))`` — rank and world size from the
process group, as in training — for each of shuffle × drop_last, and saves what
``arraydrain.drain`` returns beside the rank's own epoch of the loader (``OUT/rank{R}-{S}{D}.npz``,
members ``dx dy ex ey``). The test compares them and the union of the ranks."""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import arraydrain


def main(out: str, n: int) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) / 4
    y = torch.arange(n, dtype=torch.int64) * 10 - 7
    ds = TensorDataset(x, y)
    for shuffle in (False, True):
        for drop_last in (False, True):
            sampler = DistributedSampler(ds, shuffle=shuffle, seed=7, drop_last=drop_last)
            sampler.set_epoch(3)
            loader = DataLoader(ds, batch_size=4, sampler=sampler)
            dx, dy = arraydrain.drain(loader)
            batches = list(loader)
            ex = torch.cat([b[0] for b in batches]).numpy()
            ey = torch.cat([b[1] for b in batches]).numpy()
            name = os.path.join(out, f"rank{rank}-{int(shuffle)}{int(drop_last)}.npz")
            np.savez(name, dx=dx, dy=dy, ex=ex, ey=ey)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

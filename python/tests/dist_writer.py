"""One rank of the torchrun tests in test_writer_dist.py (run as
``torchrun --standalone --nproc_per_node=3 dist_writer.py OUT N MODE``).

Every rank joins the process group (gloo), runs a small model over its DistributedSampler shard
(shuffled, padded when N is not a multiple of 3) and writes the outputs with one
``arraydrain.Writer`` per destination, all ranks into the same paths: ``OUT/feats.npy`` (one
leaf), ``OUT/both.npz`` and ``OUT/both`` (a dict of two leaves, one of them bfloat16). It also
saves its own classic recipe (outputs and indices) as ``OUT/rank{R}.npz`` for the test.

MODE ``ok`` does just that; ``kill`` makes rank 1 die mid-run (``os._exit``) after two batches;
``skip`` makes rank 2 leave out its last batch, so rows are missing at close."""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import arraydrain


def rank_workload(n, world=None, rank=None, mod=17, div=5, seed=5):
    """This rank's loader, a shuffled and padded DistributedSampler shard (batches of 4) of an
    n-row table (x float32 [n, 4], y its row numbers), and the small model every rank runs over
    it. ``world`` and ``rank`` default to the process group's."""
    x = (torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) % mod) / div
    ds = TensorDataset(x, torch.arange(n))
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(ds, batch_size=4, sampler=sampler)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return loader, net


def main(out: str, n: int, mode: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    loader, net = rank_workload(n)
    feats, logits, idxs = [], [], []
    try:
        with torch.no_grad(), arraydrain.Writer(
            os.path.join(out, "feats.npy"), rows=n
        ) as w1, arraydrain.Writer(os.path.join(out, "both.npz"), rows=n) as w2, (
            arraydrain.Writer(os.path.join(out, "both"), rows=n)
        ) as w3:
            batches = list(arraydrain.indexed(loader))
            for k, (idx, (xb, _)) in enumerate(batches):
                if mode == "kill" and rank == 1 and k == 2:
                    os._exit(3)
                if mode == "skip" and rank == 2 and k == len(batches) - 1:
                    continue
                f = net(xb)
                g = (f * 2).to(torch.bfloat16)
                w1.write(f, at=idx)
                w2.write({"feats": f, "logits": g}, at=idx)
                w3.write({"feats": f, "logits": g}, at=idx)
                feats.append(f.numpy())
                logits.append(g.view(torch.int16).numpy())
                idxs.append(idx)
    except arraydrain.ArrayDrainError as e:
        with open(os.path.join(out, f"error{rank}.txt"), "w") as f:
            f.write(str(e))
    np.savez(
        os.path.join(out, f"rank{rank}.npz"),
        feats=np.concatenate(feats),
        logits=np.concatenate(logits),
        idx=np.concatenate(idxs),
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])

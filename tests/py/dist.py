"""Helpers for the distributed tests (tests/distributed_*.rs).

  make N DIR                  x.npy (N x 4 float32, row i = 4i..4i+3) and y.npy (int64, y[i] = i)
  torch-perm N SEED OUT.npy   the base order torch's DistributedSampler(shuffle=True, seed=SEED)
                              draws in epoch 0, for `convert --indices`
  check-torch SPECS.json      compares shards and merged outputs with torch.utils.data itself
                              (a list of specs, one line "ok torch ..." each)
  check-order SPEC.json       compares a merged output with x[order] for an order given in a file

check-torch: for each rank r, a DataLoader over TensorDataset(x, y) with a
DistributedSampler(num_replicas=W, rank=r, shuffle, seed, drop_last=shard_drop_last) and
DataLoader(batch_size, drop_last) is iterated; the batches, concatenated, must equal the rank's part
files. The merged output must equal x[sampler order] (the sampler's global order, its padding
removed unless keep_padding); without any drop_last and without padding kept, it must hold every
row exactly once.
"""
import json
import os
import sys

import numpy as np


def make(n, out):
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "x.npy"), np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    np.save(os.path.join(out, "y.npy"), np.arange(n, dtype=np.int64))


def torch_perm(n, seed, out):
    import torch

    g = torch.Generator()
    g.manual_seed(seed + 0)  # DistributedSampler: seed + epoch, epoch 0
    np.save(out, torch.randperm(n, generator=g).numpy().astype(np.int64))


def part_dir(shards, rank, world):
    width = max(5, len(str(world)))
    return os.path.join(shards, f"part-{rank:0{width}d}-of-{world:0{width}d}")


def check_torch(spec):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    x = torch.from_numpy(np.load(os.path.join(spec["inputs"], "x.npy")))
    y = torch.from_numpy(np.load(os.path.join(spec["inputs"], "y.npy")))
    n, world = len(y), spec["world"]
    ds = TensorDataset(x, y)
    per_rank = []
    for rank in range(world):
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=spec["shuffle"],
                                     seed=spec["seed"], drop_last=spec["shard_drop_last"])
        sampler.set_epoch(0)
        loader = DataLoader(ds, batch_size=spec["batch"], sampler=sampler,
                            drop_last=spec["drop_last"])
        xs, ys = [], []
        for bx, by in loader:
            xs.append(bx.numpy())
            ys.append(by.numpy())
        ex = np.concatenate(xs) if xs else np.zeros((0, 4), np.float32)
        ey = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
        d = part_dir(spec["shards"], rank, world)
        gx, gy = np.load(os.path.join(d, "x.npy")), np.load(os.path.join(d, "y.npy"))
        assert gx.dtype == ex.dtype and gy.dtype == ey.dtype, (gx.dtype, gy.dtype)
        assert np.array_equal(gy, ey), f"rank {rank}: y {gy.tolist()} != torch {ey.tolist()}"
        assert np.array_equal(gx, ex), f"rank {rank}: x differs from torch"
        per_rank.append(ey)
    # The sampler's global order: rank r holds positions r, r + W, ... of it.
    kept = len(per_rank[0])
    order = np.empty(kept * world, dtype=np.int64)
    for rank, ey in enumerate(per_rank):
        order[rank::world] = ey
    if not spec.get("keep_padding"):
        order = order[:n]
    for merged in spec["merged"]:
        if merged.endswith(".npz"):
            with np.load(merged) as z:
                mx, my = z["x"], z["y"]
        else:
            mx, my = np.load(os.path.join(merged, "x.npy")), np.load(os.path.join(merged, "y.npy"))
        assert np.array_equal(my, order), f"{merged}: y {my.tolist()} != sampler order {order.tolist()}"
        assert np.array_equal(mx, x.numpy()[order]), f"{merged}: x != x[order]"
        if not (spec["shard_drop_last"] or spec["drop_last"] or spec.get("keep_padding")):
            assert np.array_equal(np.sort(my), np.arange(n)), f"{merged}: not every row once"
    print(f"ok torch world={world} n={n} rows/rank={kept} merged={len(order)}")


def check_order(spec):
    x = np.load(os.path.join(spec["inputs"], "x.npy"))
    y = np.load(os.path.join(spec["inputs"], "y.npy"))
    order = np.load(spec["order"])
    m = spec["merged"]
    mx, my = np.load(os.path.join(m, "x.npy")), np.load(os.path.join(m, "y.npy"))
    assert np.array_equal(my, y[order]), f"{m}: y {my.tolist()[:20]} != {y[order].tolist()[:20]}"
    assert np.array_equal(mx, x[order]), f"{m}: x != x[order]"
    print(f"ok order rows={len(order)}")


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        make(int(sys.argv[2]), sys.argv[3])
    elif cmd == "torch-perm":
        torch_perm(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == "check-torch":
        with open(sys.argv[2]) as f:
            for spec in json.load(f):
                check_torch(spec)
    elif cmd == "check-order":
        with open(sys.argv[2]) as f:
            check_order(json.load(f))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

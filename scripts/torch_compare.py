#!/usr/bin/env python3
"""PyTorch baselines for `arraydrain bench --device cuda`, on the same shapes, order and device.

The workload mirrors arraydrain's synthetic table: x float32 [rows, dim] and y int64 [rows], both
already on the GPU (the classic case), drained in batches of `batch` rows in sequential or
shuffled order into host tensors. The shuffled order is arraydrain's own (`Order::Shuffle`:
SplitMix64 + Fisher-Yates + Lemire, see src/sampler.rs), reimplemented here, so both tools move
exactly the same rows.

Recipes (each timed with torch.cuda.synchronize() inside the timed region):
  concat          keep every batch x_gpu[idx_b] on the GPU, torch.cat, one .cpu()
  per-batch       x_gpu[idx_b].cpu() in the loop, torch.cat of the host tensors
  preallocated    out[s:e].copy_(x_gpu[idx_b]) into a preallocated pageable host tensor
  best-batched    out_pinned[s:e].copy_(x_gpu[idx_b], non_blocking=True), one sync at the end
  best-whole      g = x_gpu[idx] (the whole order at once), out_pinned.copy_(g, non_blocking=True)
The pinned outputs are allocated once, outside the timed region (like arraydrain's reused
pinned output); their pinning time is reported apart. The floor is one non_blocking copy of the
same number of bytes from a contiguous GPU tensor into pinned memory.

Usage:
  torch_compare.py --rows 1000000 --dim 128 --batch 256 [--shuffle] [--seed 0] [--repeat 3]
  torch_compare.py --from-json bench.json          # the workload of an arraydrain bench run
Prints a table and, last, one line `TORCH_JSON {...}`.
"""

import argparse
import json
import statistics
import sys
import time

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def splitmix_outputs(seed, count):
    """The first `count` outputs of arraydrain's SplitMix64 seeded with `seed`, vectorised."""
    import numpy as np

    with np.errstate(over="ignore"):
        k = np.arange(1, count + 1, dtype=np.uint64)
        z = np.uint64(seed) + k * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def splitmix_scalar(state):
    state = (state + GAMMA) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def shuffled_slow(rows, seed):
    """Reference transcription of src/sampler.rs `shuffled` (for small n and checks)."""
    v = list(range(rows))
    state = seed
    for i in range(rows - 1, 0, -1):
        n = i + 1
        state, x = splitmix_scalar(state)
        m = x * n
        if (m & M64) < n:
            threshold = ((1 << 64) - n) % n
            while (m & M64) < threshold:
                state, x = splitmix_scalar(state)
                m = x * n
        j = m >> 64
        v[i], v[j] = v[j], v[i]
    return v


def shuffled(rows, seed):
    """arraydrain's shuffle: draws vectorised with NumPy, the swaps in a Python loop."""
    import numpy as np

    if rows < 2:
        return list(range(rows))
    steps = rows - 1
    z = splitmix_outputs(seed, steps)
    n = np.arange(rows, 1, -1, dtype=np.uint64)  # bound for step t is rows - t
    with np.errstate(over="ignore"):
        lo32 = z & np.uint64(0xFFFFFFFF)
        hi32 = z >> np.uint64(32)
        p1 = lo32 * n
        p2 = hi32 * n
        low = p1 + (p2 << np.uint64(32))
        mid = (p1 >> np.uint64(32)) + (p2 & np.uint64(0xFFFFFFFF))
        high = (p2 >> np.uint64(32)) + (mid >> np.uint64(32))
    # Lemire rejects a draw when low < (2^64 - n) % n, which needs low < n: almost never.
    maybe = np.nonzero(low < n)[0]
    for t in maybe:
        nn = int(n[t])
        if int(low[t]) < ((1 << 64) - nn) % nn:
            # A rejection shifts every later draw: fall back to the exact sequential path.
            return shuffled_slow(rows, seed)
    js = high.tolist()
    v = list(range(rows))
    i = rows - 1
    for j in js:
        v[i], v[j] = v[j], v[i]
        i -= 1
    return v


def median_time(fn, repeat, sync):
    fn()  # warm-up (allocator, kernels)
    sync()
    runs = []
    for _ in range(max(1, repeat)):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), min(runs), max(runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--shuffle", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop-last", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--from-json", help="read rows/dim/batch/order/seed from an arraydrain bench JSON")
    ap.add_argument("--recipes", default="concat,per-batch,preallocated,best-batched,best-whole")
    ap.add_argument("--label", default="")
    a = ap.parse_args()

    assert shuffled_slow(8, 0) == [1, 2, 6, 5, 4, 0, 3, 7], "shuffle transcription drifted"
    assert shuffled(1000, 7) == shuffled_slow(1000, 7), "vectorised shuffle disagrees"

    if a.from_json:
        with open(a.from_json) as f:
            w = json.load(f)["workload"]
        a.rows = int(w.get("table_rows", w["rows"]))
        a.batch = int(w["batch_size"])
        a.shuffle = w.get("order") == "shuffle"
        a.seed = int(w.get("seed", 0))
        a.drop_last = bool(w.get("drop_last", False))
        for c in w.get("columns", []):
            if c.get("name") == "x" and c.get("row_shape"):
                if c.get("dtype", "f32") != "f32" or len(c["row_shape"]) != 1:
                    sys.exit(
                        f"torch_compare.py: only x f32 [dim] workloads are mirrored, not "
                        f"x {c.get('dtype')} {c['row_shape']}"
                    )
                a.dim = int(c["row_shape"][0])

    import torch

    dev = torch.device(a.device)
    on_gpu = dev.type == "cuda"
    # `--device cpu` is a dry run of the script's logic (no pinned memory, nothing to wait for).
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    pin = on_gpu
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    x = torch.rand(a.rows, a.dim, device=dev, generator=gen)
    y = torch.randint(0, 10, (a.rows,), device=dev, dtype=torch.int64, generator=gen)

    t = time.perf_counter()
    order = shuffled(a.rows, a.seed) if a.shuffle else list(range(a.rows))
    order_s = time.perf_counter() - t
    nb = a.rows // a.batch if a.drop_last else -(-a.rows // a.batch)
    out_rows = nb * a.batch if a.drop_last else a.rows
    order = order[:out_rows]
    idx = torch.tensor(order, dtype=torch.int64, device=dev)

    def empty_cache():
        if on_gpu:
            torch.cuda.empty_cache()

    # Batch index tensors live on the GPU, as a GPU loader's sampler output would.
    bidx = [idx[s : s + a.batch] for s in range(0, out_rows, a.batch)]
    out_bytes = out_rows * (a.dim * 4 + 8)

    t = time.perf_counter()
    px = torch.empty(out_rows, a.dim, dtype=torch.float32, pin_memory=pin)
    py = torch.empty(out_rows, dtype=torch.int64, pin_memory=pin)
    px.fill_(0)
    py.fill_(0)
    pin_s = time.perf_counter() - t

    def concat():
        xs = [x[b] for b in bidx]
        ys = [y[b] for b in bidx]
        return torch.cat(xs).cpu(), torch.cat(ys).cpu()

    def per_batch():
        xs, ys = [], []
        for b in bidx:
            xs.append(x[b].cpu())
            ys.append(y[b].cpu())
        return torch.cat(xs), torch.cat(ys)

    def preallocated():
        ox = torch.empty(out_rows, a.dim, dtype=torch.float32)
        oy = torch.empty(out_rows, dtype=torch.int64)
        s = 0
        for b in bidx:
            e = s + b.numel()
            ox[s:e].copy_(x[b])
            oy[s:e].copy_(y[b])
            s = e
        return ox, oy

    def best_batched():
        s = 0
        for b in bidx:
            e = s + b.numel()
            px[s:e].copy_(x[b], non_blocking=True)
            py[s:e].copy_(y[b], non_blocking=True)
            s = e
        sync()
        return px, py

    def best_whole():
        gx = x[idx]
        gy = y[idx]
        px.copy_(gx, non_blocking=True)
        py.copy_(gy, non_blocking=True)
        sync()
        return px, py

    recipes = {
        "concat": concat,
        "per-batch": per_batch,
        "preallocated": preallocated,
        "best-batched": best_batched,
        "best-whole": best_whole,
    }

    # Floor: one copy of the same bytes from a contiguous GPU buffer into pinned memory.
    src = torch.empty(out_bytes, dtype=torch.uint8, device=dev)
    dst = torch.empty(out_bytes, dtype=torch.uint8, pin_memory=pin)
    dst.fill_(0)

    def floor():
        dst.copy_(src, non_blocking=True)

    fmed, fmin, fmax = median_time(floor, a.repeat, sync)
    del src, dst
    empty_cache()

    # Correctness: every recipe gives x[order], y[order].
    ref_x = x[idx].cpu()
    ref_y = y[idx].cpu()
    results = []
    for name in [r for r in a.recipes.split(",") if r]:
        fn = recipes[name]
        px.fill_(-1.0)  # poison the reused outputs: an unwritten row cannot pass
        py.fill_(-1)
        ox, oy = fn()
        sync()
        ok = torch.equal(ox, ref_x) and torch.equal(oy, ref_y)
        del ox, oy
        empty_cache()
        sync()
        base = torch.cuda.memory_allocated(dev) if on_gpu else 0
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(dev)
        med, mn, mx = median_time(fn, a.repeat, sync)
        peak = torch.cuda.max_memory_allocated(dev) - base if on_gpu else 0
        results.append(
            {
                "strategy": "torch-" + name,
                "backend": "torch",
                "seconds": {"median": med, "min": mn, "max": mx},
                "gbps": out_bytes / med / 1e9,
                "floor_ratio": med / fmed,
                "peak_device_bytes": int(peak),
                "verified": bool(ok),
            }
        )
        empty_cache()

    name = torch.cuda.get_device_name(dev) if on_gpu else "cpu (dry run)"
    order_name = "shuffle" if a.shuffle else "sequential"
    print(
        f"torch {torch.__version__} on {name}: {a.rows} rows x f32[{a.dim}] + i64, batch {a.batch}, "
        f"{order_name}, {out_bytes / 1e6:.1f} MB (order built in {order_s:.2f} s, pinned outputs in {pin_s:.2f} s)"
    )
    print(f"floor torch_d2h_pinned {fmed:.4f} s ({out_bytes / fmed / 1e9:.2f} GB/s)")
    print(f"{'recipe':<20} {'median s':>9} {'GB/s':>8} {'x floor':>8} {'dev MiB':>9}  verified")
    for r in results:
        print(
            f"{r['strategy']:<20} {r['seconds']['median']:>9.4f} {r['gbps']:>8.2f} "
            f"{r['floor_ratio']:>8.2f} {r['peak_device_bytes'] / 2**20:>9.1f}  {'yes' if r['verified'] else 'NO'}"
        )
    doc = {
        "label": a.label,
        "device": name,
        "torch": torch.__version__,
        "workload": {
            "rows": out_rows,
            "table_rows": a.rows,
            "dim": a.dim,
            "batch_size": a.batch,
            "order": order_name,
            "seed": a.seed,
            "output_bytes": out_bytes,
        },
        "floors": {"torch_d2h_pinned": {"seconds": fmed, "gbps": out_bytes / fmed / 1e9}},
        "pin_seconds": pin_s,
        "results": results,
    }
    print("TORCH_JSON " + json.dumps(doc))
    return 0 if all(r["verified"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

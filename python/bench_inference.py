#!/usr/bin/env python3
"""The inference case: a small model (an nn.Linear stack) over many rows, its outputs kept as one
array, with `arraydrain.Writer` against what people write today, all in one run on the same data.

Workload: x float32 [rows, 32] on --device (default the CPU; `cuda` on a GPU machine: x, the
model and its outputs on the GPU), 1M rows by default, batches of --batch rows in a shuffled
order (a seeded permutation, the same for every method), model Linear(32, 64) -> ReLU ->
Linear(64, 64) under torch.no_grad(): the output is float32 [rows, 64] (256 MiB at 1M rows).
On CUDA the recipe appends `.cpu()` of each output (what people write), per-batch-save saves
`.cpu().numpy()`, and the writer takes the CUDA tensors as they are; the model-only loop ends
with a synchronisation, as every other method ends with its output on the host.

Methods:
  model-only      the model over every batch, outputs dropped (the model's own time)
  recipe          outs.append(model(xb)); torch.cat(outs).numpy(); then reorder by index
                  (out[idx] = cat), as people put a shuffled epoch back in dataset order
  per-batch-save  np.save of each batch's output (and its indices) into a folder, the
                  "one file per batch" recipe (still to be stitched together afterwards)
  scatter-thread  a floor for any writer that keeps the outputs beside the model: the loop hands
                  each output (no copy) to a Python thread that puts its rows in place in a
                  fresh NumPy array (out[idx] = y); what this costs over model-only is the
                  price, on this machine, of moving the rows into place on another core
  writer          arraydrain.Writer(None, rows=...) with write(model(xb), at=idx): NumPy array
  writer-npy      arraydrain.Writer("out.npy", rows=...): the same into a .npy file

Every method's output is checked (bytes) against the recipe's before anything is timed
(per-batch-save: the files, stitched). Times are the median of --repeat runs; `x model` is a
method's time over model-only's (the goal for the writer: <= 1.10). CPU time is measured beside
the wall time, as medians over model-only's too, since a shared machine's other load moves wall
times more than CPU times: `main x` is the CPU time of the thread running the model (what the
model's loop pays for a method), `all x` the process's (the model's thread plus every thread a
method starts: the writer's background thread, torch's own). Peak extra memory: each
method runs once more in a child process that reports its resident high-water mark (VmHWM)
minus its resident memory before the method, and `x out` is that over the output's bytes; on
CUDA also the GPU memory PyTorch allocated at most during the method, over the model-only
run's (`gpu MiB`, `torch.cuda.max_memory_allocated`).
Written files land in --dir (default: a temporary folder, removed afterwards).

Usage:
  python/bench_inference.py                    # 1M rows, 3 runs per method
  python/bench_inference.py --rows 200000 --repeat 2
  python/bench_inference.py --threads 1        # one torch thread: steadier on a shared machine
"""

import argparse
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

# The installed package, not the source folder beside this script (it lacks the native module).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import arraydrain  # noqa: E402

METHODS = ["model-only", "recipe", "per-batch-save", "scatter-thread", "writer", "writer-npy"]
DIM_IN, HIDDEN, DIM_OUT = 32, 64, 64


def setup(args):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, DIM_IN, generator=g)
    order = torch.randperm(args.rows, generator=g)
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(DIM_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, DIM_OUT)
    ).eval()
    if args.device != "cpu":
        x, net = x.to(args.device), net.to(args.device)
    return x, order, net


def host(t):
    """A batch's output on the host (a no-op for CPU tensors)."""
    return t.cpu() if t.device.type != "cpu" else t


def finish(args):
    if args.device != "cpu":
        torch.cuda.synchronize()


def batches(x, order, batch):
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        yield idx, x[idx]


def run(method, x, order, net, args, folder):
    """Runs one method; returns its output (an array, or a path to read it from)."""
    rows = len(order)
    with torch.no_grad():
        if method == "model-only":
            for _, xb in batches(x, order, args.batch):
                net(xb)
            finish(args)
            return None
        if method == "recipe":
            outs, idxs = [], []
            for idx, xb in batches(x, order, args.batch):
                outs.append(host(net(xb)))
                idxs.append(idx)
            cat = torch.cat(outs).numpy()
            out = np.empty_like(cat)
            out[torch.cat(idxs).numpy()] = cat
            return out
        if method == "per-batch-save":
            d = os.path.join(folder, "batches")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            for k, (idx, xb) in enumerate(batches(x, order, args.batch)):
                np.save(os.path.join(d, f"{k:06d}.npy"), host(net(xb)).numpy())
                np.save(os.path.join(d, f"{k:06d}-idx.npy"), idx.numpy())
            return d
        if method == "scatter-thread":
            out = np.empty((rows, DIM_OUT), np.float32)
            todo = queue.Queue(maxsize=64)

            def place():
                while (item := todo.get()) is not None:
                    out[item[0]] = item[1]

            worker = threading.Thread(target=place)
            worker.start()
            for idx, xb in batches(x, order, args.batch):
                todo.put((idx.numpy(), host(net(xb)).numpy()))
            todo.put(None)
            worker.join()
            return out
        if method in ("writer", "writer-npy"):
            path = None if method == "writer" else os.path.join(folder, "out.npy")
            with arraydrain.Writer(path, rows=rows) as w:
                for idx, xb in batches(x, order, args.batch):
                    w.write(net(xb), at=idx)
            return w.result if path is None else path
    raise ValueError(method)


def cpu_seconds(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def stitched(d):
    names = sorted(n for n in os.listdir(d) if not n.endswith("-idx.npy"))
    cat = np.concatenate([np.load(os.path.join(d, n)) for n in names])
    idx = np.concatenate([np.load(os.path.join(d, n[:-4] + "-idx.npy")) for n in names])
    out = np.empty_like(cat)
    out[idx] = cat
    return out


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(args):
    x, order, net = setup(args)
    with torch.no_grad():
        net(x[:16])  # the model's first-call set-up is not the method's
    cuda = args.device != "cpu"
    if cuda:
        torch.cuda.synchronize()
        gpu_before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    out = run(args.child, x, order, net, args, args.dir)
    peak = status_kb("VmHWM")
    gpu = torch.cuda.max_memory_allocated() - gpu_before if cuda else None
    del out
    print(json.dumps({"peak_extra": peak - before, "gpu_peak_extra": gpu}))


def peak_extra(args, method, folder):
    cmd = [sys.executable, __file__, "--child", method, "--rows", str(args.rows),
           "--batch", str(args.batch), "--dir", folder, "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--dir", default=None, help="where files are written (default: a temp folder)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    methods = args.methods.split(",")
    folder = args.dir or tempfile.mkdtemp(prefix="arraydrain-bench-inference-")
    try:
        x, order, net = setup(args)
        out_bytes = args.rows * DIM_OUT * 4
        # Verify every method against the recipe first.
        ref = run("recipe", x, order, net, args, folder)
        for m in methods:
            if m in ("model-only", "recipe"):
                continue
            got = run(m, x, order, net, args, folder)
            got = stitched(got) if m == "per-batch-save" else got
            got = np.load(got) if isinstance(got, str) else got
            assert got.dtype == ref.dtype and got.shape == ref.shape, m
            assert got.tobytes() == ref.tobytes(), f"{m}: output differs from the recipe's"
            del got
        del ref
        times = {m: [] for m in methods}
        cpu_main = {m: [] for m in methods}
        cpu_all = {m: [] for m in methods}
        for _ in range(args.repeat):  # interleaved rounds: a noisy machine hits every method
            for m in methods:
                main0, all0 = cpu_seconds(resource.RUSAGE_THREAD), cpu_seconds(resource.RUSAGE_SELF)
                t = time.perf_counter()
                out = run(m, x, order, net, args, folder)
                times[m].append(time.perf_counter() - t)
                cpu_main[m].append(cpu_seconds(resource.RUSAGE_THREAD) - main0)
                cpu_all[m].append(cpu_seconds(resource.RUSAGE_SELF) - all0)
                del out
        gpu_peaks = {}
        peaks = {} if args.no_memory else {m: peak_extra(args, m, folder) for m in methods}
        gpu_peaks = {m: p["gpu_peak_extra"] for m, p in peaks.items()}
        peaks = {m: p["peak_extra"] for m, p in peaks.items()}
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    def over_model(values, m):
        if "model-only" not in values:
            return "-"
        return f"{np.median(values[m]) / np.median(values['model-only']):.2f}"

    print(f"inference: {args.rows} rows, batch {args.batch}, shuffled, output "
          f"{out_bytes / 2**20:.0f} MiB, {args.device} tensors, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    gpu = args.device != "cpu" and bool(peaks)
    print(f"{'method':<16}{'median s':>10}{'x model':>9}{'cpu main x':>12}{'cpu all x':>11}"
          f"{'peak MiB':>10}{'x out':>7}" + (f"{'gpu MiB':>9}" if gpu else ""))
    for m in methods:
        med = float(np.median(times[m]))
        peak = peaks.get(m)
        pk = f"{peak / 2**20:.0f}" if peak is not None else "-"
        px = f"{peak / out_bytes:.2f}" if peak is not None else "-"
        line = (f"{m:<16}{med:>10.3f}{over_model(times, m):>9}{over_model(cpu_main, m):>12}"
                f"{over_model(cpu_all, m):>11}{pk:>10}{px:>7}")
        if gpu:
            line += f"{gpu_peaks[m] / 2**20:>9.0f}"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"times": times, "cpu_main": cpu_main, "cpu_all": cpu_all,
                       "peaks": peaks, "gpu_peaks": gpu_peaks, "rows": args.rows,
                       "device": args.device}, f, indent=1)


if __name__ == "__main__":
    main()

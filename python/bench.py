#!/usr/bin/env python3
"""How fast `arraydrain.drain(loader)` turns a PyTorch DataLoader into NumPy arrays, against what
people do today, all in one run on the same data.

Workload: `DataLoader(TensorDataset(x, y), batch_size=B)` with x float32 [rows, dim] and y int64
[rows] (default 1M x 128, B = 256), sequential and shuffled (`shuffle=True` with a seeded
`torch.Generator`, reseeded before every run so that every method drains the same order).

Methods (CPU tensors; `--device cuda` puts x and y on the GPU, see below):
  recipe-concat        keep every batch, torch.cat at the end, .numpy()
  recipe-per-batch     each batch .numpy() in the loop, np.concatenate at the end
  recipe-preallocated  np.empty once, copy each batch into its slice
  tensor-index         x[idx].numpy(), y[idx].numpy() with the epoch's order `idx` given
                       (computed outside the timed region: the most favourable case for it)
  numpy-take           np.take(x_np, idx, axis=0) likewise
  memcpy-floor         np.copyto of the same number of bytes into freshly allocated arrays
  drain                arraydrain.drain(loader) (takes the order from the loader itself)
  drain-into           arraydrain.drain(loader, out=previous result) (the epoch case)
  engine, engine-into  the Rust engine in this process (the binding's gather) on the loader's
                       own tensors, with the epoch's order computed outside the timed region:
                       drain's work without its Python front (no sampler replay, no checks),
                       so drain / engine is the front's own cost on the same memory
  rust-preallocated    `arraydrain bench --strategies preallocated,preallocated-into` (the Rust
                       engine on its own synthetic table of the same shape and order kind, run
                       as a subprocess in the same run), with its parallel cpu_fresh floor
With `--device cuda` (x, y on the GPU): the recipes use .cpu(); `pinned-best` is x[idx] gathered
on the GPU and copied with non_blocking=True into a pinned tensor allocated outside the timed
region; the floor is one copy of the same bytes from a contiguous GPU tensor into pinned memory;
the Rust figure is `arraydrain bench --device cuda --strategies pinned`.

Every method's output is checked against the reference x_np[idx], y_np[idx] (and the recipes,
being real epochs, check idx itself) before it is timed. Peak extra memory: each method runs once
more in a child process that resets its RSS high-water mark (/proc/self/clear_refs) after the
set-up and reports VmHWM minus the RSS before the method, so it counts every byte the method
touched, temporaries included.

General path (`--orders general`, part of the default run): the general path's own cost, i.e.
`drain` over loaders that are not a DataLoader over a TensorDataset, against iterating the same
loader and doing nothing (`for b in loader: pass`) and against the hand-written preallocated
loop. Two loaders of `--general-rows` rows x f32[32] + i64, shuffled, batch B: `items` (a
map-style dataset with a Python `__getitem__` per sample and the default collate) and `bulk` (a
cheap batched loader: `__getitems__` indexes the tensors once per batch, identity collate).
Methods run interleaved, one run of each per round, `--repeat` rounds; `x loop` is the ratio of
minima to `loop` (the target for drain: <= 1.05), of wall time and of the process's CPU time
(`time.process_time`, all threads: on a shared machine, where other processes stretch wall
time, the CPU time is the steadier measure of the work each method does). Each output is
checked against the loop's batches first.

Usage:
  python/bench.py                              # the full run (about 6 minutes on 2 cores)
  python/bench.py --rows 100000 --repeat 2     # a quick run
  python/bench.py --orders shuffled --methods drain,tensor-index --no-memory
  python/bench.py --threads 1,2 --no-memory    # + drain / Rust engine scaling over thread counts
  python/bench.py --first-call 10              # first call in a fresh process vs steady calls
  python/bench.py --inference [ARGS]           # the inference case: model outputs written with
                                               # arraydrain.Writer vs the recipes (see
                                               # python/bench_inference.py --help for ARGS)
Prints one table per order and the targets, and with --json PATH writes every figure. Columns:
`x floor` is the median over memcpy-floor's median, `t/drain` the median over drain's median (how
many times faster drain is), `peak MiB` / `x out` the peak extra resident memory and its ratio to
the output bytes (rust rows: bytes the strategy allocated, marked `a`).

`--threads 1,2,...` reruns drain, drain-into, memcpy-floor and the Rust engine in a child process
per count with RAYON_NUM_THREADS set (the engine's pool size) and prints a scaling table.

`--first-call N` starts N fresh processes per kind; each builds the loader, times its first drain
(what a script that drains once pays) and then --steady more drains in the same process (each output
freed before the next, as an epoch loop that keeps one result does). Kinds: `plain` (as a user runs
it), `after-small` (a 4096-row drain first, 2 MB: thread pool started, imports and code paths warm),
`after-touch` (first writes and frees as many bytes as the output, through NumPy's huge-page
allocations: memory the kernel has just had backed). The table shows the medians, their ratio,
and the first call's system CPU time and minor faults beside a steady call's.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# The installed package, not the source folder beside this script (it has no built module).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

CPU_METHODS = [
    "recipe-concat",
    "recipe-per-batch",
    "recipe-preallocated",
    "tensor-index",
    "numpy-take",
    "memcpy-floor",
    "drain",
    "drain-into",
    "engine",
    "engine-into",
]
CUDA_METHODS = [
    "recipe-concat",
    "recipe-per-batch",
    "recipe-preallocated",
    "pinned-best",
    "memcpy-floor",
    "drain",
    "drain-into",
]
RECIPES = ["recipe-concat", "recipe-per-batch", "recipe-preallocated"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Workload:
    """The data, the loader and the epoch's order, rebuilt identically in every process."""

    def __init__(self, args, order):
        self.args, self.order = args, order
        self.cuda = args.device == "cuda"
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.rows, args.dim, generator=g)
        y = torch.randint(0, 1 << 40, (args.rows,), generator=g)
        self.x_np, self.y_np = x.numpy(), y.numpy()
        if self.cuda:
            x, y = x.cuda(), y.cuda()
            torch.cuda.synchronize()
        self.x, self.y = x, y
        self.gen = torch.Generator()
        self.loader = DataLoader(
            TensorDataset(x, y),
            batch_size=args.batch,
            shuffle=order == "shuffled",
            generator=self.gen,
        )
        self.reseed()
        # The order one epoch yields, from a loader of the same length, sampler and generator
        # state over the row numbers themselves.
        rows = DataLoader(
            range(args.rows),
            batch_size=args.batch,
            shuffle=order == "shuffled",
            generator=self.gen,
        )
        self.idx = torch.cat(list(rows)) if args.rows else torch.zeros(0, dtype=torch.int64)
        self.idx_np = self.idx.numpy()
        self.idx_dev = self.idx.cuda() if self.cuda else self.idx
        self.out_rows = len(self.idx_np)
        self.out_bytes = self.out_rows * (args.dim * 4 + 8)
        self.pinned = None

    def reseed(self):
        """Before every run: the loader's generator back to the same state (same epoch order)."""
        self.gen.manual_seed(self.args.seed + 1)

    def reference(self):
        return self.x_np[self.idx_np], self.y_np[self.idx_np]


def host(t):
    return t.cpu().numpy() if t.is_cuda else t.numpy()


def sync(w):
    if w.cuda:
        torch.cuda.synchronize()


def run_method(w, method, state):
    """Runs `method` once over one epoch; returns its (x, y) NumPy output."""
    import arraydrain

    if method == "recipe-concat":
        xs, ys = [], []
        for bx, by in w.loader:
            xs.append(bx)
            ys.append(by)
        return host(torch.cat(xs)), host(torch.cat(ys))
    if method == "recipe-per-batch":
        xs, ys = [], []
        for bx, by in w.loader:
            xs.append(host(bx))
            ys.append(host(by))
        return np.concatenate(xs), np.concatenate(ys)
    if method == "recipe-preallocated":
        ox = np.empty((w.out_rows, w.args.dim), np.float32)
        oy = np.empty(w.out_rows, np.int64)
        s = 0
        for bx, by in w.loader:
            k = len(bx)
            ox[s : s + k] = host(bx)
            oy[s : s + k] = host(by)
            s += k
        return ox, oy
    if method == "tensor-index":
        return w.x[w.idx].numpy(), w.y[w.idx].numpy()
    if method == "numpy-take":
        return np.take(w.x_np, w.idx_np, axis=0), np.take(w.y_np, w.idx_np, axis=0)
    if method == "pinned-best":
        px, py = state["pinned"]
        px.copy_(w.x[w.idx_dev], non_blocking=True)
        py.copy_(w.y[w.idx_dev], non_blocking=True)
        torch.cuda.synchronize()
        return px.numpy(), py.numpy()
    if method == "memcpy-floor":
        if w.cuda:
            px, py = state["pinned"]
            px.copy_(state["contiguous"][0], non_blocking=True)
            py.copy_(state["contiguous"][1], non_blocking=True)
            torch.cuda.synchronize()
            return px.numpy(), py.numpy()
        ox = np.empty((w.out_rows, w.args.dim), np.float32)
        oy = np.empty(w.out_rows, np.int64)
        np.copyto(ox, state["contiguous"][0])
        np.copyto(oy, state["contiguous"][1])
        return ox, oy
    if method == "drain":
        return tuple(arraydrain.drain(w.loader))
    if method == "drain-into":
        return tuple(arraydrain.drain(w.loader, out=state["out"]))
    if method in ("engine", "engine-into"):
        from arraydrain import _fast, _native

        e = state["engine"]
        u8s = _native.gather(e["sources"], e["count"], e["order"], w.args.batch, "auto",
                             e.get("outs"), None)
        if method == "engine-into":
            return tuple(state["out"])
        return tuple(_fast.to_array(u8, leaf, e["count"]) for u8, leaf in zip(u8s, e["leaves"]))
    raise SystemExit(f"unknown method {method!r}")


def prepare(w, method):
    """What a method gets before its timed region (pinned buffers, a previous result)."""
    import arraydrain

    state = {}
    if method in ("pinned-best", "memcpy-floor") and w.cuda:
        state["pinned"] = (
            torch.empty((w.out_rows, w.args.dim), dtype=torch.float32, pin_memory=True),
            torch.empty(w.out_rows, dtype=torch.int64, pin_memory=True),
        )
    if method == "memcpy-floor":
        # The floor copies the same number of bytes from a contiguous source (the reference).
        ref = w.reference()
        state["contiguous"] = tuple(torch.from_numpy(r).cuda() for r in ref) if w.cuda else ref
    if method in ("drain-into", "engine-into"):
        w.reseed()
        state["out"] = list(arraydrain.drain(w.loader))
    if method in ("engine", "engine-into"):
        state["engine"] = engine_inputs(w, state.get("out"))
    return state


def engine_inputs(w, out):
    """What drain hands the binding's gather for this loader (its tensors' bytes, the epoch's
    order, `out`'s bytes), computed here, outside the timed region."""
    from arraydrain import _fast

    if w.cuda:
        raise SystemExit("engine and engine-into are CPU methods (drop them with --methods)")
    plan = _fast._choose(w.loader, None)
    if plan is None:
        raise SystemExit("the bench's loader no longer takes drain's fast path")
    sources = [
        (leaf.name, _fast.host_bytes(t, leaf.name)[0], leaf.engine, list(leaf.row_shape))
        for leaf, t in zip(plan.leaves, plan.tensors)
    ]
    w.reseed()
    order, count = _fast._fast_order(plan, w.loader)
    e = {"sources": sources, "order": order, "count": count, "leaves": plan.leaves}
    if out is not None:
        e["outs"] = [_fast.out_bytes(o, leaf, count) for o, leaf in zip(out, plan.leaves)]
    return e


def check(w, method, got, ref):
    if method == "memcpy-floor":
        return True  # copies the reference itself
    return all(
        a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        for a, b in zip(got, ref, strict=True)
    )


def time_method(w, method, repeat, ref):
    state = prepare(w, method)
    w.reseed()
    got = run_method(w, method, state)
    verified = check(w, method, got, ref)
    del got
    if not verified:
        return {"verified": False, "runs": []}
    runs = []
    for _ in range(repeat):
        w.reseed()
        sync(w)
        t0 = time.perf_counter()
        out = run_method(w, method, state)
        sync(w)
        runs.append(time.perf_counter() - t0)
        del out
    return {"verified": True, "runs": runs}


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args):
    """One method once, in a fresh process: prints the peak extra resident bytes."""
    w = Workload(args, args.child_order)
    state = prepare(w, args.child)
    w.reseed()
    sync(w)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    out = run_method(w, args.child, state)
    sync(w)
    peak = _status_kb("VmHWM")
    assert out is not None
    print(json.dumps({"peak_extra": peak - before}))


def peak_extra(args, method, order):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--child-order", order]
    cmd += ["--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch)]
    cmd += ["--seed", str(args.seed), "--device", args.device]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"memory child for {method} ({order}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_extra"]


def rust_bench(args, order):
    """The Rust engine's own figures on a table of the same shape (`arraydrain bench`)."""
    binary = args.rust_bin or os.path.join(REPO, "target", "release", "arraydrain")
    if not os.path.exists(binary):
        if args.rust_bin:
            raise SystemExit(f"{binary} does not exist")
        cargo = shutil.which("cargo")
        if cargo is None:
            raise SystemExit("no arraydrain binary and no cargo to build it: pass --rust-bin")
        print("building target/release/arraydrain ...", file=sys.stderr)
        subprocess.run([cargo, "build", "--release", "--bin", "arraydrain"], cwd=REPO, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        strategies = "pinned" if args.device == "cuda" else "preallocated,preallocated-into"
        cmd = [binary, "bench", "--rows", str(args.rows), "--dim", str(args.dim)]
        cmd += ["--batch", str(args.batch), "--seed", str(args.seed), "--repeat", str(args.repeat)]
        cmd += ["--strategies", strategies, "--device", args.device, "--json", path]
        if order == "shuffled":
            cmd.append("--shuffle")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            doc = json.load(f)
    rows = {}
    for r in doc["results"]:
        rows[f"rust-{r['strategy']}"] = {
            "verified": r["verified"],
            "median": r["seconds"]["median"],
            "min": r["seconds"]["min"],
            "peak_alloc": r["peak_alloc_bytes"],
        }
    return rows, doc["floors"], " ".join(cmd[1:]).replace(path, "FILE")


def engine_threads():
    """The engine's pool size: RAYON_NUM_THREADS, else the CPUs this process may run on (what
    the pool sizes itself by, cgroup CPU quotas aside)."""
    env = os.environ.get("RAYON_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def scaling(args):
    """drain, drain-into, memcpy-floor and the Rust engine once per thread count, each count in a
    child process with RAYON_NUM_THREADS set (the pool is sized once per process)."""
    counts = [int(n) for n in args.threads.split(",")]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--threads needs positive counts, got {args.threads!r}")
    methods = args.methods or "memcpy-floor,drain,drain-into"
    table = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "scaling.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--methods", methods, "--no-memory"]
            for flag in ("rows", "dim", "batch", "seed", "repeat", "orders", "device", "rust_bin"):
                value = getattr(args, flag)
                if value is not None:
                    cmd += ["--" + flag.replace("_", "-"), str(value)]
            if args.no_rust:
                cmd.append("--no-rust")
            cmd += ["--json", path]
            print(f"threads {n} ...", file=sys.stderr, flush=True)
            env = dict(os.environ, RAYON_NUM_THREADS=str(n))
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            with open(path) as f:
                table[n] = json.load(f)["orders"]
    names = ["memcpy-floor", "drain", "drain-into", "rust-preallocated", "rust-preallocated-into"]
    for order in args.orders.split(","):
        print()
        print(f"{order}: scaling over engine threads (RAYON_NUM_THREADS), median; speed-up over "
              f"{counts[0]} thread(s) in brackets")
        print(f"{'threads':>7} " + " ".join(f"{m:>24}" for m in names) + f" {'drain/rust':>10}")
        base = table[counts[0]][order]["results"]
        for n in counts:
            res = table[n][order]["results"]
            cells = []
            for m in names:
                r, b = res.get(m, {}), base.get(m, {})
                if r.get("median") and b.get("median"):
                    cells.append(f"{fmt_s(r['median'])} ({b['median'] / r['median']:4.2f})")
                else:
                    cells.append("")
            d, rust = res.get("drain", {}), res.get("rust-preallocated", {})
            ratio = f"{d['median'] / rust['median']:10.2f}" if d.get("median") and rust.get(
                "median") else ""
            print(f"{n:>7} " + " ".join(f"{c:>24}" for c in cells) + f" {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "scaling": table}, f, indent=1)


def _cpu_faults():
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_stime, u.ru_minflt


def first_child(args):
    """One fresh process: the first drain, then --steady more, each timed alone."""
    t0 = time.perf_counter()
    import arraydrain

    import_s = time.perf_counter() - t0
    kind = args.first_child
    order = args.orders.split(",")[0]
    w = Workload(args, order)
    if kind == "after-small":
        arraydrain.drain(DataLoader(TensorDataset(w.x[:4096], w.y[:4096]), batch_size=256))
    elif kind == "after-touch":
        np.ones(w.out_bytes, np.uint8)  # written, then freed at once
    elif kind != "plain":
        raise SystemExit(f"unknown --first-kinds entry {kind!r}")
    runs = []
    for _ in range(1 + args.steady):
        w.reseed()
        sys0, flt0 = _cpu_faults()
        t = time.perf_counter()
        out = arraydrain.drain(w.loader)
        seconds = time.perf_counter() - t
        sys1, flt1 = _cpu_faults()
        runs.append({"seconds": seconds, "sys": sys1 - sys0, "minflt": flt1 - flt0})
        del out
    print(json.dumps({"import": import_s, "runs": runs}))


def first_calls(args):
    """--first-call: N fresh processes per kind, interleaved so that load weighs on all alike."""
    kinds = args.first_kinds.split(",")
    order = args.orders.split(",")[0]
    got = {k: [] for k in kinds}
    for i in range(args.first_call):
        for kind in kinds:
            print(f"[{order}] fresh process {i + 1}/{args.first_call} ({kind}) ...",
                  file=sys.stderr, flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--first-child", kind]
            cmd += ["--orders", order, "--steady", str(args.steady), "--device", args.device]
            cmd += ["--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch)]
            cmd += ["--seed", str(args.seed)]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"fresh process ({kind}) failed:\n{done.stderr}")
            got[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = statistics.median
    print()
    print(f"{order}: first drain in a fresh process vs steady drains in the same process, "
          f"{args.first_call} processes per kind, {args.steady} steady calls each, "
          f"engine threads {engine_threads()}")
    print(f"{'kind':12} {'first':>12} {'steady':>12} {'first/steady':>12} {'first sys':>10} "
          f"{'steady sys':>10} {'first flt':>9} {'steady flt':>10} {'import':>9}")
    summary = {}
    for kind, procs in got.items():
        first = [p["runs"][0] for p in procs]
        steady = [r for p in procs for r in p["runs"][1:]]
        f_s, s_s = med(r["seconds"] for r in first), med(r["seconds"] for r in steady)
        ratio = f_s / s_s if s_s else float("nan")
        summary[kind] = {"first": f_s, "steady": s_s, "ratio": ratio}
        print(f"{kind:12} {fmt_s(f_s):>12} {fmt_s(s_s):>12} {ratio:12.2f} "
              f"{fmt_s(med(r['sys'] for r in first)):>10} "
              f"{fmt_s(med(r['sys'] for r in steady)):>10} "
              f"{med(r['minflt'] for r in first):9.0f} {med(r['minflt'] for r in steady):10.0f} "
              f"{fmt_s(med(p['import'] for p in procs)):>9}")
    print("(medians; `sys`: system CPU time of the call, `flt`: its minor page faults, `import`: "
          "import arraydrain; target first/steady <= 1.2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "first_call": got, "summary": summary}, f, indent=1)


def fmt_s(s):
    return f"{s * 1e3:9.1f} ms" if s < 10 else f"{s:9.2f} s "


def main():
    if sys.argv[1:2] == ["--inference"]:
        import importlib.util

        path = os.path.join(_HERE, "bench_inference.py")
        spec = importlib.util.spec_from_file_location("bench_inference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.argv[1:2] = []
        return module.main()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per method (median shown)")
    p.add_argument(
        "--recipe-repeat", type=int, default=2, help="timed runs of each (slow) classic recipe"
    )
    p.add_argument("--orders", default="sequential,shuffled,general")
    p.add_argument(
        "--general-rows", type=int, default=200_000, help="rows of the general-path loaders"
    )
    p.add_argument("--methods", default=None, help="comma-separated (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--no-rust", action="store_true", help="skip `arraydrain bench`")
    p.add_argument("--rust-bin", default=None, help="arraydrain binary (default target/release)")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument(
        "--threads",
        default=None,
        help="comma-separated engine thread counts: a scaling table of drain and the Rust engine",
    )
    p.add_argument(
        "--first-call",
        type=int,
        default=0,
        metavar="N",
        help="time the first drain (first of --orders) in N fresh processes per kind",
    )
    p.add_argument("--steady", type=int, default=4, help="steady drains per --first-call process")
    p.add_argument(
        "--first-kinds",
        default="plain,after-small,after-touch",
        help="which fresh-process kinds --first-call runs",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-order", help=argparse.SUPPRESS)
    p.add_argument("--first-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.child:
        return child(args)
    if args.first_child:
        return first_child(args)
    if args.threads:
        return scaling(args)
    if args.first_call:
        return first_calls(args)

    import arraydrain

    every = CUDA_METHODS if args.device == "cuda" else CPU_METHODS
    methods = args.methods.split(",") if args.methods else every
    for m in methods:
        if m not in every:
            raise SystemExit(f"unknown method {m!r} for --device {args.device}: {every}")
    report = {"args": vars(args), "orders": {}}
    failed = []
    print(
        f"arraydrain {getattr(arraydrain, '__version__', '?')}, torch {torch.__version__}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"engine threads {engine_threads()}"
    )
    for order in args.orders.split(","):
        if order == "general":
            report["general"] = general_section(args, failed)
            continue
        w = Workload(args, order)
        ref = w.reference()
        results = {}
        for m in methods:
            print(f"[{order}] {m} ...", file=sys.stderr, flush=True)
            r = time_method(w, m, args.recipe_repeat if m in RECIPES else args.repeat, ref)
            if r["verified"]:
                r["median"] = statistics.median(r["runs"])
                r["min"] = min(r["runs"])
            else:
                failed.append(f"{m} ({order})")
            results[m] = r
        del w, ref
        if not args.no_memory:
            for m in methods:
                if results[m]["verified"]:
                    print(f"[{order}] {m}: peak memory ...", file=sys.stderr, flush=True)
                    results[m]["peak_extra"] = peak_extra(args, m, order)
        rust_cmd, floors = None, {}
        if not args.no_rust:
            rust, floors, rust_cmd = rust_bench(args, order)
            results.update(rust)
            failed += [f"{k} ({order})" for k, v in rust.items() if not v["verified"]]
        report["orders"][order] = {"results": results, "rust_floors": floors, "rust": rust_cmd}
        print_table(args, order, results, floors, rust_cmd)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if failed:
        raise SystemExit(f"output differs from the reference: {', '.join(failed)}")


GENERAL_METHODS = ["loop", "recipe-preallocated", "drain", "drain-into"]


def general_loaders(args):
    """The general-path loaders: per-sample items with the default collate, and bulk batches."""
    from torch.utils.data import Dataset

    g = torch.Generator().manual_seed(args.seed)
    rows = args.general_rows
    x = torch.randn(rows, 32, generator=g)
    y = torch.randint(0, 1 << 40, (rows,), generator=g)

    class Items(Dataset):
        def __len__(self):
            return rows

        def __getitem__(self, i):
            return x[i], y[i]

    class Bulk(Dataset):
        def __len__(self):
            return rows

        def __getitems__(self, idx):
            t = torch.as_tensor(idx)
            return x[t], y[t]

    def identity(b):
        return b

    out = {}
    for name, ds, collate in (("items", Items(), None), ("bulk", Bulk(), identity)):
        gen = torch.Generator()
        kw = {"collate_fn": collate} if collate is not None else {}
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, generator=gen, **kw)
        out[name] = (loader, gen)
    return out, rows


def general_section(args, failed):
    import arraydrain

    loaders, rows = general_loaders(args)
    report = {}
    for name, (loader, gen) in loaders.items():
        seed = args.seed + 7

        def loop():
            for _ in loader:
                pass

        def prealloc():
            xs = np.empty((rows, 32), np.float32)
            ys = np.empty(rows, np.int64)
            i = 0
            for bx, by in loader:
                n = len(bx)
                xs[i : i + n] = bx.numpy()
                ys[i : i + n] = by.numpy()
                i += n
            return xs, ys

        gen.manual_seed(seed)
        ref = prealloc()
        gen.manual_seed(seed)
        got = arraydrain.drain(loader)
        verified = all(np.array_equal(a, b) for a, b in zip(got, ref))
        gen.manual_seed(seed)
        arraydrain.drain(loader, out=got)
        verified = verified and all(np.array_equal(a, b) for a, b in zip(got, ref))
        if not verified:
            failed.append(f"drain (general {name})")
        fns = {
            "loop": loop,
            "recipe-preallocated": prealloc,
            "drain": lambda: arraydrain.drain(loader),
            "drain-into": lambda: arraydrain.drain(loader, out=got),
        }
        runs = {m: [] for m in GENERAL_METHODS}
        cpu = {m: [] for m in GENERAL_METHODS}
        for r in range(args.repeat):
            order = GENERAL_METHODS[r % 4 :] + GENERAL_METHODS[: r % 4]
            for m in order:
                print(f"[general {name}] {m} ...", file=sys.stderr, flush=True)
                gen.manual_seed(seed)
                c0, t0 = time.process_time(), time.perf_counter()
                fns[m]()
                runs[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
        loop_min, loop_cpu = min(runs["loop"]), min(cpu["loop"])
        print(
            f"\ngeneral path, {name}: {rows} rows x f32[32] + i64, batch {args.batch}, shuffled, "
            f"{args.repeat} interleaved rounds"
        )
        print(
            f"{'method':<22} {'median':>12} {'min':>12} {'x loop':>8} {'cpu min':>12} "
            f"{'x loop':>8}  verified"
        )
        for m in GENERAL_METHODS:
            med, lo, c = statistics.median(runs[m]), min(runs[m]), min(cpu[m])
            print(
                f"{m:<22} {fmt_s(med):>12} {fmt_s(lo):>12} {lo / loop_min:>8.3f} "
                f"{fmt_s(c):>12} {c / loop_cpu:>8.3f}  "
                f"{'yes' if verified or m in ('loop', 'recipe-preallocated') else 'NO'}"
            )
        print(
            "  drain vs loop (wall, cpu)       "
            f"{min(runs['drain']) / loop_min:.3f}, {min(cpu['drain']) / loop_cpu:.3f}  "
            "(target <= 1.05)\n"
            "  drain-into vs loop (wall, cpu)  "
            f"{min(runs['drain-into']) / loop_min:.3f}, {min(cpu['drain-into']) / loop_cpu:.3f}"
        )
        # The general path's own work alone: drain-into over the same epoch's batches, fetched
        # beforehand (no loader in the timed region), many short runs.
        gen.manual_seed(seed)
        fetched = list(loader)
        own = []
        for _ in range(max(20, 4 * args.repeat)):
            t0 = time.perf_counter()
            arraydrain.drain(iter(fetched), out=got)
            own.append(time.perf_counter() - t0)
        own_min = min(own)
        print(
            f"  own work (drain-into over the fetched batches) {fmt_s(own_min).strip()} = "
            f"{100 * own_min / loop_min:.1f}% of loop's min"
        )
        report[name] = {"runs": runs, "cpu": cpu, "own": own, "verified": verified}
    return report


def print_table(args, order, results, floors, rust_cmd):
    out_bytes = args.rows * (args.dim * 4 + 8)
    floor = results.get("memcpy-floor", {}).get("median")
    drain = results.get("drain", {}).get("median")
    print()
    print(
        f"{order}: {args.rows} rows x f32[{args.dim}] + i64, batch {args.batch}, "
        f"{args.device} tensors, {out_bytes / 1e6:.1f} MB out, "
        f"runs: {args.repeat} ({args.recipe_repeat} for the recipes)"
    )
    head = f"{'method':22} {'median':>12} {'min':>12} {'GB/s':>7} {'x floor':>8} "
    head += f"{'t/drain':>8} {'peak MiB':>9} {'x out':>6}  verified"
    print(head)
    for name, r in results.items():
        if not r["verified"]:
            print(f"{name:22} {'':>12} {'':>12} {'':>7} {'':>8} {'':>8} {'':>9} {'':>6}  NO")
            continue
        med = r["median"]
        vs_floor = f"{med / floor:8.2f}" if floor and not name.startswith("rust") else f"{'':>8}"
        vs_drain = f"{med / drain:8.2f}" if drain else f"{'':>8}"
        if "peak_extra" in r:
            peak = f"{r['peak_extra'] / 2**20:9.1f} {r['peak_extra'] / out_bytes:6.2f}"
        elif "peak_alloc" in r:
            peak = f"{r['peak_alloc'] / 2**20:9.1f}a{r['peak_alloc'] / out_bytes:5.2f}"
        else:
            peak = f"{'':>9} {'':>6}"
        gbps = out_bytes / med / 1e9
        print(
            f"{name:22} {fmt_s(med):>12} {fmt_s(r['min']):>12} {gbps:7.2f} {vs_floor} "
            f"{vs_drain} {peak}  yes"
        )
    for name, f in floors.items():
        print(f"{'rust floor ' + name:22} {fmt_s(f['seconds']):>12} {fmt_s(f['min']):>12}")
    if rust_cmd:
        print(f"rust rows: arraydrain {rust_cmd}  ('a': bytes the strategy allocated, not RSS)")
    if not drain:
        return
    d_min = results["drain"]["min"]
    print("targets (ratio of medians, of minima in brackets):")
    recipes = [results[m] for m in RECIPES if results.get(m, {}).get("median")]
    if recipes:
        med = min(r["median"] for r in recipes) / drain
        low = min(r["min"] for r in recipes) / d_min
        print(f"  drain vs fastest recipe   {med:7.1f}x faster ({low:.1f}x) (target >= 40x)")
    for m in ("tensor-index", "numpy-take", "pinned-best"):
        if results.get(m, {}).get("median"):
            med, low = results[m]["median"] / drain, results[m]["min"] / d_min
            print(f"  drain vs {m:16} {med:7.2f}x faster ({low:.2f}x) (target >= 2x)")
    rust = results.get("rust-pinned" if args.device == "cuda" else "rust-preallocated")
    if rust and rust.get("median"):
        med, low = drain / rust["median"], d_min / rust["min"]
        print(f"  drain / rust engine       {med:7.2f}  ({low:.2f}) (target <= 1.1)")
    into, rust_into = results.get("drain-into"), results.get("rust-preallocated-into")
    if into and into.get("median") and rust_into and rust_into.get("median"):
        med, low = into["median"] / rust_into["median"], into["min"] / rust_into["min"]
        print(f"  drain-into / rust -into   {med:7.2f}  ({low:.2f})")
    # The same engine on the same tensors in this process: the Python front's own cost.
    for mine, theirs in (("drain", "engine"), ("drain-into", "engine-into")):
        a, b = results.get(mine, {}), results.get(theirs, {})
        if a.get("median") and b.get("median"):
            med, low = a["median"] / b["median"], a["min"] / b["min"]
            print(f"  {mine + ' / ' + theirs:25} {med:7.2f}  ({low:.2f}) (same tensors; "
                  "target <= 1.1)")
    if "peak_extra" in results["drain"]:
        print(
            f"  drain peak extra / output {results['drain']['peak_extra'] / out_bytes:7.2f}  "
            "(target <= 1.05)"
        )


if __name__ == "__main__":
    main()

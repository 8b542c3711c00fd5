"""What every test compares against: the loader itself, iterated in Python.

`classic(loader)` is the classic recipe (convert each batch to NumPy, concatenate at the end) over
one real epoch. `drain_vs_epoch(loader)` runs `arraydrain.drain(loader)`, resets every random
number generator the loader can touch to the state it had before, runs the classic recipe, and
checks that both give the same arrays (values, dtypes, shapes, order, container structure) and
leave the generators in the same state.

Also shared: `run_watching_the_gil(fn)`, whether other Python threads run while a call waits.
"""

import random
import threading
import time

import numpy as np
import torch

import arraydrain

# Every torch dtype that has a NumPy twin (bfloat16 has none).
DTYPES = [
    torch.float16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.complex64,
    torch.complex128,
]


def values(shape, dtype, seed=0):
    """Deterministic test data of `dtype` with distinct rows, without touching the global RNG.

    Floats include NaN, infinities and -0.0 so that byte equality is tested, not just `==`.
    """
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape)) if len(shape) else 1
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool().reshape(shape)
    if dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(n, generator=g, dtype=torch.float64) * 1000
        if n >= 4:
            t[0], t[1], t[2], t[3] = float("nan"), float("inf"), float("-inf"), -0.0
        if dtype.is_complex:
            return torch.complex(t, t.flip(0)).to(dtype).reshape(shape)
        return t.to(dtype).reshape(shape)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    t = torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64)
    return t.to(dtype).reshape(shape)


def features(rows, cols=8, dtype=torch.float32, seed=0):
    """A 2-d feature tensor whose first column is the row number (so order errors show)."""
    x = values((rows, cols), dtype, seed)
    if dtype.is_floating_point and rows > 0:
        x[:, 0] = torch.arange(rows, dtype=dtype) if rows < 2048 else x[:, 0]
    return x


def labels(rows, dtype=torch.int64):
    return (torch.arange(rows) * 7 % 1009).to(dtype)


# -------------------------------------------------------------------------------------------
# Random number generators a loader can touch
# -------------------------------------------------------------------------------------------


def _generators(loader):
    gens = []
    objs = [loader]
    for name in ("sampler", "batch_sampler"):
        o = getattr(loader, name, None)
        if o is not None:
            objs.append(o)
            inner = getattr(o, "sampler", None)
            if inner is not None:
                objs.append(inner)
    for o in objs:
        g = getattr(o, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def capture(loader):
    """Every generator state an epoch of `loader` can advance (torch, Python, NumPy globals)."""
    return {
        "torch": torch.get_rng_state(),
        "generators": [(g, g.get_state()) for g in _generators(loader)],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "epoch": getattr(getattr(loader, "sampler", None), "epoch", None),
    }


def restore(state):
    torch.set_rng_state(state["torch"])
    for g, s in state["generators"]:
        g.set_state(s)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def assert_same_state(after_drain, after_epoch):
    assert torch.equal(after_drain["torch"], after_epoch["torch"]), (
        "the global torch RNG after drain differs from its state after one real epoch"
    )
    assert len(after_drain["generators"]) == len(after_epoch["generators"])
    for (g, a), (_, b) in zip(after_drain["generators"], after_epoch["generators"]):
        assert torch.equal(a, b), f"generator {g!r} after drain differs from after one real epoch"
    assert after_drain["python"] == after_epoch["python"]
    assert after_drain["epoch"] == after_epoch["epoch"]


# -------------------------------------------------------------------------------------------
# The classic recipe and the comparison
# -------------------------------------------------------------------------------------------


def _is_namedtuple(x):
    return isinstance(x, tuple) and hasattr(x, "_fields")


def to_numpy(tree):
    """A batch with every tensor leaf converted to a NumPy array (NumPy leaves kept)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    if isinstance(tree, np.ndarray):
        return tree
    if isinstance(tree, dict):
        return type(tree)((k, to_numpy(v)) for k, v in tree.items())
    if _is_namedtuple(tree):
        return type(tree)(*[to_numpy(v) for v in tree])
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_numpy(v) for v in tree)
    raise TypeError(f"the reference recipe does not handle {type(tree).__name__}")


def concat(batches):
    """Concatenates a list of same-structure NumPy batches leaf by leaf."""
    first = batches[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(batches, axis=0)
    if isinstance(first, dict):
        return type(first)((k, concat([b[k] for b in batches])) for k in first)
    if _is_namedtuple(first):
        return type(first)(*[concat([b[i] for b in batches]) for i in range(len(first))])
    return type(first)(concat([b[i] for b in batches]) for i in range(len(first)))


def classic(loader):
    """The classic recipe over one real epoch: each batch to NumPy, concatenate at the end."""
    return concat([to_numpy(b) for b in loader])


def assert_same(got, ref, where="result"):
    """Same container types, keys, dtypes, shapes and bytes (NaN and -0.0 included)."""
    if isinstance(ref, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__}, not a NumPy array"
        assert got.dtype == ref.dtype, f"{where}: dtype {got.dtype}, expected {ref.dtype}"
        assert got.shape == ref.shape, f"{where}: shape {got.shape}, expected {ref.shape}"
        if got.dtype.kind in "fc":
            np.testing.assert_array_equal(got, ref, err_msg=where)
        assert got.tobytes() == ref.tobytes(), f"{where}: values or order differ"
        return
    assert type(got) is type(ref), (
        f"{where}: {type(got).__name__}, but one batch of the loader is a {type(ref).__name__}"
    )
    if isinstance(ref, dict):
        assert list(got.keys()) == list(ref.keys()), f"{where}: keys differ"
        for k in ref:
            assert_same(got[k], ref[k], f"{where}[{k!r}]")
    else:
        assert len(got) == len(ref), f"{where}: {len(got)} items, expected {len(ref)}"
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_same(a, b, f"{where}[{i}]")


def leaves(tree):
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in leaves(v)]
    return [leaf for v in tree for leaf in leaves(v)]


def drain_vs_epoch(loader, **kwargs):
    """`arraydrain.drain(loader, **kwargs)` against one real epoch from the same RNG state.

    Returns (drained, reference).
    """
    before = capture(loader)
    got = arraydrain.drain(loader, **kwargs)
    after_drain = capture(loader)
    restore(before)
    ref = classic(loader)
    after_epoch = capture(loader)
    assert_same_state(after_drain, after_epoch)
    assert_same(got, ref)
    for leaf in leaves(got):
        assert leaf.flags.c_contiguous, "drained arrays are C-contiguous"
    return got, ref


def run_watching_the_gil(fn):
    """Calls `fn()` while another Python thread notes the time in a tight loop. Returns `fn`'s
    result, the seconds the call took, and the longest gap between the notes taken during it
    (from its start to its end): a gap as long as the call means the GIL was held throughout."""
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    t = threading.Thread(target=tick)
    t.start()
    try:
        start = time.perf_counter()
        result = fn()
        end = time.perf_counter()
    finally:
        stop.set()
        t.join()
    during = np.array([start] + [s for s in ticks if start <= s <= end] + [end])
    return result, end - start, float(np.diff(during).max())

"""The binding's device drain (``_native.cuda_drain``, the general path's CUDA batches) under the
CUDA driver simulator, without PyTorch's CUDA: device memory is allocated and written through the
simulated driver with ctypes, on a stream of the test's own, and lent to the engine as PyTorch
tensors are (address, producer stream, an owner object, rows).

- every batch is read after its producer stream's last write (queued behind a long run of other
  writes on that stream), and the engine frees none of the lent memory;
- the GIL is released while the engine waits: a Python thread keeps running during the drain;
- a row count that is only a hint is drained into output preallocated for it, grown or cut;
- an exception raised by the batch iterator comes out of the drain as itself;
- the fast path (``_native.cuda_gather``) reads a lent table in place, after its producer, in
  any order and with every strategy.

Run by scripts/test.sh with the simulator as libcuda.so.1 and ARRAYDRAIN_EXPECT_SIM=1 (without
the simulator it then fails; anywhere else it is skipped); the simulator's delays are set here,
before anything in this process loads it."""

import ctypes
import os
import threading
import time

os.environ.setdefault("ARRAYDRAIN_SIM_MIN_DELAY_US", "150")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import arraydrain  # noqa: E402


def _simulator():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if not hasattr(lib, "cudasim_is_simulator") or lib.cudasim_is_simulator() != 1:
        return None
    return lib


SIM = _simulator()
if os.environ.get("ARRAYDRAIN_EXPECT_SIM") == "1" and SIM is None:
    raise RuntimeError("ARRAYDRAIN_EXPECT_SIM=1, but libcuda.so.1 is not the CUDA simulator")
pytestmark = pytest.mark.skipif(
    SIM is None or not arraydrain._native.cuda_compiled(),
    reason="needs the CUDA simulator as libcuda.so.1 (scripts/test.sh runs it so)",
)

ROW = 16


class Driver:
    """The few driver calls the tests need, on the device's primary context (the engine's)."""

    def __init__(self, lib):
        self.lib = lib
        u64, vp, sz = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t
        lib.cuMemAllocAsync.argtypes = [ctypes.POINTER(u64), sz, vp]
        lib.cuMemsetD8Async.argtypes = [u64, ctypes.c_ubyte, sz, vp]
        lib.cuMemcpyHtoDAsync_v2.argtypes = [u64, vp, sz, vp]
        lib.cuMemcpyDtoDAsync_v2.argtypes = [u64, u64, sz, vp]
        lib.cuMemFree_v2.argtypes = [u64]
        lib.cuStreamSynchronize.argtypes = [vp]
        lib.cuCtxSetCurrent.argtypes = [vp]
        self.check(lib.cuInit(0), "cuInit")
        self.ctx = vp()
        self.check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), 0), "ctx")
        self.current()
        self.stream = vp()
        self.check(lib.cuStreamCreate(ctypes.byref(self.stream), 1), "cuStreamCreate")

    @staticmethod
    def check(rc, what):
        assert rc == 0, f"{what}: CUresult {rc}"

    def current(self):
        self.check(self.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def alloc(self, data: bytes) -> int:
        """Device memory holding ``data`` (the copy complete on return)."""
        self.current()
        p = ctypes.c_uint64()
        self.check(self.lib.cuMemAllocAsync(ctypes.byref(p), len(data), self.stream), "alloc")
        buf = ctypes.create_string_buffer(data, len(data))
        self.check(self.lib.cuMemcpyHtoDAsync_v2(p.value, buf, len(data), self.stream), "htod")
        self.sync()
        return p.value

    def slow_write(self, dst: int, src: int, n: int, ops: int = 200):
        """Queues ``ops`` memsets of ``dst`` and then a copy of ``src`` into it, on the stream."""
        self.current()
        for v in range(ops):
            self.check(self.lib.cuMemsetD8Async(dst, v % 251, n, self.stream), "memset")
        self.check(self.lib.cuMemcpyDtoDAsync_v2(dst, src, n, self.stream), "dtod")

    def sync(self):
        self.check(self.lib.cuStreamSynchronize(self.stream), "sync")

    def free(self, p: int):
        self.current()
        self.check(self.lib.cuMemFree_v2(p), "cuMemFree (a second free aborts the simulator)")


@pytest.fixture(scope="module")
def drv():
    ok, why = arraydrain._native.cuda_status(0)
    assert ok, why
    return Driver(SIM)


def lent_batches(drv, sizes, seed, ops=200):
    """Batches of device memory whose final contents are written slowly on the test's stream:
    ``(batches, expected bytes, allocations to free)``."""
    rng = np.random.default_rng(seed)
    final = rng.integers(0, 256, (sum(sizes), ROW), dtype=np.uint8)
    batches, allocs, at = [], [], 0
    for n in sizes:
        part = final[at : at + n]
        at += n
        if n == 0:
            batches.append([(object(), 0, drv.stream.value or 0, 0)])
            continue
        dst = drv.alloc(rng.integers(0, 256, n * ROW, dtype=np.uint8).tobytes())
        src = drv.alloc(part.tobytes())
        drv.slow_write(dst, src, n * ROW, ops)
        allocs += [dst, src]
        batches.append([(part, dst, drv.stream.value or 0, n)])
    return batches, final, allocs


def drain(batches, rows, exact):
    spec = [("x", None, [ROW], ROW)]
    (out,) = arraydrain._native.cuda_drain(0, spec, rows, iter(batches), exact)
    return out


@pytest.mark.parametrize(
    "rows, exact", [(None, False), (449, True), (449, False), (10, False), (2000, False)]
)
def test_lent_batches_are_read_after_their_producer_and_never_freed(drv, rows, exact):
    sizes = [100, 37, 250, 0, 1, 61]
    batches, final, allocs = lent_batches(drv, sizes, seed=rows or 0)
    assert sum(sizes) == 449
    out = drain(batches, rows, exact)
    assert out.shape == (449, ROW)
    np.testing.assert_array_equal(out, final)
    drv.sync()
    for p in allocs:
        drv.free(p)


def test_the_gil_is_released_while_the_engine_waits(drv):
    batches, final, allocs = lent_batches(drv, [300, 300], seed=5, ops=2000)
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    t = threading.Thread(target=tick)
    t.start()
    try:
        start = time.perf_counter()
        out = drain(batches, 600, True)
        end = time.perf_counter()
    finally:
        stop.set()
        t.join()
    np.testing.assert_array_equal(out, final)
    during = np.array([start] + [s for s in ticks if start <= s <= end] + [end])
    assert end - start > 0.2, f"the drain took {end - start:.3f} s: nothing measured"
    assert np.diff(during).max() < 0.1, f"a pause of {np.diff(during).max():.3f} s"
    drv.sync()
    for p in allocs:
        drv.free(p)


def test_an_error_of_the_batch_iterator_comes_out_as_itself(drv):
    batches, _, allocs = lent_batches(drv, [50], seed=6, ops=1)

    def failing():
        yield batches[0]
        raise KeyError("the loader failed")

    spec = [("x", None, [ROW], ROW)]
    with pytest.raises(KeyError, match="the loader failed"):
        arraydrain._native.cuda_drain(0, spec, None, failing(), False)
    drv.sync()
    for p in allocs:
        drv.free(p)


@pytest.mark.parametrize("strategy", ["auto", "pinned", "preallocated", "concat", "per-batch"])
def test_the_fast_path_reads_a_lent_table_after_its_producer(drv, strategy):
    rows = 500
    rng = np.random.default_rng(8)
    final = rng.integers(0, 256, (rows, ROW), dtype=np.uint8)
    dst = drv.alloc(rng.integers(0, 256, rows * ROW, dtype=np.uint8).tobytes())
    src = drv.alloc(final.tobytes())
    drv.slow_write(dst, src, rows * ROW)
    order = rng.permutation(rows).astype(np.int64)
    source = ("x", final, dst, drv.stream.value or 0, None, [ROW], ROW, rows)
    (out,) = arraydrain._native.cuda_gather(0, [source], rows, order, 64, strategy, None, None)
    np.testing.assert_array_equal(out, final[order])
    drv.sync()
    for p in (dst, src):
        drv.free(p)

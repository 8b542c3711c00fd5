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

from sim_driver import Driver, requires_simulator  # first: sets the simulator's delays

import numpy as np
import pytest
from helpers import run_watching_the_gil

import arraydrain

pytestmark = requires_simulator

ROW = 16


@pytest.fixture(scope="module")
def drv():
    return Driver.start()


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
            batches.append([(object(), 0, drv.handle, 0)])
            continue
        dst = drv.alloc(rng.integers(0, 256, n * ROW, dtype=np.uint8).tobytes())
        src = drv.alloc(part.tobytes())
        drv.slow_write(dst, src, n * ROW, ops)
        allocs += [dst, src]
        batches.append([(part, dst, drv.handle, n)])
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
    out, took, pause = run_watching_the_gil(lambda: drain(batches, 600, True))
    np.testing.assert_array_equal(out, final)
    assert took > 0.2, f"the drain took {took:.3f} s: nothing measured"
    assert pause < 0.1, f"a pause of {pause:.3f} s"
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
    source = ("x", final, dst, drv.handle, None, [ROW], ROW, rows)
    (out,) = arraydrain._native.cuda_gather(0, [source], rows, order, 64, strategy, None, None)
    np.testing.assert_array_equal(out, final[order])
    drv.sync()
    for p in (dst, src):
        drv.free(p)

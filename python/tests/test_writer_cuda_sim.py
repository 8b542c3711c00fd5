"""``arraydrain.Writer`` fed from device memory (the CUDA engine's device writer) under the CUDA
driver simulator, without PyTorch's CUDA: device memory is allocated and written through the
simulated driver with ctypes, on a stream of the test's own, and handed to the writer by address
(``Writer._write_device_memory``, the internal entry ``Writer.write`` uses for CUDA tensors after
reading their address, dtype, shape and PyTorch's current stream).

- the output equals the bytes written (shuffled ``at``, appended; memory, ``.npy``, ``.npz``;
  bfloat16 as ``ml_dtypes``), through a staging pool far smaller than the output;
- each batch is read after its producer stream's last write (queued behind many other writes),
  and work the producer queues after ``write`` returns does not change what lands;
- ``write`` returns while the copy is still in flight; the GIL is released while ``close``
  waits for it;
- a host batch written after a device batch lands after it (and the reverse);
- refused input is a typed error naming what was wrong, and nothing of it is written.

Run by scripts/test.sh with the simulator as libcuda.so.1 and ARRAYDRAIN_EXPECT_SIM=1 (without
the simulator it then fails; anywhere else it is skipped). Says nothing about a real GPU."""

import time

from sim_driver import Driver, requires_simulator  # first: sets the simulator's delays

import ml_dtypes
import numpy as np
import pytest
from helpers import run_watching_the_gil

import arraydrain
from arraydrain import DrainIndexError, DrainRuntimeError, DrainValueError

pytestmark = requires_simulator


@pytest.fixture
def drv():
    d = Driver.start()
    yield d
    d.free_all()


def batches(n, size, seed):
    """Shuffled row indices of ``n`` rows, cut into batches of ``size`` (the last shorter)."""
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return [order[s : s + size] for s in range(0, n, size)]


@pytest.mark.parametrize("dest", [None, "out.npz", "dir"])
def test_the_output_equals_the_bytes_written_through_a_small_staging_pool(drv, tmp_path, dest):
    n = 3000
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((n, 16)).astype(np.float32)
    labels = rng.integers(0, 1 << 40, n).astype(np.int64)
    path = None if dest is None else tmp_path / dest
    # 4 KiB of staging for a 200 KiB output: batches are split and the pool cycles.
    w = arraydrain.Writer(path, rows=n, ring_bytes=4096)
    for at in batches(n, 250, 2):
        pf, pl = drv.alloc(feats[at].tobytes()), drv.alloc(labels[at].tobytes())
        w._write_device_memory(
            {"f": (pf, np.float32, (len(at), 16)), "l": (pl, np.int64, (len(at),))},
            at=at,
            stream=drv.handle,
        )
    got = w.close()
    if dest is None:
        pass
    elif dest.endswith(".npz"):
        got = dict(np.load(path))
    else:
        got = {k: np.load(path / f"{k}.npy") for k in ("f", "l")}
    np.testing.assert_array_equal(got["f"], feats)
    np.testing.assert_array_equal(got["l"], labels)


def test_appended_batches_and_bfloat16_to_a_npy_file(drv, tmp_path):
    n = 1000
    x = np.random.default_rng(3).standard_normal((n, 8)).astype(ml_dtypes.bfloat16)
    path = tmp_path / "x.npy"
    with arraydrain.Writer(path, rows=n, ring_bytes=2048) as w:
        for s in range(0, n, 128):
            part = x[s : s + 128]
            p = drv.alloc(part.tobytes())
            w._write_device_memory({"x": (p, ml_dtypes.bfloat16, part.shape)}, stream=drv.handle)
        assert not path.exists()
    back = np.load(path)
    assert back.dtype == np.dtype("V2")
    assert back.view(ml_dtypes.bfloat16).tobytes() == x.tobytes()


def rows_wrong_after_writing(drv, want, size, seed, stage, after=lambda p, at: None):
    """Writes the rows of ``want`` (uint8) from device memory through 64 KiB of staging, in
    ``batches(len(want), size, seed)``: ``stage(k, at)`` gives the address of batch ``k`` (rows
    ``at``), which holds ``want[at]`` once the work queued on the producer's stream has run;
    ``after(p, at)`` runs right after that batch's write returned. Returns how many rows of the
    output differ from ``want``."""
    n, row = want.shape
    w = arraydrain.Writer(None, rows=n, ring_bytes=1 << 16)
    for k, at in enumerate(batches(n, size, seed)):
        p = stage(k, at)
        w._write_device_memory({"x": (p, np.uint8, (len(at), row))}, at=at, stream=drv.handle)
        after(p, at)
    out = w.close()["x"]
    return int((out != want).any(axis=1).sum())


def test_each_batch_is_read_after_its_producers_last_write(drv):
    n, row = 1200, 32
    final = np.random.default_rng(4).integers(0, 256, (n, row), dtype=np.uint8)

    def slowly_written(k, at):
        nbytes = len(at) * row
        dst = drv.alloc(np.random.default_rng(10 + k).bytes(nbytes))
        src = drv.alloc(final[at].tobytes())
        drv.slow_write(dst, src, nbytes)
        return dst

    wrong = rows_wrong_after_writing(drv, final, 100, 5, slowly_written)
    assert wrong == 0, f"{wrong} rows were copied before their producer's last write"


def test_work_the_producer_queues_after_write_does_not_change_what_lands(drv):
    n, row = 2000, 24
    data = np.random.default_rng(6).integers(0, 256, (n, row), dtype=np.uint8)

    def reused_at_once(p, at):
        # The producer reuses the memory at once (as PyTorch's allocator would on its stream).
        drv.memsets(p, len(at) * row, 1, value=0xEE)

    wrong = rows_wrong_after_writing(
        drv, data, 50, 7, lambda k, at: drv.alloc(data[at].tobytes()), after=reused_at_once
    )
    assert wrong == 0, f"{wrong} rows were overwritten by work queued after write"


def test_write_returns_while_the_copy_is_in_flight_and_close_releases_the_gil(drv):
    n, row = 600, 64
    final = np.random.default_rng(8).integers(0, 256, (n, row), dtype=np.uint8)
    w = arraydrain.Writer(None, rows=n, ring_bytes=1 << 20)
    dst = drv.alloc(bytes(n * row))
    src = drv.alloc(final.tobytes())
    drv.slow_write(dst, src, n * row, ops=3000)
    start = time.perf_counter()
    w._write_device_memory({"x": (dst, np.uint8, (n, row))}, stream=drv.handle)
    returned = time.perf_counter() - start
    in_flight = w._native.device_pending
    assert in_flight > 0, "write waited for the copy"
    out, took, pause = run_watching_the_gil(lambda: w.close()["x"])
    np.testing.assert_array_equal(out, final)
    assert took > 0.2, f"close took {took:.3f} s: nothing measured"
    assert returned < took / 2, f"write took {returned:.3f} s, close {took:.3f} s"
    assert pause < 0.1, f"a pause of {pause:.3f} s"


def test_host_and_device_batches_land_in_the_order_they_were_written(drv):
    n, row = 4, 8
    a = np.full((n, row), 1, np.uint8)
    b = np.full((n, row), 2, np.uint8)
    # Device, then host: the host rows win.
    w = arraydrain.Writer(None, rows=n)
    p = drv.alloc(a.tobytes())
    drv.memsets(p, n * row, 500, value=0)  # keep the producer busy: the copy lands late
    drv.slow_write(p, drv.alloc(a.tobytes()), n * row)
    w._write_device_memory({"x": (p, np.uint8, (n, row))}, at=np.arange(n), stream=drv.handle)
    w.write({"x": b}, at=np.arange(n))
    np.testing.assert_array_equal(w.close()["x"], b)
    # Host, then device: the device rows win.
    w = arraydrain.Writer(None, rows=n)
    w.write({"x": b}, at=np.arange(n))
    w._write_device_memory({"x": (p, np.uint8, (n, row))}, at=np.arange(n), stream=drv.handle)
    np.testing.assert_array_equal(w.close()["x"], a)


def test_refused_input_is_a_typed_error_and_writes_nothing(drv):
    n, row = 10, 16
    data = np.arange(n * row, dtype=np.uint8).reshape(n, row)
    p = drv.alloc(data.tobytes())
    w = arraydrain.Writer(None, rows=n)
    w._write_device_memory({"x": (p, np.uint8, (2, row))}, at=[0, 1], stream=drv.handle)
    with pytest.raises(DrainIndexError, match="index 10 at position 1"):
        w._write_device_memory({"x": (p, np.uint8, (2, row))}, at=[2, 10], stream=drv.handle)
    # Bytes past the end of the allocation: the engine asks the driver.
    with pytest.raises(DrainValueError, match=r'column "x": expected 160 bytes.*got 144'):
        w._write_device_memory({"x": (p + row, np.uint8, (n, row))}, at=np.arange(n),
                               stream=drv.handle)
    # An append after rows placed by index (it would land on rows 0 and 1, over them).
    with pytest.raises(DrainValueError, match="append after rows placed by index"):
        w._write_device_memory({"x": (p, np.uint8, (2, row))}, stream=drv.handle)
    # A stream the driver does not know.
    with pytest.raises(DrainRuntimeError, match="producer"):
        w._write_device_memory({"x": (p, np.uint8, (1, row))}, at=[5], stream=0xDEAD0000)
    # Another row shape than the first batch's.
    with pytest.raises(DrainValueError, match="leaf 'x'"):
        w._write_device_memory({"x": (p, np.uint8, (1, row // 2))}, at=[5], stream=drv.handle)
    w._native.flush_device()
    assert w.rows_written == 2
    with pytest.raises(DrainValueError, match="8 of 10 rows"):
        w.close()

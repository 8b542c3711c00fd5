"""The CUDA driver simulator (cudasim/) as the Python tests under it use it: loading it, the rule
that decides whether those tests run, and ``Driver``, the few driver calls with which they
allocate and write device memory on a stream of their own (as PyTorch's allocator would), through
ctypes, without PyTorch's CUDA.

Import this before anything in the process loads libcuda: it sets the simulator's delays
(``ARRAYDRAIN_SIM_MIN_DELAY_US``, read once when the simulator loads) unless they are set
already. With ``ARRAYDRAIN_EXPECT_SIM=1`` (scripts/test.sh) a missing simulator is an error at
import, never a skip; without it, the tests marked ``requires_simulator`` are skipped."""

import ctypes
import os

os.environ.setdefault("ARRAYDRAIN_SIM_MIN_DELAY_US", "150")

import pytest  # noqa: E402

import arraydrain  # noqa: E402


def _simulator():
    """The simulator as the process's libcuda.so.1, or None when that is not it (or none loads)."""
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

#: A test module's ``pytestmark``: skipped without the simulator or without the CUDA engine.
requires_simulator = pytest.mark.skipif(
    SIM is None or not arraydrain._native.cuda_compiled(),
    reason="needs the CUDA simulator as libcuda.so.1 (scripts/test.sh runs it so)",
)


class Driver:
    """The few driver calls the tests need, on the device's primary context (the engine's), with
    a stream of the test's own: the producer whose writes the engine must wait for. Keeps every
    allocation until ``free`` or ``free_all``; freeing memory twice aborts the simulator."""

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
        self.allocs = []

    @classmethod
    def start(cls):
        """The driver on the simulator, once the engine has said it can start on device 0."""
        ok, why = arraydrain._native.cuda_status(0)
        assert ok, why
        return cls(SIM)

    @property
    def handle(self) -> int:
        """The stream as the engine takes it (an integer; 0 for the legacy default stream)."""
        return self.stream.value or 0

    @staticmethod
    def check(rc, what):
        assert rc == 0, f"{what}: CUresult {rc}"

    def current(self):
        self.check(self.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def alloc(self, data: bytes) -> int:
        """Device memory holding ``data`` (the copy complete on return)."""
        self.current()
        p = ctypes.c_uint64()
        self.check(self.lib.cuMemAllocAsync(ctypes.byref(p), max(len(data), 1), self.stream),
                   "alloc")
        buf = ctypes.create_string_buffer(data, len(data))
        self.check(self.lib.cuMemcpyHtoDAsync_v2(p.value, buf, len(data), self.stream), "htod")
        self.sync()
        self.allocs.append(p.value)
        return p.value

    def memsets(self, dst: int, n: int, ops: int, value: int = 0):
        """Queues ``ops`` memsets of the ``n`` bytes at ``dst`` on the stream, the ``v``-th to
        ``value + v`` (mod 256)."""
        self.current()
        for v in range(ops):
            self.check(self.lib.cuMemsetD8Async(dst, (value + v) % 256, n, self.stream), "memset")

    def slow_write(self, dst: int, src: int, n: int, ops: int = 200):
        """Queues ``ops`` memsets of ``dst`` and then a copy of ``src`` into it, on the stream."""
        self.memsets(dst, n, ops)
        self.check(self.lib.cuMemcpyDtoDAsync_v2(dst, src, n, self.stream), "dtod")

    def sync(self):
        self.check(self.lib.cuStreamSynchronize(self.stream), "sync")

    def free(self, p: int):
        self.current()
        self.check(self.lib.cuMemFree_v2(p), "cuMemFree (a second free aborts the simulator)")
        self.allocs.remove(p)

    def free_all(self):
        """Frees every allocation not freed yet, once the stream has run."""
        self.sync()
        for p in list(self.allocs):
            self.free(p)

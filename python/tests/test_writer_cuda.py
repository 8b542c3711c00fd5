"""`arraydrain.Writer` with CUDA tensors (needs a GPU PyTorch and the CUDA engine can use; skipped
without one; listed in scripts/device-check.sh): outputs equal the classic recipe, bfloat16
included; `write` returns while the copy is still in flight on the engine's streams; the
tensor's memory can be reused on PyTorch's stream at once; CPU and CUDA batches land in the
order they were written. The same paths run under the CUDA driver simulator in
test_writer_cuda_sim.py; these have not run on a GPU yet."""

import ml_dtypes
import numpy as np
import pytest
import torch

import arraydrain

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_outputs_equal_the_recipe_in_memory_and_in_files(tmp_path):
    n = 5000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    order = torch.randperm(n, generator=g)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU()).cuda()
    with torch.no_grad():
        want = net(x.cuda()).cpu()
        for path in (None, tmp_path / "o.npz"):
            with arraydrain.Writer(path, rows=n, ring_bytes=1 << 16) as w:
                for s in range(0, n, 333):
                    idx = order[s : s + 333]
                    y = net(x[idx].cuda())
                    w.write({"f": y, "b": y.to(torch.bfloat16)}, at=idx)
            got = w.result if path is None else dict(np.load(path))
            assert got["f"].tobytes() == want.numpy().tobytes()
            b = got["b"] if path is None else got["b"].view(ml_dtypes.bfloat16)
            assert b.tobytes() == want.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def test_write_returns_before_the_copy_completes():
    n = 1024
    w = arraydrain.Writer(None, rows=n)
    y = torch.arange(n, dtype=torch.float32, device="cuda")
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time on the current stream
    w.write(y)
    in_flight = w._native.device_pending
    w.close()
    assert in_flight >= 1  # write did not wait for the GPU
    assert np.array_equal(w.result, np.arange(n, dtype=np.float32))


def test_the_tensors_memory_can_be_reused_on_the_stream_at_once():
    n, batches = 4096, 40
    w = arraydrain.Writer(None, rows=n * batches, ring_bytes=1 << 20)
    want = []
    for k in range(batches):
        y = torch.full((n, 8), float(k), device="cuda")
        torch.cuda._sleep(10_000_000)  # keep the stream busy: the copy runs late
        w.write(y)
        y.fill_(-1.0)  # later work on the same stream: must run after the copy
        del y  # the caching allocator hands the memory to the next batch
        want.append(np.full((n, 8), float(k), np.float32))
    np.testing.assert_array_equal(w.close(), np.concatenate(want))


def test_cpu_and_cuda_batches_land_in_the_order_they_were_written():
    n = 256
    w = arraydrain.Writer(None, rows=n)
    y = torch.ones(n, 4, device="cuda")
    torch.cuda._sleep(100_000_000)
    w.write(y, at=np.arange(n))
    w.write(np.full((n, 4), 2.0, np.float32), at=np.arange(n))
    np.testing.assert_array_equal(w.close(), np.full((n, 4), 2.0, np.float32))

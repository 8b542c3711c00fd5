"""CUDA tensors: the fast path (CUDA gather kernel + async copies into pinned output) and the
general path (device batches copied into pinned output). Skipped without a CUDA device; the
reference is PyTorch itself — the classic recipe with `.cpu()` over one real epoch from the same
RNG state, or NumPy indexing of the source by that epoch's order — never arraydrain's own CPU
drain.

On a machine with a CUDA device these tests fail, rather than pass on the CPU, when the engine
cannot start (the autouse check below), and every GPU drain must return arrays backed by the
engine's pinned memory (`storage == "pinned"`), not host copies made on the CPU path."""

import numpy as np
import pytest
import torch
from helpers import (
    DTYPES,
    assert_same,
    classic,
    drain_vs_epoch,
    features,
    labels,
    run_watching_the_gil,
    values,
)
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

import arraydrain

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

N = 5000


@pytest.fixture(autouse=True)
def engine_must_start():
    """The CUDA engine starts on the current device; otherwise every test here fails with the
    engine's reason (a drain of CUDA tensors on the CPU would pass the equality checks)."""
    ordinal = torch.cuda.current_device()
    ok, why = arraydrain._native.cuda_status(ordinal)
    assert ok, f"the CUDA engine cannot start on cuda:{ordinal}: {why}"


def storage(a):
    """Where an array's bytes live, from the engine buffer at the end of its `base` chain."""
    while a is not None and not hasattr(a, "storage"):
        a = getattr(a, "base", None)
    return None if a is None else a.storage


def assert_pinned(got):
    arrays = got.values() if isinstance(got, dict) else got
    kinds = [storage(a) for a in arrays]
    assert kinds and all(k == "pinned" for k in kinds), f"not the GPU path's pinned output: {kinds}"


def cuda_dataset(rows=N):
    return TensorDataset(features(rows, 16).cuda(), labels(rows).cuda())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    "batch_size, drop_last", [(1, False), (10, True), (256, False), (N + 1, False)]
)
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_tensor_dataset_on_the_gpu(shuffle, batch_size, drop_last, device):
    g = torch.Generator().manual_seed(batch_size)
    loader = DataLoader(
        cuda_dataset(), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=g
    )
    got, _ = drain_vs_epoch(loader, device=device)
    assert all(isinstance(a, np.ndarray) for a in got)
    assert_pinned(got)


def test_global_rng_shuffle_on_the_gpu():
    torch.manual_seed(3)
    got, _ = drain_vs_epoch(DataLoader(cuda_dataset(), batch_size=64, shuffle=True))
    assert_pinned(got)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_distributed_sampler_on_the_gpu(rank):
    ds = cuda_dataset(N + 1)
    sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=5)
    drain_vs_epoch(DataLoader(ds, batch_size=100, sampler=sampler))


def test_subset_on_the_gpu():
    ds = Subset(cuda_dataset(), list(range(N - 1, 0, -3)))
    drain_vs_epoch(DataLoader(ds, batch_size=50, shuffle=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_on_the_gpu(dtype):
    """Against the same loader over CPU tensors: the classic recipe stacks batches on the GPU,
    and PyTorch's CUDA kernels for the unsigned and complex dtypes may not cover that."""
    x, y = values((N, 3), dtype, seed=1), labels(N)
    g = torch.Generator()
    gpu = DataLoader(TensorDataset(x.cuda(), y.cuda()), batch_size=128, shuffle=True, generator=g)
    cpu = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True, generator=g)
    g.manual_seed(4)
    got = arraydrain.drain(gpu)
    state = g.get_state()
    g.manual_seed(4)
    assert_same(got, classic(cpu))
    assert torch.equal(state, g.get_state())


def test_images_and_non_contiguous_on_the_gpu():
    img = values((N, 3, 8, 8), torch.float32, seed=2).cuda()
    tensors = (
        img.contiguous(memory_format=torch.channels_last),
        values((N, 32), torch.float64, seed=3).cuda()[:, ::4],
        values((16, N), torch.int32, seed=4).cuda().t(),
        labels(N).cuda(),
    )
    assert not tensors[1].is_contiguous() and not tensors[2].is_contiguous()
    drain_vs_epoch(DataLoader(TensorDataset(*tensors), batch_size=100, shuffle=True))


def test_larger_table_on_the_gpu():
    rows = 1_000_000
    x = torch.randn(rows, 128, device="cuda")
    y = torch.arange(rows, device="cuda")
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True, generator=g)
    got = arraydrain.drain(loader)
    assert_pinned(got)
    # y is the row index: one real epoch from the same generator state gives the order.
    g.manual_seed(0)
    order = torch.cat([by for _, by in loader]).cpu().numpy()
    np.testing.assert_array_equal(got[1], order)
    np.testing.assert_array_equal(got[0], x.cpu().numpy()[order])


def test_out_reuse_on_the_gpu():
    g = torch.Generator().manual_seed(1)
    loader = DataLoader(cuda_dataset(), batch_size=64, shuffle=True, generator=g)
    first, _ = drain_vs_epoch(loader)
    second, _ = drain_vs_epoch(loader, out=first)
    assert all(np.shares_memory(a, b) for a, b in zip(first, second))
    assert_pinned(second)


def test_device_cpu_forces_the_cpu_path_with_the_same_result():
    g = torch.Generator().manual_seed(2)
    drain_vs_epoch(
        DataLoader(cuda_dataset(), batch_size=64, shuffle=True, generator=g), device="cpu"
    )


class CudaItems(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def test_general_path_with_cuda_batches():
    x, y = features(N, 16).cuda(), labels(N).cuda()
    loader = DataLoader(CudaItems(x, y), batch_size=100, shuffle=True)
    got, _ = drain_vs_epoch(loader)
    assert type(got) is dict
    assert_pinned(got)


def test_generator_of_cuda_batches():
    x = features(N, 4).cuda()
    batches = [(x[s : s + 77],) for s in range(0, N, 77)]
    got = arraydrain.drain(iter(batches))
    np.testing.assert_array_equal(got[0], x.cpu().numpy())
    assert_pinned(got)


def test_result_outlives_the_gpu_tensors():
    x, y = features(N, 16).cuda(), labels(N).cuda()
    expect = classic(DataLoader(TensorDataset(x, y), batch_size=64))
    got = arraydrain.drain(DataLoader(TensorDataset(x, y), batch_size=64))
    del x, y
    torch.cuda.empty_cache()
    assert_same(got, expect)


def test_tensors_on_a_side_stream_are_read_after_their_writes():
    """A tensor written on another stream just before the drain is read complete."""
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.empty(N, 256, device="cuda")
        x.copy_(torch.arange(N * 256, dtype=torch.float32, device="cuda").reshape(N, 256))
        got = arraydrain.drain(DataLoader(TensorDataset(x), batch_size=128))
    np.testing.assert_array_equal(got[0], np.arange(N * 256, dtype=np.float32).reshape(N, 256))
    assert_pinned(got)


def shuffled_epoch(x, seed):
    """A shuffled loader over `x` and a row-index column, and a function that checks a drain
    of it against NumPy indexing of `x` by the drained indices."""
    idx = torch.arange(len(x), device=x.device)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, idx), batch_size=4096, shuffle=True, generator=g)

    def check(got):
        assert_pinned(got)
        np.testing.assert_array_equal(got[0], x.cpu().numpy()[got[1]])

    return loader, check


def test_a_dataset_that_does_not_fit_twice_is_read_in_place():
    """The tensors are read where they are: with less free device memory than the dataset, a
    drain (which once copied the tensors whole into engine memory first) still succeeds, and
    PyTorch allocates nothing for it."""
    x = torch.randn(1 << 20, 64, device="cuda")  # 256 MiB
    size = x.numel() * x.element_size()
    loader, check = shuffled_epoch(x, 0)
    check(arraydrain.drain(loader))  # opens the engine and its lanes at this size
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(free - size // 2, dtype=torch.uint8, device="cuda")
    try:
        assert torch.cuda.mem_get_info()[0] < size, "the dataset must not fit a second time"
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        got = arraydrain.drain(loader)
        grew = torch.cuda.max_memory_allocated() - before
    finally:
        del ballast
        torch.cuda.empty_cache()
    assert grew < size // 16, f"PyTorch allocated {grew} bytes during the drain"
    check(got)


@pytest.mark.parametrize("path", ["fast", "general"])
def test_reads_are_ordered_after_pytorchs_stream_without_synchronizing_the_device(
    path, monkeypatch
):
    """Data written by a kernel queued behind ~0.3 s of device work on PyTorch's current stream
    is read complete; and nothing synchronises the whole device (which the general path once did
    once per batch): torch.cuda.synchronize fails here if called."""
    expect = np.arange(N * 64, dtype=np.float32).reshape(N, 64) + 1
    x = torch.zeros(N, 64, device="cuda")
    torch.cuda.synchronize()

    def no_sync(*args, **kwargs):
        raise AssertionError("torch.cuda.synchronize called during a drain")

    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    torch.cuda._sleep(int(5e8))
    x.copy_(torch.arange(N * 64, dtype=torch.float32, device="cuda").reshape(N, 64)).add_(1)
    if path == "fast":
        got = arraydrain.drain(DataLoader(TensorDataset(x), batch_size=128))
    else:
        got = arraydrain.drain(iter([(x[s : s + 300],) for s in range(0, N, 300)]))
    np.testing.assert_array_equal(got[0], expect)
    assert_pinned(got)


def test_a_batch_made_on_a_side_stream_is_read_after_it():
    """A batch produced by a kernel on a side stream that PyTorch's current stream waits for
    (stream.wait_stream, no host synchronisation) is read after that kernel."""
    side = torch.cuda.Stream()
    main = torch.cuda.current_stream()
    batches = []
    for k in range(8):
        with torch.cuda.stream(side):
            torch.cuda._sleep(int(5e7))
            b = torch.full((500, 32), float(k), device="cuda")
        main.wait_stream(side)
        b.record_stream(main)
        batches.append((b,))
    got = arraydrain.drain(iter(batches))
    expect = np.repeat(np.arange(8, dtype=np.float32), 500)[:, None] * np.ones((1, 32), np.float32)
    np.testing.assert_array_equal(got[0], expect)
    assert_pinned(got)


def test_other_python_threads_run_while_the_engine_drains_a_stream():
    """The GIL is released while the engine pins its output and waits for the device: a Python
    thread keeps running throughout (no pause longer than 0.1 s) during a drain of CUDA batches
    whose last one waits behind ~0.5 s of device work, into 1.5 GiB of fresh pinned output."""
    rows = 3 << 20  # 3 Mi rows × 128 float32 = 1.5 GiB
    x = torch.ones(rows, 128, device="cuda")
    cut = rows - 1000

    def batches():
        yield (x[:cut],)
        torch.cuda._sleep(int(1e9))
        yield (x[cut:] * 2,)

    got, took, pause = run_watching_the_gil(lambda: arraydrain.drain(batches()))
    assert took > 0.2, "the drain did not wait for the device: nothing measured"
    assert pause < 0.1, f"a pause of {pause:.3f} s"
    assert got[0].shape == (rows, 128)
    assert (got[0][:cut] == 1).all() and (got[0][cut:] == 2).all()
    assert_pinned(got)

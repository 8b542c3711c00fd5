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
from helpers import DTYPES, assert_same, classic, drain_vs_epoch, features, labels, values
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

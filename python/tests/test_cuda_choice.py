"""Which device a drain of CUDA tensors uses, checked without a GPU: ``device="cuda"`` means
PyTorch's current device (as in PyTorch, so each torchrun rank after
``torch.cuda.set_device(local_rank)`` uses its own GPU), and a drain of CUDA tensors that falls
back to the CPU says so once, naming the reason, instead of passing silently. Also how tensors
are prepared for the engine to read in place (a PyTorch copy only where one is needed, retried
once after ``torch.cuda.empty_cache()`` when it runs out of memory), with CPU tensors and fakes
standing in for CUDA ones."""

import warnings

import pytest
import torch

import arraydrain
from arraydrain import _cuda


def test_device_cuda_is_pytorchs_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    asked = []

    def status(ordinal):
        asked.append(ordinal)
        return True, f"cuda:{ordinal}"

    monkeypatch.setattr(_cuda, "_cuda_status", status)
    assert _cuda._check_device("cuda") == 3
    assert _cuda._check_device("cuda:1") == 1
    assert asked == [3, 1]


def test_device_cuda_that_cannot_run_names_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(_cuda, "_cuda_status", lambda o: (False, f"no NVRTC for cuda:{o}"))
    with pytest.raises(arraydrain.ArrayDrainError, match=r"device='cuda'.*no NVRTC for cuda:2"):
        _cuda._check_device("cuda")


def test_cuda_tensors_drained_on_the_cpu_warn_once_with_the_reason(monkeypatch):
    monkeypatch.setattr(_cuda, "_FALLBACK_WARNED", set())
    monkeypatch.setattr(_cuda, "_cuda_status", lambda o: (False, "libcuda not found"))
    cuda1 = torch.device("cuda", 1)
    with pytest.warns(RuntimeWarning, match=r"cuda:1 are drained on the CPU.*libcuda not found"):
        assert _cuda._use_cuda("auto", None, cuda1) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda._use_cuda("auto", None, cuda1) is None, "once per device and reason"
        assert _cuda._use_cuda("cpu", None, cuda1) is None, "device='cpu' asked for it"
        assert _cuda._use_cuda("auto", None, torch.device("cpu")) is None


def test_cuda_tensors_on_the_gpu_engine_do_not_warn(monkeypatch):
    monkeypatch.setattr(_cuda, "_cuda_status", lambda o: (True, f"cuda:{o}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda._use_cuda("auto", None, torch.device("cuda", 2)) == 2


def test_the_cuda_functions_live_in_their_own_module():
    names = ("_check_device", "_use_cuda", "_device_source", "_cuda_general", "_cuda_status",
             "_preload_nvrtc", "_current_cuda_device", "_device_batches")
    for name in names:
        f = getattr(_cuda, name)
        assert f.__module__ == "arraydrain._cuda", name
        # No second copy elsewhere in the package: at most the same function, re-exported.
        assert getattr(arraydrain, name, f) is f, f"arraydrain.{name} is another function"


class Flaky:
    """Stands in for a tensor whose copy runs out of device memory the first `fails` times."""

    def __init__(self, fails):
        self.fails = fails
        self.calls = 0

    def copy(self):
        self.calls += 1
        if self.calls <= self.fails:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "copied"


def test_a_copy_that_runs_out_of_memory_is_retried_once_after_empty_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    t = Flaky(fails=1)
    assert _cuda._retry_on_oom(t.copy, "tensor 0 of the TensorDataset", 1 << 31) == "copied"
    assert (t.calls, len(emptied)) == (2, 1)
    t = Flaky(fails=0)
    emptied.clear()
    assert _cuda._retry_on_oom(t.copy, "x", 8) == "copied"
    assert (t.calls, emptied) == (1, []), "no retry, no empty_cache without an OOM"


def test_a_copy_out_of_memory_twice_is_a_clear_memory_error(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    t = Flaky(fails=2)
    with pytest.raises(arraydrain.DrainMemoryError) as e:
        _cuda._retry_on_oom(t.copy, "batch 3, leaf 'x'", 1 << 31)
    msg = str(e.value)
    assert "batch 3, leaf 'x'" in msg and str(1 << 31) in msg and "empty_cache" in msg, msg
    assert isinstance(e.value.__cause__, torch.cuda.OutOfMemoryError)
    assert (t.calls, len(emptied)) == (2, 1), "one retry only"


def test_only_tensors_the_engine_cannot_read_in_place_are_copied(monkeypatch):
    here = torch.device("cpu")
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    assert _cuda._lendable(x, here, "x").data_ptr() == x.data_ptr(), "contiguous: in place"
    assert _cuda._lendable(x[1:], here, "x").data_ptr() == x[1:].data_ptr(), "a row slice too"
    copies = []
    real = _cuda._retry_on_oom
    monkeypatch.setattr(
        _cuda, "_retry_on_oom", lambda make, what, n: copies.append(what) or real(make, what, n)
    )
    t = _cuda._lendable(x.t(), here, "transposed")
    assert t.is_contiguous() and torch.equal(t, x.t()) and copies == ["transposed"]
    z = torch.tensor([1 + 2j, 3 - 4j]).conj()
    assert z.is_conj()
    got = _cuda._lendable(z, here, "conj")
    assert not got.is_conj() and torch.equal(got, torch.tensor([1 - 2j, 3 + 4j]))
    n = torch.tensor([1.0, -2.0])._neg_view()
    got = _cuda._lendable(n, here, "neg")
    assert not got.is_neg() and torch.equal(got, torch.tensor([-1.0, 2.0]))

"""Which device a drain of CUDA tensors uses, checked without a GPU: ``device="cuda"`` means
PyTorch's current device (as in PyTorch, so each torchrun rank after
``torch.cuda.set_device(local_rank)`` uses its own GPU), and a drain of CUDA tensors that falls
back to the CPU says so once, naming the reason, instead of passing silently."""

import warnings

import pytest
import torch

import arraydrain


def test_device_cuda_is_pytorchs_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    asked = []

    def status(ordinal):
        asked.append(ordinal)
        return True, f"cuda:{ordinal}"

    monkeypatch.setattr(arraydrain, "_cuda_status", status)
    assert arraydrain._check_device("cuda") == 3
    assert arraydrain._check_device("cuda:1") == 1
    assert asked == [3, 1]


def test_device_cuda_that_cannot_run_names_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(arraydrain, "_cuda_status", lambda o: (False, f"no NVRTC for cuda:{o}"))
    with pytest.raises(arraydrain.ArrayDrainError, match=r"device='cuda'.*no NVRTC for cuda:2"):
        arraydrain._check_device("cuda")


def test_cuda_tensors_drained_on_the_cpu_warn_once_with_the_reason(monkeypatch):
    monkeypatch.setattr(arraydrain, "_FALLBACK_WARNED", set())
    monkeypatch.setattr(arraydrain, "_cuda_status", lambda o: (False, "libcuda not found"))
    cuda1 = torch.device("cuda", 1)
    with pytest.warns(RuntimeWarning, match=r"cuda:1 are drained on the CPU.*libcuda not found"):
        assert arraydrain._use_cuda("auto", None, cuda1) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arraydrain._use_cuda("auto", None, cuda1) is None, "once per device and reason"
        assert arraydrain._use_cuda("cpu", None, cuda1) is None, "device='cpu' asked for it"
        assert arraydrain._use_cuda("auto", None, torch.device("cpu")) is None


def test_cuda_tensors_on_the_gpu_engine_do_not_warn(monkeypatch):
    monkeypatch.setattr(arraydrain, "_cuda_status", lambda o: (True, f"cuda:{o}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arraydrain._use_cuda("auto", None, torch.device("cuda", 2)) == 2

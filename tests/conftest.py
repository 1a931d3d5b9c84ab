"""Shared fixtures: the devices to test on and per-dtype tolerances."""
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (rtol, atol) for comparing a kernel with the float64-capable reference.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def tol(dtype):
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}

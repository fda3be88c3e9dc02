import pytest
import torch

import hald_ext

CUDA = hald_ext.build_info()["cuda_available"]
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device and a CUDA build of hald_ext")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return f"hald_ext build: {hald_ext.build_info()}"


def interrupt_on_call(model, n: int):
    """Make `model.forward` raise KeyboardInterrupt on its n-th call (a run killed mid-way); returns the
    original forward, to put back for the resumed run."""
    forward, calls = model.forward, {"n": 0}

    def dying(x):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return forward(x)

    model.forward = dying
    return forward

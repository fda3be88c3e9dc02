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

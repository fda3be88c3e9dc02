"""End to end: loader -> resident cache -> crop_and_lookup -> ConvNet-3 -> soft_hard_loss -> backward,
on Fashion-MNIST arrays and on an image folder written from them (examples/train_loop.py)."""
import importlib.util
import math
import os

import pytest

from hald_ext.data.sources import FASHION_MNIST_ROOT, load_image_set, write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fmnist = pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz")),
                                  reason="Fashion-MNIST not installed (make data)")


def load_example():
    spec = importlib.util.spec_from_file_location("train_loop", os.path.join(ROOT, "examples", "train_loop.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def fmnist_subset(example):
    return example.subset(load_image_set("fashion-mnist"), per_class=4)


@needs_fmnist
@pytest.mark.parametrize("kind", ["arrays", "folder"])
def test_train_loop_runs_and_learns(kind, example, fmnist_subset, tmp_path):
    source = fmnist_subset
    if kind == "folder":
        write_image_folder(fmnist_subset, str(tmp_path))
        source = str(tmp_path)
    res = example.train_loop(source, steps=12, batch_size=16, log=lambda *_: None)
    losses = res["losses"]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert res["memory"]["images"] == 40 and res["memory"]["kind"] == "resident"
    # Soft steps (even) replay the same 80 stored crops: their loss must come down.
    soft = losses[0::2]
    assert min(soft[-2:]) < soft[0]

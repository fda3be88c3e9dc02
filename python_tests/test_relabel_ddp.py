"""`hald relabel` under torch.distributed (gloo on CPU): each of 2 ranks resumes its own shard after an
interruption, and together they write the store 1 process writes."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hald_ext.data import ImageSet
from hald_ext.labels import LabelStore

S = 12
# 10 images x SLI 3 in batches of 4 (+ a batch of 2 per slot): 9 batches, 5 on rank 0 and 4 on rank 1.
KW = {"sli": 3, "k": 3, "temperature": 2.0, "batch_size": 4, "seed": 5, "size": S, "progress": False,
      "device": "cpu", "cutmix_alpha": 1.0, "teacher_bn": "train"}


def image_set():
    rng = np.random.default_rng(0)
    sizes = [(14, 20), (18, 18), (25, 13)]
    ims = [rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8) for i in range(10)]
    return ImageSet(ims, np.arange(10) % 4, [f"c{c}" for c in range(4)], [f"img{i}" for i in range(10)])


def teacher(die_at=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 4))
    if die_at is not None:
        calls = {"n": 0}

        def hook(*_):
            calls["n"] += 1
            if calls["n"] == die_at:
                raise KeyboardInterrupt

        net.register_forward_pre_hook(hook)
    return net


def label(out, die_at=None, count_file=None):
    from hald_ext.labels.relabel import relabel

    torch.set_num_threads(1)
    net = teacher(die_at)
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    store = relabel(image_set(), net, out, save_every_s=0, **KW)
    if count_file is not None:
        with open(count_file, "w") as f:
            f.write(str(len(calls)))
    return store


def _worker(rank, world, init_file, out, die_at):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        label(out, die_at, f"{init_file}.calls{rank}")
    finally:
        dist.destroy_process_group()


def spawn(tmp_path, out, die_at=None, tag="init"):
    mp.spawn(_worker, args=(2, str(tmp_path / tag), out, die_at), nprocs=2, join=True)


def same_store(a: LabelStore, b: LabelStore):
    for name in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("partner", "boxes", "lam"):
        assert torch.equal(getattr(a.mix, name), getattr(b.mix, name)), name
    assert a.header.to_json() == b.header.to_json()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_resume_their_shards_and_write_the_one_process_store(tmp_path):
    # (Spawning is the slow part: one test covers the interrupted and the resumed path.)
    out = str(tmp_path / "ddp.safetensors")
    with pytest.raises(Exception):  # both ranks stop at their third batch, after saving two
        spawn(tmp_path, out, die_at=3, tag="init1")
    partials = sorted(f for f in os.listdir(tmp_path) if f.endswith(".partial"))
    assert partials == ["ddp.safetensors.rank0of2.partial", "ddp.safetensors.rank1of2.partial"]
    assert not os.path.exists(out)
    spawn(tmp_path, out, tag="init2")
    # Rank 0 has batches 0, 2, 4, 6, 8 and rank 1 has 1, 3, 5, 7: each labelled only what it had left.
    assert [(tmp_path / f"init2.calls{r}").read_text() for r in (0, 1)] == ["3", "2"]
    same_store(LabelStore.open(out), label(str(tmp_path / "one.safetensors")))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]

"""torch.distributed on CPU (gloo): 2 ranks with the same global batch reach the weights of 1 rank."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hald_ext.models import create_model
from hald_ext.train.batches import TorchBatchSource
from hald_ext.train.config import TrainConfig
from hald_ext.train.schedule import build_schedule
from hald_ext.train.synthetic import color_blob_labels, color_blobs
from hald_ext.train.evaluate import EvalData
from hald_ext.train.trainer import Trainer

SIZE = 16
# 28 images x SLI 2 = 56 pairs = 8 global batches of 7, split 4 + 3 across two ranks: uneven pieces
# check that the loss scaling gives the global batch mean whatever the split.
BATCH = 7


def train_weights(out_path=None):
    torch.set_num_threads(1)
    images = color_blobs(7, num_classes=4, size=SIZE, seed=0)
    held = color_blobs(5, num_classes=4, size=SIZE, seed=1, prefix="held")
    store = color_blob_labels(images, sli=2, k=3)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=3e-3, eval_every=1, progress=False, crops_per_epoch=0)
    source = TorchBatchSource(images, None, store, SIZE)
    torch.manual_seed(0)
    model = create_model("convnet3", 4, img_size=SIZE, width=16)
    eval_set = EvalData(held, SIZE, loader="torch")
    trainer = Trainer(cfg, model, source, build_schedule("soft-only", 2), eval_set)
    history = trainer.fit()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    if out_path is not None and trainer.info.is_main:
        torch.save({"state": state, "history": history}, out_path)
    return state, history


def _worker(rank, world, init_file, out_path):
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train_weights(out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_match_one_rank(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    one_state, one_history = train_weights()
    # ConvNet-3's conv biases feed a per-channel GroupNorm, which subtracts them again: their true
    # gradient is 0, so AdamW turns round-off noise (which differs with the reduction order) into
    # full-size steps. They cannot change the network's function; every other tensor must match.
    dead = {f"features.{i}.bias" for i in (0, 4, 8)}
    for name, w in one_state.items():
        if name not in dead:
            torch.testing.assert_close(two["state"][name], w, rtol=1e-5, atol=1e-6, msg=name)
    held = torch.randn(6, 3, SIZE, SIZE)
    nets = []
    for state in (one_state, two["state"]):
        net = create_model("convnet3", 4, img_size=SIZE, width=16).eval()
        net.load_state_dict(state)
        nets.append(net)
    with torch.no_grad():
        torch.testing.assert_close(nets[0](held), nets[1](held), rtol=1e-4, atol=1e-5)
    # Same samples per epoch in total, and the sharded evaluation sums to the same metrics.
    for a, b in zip(two["history"], one_history):
        assert a["train_samples"] == b["train_samples"] == 56
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["eval_top1"] == pytest.approx(b["eval_top1"]) and a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4)

"""The trainer's steps on CUDA: FusedBatchSource's soft (CutMix-replaying) and hard batches against
the CPU's, whole soft and hard epochs, and a training step that never makes the host wait for the GPU
(`torch.cuda.set_sync_debug_mode("error")` turns any synchronising call into an error).

These need a GPU and a CUDA build; they skip elsewhere."""
import numpy as np
import pytest
import torch

import hald_ext

pytestmark = pytest.mark.skipif(not hald_ext.build_info()["cuda_available"],
                                reason="needs a CUDA device and a CUDA build of hald_ext")

S = 24
# CPU and CUDA kernels resample in the same arithmetic (spans in double, taps in float); what is
# left is float rounding in the taps' sums, far below one grey level after normalisation.
TOL = 1e-3


def _set_and_store(tmp_path, cutmix_alpha=1.0):
    from hald_ext.data import ImageSet
    from hald_ext.labels.relabel import relabel

    rng = np.random.default_rng(0)
    shapes = [(36, 30), (28, 44), (40, 40), (30, 26), (44, 32), (32, 36), (26, 30), (38, 28)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    targets = np.arange(len(images)) % 4
    image_set = ImageSet(images, targets, [str(c) for c in range(4)], [f"t:{i}" for i in range(len(images))])
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, 4))
    store = relabel(image_set, teacher, str(tmp_path / "labels.safetensors"), sli=2, k=3, size=S, seed=1,
                    device="cpu", cutmix_alpha=cutmix_alpha, progress=False)
    return image_set, store


def _source(image_set, store, device):
    from hald_ext.data import image_source
    from hald_ext.train.batches import FusedBatchSource

    return FusedBatchSource(image_source(image_set, device), None, store, S, device=device)


def test_fused_source_cuda_matches_cpu(tmp_path):
    image_set, store = _set_and_store(tmp_path)
    assert store.mix is not None
    cpu, gpu = _source(image_set, store, "cpu"), _source(image_set, store, "cuda")
    ids = torch.tensor([0, 5, 2, 7, 3, 1, 4, 6])
    slots = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    a, b = cpu.soft_batch(ids, slots), gpu.soft_batch(ids, slots)
    assert b.x.is_cuda
    torch.testing.assert_close(b.x.cpu(), a.x, rtol=0, atol=TOL)
    assert torch.equal(b.topk_ids.cpu(), a.topk_ids) and torch.equal(b.topk_codes.cpu(), a.topk_codes)
    # Hard batches: fresh crops and CutMix from the step seed, the same draws on both devices.
    h_cpu, h_gpu = cpu.hard_batch(ids, 11), gpu.hard_batch(ids, 11)
    torch.testing.assert_close(h_gpu.x.cpu(), h_cpu.x, rtol=0, atol=TOL)
    assert torch.equal(h_gpu.y_a.cpu(), h_cpu.y_a) and torch.equal(h_gpu.y_b.cpu(), h_cpu.y_b)
    torch.testing.assert_close(h_gpu.lam.cpu(), h_cpu.lam)


def _trainer(image_set, store, device):
    from hald_ext.models import create_model
    from hald_ext.train.config import TrainConfig
    from hald_ext.train.schedule import build_schedule
    from hald_ext.train.trainer import Trainer

    cfg = TrainConfig(epochs=4, batch_size=4, lr=1e-3, eval_every=0, progress=False)
    torch.manual_seed(0)
    model = create_model("convnet3", 4, img_size=S, width=16)
    return Trainer(cfg, model, _source(image_set, store, device), build_schedule("hald", 4, soft_epochs=2),
                   device=device)


def test_trainer_epochs_on_cuda_match_cpu(tmp_path):
    image_set, store = _set_and_store(tmp_path)
    rows = {}
    for device in ("cpu", "cuda"):
        trainer = _trainer(image_set, store, device)
        rows[device] = [trainer.train_epoch(e) for e in range(trainer.schedule.epochs)]
    assert [r["phase"] for r in rows["cuda"]] == [trainer.schedule.kind_at(e) for e in range(4)]
    assert {r["phase"] for r in rows["cuda"]} == {"soft", "hard"}
    for a, b in zip(rows["cpu"], rows["cuda"]):
        assert a["train_samples"] == b["train_samples"]
        assert np.isfinite(b["train_loss"])
        # Same batches and crops; the models' float math differs by device, so the losses drift
        # apart a little over the steps, not more.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=5e-2)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_training_step_makes_no_host_sync(tmp_path, kind):
    image_set, store = _set_and_store(tmp_path)
    trainer = _trainer(image_set, store, "cuda")
    epoch = next(e for e in range(trainer.schedule.epochs) if trainer.schedule.kind_at(e) == kind)
    batches, sizes = trainer.epoch_batches(epoch)
    (ids, slots), size = batches[0], sizes[0]
    trainer.step(kind, ids, slots, 1, size)  # warm-up: first-call allocations and library set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for (ids, slots), size in zip(batches[1:3], sizes[1:3]):
            loss = trainer.step(kind, ids, slots, 2, size)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()

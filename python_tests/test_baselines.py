"""The field's pipelines as benchmarks/baselines/ writes them (SRe2L, HALD, FKD) produce label files
that hald_ext's importers read, and every imported row equals the baseline's own decode of it (what
its training loop would train towards), on a tiny image set: 8 classes x 2 JPEGs of 24 px, 16-px
crops, a small teacher with BatchNorm."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from baselines import fkd, hald, images, sre2l  # noqa: E402

from hald_ext.core.boxes import dequantize_boxes  # noqa: E402
from hald_ext.labels.importers import import_batches, import_fkd, sre2l_order  # noqa: E402
from hald_ext.reference import decode_dense  # noqa: E402

C, IPC, SRC, CROP = 8, 2, 24, 16


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "syn")
    images.write_set(root, C, IPC, size=SRC, workers=1)
    return root


def teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, C))


def test_synthetic_set_is_laid_out_as_sre2l_saves_it(image_dir):
    from PIL import Image

    names = sorted(os.listdir(image_dir))
    assert names == [f"new{c:03d}" for c in range(C)]
    with Image.open(os.path.join(image_dir, "new003", "class003_id001.jpg")) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (SRC, SRC), "RGB")


def test_hald_files_import_and_rows_equal_the_baselines_decode(image_dir, tmp_path):
    fkd_path = str(tmp_path / "hald")
    n = C * IPC
    crops = hald.relabel(image_dir, fkd_path, teacher(), slc=4, batch_size=6, workers=0, input_size=CROP)
    epochs = 4 // IPC
    assert crops == epochs * n
    assert sorted(os.listdir(fkd_path)) == ["epoch_0.tar", "epoch_1.tar", "sampler_indices_dict.pt"]
    store = import_batches(fkd_path, str(tmp_path / "h.safetensors"), C, values="probs", temperature=20.0,
                           quantizer="fp16", crop_size=CROP, flavor="hald").store
    # the baseline's own decode: train_fkd.py's FKDConfigManager + EpochBatchSampler batches
    manager = hald.FKDConfigManager(fkd_path)
    sampler = hald.EpochBatchSampler(list(range(n)))
    sampler.indices_epoch = {int(k): v for k, v in torch.load(os.path.join(fkd_path, "sampler_indices_dict.pt")).items()}
    sampler.use_batch(6)
    assert manager.batch_num_per_epoch == sampler.batch_num_per_epoch == 3
    rows = 0
    for g, image_ids in sampler.indices_batch.items():
        coords, flips, mix_index, lam, bbox, soft = manager.get_batch_config(g)
        epoch = g // manager.batch_num_per_epoch
        assert soft.dtype == torch.float16 and coords.dtype == torch.float16 and isinstance(lam, float)
        ids, values = store.labels(torch.tensor(image_ids), torch.full((len(image_ids),), epoch))
        assert ids is None and torch.equal(values, soft)  # fp16 rows stored bit for bit
        boxes, fl = store.crops(torch.tensor(image_ids), torch.full((len(image_ids),), epoch))
        assert torch.equal(fl, flips.bool())
        assert torch.allclose(dequantize_boxes(boxes).float(), coords.float().clamp(0, 1), atol=2e-3)
        # the CutMix partner of each row, as an image id (-1: nothing was pasted)
        partner = store.mix.partner[torch.tensor(image_ids), epoch].long()
        pasted = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) > 0
        expect = torch.tensor(image_ids)[mix_index] if pasted else torch.full((len(image_ids),), -1)
        assert torch.equal(partner, expect)
        rows += len(image_ids)
    assert rows == epochs * n


def test_sre2l_files_import_and_rows_equal_the_baselines_decode(image_dir, tmp_path):
    fkd_path = str(tmp_path / "sre2l")
    n, epochs, T = C * IPC, 2, 20.0
    crops = sre2l.relabel(image_dir, fkd_path, teacher(), epochs=epochs, batch_size=6, workers=0, input_size=CROP)
    assert crops == epochs * n
    order = sre2l_order(n, epochs)  # the importer's rebuild of SRe2L's seeded sampler
    assert order.tolist() == sre2l.sampler_order(n, epochs)
    store = import_batches(fkd_path, str(tmp_path / "s.safetensors"), C, values="logits", temperature=T,
                           quantizer="fp16", crop_size=CROP, order=order, flavor="sre2l").store
    # the baseline's own decode: train_FKD's dataset locates each batch file by its first image
    ds = sre2l.ImageFolder_FKD_MIX(fkd_path=fkd_path, mode="fkd_load", batch_size=6, label_epochs=epochs,
                                   root=image_dir, transform=None)
    for e in range(epochs):
        ds.set_epoch(e)
        for start in range(0, n, 6):
            image_ids = order[e, start:start + 6]
            mix_index, lam, bbox, logits = ds.load_batch_config(int(image_ids[0]))
            assert logits.dtype == torch.float16 and len(bbox) == 4 and isinstance(bbox[0], np.integer)
            target = sre2l.decode_batch(logits, T)
            _, values = store.labels(image_ids, torch.full((len(image_ids),), e))
            assert torch.equal(values, target.half())
            boxes, flips = store.crops(image_ids, torch.full((len(image_ids),), e))
            assert torch.equal(flips, ds.batch_config[1].bool())
            assert torch.allclose(dequantize_boxes(boxes).float(), ds.batch_config[0].float(), atol=1e-4)


def test_fkd_files_import_and_rows_equal_the_baselines_decode(image_dir, tmp_path):
    save_path = str(tmp_path / "fkd")
    n, crops_per_image, k = C * IPC, 3, 5
    assert fkd.relabel(image_dir, save_path, teacher(), num_crops=crops_per_image, input_size=CROP) == n * crops_per_image
    store = import_fkd(save_path, str(tmp_path / "f.safetensors"), C, quantizer="fp16", bits=16).store
    assert (store.num_images, store.sli, store.k) == (n, crops_per_image, k)
    ds = fkd.ImageFolder_FKD(num_crops=crops_per_image, softlabel_path=save_path, root=image_dir)
    for i, (path, _) in enumerate(ds.samples):
        coords, flips, labels = torch.load(fkd.label_path(save_path, path), weights_only=False)
        assert labels.dtype == np.float32 and labels.shape == (crops_per_image, 2, k)
        expect = fkd.recover_soft_label(torch.from_numpy(labels), C, k)  # what FKD trains towards
        ids, values = store.labels(torch.full((crops_per_image,), i), torch.arange(crops_per_image))
        got = decode_dense(ids.long(), values, C, "marginal")
        assert torch.allclose(got, expect, atol=1e-3, rtol=1e-3)  # fp16 storage of float32 probabilities
        assert torch.equal(ids.long(), torch.from_numpy(labels[:, 0]).long())
        assert torch.equal(store.flips[i].bool(), torch.from_numpy(flips))

"""LPLD's pruned label files and LPQLD's top-k files, written with the calls, dtypes and containers of
their public writers, imported and checked against each writer's own decode:

  LPLD   relabel_and_validate/generate_soft_label_pruning.py: RandomSampler(generator seeded --fkd-seed),
         DataLoader(drop_last=prune_ratio > 0), total_steps = int(epochs * num_batches * (1 - prune_ratio)),
         epoch_<e>/batch_<b>.tar = [coords, flip, mix_index, mix_lam, mix_bbox, output.half()],
         sampler_indices_epoch.json {epoch: image ids}
  LPQLD  relabel_and_validate/generate_soft_label_pruning_batch.py: one flat folder of batch_<n>.tar
         (n counting over all epochs) = [coords.half(), flip, mix_index.to(uint8), mix_lam,
         [uint8 box corners], top-k logits .half(), indices.short()], sampler_indices_batch.json {n: ids};
         decoded by train_FKD_LPQLD.py's MR-k / MS-k / MRS-k rules
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hald_ext.core.boxes import quantize_boxes
from hald_ext.labels import LabelStore
from hald_ext.labels.importers import ImportOrderWarning, LabelImportError, import_batches
from hald_ext.reference.soft_hard_loss import decode_dense
from test_label_importers import rand_bbox  # utils_fkd.rand_bbox, call for call


def cutmix_save(B, crop_size):  # utils_fkd.cutmix in fkd_save mode
    rand_index = torch.randperm(B)
    lam = np.random.beta(1.0, 1.0)
    bbx1, bby1, bbx2, bby2 = rand_bbox((B, 3, crop_size, crop_size), lam)
    return rand_index.cpu(), lam, [bbx1, bby1, bbx2, bby2]


def coords_of(g, n):
    h = torch.randint(8, 40, (n,), generator=g)
    w = torch.randint(8, 52, (n,), generator=g)
    i = (torch.rand(n, generator=g) * (40 - h + 1)).floor()
    j = (torch.rand(n, generator=g) * (52 - w + 1)).floor()
    return torch.stack([i / 40, j / 52, h / 40, w / 52], 1).float()


def loader_batches(n, batch_size, fkd_seed, drop_last):
    """The relabel's DataLoader(sampler=RandomSampler(generator), drop_last=...) as index lists; one
    sampler, iterated once per epoch (its generator advances)."""
    generator = torch.Generator()
    generator.manual_seed(fkd_seed)
    sampler = torch.utils.data.RandomSampler(range(n), generator=generator)
    return torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)


def write_lpld_pruned(fkd_path, n, C, epochs=4, batch_size=8, prune_ratio=0.5, crop_size=32, seed=0):
    """generate_soft_label_pruning.py with --mix-type cutmix --use-fp16 --prune_ratio > 0.
    Returns {(image, epoch): (coords, flip, logits row, partner image, lam, bbox)}."""
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)
    train_loader = loader_batches(n, batch_size, 42, drop_last=prune_ratio > 0)
    num_batches = len(train_loader)
    total_steps = int(epochs * num_batches * (1 - prune_ratio))
    sampler_indices_dict, truth, batch_counter = {}, {}, 0
    for epoch in range(total_steps // num_batches + 1):
        dir_path = os.path.join(fkd_path, "epoch_{}".format(epoch))
        os.makedirs(dir_path, exist_ok=True)
        for batch_idx, index in enumerate(train_loader):
            B = len(index)
            coords_status, flip_status = coords_of(g, B), torch.rand(B, generator=g) < 0.5
            mix_index, mix_lam, mix_bbox = cutmix_save(B, crop_size)
            output = (torch.randn(B, C, generator=g) * 3).half()
            batch_config = [coords_status, flip_status, mix_index, mix_lam, mix_bbox, output.cpu()]
            torch.save(batch_config, os.path.join(dir_path, "batch_{}.tar".format(batch_idx)))
            sampler_indices_dict.setdefault(str(epoch), [])
            sampler_indices_dict[str(epoch)] += torch.tensor(index).tolist()
            for r, i in enumerate(index):
                truth[i, epoch] = (coords_status[r], flip_status[r], output[r], index[int(mix_index[r])], mix_lam,
                                   mix_bbox)
            batch_counter += 1
            if batch_counter == total_steps:
                break
    with open(os.path.join(fkd_path, "sampler_indices_epoch.json"), "w") as f:
        json.dump(sampler_indices_dict, f)
    return truth, num_batches


def write_lpqld(fkd_path, n, C, topk=5, epochs=3, batch_size=8, prune_ratio=0.0, crop_size=32, seed=0,
                post_softmax_T=None, with_sample_min=False):
    """generate_soft_label_pruning_batch.py with --label_quantization TOPK-<k> --use-fp16 --mix-type cutmix.
    `post_softmax_T`: store top-k of softmax(output / T) instead (what the MS rule reads);
    `with_sample_min`: append the row minimum logit the MRS rule reads (computed by the generator, which
    does not save it). Returns {(image, epoch): (full logits, sample_min, stored values, indices)}."""
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)
    os.makedirs(fkd_path, exist_ok=True)
    train_loader = loader_batches(n, batch_size, 42, drop_last=prune_ratio > 0)
    num_batches = len(train_loader)
    total_steps = int(epochs * num_batches * (1 - prune_ratio))
    sampler_indices_dict, truth, batch_counter = {}, {}, 0
    for epoch in range(total_steps // num_batches + 1):
        for batch_idx, index in enumerate(train_loader):
            B = len(index)
            coords_status, flip_status = coords_of(g, B), torch.rand(B, generator=g) < 0.5
            mix_index, mix_lam, mix_bbox = cutmix_save(B, crop_size)
            full = torch.randn(B, C, generator=g) * 3
            output = full if post_softmax_T is None else F.softmax(full / post_softmax_T, dim=1)
            sample_min = torch.min(output, dim=1, keepdim=True)[0].half()
            topk_labels = torch.topk(output, topk, dim=1)
            output, indices = topk_labels.values, topk_labels.indices.short()
            output = output.half()
            coords_status = coords_status.half()
            mix_index = mix_index.to(torch.uint8)
            mix_bbox = [torch.tensor(bbox, dtype=torch.uint8) for bbox in mix_bbox]
            batch_config = [coords_status, flip_status, mix_index, mix_lam, mix_bbox, output.cpu(), indices.cpu()]
            if with_sample_min:
                batch_config.append(sample_min)
            torch.save(batch_config, os.path.join(fkd_path, "batch_{}.tar".format(batch_counter)))
            sampler_indices_dict[str(batch_counter)] = torch.tensor(index).tolist()
            for r, i in enumerate(index):
                truth[i, epoch] = (full[r], sample_min[r], output[r], indices[r], index[int(mix_index[r])])
            batch_counter += 1
            if batch_counter == total_steps:
                break
        total_steps -= 1  # as the writer does after each epoch
    with open(os.path.join(fkd_path, "sampler_indices_batch.json"), "w") as f:
        json.dump(sampler_indices_dict, f)
    return truth


def lpqld_decode(rule, values, indices, sample_min, T, num_class):
    """train_FKD_LPQLD.py's decode of one batch's stored labels."""
    partial_soft_label = values.float()
    label_indices = indices.long()
    if rule == "MRS":
        quantized_label = sample_min.float().expand(partial_soft_label.size(0), num_class).clone()
        quantized_label.scatter_(1, label_indices, partial_soft_label)
        return F.softmax(quantized_label / T, dim=1)
    full_soft_label = torch.zeros(partial_soft_label.size(0), num_class)
    if rule == "MS":
        return full_soft_label.scatter_(1, label_indices, partial_soft_label)
    return full_soft_label.scatter_(1, label_indices, F.softmax(partial_soft_label / T, dim=1))


def epochs_written(truth):
    """(epochs with the most rows, whether the last one has fewer: the writer stopped mid-epoch)."""
    counts = {}
    for (_, e) in truth:
        counts[e] = counts.get(e, 0) + 1
    full = max(counts.values())
    return sorted(e for e, c in counts.items() if c == full), counts[max(counts)] < full


def import_quietly_or_warned(partial, **kw):
    """import_batches(**kw), asserting the left-out last epoch is reported when there is one."""
    if partial:
        with pytest.warns(ImportOrderWarning, match="unfinished last epoch"):
            return import_batches(**kw)
    return import_batches(**kw)


def _decoded(store, i, e):
    ids, codes = store.labels(torch.tensor([i]), torch.tensor([e]))
    return decode_dense(ids, codes, store.num_classes, store.default_decode, store.codebook)[0]


# ------------------------------------------------------------------ LPLD, --prune_ratio > 0
def test_lpld_pruned_files_are_refused_without_a_fill_and_import_with_one(tmp_path):
    n, C, T = 20, 10, 20.0  # batch 8: each epoch labels 16 of the 20 images
    truth, num_batches = write_lpld_pruned(str(tmp_path / "l"), n, C, epochs=9, prune_ratio=0.5)
    assert num_batches == 2 and sorted(os.listdir(tmp_path / "l"))[:2] == ["epoch_0", "epoch_1"]
    kept, partial = epochs_written(truth)
    assert partial and kept == [0, 1, 2, 3]  # 9 steps of 2-batch epochs: the fifth epoch stops after one batch
    with pytest.raises(LabelImportError, match=r"labels 16 of 20 images .*--prune_ratio.*--fill-missing repeat"):
        import_batches(str(tmp_path / "l"), str(tmp_path / "s"), C, flavor="lpld", temperature=T, crop_size=32)
    assert not (tmp_path / "s").exists()
    rep = import_quietly_or_warned(partial, root=str(tmp_path / "l"), out=str(tmp_path / "s"), num_classes=C,
                                   flavor="lpld", temperature=T, crop_size=32, fill_missing="repeat")
    s = LabelStore.open(rep.store.path)
    assert s.sli == len(kept) and s.num_images == n
    filled = 0
    for e in kept:
        for i in range(n):
            if (i, e) in truth:  # every row the writer wrote comes back, at its image and epoch
                coords, flip, z, partner, lam, bbox = truth[i, e]
                assert torch.equal(s.codes[i, e], torch.softmax(z.float() / T, 0).half())
                assert torch.equal(s.boxes[i, e], quantize_boxes(coords.double()))
                assert bool(s.flips[i, e]) == bool(flip) and int(s.mix.partner[i, e]) == partner
                x1, y1, x2, y2 = (float(v) for v in bbox)
                box = quantize_boxes(torch.tensor([x1, y1, x2 - x1, y2 - y1], dtype=torch.float64) / 32)
                assert torch.equal(s.mix.boxes[i, e], box)
                torch.testing.assert_close(_decoded(s, i, e), F.softmax(z.float() / T, 0), atol=1e-3, rtol=0)
            else:  # a copy of the same image's label from the nearest epoch
                filled += 1
                donors = [e2 for e2 in kept if (i, e2) in truth]
                d = min(donors, key=lambda e2: (abs(e2 - e), e2))
                assert torch.equal(s.codes[i, e], s.codes[i, d]) and torch.equal(s.boxes[i, e], s.boxes[i, d])
    assert filled == 4 * len(kept) and s.header.stats["filled_labels"] == filled
    assert any(f"{filled} missing (image, epoch) labels filled" in note for note in rep.notes)


# ------------------------------------------------------------------ LPQLD
@pytest.mark.parametrize("rule", ["MR", "MS", "MRS"])
def test_lpqld_files_import_and_decode_as_their_training_code_does(rule, tmp_path):
    n, C, T, k = 16, 40, 20.0, 5
    truth = write_lpqld(str(tmp_path / "q"), n, C, topk=k, epochs=3, post_softmax_T=T if rule == "MS" else None,
                        with_sample_min=rule == "MRS")
    kept, partial = epochs_written(truth)
    rep = import_quietly_or_warned(partial, root=str(tmp_path / "q"), out=str(tmp_path / "s"), num_classes=C,
                                   flavor="lpqld", temperature=T, crop_size=32, lpqld_decode=rule)
    s = LabelStore.open(rep.store.path)
    assert (s.num_images, s.sli, s.k, s.quantizer.kind) == (n, len(kept), k, "fp16")
    assert s.default_decode == {"MR": "renorm", "MS": "truncate", "MRS": "marginal"}[rule]
    worst = 0.0
    for (i, e), (full, sample_min, values, indices, partner) in truth.items():
        if e not in kept:
            continue
        want = lpqld_decode(rule, values[None], indices[None], sample_min[None], T, C)[0]
        got = _decoded(s, i, e)
        worst = max(worst, float((got - want).abs().max()))
        assert set(s.topk_ids[i, e].long().tolist()) == set(indices.long().tolist())
        assert int(s.mix.partner[i, e]) == partner
    assert worst < 1e-3  # float16 rounding of the stored probabilities (MS: its own float16 values, exactly)
    if rule == "MS":
        assert worst == 0.0


def test_lpqld_refusals(tmp_path):
    n, C = 16, 40
    write_lpqld(str(tmp_path / "q"), n, C, epochs=2)
    common = dict(flavor="lpqld", temperature=20.0, crop_size=32)
    with pytest.raises(LabelImportError, match="lpqld_decode must be one of .*MR is LPQLD's recommended"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, **common)
    with pytest.raises(LabelImportError, match="MS rule reads the stored values as probabilities.*logits"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, lpqld_decode="MS", **common)
    with pytest.raises(LabelImportError, match="MRS rule .*sample_min.*does not save it"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, lpqld_decode="MRS", **common)
    with pytest.raises(LabelImportError, match="hold the teacher's logits.*T = 20"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, flavor="lpqld", crop_size=32, lpqld_decode="MR")
    with pytest.raises(LabelImportError, match="uint8.*wrapped"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, flavor="lpqld", temperature=20.0, crop_size=512,
                       lpqld_decode="MR")
    os.remove(tmp_path / "q" / "sampler_indices_batch.json")
    with pytest.raises(LabelImportError, match="no sampler_indices_batch.json"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, lpqld_decode="MR", **common)
    assert not (tmp_path / "s").exists()


def test_lpqld_pruned_files_import_with_fill(tmp_path):
    n, C = 20, 30
    truth = write_lpqld(str(tmp_path / "q"), n, C, epochs=9, prune_ratio=0.5)
    kept, partial = epochs_written(truth)
    with pytest.raises(LabelImportError, match="labels 16 of 20 images"):
        import_batches(str(tmp_path / "q"), str(tmp_path / "s"), C, flavor="lpqld", temperature=20.0, crop_size=32,
                       lpqld_decode="MR")
    s = import_quietly_or_warned(partial, root=str(tmp_path / "q"), out=str(tmp_path / "s"), num_classes=C,
                                 flavor="lpqld", temperature=20.0, crop_size=32, lpqld_decode="MR",
                                 fill_missing="repeat").store
    assert s.num_images == n and s.sli == len(kept) and s.header.stats["filled_labels"] == 4 * s.sli
    for (i, e), (full, sample_min, values, indices, partner) in truth.items():
        if e in kept:
            want = lpqld_decode("MR", values[None], indices[None], None, 20.0, C)[0]
            torch.testing.assert_close(_decoded(s, i, e), want, atol=1e-3, rtol=0)

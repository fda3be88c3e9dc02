"""Importers of FKD and SRe2L / LPLD / HALD soft-label files (built here with torch.save of plain
tensors and lists, as those projects write them)."""
import os

import numpy as np
import pytest
import torch

from hald_ext.boxes import quantize_boxes
from hald_ext.cli import main as hald
from hald_ext.labels import LabelStore, Quantizer
from hald_ext.reference import label_encode_reference
from hald_ext.labels.importers import LabelImportError, import_batches, import_fkd, safe_load


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def fkd_files(root, n_images=4, n_crops=3, k=5, C=100, seed=0, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    os.makedirs(root, exist_ok=True)
    truth = []
    for i in range(n_images):
        p = torch.softmax(torch.randn(n_crops, C, generator=g) * 3, 1)
        top = p.topk(k)
        coords = torch.cat([torch.rand(n_crops, 2, generator=g) * 0.5, torch.rand(n_crops, 2, generator=g) * 0.5], 1)
        flip = torch.rand(n_crops, generator=g) < 0.5
        labels = torch.stack([top.indices.float(), top.values], 1).to(dtype)  # [N, 2, k]
        torch.save([coords, flip, labels], os.path.join(root, f"img_{i}.tar"))
        truth.append((coords, flip, top.indices, top.values))
    return truth


def test_fkd_import(tmp_path):
    truth = fkd_files(tmp_path / "fkd", n_images=12)
    rep = import_fkd(str(tmp_path / "fkd"), str(tmp_path / "s.safetensors"), 100)
    s = LabelStore.open(rep.store.path)
    assert (s.num_images, s.slots, s.k, s.num_classes) == (12, 3, 5, 100)
    # Files are taken in natural order: img_2 before img_10.
    coords, flip, ids, probs = truth[10]
    assert torch.equal(s.boxes[10], quantize_boxes(coords.double()))
    assert torch.equal(s.flips[10], flip)
    assert torch.equal(s.topk_ids[10].long(), ids)
    want = torch.searchsorted(s.quantizer.thresholds().double(), probs.half().double(), right=True)
    assert torch.equal(s.codes[10].long(), want)
    assert rep.bytes_before > rep.bytes_after and "smaller" in rep.summary()


def test_fkd_errors(tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    torch.save([torch.zeros(1, 4), torch.zeros(1), Evil()], d / "a.tar")
    with pytest.raises(LabelImportError, match="refused"):
        import_fkd(str(d), str(tmp_path / "o"), 10)
    assert not (tmp_path / "o").exists()

    def one(labels, name):
        dd = tmp_path / name
        dd.mkdir()
        torch.save([torch.full((1, 4), 0.25), torch.zeros(1, dtype=torch.bool), labels], dd / "a.tar")
        return str(dd)

    with pytest.raises(LabelImportError, match="out of range"):
        import_fkd(one(torch.tensor([[[3.0, 12.0], [0.5, 0.2]]]), "range"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="NaN"):
        import_fkd(one(torch.tensor([[[3.0, 4.0], [float("nan"), 0.2]]]), "nan"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="negative"):
        import_fkd(one(torch.tensor([[[3.0, 4.0], [0.5, -0.2]]]), "neg"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="whole numbers"):
        import_fkd(one(torch.tensor([[[3.5, 4.0], [0.5, 0.2]]]), "frac"), str(tmp_path / "o"), 10)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.tar").write_bytes(b"not a torch file")
    with pytest.raises(LabelImportError, match="not a readable torch tensor file"):
        import_fkd(str(tmp_path / "junk"), str(tmp_path / "o"), 10)


def sre2l_files(root, N=8, B=4, E=2, C=50, logits=True, mix=True, seed=0):
    """epoch_<e>/batch_<b>.tar as SRe2L writes them; rows of epoch e follow order[e]."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(N, generator=g) for _ in range(E)])
    z = torch.randn(N, E, C, generator=g) * 3  # teacher logits per (image, epoch)
    coords = torch.rand(N, E, 4, generator=g) * 0.5
    flips = torch.rand(N, E, generator=g) < 0.5
    for e in range(E):
        os.makedirs(os.path.join(root, f"epoch_{e}"), exist_ok=True)
        for b in range(N // B):
            rows = order[e, b * B:(b + 1) * B]
            soft = z[rows, e] if logits else torch.softmax(z[rows, e] / 20, 1)
            mix_index = torch.roll(torch.arange(B), 1)
            item = [coords[rows, e], flips[rows, e], mix_index if mix else None, 0.75 if mix else None,
                    [8, 16, 120, 72] if mix else None, soft.half()]
            torch.save(item, os.path.join(root, f"epoch_{e}", f"batch_{b}.tar"))
    return order, z, coords, flips


def test_sre2l_import_with_order_and_cutmix(tmp_path):
    order, z, coords, flips = sre2l_files(str(tmp_path / "b"))
    rep = import_batches(str(tmp_path / "b"), str(tmp_path / "s"), 50, values="logits", temperature=2.0, k=5,
                         crop_size=224, order=order.numpy())
    s = LabelStore.open(rep.store.path)
    assert (s.num_images, s.slots) == (8, 2) and s.header.mix
    # fp16 logits tie now and then: the reference breaks ties to the lower id, like the kernels.
    want, _, _ = label_encode_reference(z.half().float().view(16, 50), 5, Quantizer().thresholds(), 2.0, True)
    assert torch.equal(s.topk_ids.long(), want.long().view(8, 2, 5))
    assert torch.equal(s.boxes, quantize_boxes(coords.double()))
    assert torch.equal(s.flips, flips)
    # Row r of a batch was mixed with row r - 1 of the same batch: map rows back to images.
    img = order[0, 5]
    partner = order[0, 4]
    assert int(s.mix.partner[img, 0]) == int(partner)
    assert float(s.mix.lam[img, 0]) == 0.75
    assert torch.equal(s.mix.boxes[img, 0], quantize_boxes(torch.tensor([8, 16, 112, 56], dtype=torch.float64) / 224))
    assert s.bytes_per_label == 24 + 16


def test_hald_probabilities_via_cli(tmp_path, capsys):
    sre2l_files(str(tmp_path / "h"), logits=False, mix=False)
    assert hald(["labels", "import-sre2l", str(tmp_path / "h"), "--out", str(tmp_path / "s"), "-C", "50",
                 "--flavor", "hald"]) == 0
    out = capsys.readouterr().out
    assert "imported 4 files" in out and "bytes" in out
    s = LabelStore.open(tmp_path / "s")
    assert s.temperature == 20 and not s.header.mix and s.bytes_per_label == 24
    # Not a probability file: the logits flavour is needed, and the error says so.
    sre2l_files(str(tmp_path / "l"), logits=True, mix=False)
    assert hald(["labels", "import-sre2l", str(tmp_path / "l"), "--out", str(tmp_path / "t"), "-C", "50",
                 "--flavor", "hald"]) == 2
    assert "are these logits" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_batch_importer_refuses_pickled_code(tmp_path):
    d = tmp_path / "e" / "epoch_0"
    d.mkdir(parents=True)
    torch.save({"labels": Evil()}, d / "batch_0.tar")
    with pytest.raises(LabelImportError, match="refused"):
        import_batches(str(tmp_path / "e"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="refused"):
        safe_load(str(d / "batch_0.tar"))

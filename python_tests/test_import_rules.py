"""Imports are exact or refused: the temperature of logit files, the crop size of CutMix boxes, lossless
values by default, and `check_store_use` for commands told something else than the store records."""
import numpy as np
import pytest
import torch

from hald_ext.cli import main as hald
from hald_ext.labels import LabelStore
from hald_ext.labels.compat import StoreUseError, StoreUseWarning, check_store_use
from hald_ext.labels.importers import LabelImportError, import_batches, import_fkd, sre2l_order
from hald_ext.ops import soft_hard_loss
from test_label_importers import write_fkd, write_hald, write_sre2l


def test_logit_files_need_their_temperature(tmp_path, capsys):
    write_sre2l(str(tmp_path / "s"), [i % 4 for i in range(8)], 4, epochs=2, batch_size=4, crop_size=32)
    order = sre2l_order(8, 2)
    with pytest.raises(LabelImportError, match=r"hold the teacher's logits.*-T.*trains at T = 20"):
        import_batches(str(tmp_path / "s"), str(tmp_path / "o"), 4, crop_size=32, order=order)
    rep = import_batches(str(tmp_path / "s"), str(tmp_path / "o"), 4, crop_size=32, order=order, temperature="recipe")
    assert rep.store.temperature == 20.0 and "the sre2l recipe's default" in rep.summary()
    np.save(tmp_path / "order.npy", order.numpy())
    assert hald(["labels", "import-sre2l", str(tmp_path / "s"), "-o", str(tmp_path / "c"), "-C", "4", "--crop-size",
                 "32", "--order", str(tmp_path / "order.npy"), "--recipe-temperature"]) == 0
    assert "note: temperature T = 20: the sre2l recipe's default" in capsys.readouterr().out
    assert hald(["labels", "import-sre2l", str(tmp_path / "s"), "-o", str(tmp_path / "d"), "-C", "4", "--crop-size",
                 "32", "--order", str(tmp_path / "order.npy")]) == 2
    assert "give the temperature" in capsys.readouterr().err


def test_crop_size_is_checked_against_the_boxes_and_the_images(tmp_path):
    write_sre2l(str(tmp_path / "s"), [i % 4 for i in range(8)], 4, epochs=2, batch_size=4, crop_size=32)
    kw = dict(temperature=20.0, order=sre2l_order(8, 2))
    with pytest.raises(LabelImportError, match="CutMix box in pixels.*--crop-size.*224"):
        import_batches(str(tmp_path / "s"), str(tmp_path / "o"), 4, **kw)
    with pytest.raises(LabelImportError, match=r"4 CutMix boxes reach at most \d+ px.*not --crop-size 224"):
        import_batches(str(tmp_path / "s"), str(tmp_path / "o"), 4, crop_size=224, **kw)
    assert import_batches(str(tmp_path / "s"), str(tmp_path / "o"), 4, crop_size=32, **kw).store.header.crops[
        "crop_size"] == 32

    from hald_ext.data import ImageSet

    tiny = ImageSet([np.zeros((8, 8, 3), np.uint8)] * 8, np.arange(8) % 4, list("abcd"),
                    [f"array:{i}" for i in range(8)])
    with pytest.raises(LabelImportError, match=r"--crop-size 32 but the images are 8x8 px"):
        import_batches(str(tmp_path / "s"), str(tmp_path / "o2"), 4, crop_size=32, images=tiny, **kw)


def test_fkd_imports_float16_by_default(tmp_path):
    truth = write_fkd(str(tmp_path / "f"), [f"/d/t/c0/{i}.png" for i in range(4)], [0, 1, 2, 3], 50, k=5)
    rep = import_fkd(str(tmp_path / "f"), str(tmp_path / "s"), 50)
    s = LabelStore.open(rep.store.path)
    assert s.quantizer.kind == "fp16" and "T = 1: FKD_SLG" in rep.summary()
    coded = import_fkd(str(tmp_path / "f"), str(tmp_path / "s8"), 50, quantizer="power", bits=8).store
    z = torch.randn(12, 50, generator=torch.Generator().manual_seed(0)) * 3
    grads = []
    for store in (s, coded, None):
        x = z.clone().requires_grad_()
        if store is None:  # FKD's own float32 labels
            p = torch.stack([truth[f"/d/t/c0/{i}.png"][2] for i in range(4)]).reshape(12, 50)
            ids = p.topk(5).indices
            vals = p.gather(1, ids)
            soft_hard_loss(x, ids, vals, soft_loss="ce").backward()
        else:
            ids, vals = store.labels(torch.arange(4).repeat_interleave(3), torch.arange(3).repeat(4))
            soft_hard_loss(x, ids.long(), vals, codebook=store.codebook, soft_loss="ce").backward()
        grads.append(x.grad)
    err16, err8 = (float((g - grads[2]).abs().max()) for g in grads[:2])
    assert err16 < 1e-4 < err8 and err16 < err8 / 10


def test_check_store_use(tmp_path):
    write_hald(str(tmp_path / "h"), [i % 4 for i in range(8)], 4, slc=4, ipc=2, batch_size=4, crop_size=16)
    s = import_batches(str(tmp_path / "h"), str(tmp_path / "o"), 4, flavor="hald", crop_size=16).store
    assert check_store_use(s, img_size=16, temperature=20.0, decode="marginal") == []
    with pytest.raises(StoreUseError, match=r"crop size 32 px differs from the label store's 16 px.*--img-size 16"):
        check_store_use(s, img_size=32)
    with pytest.warns(StoreUseWarning, match=r"T=4 differs from the label store's T=20"):
        problems = check_store_use(s.header, temperature=4.0, decode="renorm", where="hald relabel", strict=False)
    assert len(problems) == 2 and problems[1].startswith("hald relabel: decode 'renorm' differs")

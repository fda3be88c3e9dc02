"""Inputs users really have: the same images stored under other names, 16-bit PNGs, JPEGs with data
after the image, and an image count that leaves a batch of one."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from hald_ext.data import ImageSet, dali_available, fingerprint, make_loader
from hald_ext.data.decode import decode_file


def _set(names, labels=(0, 1, 1)):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((5, 7), (6, 6), (8, 4))]
    return ImageSet(images, np.array(labels), ["a", "b"], list(names))


def test_fingerprint_follows_pixels_and_classes_not_names():
    # `hald relabel --ipc` on the source folder names images "a/0.png"; the NPZ `hald select` writes
    # reads back as "array:i": the same images, so a store made on one trains on the other.
    folder = _set(["a/0.png", "b/1.png", "b/2.png"])
    npz = _set(["array:0", "array:1", "array:2"])
    assert fingerprint(folder) == fingerprint(npz)
    assert fingerprint(_set(["x", "y", "z"], labels=(0, 1, 0))) != fingerprint(folder)
    other = _set(["x", "y", "z"])
    other.images[1] = other.images[1].copy()
    other.images[1][0, 0, 0] ^= 1
    assert fingerprint(other) != fingerprint(folder)


def test_16_bit_png_decodes_to_8_bit(tmp_path):
    values = (np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 2741)
    path = str(tmp_path / "deep.png")
    Image.fromarray(values).save(path)  # uint16 -> mode I;16, a 16-bit grayscale PNG
    img = decode_file(path)
    assert img.dtype == np.uint8 and img.shape == (4, 6, 3)
    np.testing.assert_array_equal(img[..., 0], (values >> 8).astype(np.uint8))


def _jpeg_with_trailer(path, trailer: bytes):
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(buf, format="JPEG")
    with open(path, "wb") as f:
        f.write(buf.getvalue() + trailer)


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_jpeg_with_appended_data_decodes_alike_on_both_loaders(tmp_path):
    # A "motion photo": video bytes after the JPEG's end marker. DALI is fed the image's bytes up to
    # its end (hald_ext.data.decode.dali_input), so both loaders give the same pixels.
    root = tmp_path / "set"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((12, 10, 3), 40, np.uint8)).save(str(root / c / "plain.png"))
    odd = str(root / "a" / "motion.jpg")
    trailer = bytes(b if b != 0xFF else 0 for b in np.random.default_rng(0).bytes(8192))
    _jpeg_with_trailer(odd, trailer)
    assert decode_file(odd).shape == (16, 20, 3)
    got = {}
    for backend in ("dali", "torch"):
        loader = make_loader(str(root), 3, backend=backend)
        assert loader.backend == backend
        (b,) = list(loader)
        got[backend] = [b.image(r) for r in b.image_ids.tolist()]
    assert all(torch.equal(x, y) for x, y in zip(got["dali"], got["torch"]))


def test_last_batch_of_one_joins_the_previous_one(tmp_path):
    from hald_ext.labels.relabel import relabel
    from hald_ext.models import create_model
    from hald_ext.train.batches import FusedBatchSource
    from hald_ext.train.config import TrainConfig
    from hald_ext.train.schedule import build_schedule
    from hald_ext.train.trainer import Trainer

    rng = np.random.default_rng(0)
    images = ImageSet([rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(15)], np.arange(15) % 3,
                      ["a", "b", "c"], [f"t:{i}" for i in range(15)])
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 3))
    store = relabel(images, teacher, str(tmp_path / "l.safetensors"), sli=1, k=2, size=12, device="cpu",
                    progress=False)
    cfg = TrainConfig(epochs=2, batch_size=7, eval_every=0, progress=False)
    model = create_model("convnet3", 3, img_size=12, width=8)
    trainer = Trainer(cfg, model, FusedBatchSource(images, None, store, 12), build_schedule("hald", 2, soft_epochs=1))
    for epoch in range(2):  # 15 = 7 + 8: never a batch of one (BatchNorm in train mode cannot take it)
        batches, sizes = trainer.epoch_batches(epoch)
        assert sizes == [7, 8] and sorted(torch.cat([ids for ids, _ in batches]).tolist()) == list(range(15))

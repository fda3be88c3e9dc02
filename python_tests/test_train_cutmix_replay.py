"""Soft steps replay a label store's CutMix record: the crop a soft batch shows for (image, slot) is
the crop its label was made on (the SRe2L / HALD relabel: the own crop with the partner image's crop
of the same slot pasted inside a box), for images of mixed sizes, on both batch sources."""
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from hald_ext.core.boxes import boxes_to_pixels, dequantize_boxes, quantize_boxes
from hald_ext.data import ImageSet, image_source, normalize
from hald_ext.labels import Header, LabelStore, MixRecord, Quantizer
from hald_ext.reference import label_encode_reference
from hald_ext.train.batches import FusedBatchSource, TorchBatchSource

STD = (0.229, 0.224, 0.225)
TOL_AA = 1.5  # 0..255 units: torchvision rounds to uint8 between its passes (test_crop.py)
S, SLI, C, K = 20, 3, 7, 3
SIZES = [(24, 32), (40, 28), (20, 20), (33, 47), (28, 28), (50, 36)]


def teacher_view(image: np.ndarray, box_u16: torch.Tensor, flip: bool) -> torch.Tensor:
    """What a relabel shows its teacher for one stored crop: torchvision's resized_crop of the box."""
    im = torch.from_numpy(image).permute(2, 0, 1)
    t, l, h, w = boxes_to_pixels(dequantize_boxes(box_u16), *image.shape[:2]).tolist()
    crop = TF.resized_crop(im, t, l, h, w, [S, S], antialias=True)
    return crop.flip(-1) if flip else crop


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    n = len(images)
    image_set = ImageSet(images, np.arange(n) % C, [f"c{i}" for i in range(C)], [f"m:{i}" for i in range(n)])
    yx = torch.rand(n, SLI, 2, generator=g) * 0.4
    hw = torch.rand(n, SLI, 2, generator=g) * 0.5 + 0.1
    boxes = quantize_boxes(torch.cat([yx, hw], -1))
    flips = torch.rand(n, SLI, generator=g) < 0.5
    # The relabel's CutMix: per (image, slot) a partner image (or none) and a pasted box in whole
    # pixels of the S-pixel crop, SRe2L's rand_bbox style; stored as fractions of the crop.
    partner = torch.randint(0, n, (n, SLI), generator=g, dtype=torch.int32)
    partner[0, 1] = -1  # one crop not mixed
    y0 = torch.randint(0, S // 2, (n, SLI), generator=g)
    x0 = torch.randint(0, S // 2, (n, SLI), generator=g)
    ph = torch.randint(2, S // 2, (n, SLI), generator=g)
    pw = torch.randint(2, S // 2, (n, SLI), generator=g)
    pixels = torch.stack([y0, x0, y0 + ph, x0 + pw], -1)  # (y0, x0, y1, x1)
    fractions = torch.stack([y0, x0, ph, pw], -1).double() / S
    fractions[partner < 0] = 0
    mix_boxes = quantize_boxes(fractions)
    lam = (1 - ph * pw / S ** 2).float()
    lam[partner < 0] = 1.0
    # The teacher's views, and a "teacher" whose logits depend on the mixed pixels it saw.
    views = torch.empty(n, SLI, 3, S, S, dtype=torch.uint8)
    for i in range(n):
        for s in range(SLI):
            v = teacher_view(images[i], boxes[i, s], bool(flips[i, s]))
            p = int(partner[i, s])
            if p >= 0:
                pv = teacher_view(images[p], boxes[p, s], bool(flips[p, s]))
                a, b, c, d = pixels[i, s].tolist()
                v[:, a:c, b:d] = pv[:, a:c, b:d]
            views[i, s] = v
    logits = views.float().mean(dim=(-1, -2)).repeat(1, 1, 3)[..., :C].reshape(n * SLI, C)
    q = Quantizer("log", 8)
    ids, codes, _ = label_encode_reference(logits, K, q.thresholds(), temperature=1.0, from_logits=True)
    header = Header(num_images=n, sli=SLI, num_classes=C, k=K, temperature=1.0, quantizer=q,
                    images=image_set.fingerprint(), crops={"rule": "test cutmix"}, seed=0, mix=True)
    store = LabelStore.create(str(tmp_path_factory.mktemp("mix") / "mix.safetensors"), header, boxes, flips,
                              ids.view(n, SLI, K), codes.view(n, SLI, K),
                              mix=MixRecord(partner, mix_boxes, lam))
    return image_set, store, views


@pytest.mark.parametrize("cls", [FusedBatchSource, TorchBatchSource])
@pytest.mark.parametrize("streaming", [False, True])
def test_soft_batch_shows_the_crops_the_teacher_labelled(mixed_store, cls, streaming):
    image_set, store, views = mixed_store
    src = image_source(image_set, max_bytes=1 if streaming else None)
    assert src.resident != streaming
    source = cls(src, None, store, S)
    ids = torch.tensor([0, 5, 2, 3, 1, 4, 0, 2, 3])
    slots = torch.tensor([1, 0, 2, 1, 2, 0, 0, 1, 2])
    batch = source.soft_batch(ids, slots)
    want = normalize(views[ids, slots])
    err = (batch.x - want).abs().amax(dim=(1, 2, 3))
    assert err.max().item() <= TOL_AA / 255 / min(STD) + 1e-5, err
    # The labels are the stored rows of the same (image, slot).
    lid, lval = store.labels(ids, slots)
    assert torch.equal(batch.topk_ids.long(), lid.long()) and torch.equal(batch.topk_codes, lval)


def test_without_the_record_the_pasted_region_differs(mixed_store):
    """The check has teeth: ignoring the record gives other pixels where a partner was pasted."""
    image_set, store, views = mixed_store
    source = FusedBatchSource(image_source(image_set), None, store, S)
    source.mix = None
    ids, slots = torch.tensor([5, 3]), torch.tensor([0, 1])
    assert int(store.mix.partner[5, 0]) >= 0 and int(store.mix.partner[3, 1]) >= 0
    err = (source.soft_batch(ids, slots).x - normalize(views[ids, slots])).abs().max().item()
    assert err > 10 / 255 / max(STD)


def test_paste_rows_matches_the_reference_paste():
    """The torch source's batched CutMix paste equals the per-sample reference paste."""
    from hald_ext.reference.crop import paste_reference
    from hald_ext.train.batches import paste_rows

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (6, 3, 9, 11), generator=gen, dtype=torch.uint8)
    partner = torch.tensor([3, 0, 2, 5, 1, 1])
    boxes = torch.tensor([[0, 0, 9, 11], [2, 3, 5, 7], [4, 4, 4, 9], [1, 0, 8, 1], [0, 10, 9, 11], [3, 2, 6, 6]])
    torch.testing.assert_close(paste_rows(x, partner, boxes), paste_reference(x, partner, boxes), rtol=0, atol=0)

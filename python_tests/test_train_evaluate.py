"""Streamed evaluation: resize + center crop as torchvision / timm do it, S x S images untouched,
metrics independent of the batch size, the held-out set never stacked."""
import numpy as np
import pytest
import torch
from torchvision.transforms import v2 as T

from hald_ext.data import ImageSet, normalize
from hald_ext.train.evaluate import EvalData, center_crop_boxes, evaluate

S = 24


def smooth_image(h, w, seed):
    """Low-frequency content: the op crops a window rounded to whole pixels of the original (up to
    half a pixel off torchvision's resized grid), which must not dominate the comparison."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    chans = [127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.2, 0.6) * yy + rng.uniform(0.2, 0.6) * xx + rng.uniform()))
             for _ in range(3)]
    return np.stack(chans, -1).astype(np.uint8)


def image_set(shapes, kind="folder"):
    images = [smooth_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    return ImageSet(images, np.arange(len(images)) % 3, ["a", "b", "c"], [f"e:{i}" for i in range(len(images))],
                    kind=kind)


SHAPES = [(40, 56), (64, 48), (37, 37), (50, 90), (S, S), (30, 24)]


def crops_of(data):
    out = {}
    for x, _, ids in data.batches():
        out.update({int(i): x[j] for j, i in enumerate(ids.tolist())})
    return torch.stack([out[i] for i in sorted(out)])


def test_folder_images_are_resized_and_center_cropped_like_torchvision():
    s = image_set(SHAPES)
    got = crops_of(EvalData(s, S, batch_size=4, loader="torch"))
    tf = T.Compose([T.Resize(int(S / 0.875), antialias=True), T.CenterCrop(S)])
    want = normalize(torch.stack([tf(torch.from_numpy(im).permute(2, 0, 1)) for im in s.images]))
    err = (got - want).abs().mean(dim=(1, 2, 3)) * 0.226 * 255  # mean error in 0..255 units
    i = SHAPES.index((S, S))  # torchvision resizes it too; we leave an S x S image alone
    assert err[[j for j in range(len(SHAPES)) if j != i]].max().item() < 4.0, err
    assert err[i] > 3.0
    # The S x S image is used as it is: exactly its pixels, normalised.
    assert torch.allclose(got[i], normalize(torch.from_numpy(s.images[i]).permute(2, 0, 1)[None])[0], atol=1e-5)


def test_array_sets_keep_the_whole_image_by_default():
    s = image_set([(28, 28), (28, 28)], kind="arrays")
    data = EvalData(s, 32, loader="torch")
    assert data.crop_ratio == 1.0
    boxes = center_crop_boxes(torch.tensor([[28, 28]]), 32, 1.0)
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="ratio"):
        EvalData(s, 32, crop_ratio=1.5)


def test_metrics_do_not_depend_on_the_batch_size():
    s = image_set(SHAPES * 2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    a = evaluate(model, EvalData(s, S, batch_size=5, loader="torch"))
    b = evaluate(model, EvalData(s, S, batch_size=64, loader="torch"))
    assert a["eval_top1"] == b["eval_top1"] and abs(a["eval_loss"] - b["eval_loss"]) < 1e-6
    assert set(a) == {"eval_loss", "eval_top1", "eval_top5"} and a["eval_top5"] == 100.0  # 3 classes

"""The trainer's FusedBatchSource (crop_and_lookup) against TorchBatchSource (torchvision)."""
import torch

STD = (0.229, 0.224, 0.225)
TOL_AA = 1.5  # 0..255 units: torchvision rounds to uint8 between and after its passes (test_crop.py)


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def _sources(cutmix_alpha=1.0):
    import tempfile

    from hald_ext.data import ImageSet
    from hald_ext.labels.relabel import relabel
    from hald_ext.train.batches import FusedBatchSource, TorchBatchSource

    N, H, W, S = 6, 36, 30, 24
    hwc = _images(N, H, W)
    images = hwc.permute(0, 3, 1, 2).contiguous()  # the trainer's uint8 [N, 3, H, W]
    targets = torch.arange(N) % 4
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, 10))
    image_set = ImageSet(list(hwc.numpy()), targets.numpy(), [str(c) for c in range(10)],
                         [f"t:{i}" for i in range(N)])
    path = tempfile.mkdtemp(prefix="hald-crop-") + "/labels.safetensors"
    labels = relabel(image_set, teacher, path, sli=3, k=4, size=S, seed=1, device="cpu", progress=False)
    kw = dict(out_size=S, cutmix_alpha=cutmix_alpha)
    return TorchBatchSource(images, targets, labels, **kw), FusedBatchSource(images, targets, labels, **kw)


def test_fused_batch_source_soft_matches_torch():
    ref, fused = _sources()
    ids = torch.tensor([0, 5, 2, 2, 3, 1, 4, 0])
    slots = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    a, b = ref.soft_batch(ids, slots), fused.soft_batch(ids, slots)
    assert a.x.shape == b.x.shape and b.x.dtype == torch.float32
    assert (a.x - b.x).abs().max().item() <= TOL_AA / 255 / min(STD) + 1e-5
    assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.topk_codes, b.topk_codes)


def test_fused_batch_source_hard():
    ref, fused = _sources()
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    h1, h2, h3 = fused.hard_batch(ids, 5), fused.hard_batch(ids, 5), fused.hard_batch(ids, 6)
    r = ref.hard_batch(ids, 5)
    assert h1.x.shape == r.x.shape and h1.lam.shape == r.lam.shape and h1.y_b.shape == r.y_b.shape
    assert torch.equal(h1.x, h2.x) and torch.equal(h1.lam, h2.lam) and not torch.equal(h1.x, h3.x)
    assert torch.equal(h1.y_a, fused.targets[ids])
    assert ((h1.lam > 0) & (h1.lam <= 1)).all()
    # CutMix off: y_b == y_a and lam == 1
    _, plain = _sources(cutmix_alpha=0.0)
    h = plain.hard_batch(ids, 5)
    assert torch.equal(h.y_b, h.y_a) and (h.lam == 1).all()

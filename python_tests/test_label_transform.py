"""Label-structure transforms of a label store: swap / zero the non-top-1 entries."""
import pytest
import torch

from hald_ext.cli import main
from hald_ext.labels.store import LabelStore
from hald_ext.labels.transform import transform_dense, transform_store
from hald_ext.train.synthetic import color_blob_labels, color_blobs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tr")
    images = color_blobs(8, num_classes=8, size=12)
    return color_blob_labels(images, sli=3, k=4, temperature=4.0, path=str(root / "src.safetensors"))


def _flat(s):
    return s.topk_ids.reshape(-1, s.k).long(), s.codes.reshape(-1, s.k).long()


def test_swap_keeps_top1_and_the_numbers_but_moves_the_rest(store, tmp_path):
    out = transform_store(store.path, str(tmp_path / "swap.safetensors"), "swap", seed=1)
    ids0, codes0 = _flat(store)
    ids1, codes1 = _flat(LabelStore.open(out.path))  # reopened with full validation (distinct ids)
    assert torch.equal(ids1[:, 0], ids0[:, 0]) and torch.equal(codes1, codes0)
    assert (ids1[:, 1:] != ids1[:, :1]).all()
    assert not torch.equal(ids1[:, 1:], ids0[:, 1:])  # 3 ids of 7 classes per label: a copy is vanishingly unlikely
    assert torch.equal(out.boxes, store.boxes) and torch.equal(out.flips, store.flips)
    assert out.header.images == store.header.images and out.header.source.endswith("+swap")
    again = transform_store(store.path, str(tmp_path / "swap2.safetensors"), "swap", seed=1)
    other = transform_store(store.path, str(tmp_path / "swap3.safetensors"), "swap", seed=2)
    assert torch.equal(again.topk_ids, out.topk_ids) and not torch.equal(other.topk_ids, out.topk_ids)
    # every non-top-1 class is reachable
    assert set(ids1[:, 1:].unique().tolist()) == set(range(8))


def test_zero_keeps_only_top1_and_truncates(store, tmp_path):
    out = transform_store(store.path, str(tmp_path / "zero.safetensors"), "zero")
    ids0, codes0 = _flat(store)
    ids1, codes1 = _flat(out)
    assert torch.equal(ids1, ids0) and torch.equal(codes1[:, 0], codes0[:, 0])
    assert (out.codebook[codes1[:, 1:]] == 0).all() and (codes0[:, 1:] > 0).any()
    assert out.default_decode == "truncate"


def test_dense_transform_permutes_non_top_entries():
    g = torch.Generator().manual_seed(0)
    v = torch.softmax(torch.randn(50, 7, generator=g), dim=1)
    top = v.argmax(1)
    s = transform_dense(v, "swap", gen=torch.Generator().manual_seed(3))
    assert torch.equal(s.argmax(1), top)
    assert torch.allclose(s.sort(1).values, v.sort(1).values)  # the same numbers
    assert not torch.equal(s, v)
    z = transform_dense(v, "zero")
    assert torch.equal(z.gather(1, top[:, None]), v.gather(1, top[:, None])) and (z > 0).sum(1).eq(1).all()


def test_errors_and_cli(store, tmp_path, capsys):
    with pytest.raises(ValueError, match="mode must be one of"):
        transform_store(store.path, str(tmp_path / "x.safetensors"), "shuffle")
    with pytest.raises(ValueError, match="must differ from the source"):
        transform_store(store.path, store.path, "swap")
    assert main(["label-transform", str(tmp_path / "missing.safetensors"), str(tmp_path / "y.safetensors"),
                 "--mode", "zero"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["label-transform", store.path, str(tmp_path / "z.safetensors"), "--mode", "swap"]) == 0
    assert LabelStore.open(str(tmp_path / "z.safetensors")).num_labels == store.num_labels
    # the same command under `hald labels`, next to info and the importers
    assert main(["labels", "transform", store.path, str(tmp_path / "w.safetensors"), "--mode", "swap"]) == 0
    a, b = (LabelStore.open(str(tmp_path / f"{n}.safetensors")) for n in ("z", "w"))
    assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.codes, b.codes)
    assert main(["labels", "transform", store.path, store.path, "--mode", "zero"]) == 2
    assert "hald labels transform: error:" in capsys.readouterr().err


def test_full_width_fp16_store(tmp_path):
    """Full-width stores (k == C, no ids, float16 values in class order) come with the labels branch."""
    from hald_ext.labels import quantizer as Q
    from hald_ext.labels.format import Header

    if "fp16" not in getattr(Q, "KINDS", ()):
        pytest.skip("this build's label stores have no full-width fp16 form")
    n, s, c = 6, 2, 5
    p = torch.softmax(torch.randn(n, s, c, generator=torch.Generator().manual_seed(0)) * 2, dim=-1).half()
    boxes = torch.zeros(n, s, 4, dtype=torch.int32)
    boxes[..., 2:] = 65535
    h = Header(num_images=n, sli=s, num_classes=c, k=c, temperature=4.0, quantizer=Q.Quantizer("fp16"))
    src = LabelStore.create(str(tmp_path / "src.safetensors"), h, boxes.to(torch.uint16),
                            torch.zeros(n, s, dtype=torch.bool), None, p)
    v0 = src.codes.float().reshape(-1, c)
    swap = LabelStore.open(transform_store(src.path, str(tmp_path / "swap.safetensors"), "swap", seed=1).path)
    v1 = swap.codes.float().reshape(-1, c)
    assert swap.topk_ids is None and torch.equal(v1.argmax(1), v0.argmax(1))
    assert torch.equal(v1.sort(1).values, v0.sort(1).values) and not torch.equal(v1, v0)
    zero = transform_store(src.path, str(tmp_path / "zero.safetensors"), "zero")
    assert ((zero.codes.float().reshape(-1, c) > 0).sum(1) == 1).all()

"""Full-width label stores (k == C, no ids tensor) and lossless float16 values (quantizer "fp16")."""
import pytest
import torch

from hald_ext.labels import Header, LabelStore, LabelStoreError, Quantizer
from hald_ext.labels.quality import kl_to_full
from python_tests.test_label_store import make_arrays, rewrite


def header(N=5, S=2, C=12, k=12, q=None, **kw):
    return Header(num_images=N, sli=S, num_classes=C, k=k, temperature=20.0, quantizer=q or Quantizer("fp16"),
                  images={"count": N, "sha256": "ab" * 32}, crops={"rule": "test"}, **kw)


def probs(N, S, C, seed=0, T=20.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(N, S, C, generator=g) * 8 / T, -1)


def test_fp16_full_width_round_trip(tmp_path):
    h = header()
    boxes, flips = make_arrays(Header(5, 2, 12, 5, 4.0, Quantizer()), seed=1)[:2]
    p = probs(5, 2, 12).half()
    s = LabelStore.create(tmp_path / "f.safetensors", h, boxes, flips, None, p)
    s = LabelStore.open(s.path)
    assert s.full_width and s.topk_ids is None and s.codebook is None and s.codebook_on("cpu") is None
    assert s.codes.dtype == torch.float16 and torch.equal(s.codes, p)  # bit for bit
    assert s.bytes_per_label == 8 + 1 + 2 * 12  # box, flip, 2 bytes per class
    ids, values = s.labels([4, 0], [1, 0])
    assert ids is None and torch.equal(values, p[[4, 0], [1, 0]]) and values.shape == (2, 12)
    assert [sl.topk_ids for sl in s.iter_slots()] == [None, None]
    assert s.shard(1, 2).codes.shape == (3, 2, 12)
    kl = kl_to_full(p.float().view(-1, 12), None, s.codes.view(-1, 12), s.codebook, "marginal")
    assert float(kl.max()) < 1e-5


def test_coded_full_width_and_fp16_top_k(tmp_path):
    q = Quantizer("power", 8)
    h = header(q=q)
    boxes, flips = make_arrays(Header(5, 2, 12, 5, 4.0, Quantizer()))[:2]
    p = probs(5, 2, 12)
    s = LabelStore.create(tmp_path / "c.safetensors", h, boxes, flips, None, q.encode(p))
    assert s.codes.dtype == torch.uint8 and s.codes.shape == (5, 2, 12) and s.topk_ids is None
    assert s.bytes_per_label == 8 + 1 + 12
    assert torch.equal(s.codebook_on("cpu"), q.codebook())
    # fp16 values with ids (k < C): 2-byte ids + 2-byte values
    h3 = header(k=3)
    top = p.topk(3, -1)
    s = LabelStore.create(tmp_path / "t.safetensors", h3, boxes, flips, top.indices.to(torch.uint16),
                          top.values.half())
    assert s.bytes_per_label == 8 + 1 + 3 * 4 and s.labels([0], [0])[0].shape == (1, 3)


def test_full_width_errors(tmp_path):
    h = header()
    boxes, flips = make_arrays(Header(5, 2, 12, 5, 4.0, Quantizer()))[:2]
    p = probs(5, 2, 12).half()
    with pytest.raises(LabelStoreError, match="hold no topk_ids"):
        LabelStore.create(tmp_path / "a", h, boxes, flips, torch.zeros(5, 2, 12, dtype=torch.uint16), p)
    with pytest.raises(LabelStoreError, match="codes must be torch.float16"):
        LabelStore.create(tmp_path / "a", h, boxes, flips, None, p.float())
    bad = p.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(LabelStoreError, match="NaN"):
        LabelStore.create(tmp_path / "a", h, boxes, flips, None, bad)
    bad[0, 0, 0] = -0.5
    with pytest.raises(LabelStoreError, match="outside \\[0, 1\\]"):
        LabelStore.create(tmp_path / "a", h, boxes, flips, None, bad)
    with pytest.raises(LabelStoreError, match="sum to more than 1"):
        LabelStore.create(tmp_path / "a", h, boxes, flips, None, p * 2)
    assert not (tmp_path / "a").exists()
    good = LabelStore.create(tmp_path / "g", h, boxes, flips, None, p).path
    # a header saying k < C over a full-width file, and fp16 codes with an 8-bit header
    with pytest.raises(LabelStoreError, match="header and arrays disagree"):
        LabelStore.open(rewrite(good, tmp_path / "x", header={"k": 11}))
    with pytest.raises(LabelStoreError, match="header and arrays disagree"):
        LabelStore.open(rewrite(good, tmp_path / "y", header={"quantizer": {"kind": "power", "bits": 8, "gamma": 1.5},
                                                              "code_bits": 8}))
    with pytest.raises(LabelStoreError, match="fp16 quantizer stores 16-bit"):
        LabelStore.open(rewrite(good, tmp_path / "z", header={"quantizer": {"kind": "fp16", "bits": 8}}))


def test_fp16_quantizer():
    q = Quantizer("fp16")
    assert q.bits == 16 and q.is_float and q.codebook() is None and q.code_dtype == torch.float16
    assert Quantizer.from_header(q.to_header()) == q
    with pytest.raises(ValueError, match="no thresholds"):
        q.thresholds()
    with pytest.raises(ValueError, match="16-bit floats"):
        Quantizer("fp16", 8)
    p = torch.tensor([0.1, 0.7])
    assert torch.equal(q.encode(p), p.half())
    q8 = Quantizer("uniform", 8)
    assert torch.equal(q8.encode(p), torch.tensor([26, 179], dtype=torch.uint8))  # round(p * 255)

"""Label codec ops (encode / decode / dense decode) against the plain-PyTorch reference."""
import pytest
import torch

from hald_ext.labels import Quantizer
from hald_ext.ops import label_decode, label_decode_dense, label_encode, soft_hard_loss
from hald_ext.reference import (label_decode_dense_reference, label_decode_reference, label_encode_reference,
                                soft_hard_loss_reference)

# CUDA runs of these tests, compared with the CPU kernel too: test_label_codec_cuda.py.
DEVICES = ["cpu"]


def teacher_logits(N, C, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, generator=g, dtype=torch.float64) * scale


def assert_codes_match(codes, ref_codes, probs, q: Quantizer):
    """Codes equal the reference's except where the probability sits on a threshold within the
    kernel's float32 rounding (then one code step apart)."""
    diff = (codes.cpu().int() - ref_codes.int()).abs()
    assert int(diff.max()) <= 1
    if diff.any():
        t = q.thresholds().double()
        near = (probs[diff > 0].unsqueeze(-1) - t).abs().min(-1).values / probs[diff > 0].clamp_min(1e-30)
        assert float(near.max()) < 1e-5


# k == C is a full-width label (no ids); 64 < k < C goes through the sort + full-width path.
ENCODE_SHAPES = [(1, 1), (10, 5), (10, 10), (1000, 5), (1000, 64), (1000, 65), (300, 299), (300, 300),
                 (21843, 10), (70000, 3)]


def check_encode(ids, codes, scores, k, q, temperature=1.0, from_logits=False):
    """ids and codes of label_encode against the reference (ids None and codes [N, C] when k == C)."""
    N, C = scores.shape
    rids, rcodes, probs = label_encode_reference(scores.cpu(), k, q.thresholds(), temperature, from_logits)
    assert codes.dtype == (torch.uint8 if q.bits == 8 else torch.uint16) and codes.dtype == rcodes.dtype
    if k == C:
        assert ids is None and rids is None and codes.shape == (N, C)
    else:
        assert ids.dtype == (torch.uint16 if C <= 65535 else torch.int32) and ids.dtype == rids.dtype
        assert ids.shape == codes.shape == (N, k)
        assert torch.equal(ids.cpu().long(), rids.long())
    assert_codes_match(codes, rcodes, probs, q)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("C,k", ENCODE_SHAPES)
@pytest.mark.parametrize("bits", [8, 16])
def test_encode_logits_matches_reference(device, C, k, bits):
    N = 37 if C < 20000 else 5  # not a multiple of any block size
    z = teacher_logits(N, C, seed=C + k)
    q = Quantizer("log", bits)
    ids, codes = label_encode(z.float().to(device), k, q.thresholds().to(device), temperature=2.5, from_logits=True)
    check_encode(ids, codes, z.float(), k, q, 2.5, True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_every_k_codes_each_class_as_full_width_does(device, dtype):
    """The top-k, sorted and full-width layouts code a class identically (the same arithmetic)."""
    z = teacher_logits(9, 200, seed=4).to(dtype).to(device)
    q = Quantizer("log", 16)
    _, full = label_encode(z, 200, q.thresholds().to(device), temperature=3.0, from_logits=True)
    for k in (1, 7, 64, 65, 199):
        ids, codes = label_encode(z, k, q.thresholds().to(device), temperature=3.0, from_logits=True)
        assert torch.equal(codes, full.gather(1, ids.long())), k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["power", "uniform", "log"])
def test_encode_probabilities_every_dtype_and_quantizer(device, dtype, kind):
    p = torch.softmax(teacher_logits(50, 100, seed=3), 1).to(dtype)
    q = Quantizer(kind, 8)
    ids, codes = label_encode(p.to(device), 7, q.thresholds().to(device))
    check_encode(ids, codes, p, 7, q)
    ids, codes = label_encode(p.to(device), 100, q.thresholds().to(device))  # full width
    check_encode(ids, codes, p, 100, q)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_lower_class_id(device):
    p = torch.zeros(3, 16)
    p[0, [2, 5, 9, 11]] = 0.25
    p[1] = 1 / 16
    p[2, [15, 0]] = 0.5
    q = Quantizer()
    ids, _ = label_encode(p.to(device), 3, q.thresholds().to(device))
    assert ids.cpu().long().tolist() == [[2, 5, 9], [0, 1, 2], [0, 15, 1]]


def test_codes_reconstruct_within_the_quantizer_step():
    """log codes: every coded probability >= p_min is within half a geometric step (relative)."""
    p = torch.softmax(teacher_logits(200, 1000, seed=5), 1)
    for bits in (8, 16):
        q = Quantizer("log", bits)
        ids, codes = label_encode(p.float(), 10, q.thresholds())
        true = p.gather(1, ids.long())
        dec = label_decode(codes, q.codebook()).double()
        step = (1 / q.p_min) ** (1 / (q.levels - 2))
        rel = (dec / true).log().abs()[true >= q.p_min]
        assert float(rel.max()) <= 0.5 * torch.tensor(step).log().item() * 1.001


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decode", ["marginal", "renorm", "truncate"])
@pytest.mark.parametrize("bits", [8, 16])
def test_decode_and_dense_decode_match_reference(device, decode, bits):
    q = Quantizer("log", bits)
    z = teacher_logits(33, 300, seed=bits)
    ids, codes = label_encode(z.float(), 5, q.thresholds(), temperature=4.0, from_logits=True)
    cb = q.codebook()
    got = label_decode(codes.to(device), cb.to(device))
    torch.testing.assert_close(got.cpu(), label_decode_reference(codes, cb), rtol=0, atol=0)
    dense = label_decode_dense(ids.to(device), codes.to(device), cb.to(device), 300, decode)
    torch.testing.assert_close(dense.cpu(), label_decode_dense_reference(ids, codes, cb, 300, decode))
    # A full-width label: no ids, codes in class order.
    none, full = label_encode(z.float(), 300, q.thresholds(), temperature=4.0, from_logits=True)
    assert none is None
    dense = label_decode_dense(None, full.to(device), cb.to(device), 300, decode)
    want = label_decode_dense_reference(None, full, cb, 300, decode)
    torch.testing.assert_close(dense.cpu(), want)
    if decode != "renorm":  # marginal and truncate keep the stored probabilities as they are
        torch.testing.assert_close(want, label_decode_reference(full, cb))


def test_stored_codes_feed_the_fused_loss():
    """ids and codes from the encoder go straight into soft_hard_loss with the codebook."""
    q = Quantizer()
    teacher = teacher_logits(16, 50, seed=9)
    ids, codes = label_encode(teacher.float(), 5, q.thresholds(), temperature=20.0, from_logits=True)
    student = torch.randn(16, 50, dtype=torch.float64)
    for decode in ("marginal", "renorm", "truncate"):
        got = soft_hard_loss(student, ids, codes, codebook=q.codebook(), temperature=20.0, decode=decode)
        want = soft_hard_loss_reference(student, ids.long(), codes, codebook=q.codebook(), temperature=20.0,
                                        decode=decode)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bad,match", [
    (lambda p: p.index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("nan"))), "NaN"),
    (lambda p: p.index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(-0.1)), "negative"),
    (lambda p: p * 0.5, "sum to 1"),
    (lambda p: p * 3, "<= 1"),
])
def test_encode_refuses_bad_probabilities(bad, match):
    p = torch.softmax(teacher_logits(4, 10), 1).float()
    with pytest.raises(RuntimeError, match=match):
        label_encode(bad(p.clone()), 3, Quantizer().thresholds())


def test_encode_argument_errors():
    z = torch.randn(4, 10)
    t = Quantizer().thresholds()
    with pytest.raises(RuntimeError, match="k = 11"):
        label_encode(z, 11, t, from_logits=True)
    with pytest.raises(RuntimeError, match="finite"):
        label_encode(torch.full((2, 10), float("inf")), 3, t, from_logits=True)
    with pytest.raises(RuntimeError, match="sorted"):
        label_encode(z, 3, t.flip(0), from_logits=True)
    with pytest.raises(RuntimeError, match="thresholds must have shape"):
        label_encode(z, 3, t[:100], from_logits=True)
    with pytest.raises(RuntimeError, match="temperature=1"):
        label_encode(torch.softmax(z, 1), 3, t, temperature=2.0)
    with pytest.raises(RuntimeError, match="class ids must be in"):
        label_decode_dense(torch.tensor([[3, 12]], dtype=torch.int32), torch.zeros(1, 2, dtype=torch.uint8),
                           Quantizer().codebook(), 10)
    with pytest.raises(RuntimeError, match="full-width label in class order"):
        label_decode_dense(None, torch.zeros(1, 9, dtype=torch.uint8), Quantizer().codebook(), 10)
    with pytest.raises(RuntimeError, match="codebook for"):
        label_decode(torch.zeros(2, dtype=torch.uint8), torch.zeros(65536))


def test_empty_batch():
    ids, codes = label_encode(torch.empty(0, 10), 3, Quantizer().thresholds(), from_logits=True)
    assert ids.shape == (0, 3) and codes.shape == (0, 3)


def test_opcheck_and_compile():
    q = Quantizer()
    z = torch.randn(6, 20)
    ids, codes = label_encode(z, 4, q.thresholds(), from_logits=True)
    torch.library.opcheck(torch.ops.hald.label_encode.default, (z, 4, 2.0, True, q.thresholds()))
    torch.library.opcheck(torch.ops.hald.label_decode.default, (codes, q.codebook()))
    torch.library.opcheck(torch.ops.hald.label_decode_dense.default, (ids, codes, q.codebook(), 20, "renorm"))
    torch.library.opcheck(torch.ops.hald.label_encode.default, (z, 20, 2.0, True, q.thresholds()))  # full width
    torch.library.opcheck(torch.ops.hald.label_encode.default, (torch.randn(3, 70), 66, 2.0, True, q.thresholds()))
    _, full = label_encode(z, 20, q.thresholds(), from_logits=True)
    torch.library.opcheck(torch.ops.hald.label_decode_dense.default, (None, full, q.codebook(), 20, "renorm"))

    def f(z, t, cb):
        i, c = label_encode(z, 4, t, temperature=2.0, from_logits=True)
        return label_decode_dense(i, c, cb, 20)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z, q.thresholds(), q.codebook()), f(z, q.thresholds(), q.codebook()))

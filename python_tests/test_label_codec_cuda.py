"""The label codec on CUDA: every option of the CPU grid (test_label_codec.py), each CUDA result
compared with the CPU kernel and with the reference. Skipped without a CUDA device and a CUDA build."""
import pytest
import torch

from hald_ext.labels import Quantizer
from hald_ext.ops import label_decode, label_decode_dense, label_encode
from hald_ext.reference import label_decode_dense_reference, label_decode_reference
from conftest import requires_cuda
from test_label_codec import ENCODE_SHAPES, assert_codes_match, check_encode, teacher_logits

pytestmark = requires_cuda


def encode_both(scores, k, q, **kw):
    """(CPU ids, CPU codes), (CUDA ids, CUDA codes) of the same call."""
    cpu = label_encode(scores, k, q.thresholds(), **kw)
    dev = label_encode(scores.cuda(), k, q.thresholds().cuda(), **kw)
    return cpu, dev


def assert_matches_cpu(cpu, dev, scores, k, q, temperature=1.0, from_logits=False):
    (cids, ccodes), (dids, dcodes) = cpu, dev
    assert (dids is None) == (cids is None) and dcodes.dtype == ccodes.dtype and dcodes.is_cuda
    if cids is not None:
        assert dids.dtype == cids.dtype and torch.equal(dids.cpu(), cids)
    # The same arithmetic in the same type; exp may differ by an ulp between libm and CUDA, which can
    # move a probability lying on a threshold by one code.
    p = torch.softmax(scores.double() / temperature, 1) if from_logits else scores.double()
    probs = p if cids is None else p.gather(1, cids.long())
    assert_codes_match(dcodes, ccodes, probs, q)
    check_encode(dids, dcodes, scores, k, q, temperature, from_logits)


@pytest.mark.parametrize("C,k", ENCODE_SHAPES)
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_encode_logits_matches_cpu_and_reference(C, k, bits, dtype):
    N = 37 if C < 20000 else 5
    z = teacher_logits(N, C, seed=C + k).to(dtype)
    q = Quantizer("log", bits)
    cpu, dev = encode_both(z, k, q, temperature=2.5, from_logits=True)
    assert_matches_cpu(cpu, dev, z, k, q, 2.5, True)


def test_float64_codes_equal_cpu_near_thresholds():
    """float64 logits: probabilities placed next to the thresholds code exactly as on the CPU (the CUDA
    kernel once scaled them by a float 1/T)."""
    q = Quantizer("log", 16)
    t = q.thresholds().double()[1000:1040]
    T = 3.0
    # Logits whose softmax puts one class a hair above or below a threshold.
    rows = []
    for i, thr in enumerate(t):
        p = float(thr) * (1 + (1e-9 if i % 2 else -1e-9))
        rest = (1 - p) / 9
        rows.append(torch.tensor([p] + [rest] * 9, dtype=torch.float64).log() * T)
    z = torch.stack(rows)
    cpu, dev = encode_both(z, 10, q, temperature=T, from_logits=True)
    assert torch.equal(dev[1].cpu(), cpu[1])
    cpu, dev = encode_both(z, 3, q, temperature=T, from_logits=True)
    assert torch.equal(dev[0].cpu(), cpu[0]) and torch.equal(dev[1].cpu(), cpu[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["power", "uniform", "log"])
@pytest.mark.parametrize("k", [7, 70, 100])
def test_encode_probabilities_matches_cpu_and_reference(dtype, kind, k):
    p = torch.softmax(teacher_logits(50, 100, seed=3), 1).to(dtype)
    q = Quantizer(kind, 8)
    cpu, dev = encode_both(p, k, q)
    assert_matches_cpu(cpu, dev, p, k, q)


def test_ties_go_to_the_lower_class_id():
    p = torch.zeros(3, 16)
    p[0, [2, 5, 9, 11]] = 0.25
    p[1] = 1 / 16
    p[2, [15, 0]] = 0.5
    ids, _ = label_encode(p.cuda(), 3, Quantizer().thresholds().cuda())
    assert ids.cpu().long().tolist() == [[2, 5, 9], [0, 1, 2], [0, 15, 1]]


@pytest.mark.parametrize("decode", ["marginal", "renorm", "truncate"])
@pytest.mark.parametrize("bits", [8, 16])
def test_decode_and_dense_decode_match_cpu_and_reference(decode, bits):
    q = Quantizer("log", bits)
    z = teacher_logits(33, 300, seed=bits)
    cb = q.codebook()
    for k in (5, 100, 300):
        ids, codes = label_encode(z.float(), k, q.thresholds(), temperature=4.0, from_logits=True)
        got = label_decode(codes.cuda(), cb.cuda())
        torch.testing.assert_close(got.cpu(), label_decode_reference(codes, cb), rtol=0, atol=0)
        dense = label_decode_dense(None if ids is None else ids.cuda(), codes.cuda(), cb.cuda(), 300, decode)
        cpu = label_decode_dense(ids, codes, cb, 300, decode)
        torch.testing.assert_close(dense.cpu(), cpu)
        torch.testing.assert_close(dense.cpu(), label_decode_dense_reference(ids, codes, cb, 300, decode))


@pytest.mark.parametrize("bad,match", [
    (lambda p: p.index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("nan"))), "NaN"),
    (lambda p: p.index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(-0.1)), "negative"),
    (lambda p: p * 0.5, "sum to 1"),
    (lambda p: p * 3, "<= 1"),
])
@pytest.mark.parametrize("k", [3, 10])
def test_encode_refuses_bad_probabilities(bad, match, k):
    p = torch.softmax(teacher_logits(4, 10), 1).float()
    with pytest.raises(RuntimeError, match=match):
        label_encode(bad(p.clone()).cuda(), k, Quantizer().thresholds().cuda())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_encode_refuses_bad_logits(dtype):
    t = Quantizer().thresholds().cuda()
    z = torch.randn(3, 80, dtype=dtype)
    for value, match in ((float("inf"), "finite"), (float("nan"), "NaN")):
        bad = z.clone()
        bad[2, 7] = value
        for k in (5, 70, 80):
            with pytest.raises(RuntimeError, match=match):
                label_encode(bad.cuda(), k, t, from_logits=True)


def test_empty_batch_and_devices():
    t = Quantizer().thresholds()
    ids, codes = label_encode(torch.empty(0, 10).cuda(), 3, t.cuda(), from_logits=True)
    assert ids.shape == (0, 3) and codes.shape == (0, 3) and codes.is_cuda
    with pytest.raises(RuntimeError, match="thresholds are on"):
        label_encode(torch.randn(2, 10).cuda(), 3, t, from_logits=True)

"""kl_to_full and uniform_kl against hand computations."""
import math

import pytest
import torch

from hald_ext.labels.quality import Q_FLOOR, kl_to_full, uniform_kl

P = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)


def test_top2_marginal_renorm_truncate_by_hand():
    ids = torch.tensor([[0, 1]], dtype=torch.int16)
    vals = torch.tensor([[0.5, 0.3]], dtype=torch.float64)
    # marginal: the rest mass 0.2 spread over 2 classes -> q = (0.5, 0.3, 0.1, 0.1)
    want = 0.15 * math.log(0.15 / 0.1) + 0.05 * math.log(0.05 / 0.1)
    assert kl_to_full(P, ids, vals, None, "marginal").item() == pytest.approx(want, rel=1e-12)
    # renorm: q = (0.625, 0.375, 0, 0); the dropped classes count at Q_FLOOR
    want = (0.8 * math.log(0.8) + 0.15 * math.log(0.15 / Q_FLOOR) + 0.05 * math.log(0.05 / Q_FLOOR))
    assert kl_to_full(P, ids, vals, None, "renorm").item() == pytest.approx(want, rel=1e-12)
    # truncate: q = (0.5, 0.3, 0, 0), which sums to 0.8: the generalised KL adds sum q - sum p
    want = 0.15 * math.log(0.15 / Q_FLOOR) + 0.05 * math.log(0.05 / Q_FLOOR) - 0.2
    assert kl_to_full(P, ids, vals, None, "truncate").item() == pytest.approx(want, rel=1e-12)


def test_codes_through_codebook_and_chunks():
    codebook = torch.tensor([0.0, 0.25, 0.5, 1.0])
    ids = torch.tensor([[1, 0]] * 5)
    codes = torch.tensor([[1, 2]] * 5, dtype=torch.uint8)  # 0.25 at class 1, 0.5 at class 0
    full = P.repeat(5, 1)
    # q = (0.5, 0.25, 0.125, 0.125)
    want = 0.3 * math.log(0.3 / 0.25) + 0.15 * math.log(0.15 / 0.125) + 0.05 * math.log(0.05 / 0.125)
    got = kl_to_full(full, ids, codes, codebook, "marginal", chunk_rows=2)
    assert got.dtype == torch.float64 and got.shape == (5,)
    torch.testing.assert_close(got, torch.full((5,), want, dtype=torch.float64), rtol=1e-7, atol=0)


def test_full_width_ids_none():
    vals = P.to(torch.float16)  # 0.15 and 0.3 are not exact in float16
    q = vals.double()
    want = (P * (P / q).log()).sum().item() - 1 + q.sum().item()
    got = kl_to_full(P, None, vals, None, "marginal").item()
    assert got == pytest.approx(want, rel=1e-9) and 0 < got < 1e-6
    q = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    assert kl_to_full(P, None, q, None, "renorm").item() == pytest.approx(uniform_kl(P).item(), rel=1e-6)


def test_uniform_kl_by_hand():
    want = math.log(4) + sum(p * math.log(p) for p in (0.5, 0.3, 0.15, 0.05))
    assert uniform_kl(P).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ids=None, values=torch.rand(1, 2)), "full-width"),
    (dict(ids=torch.zeros(1, 3, dtype=torch.long), values=torch.rand(1, 2)), "same shape"),
    (dict(ids=torch.zeros(1, 2, dtype=torch.long), values=torch.zeros(1, 2, dtype=torch.uint8)), "codebook"),
    (dict(ids=None, values=torch.rand(2, 4)), "N=1"),
])
def test_bad_arguments_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kl_to_full(P, kwargs["ids"], kwargs["values"], None, "marginal")
    with pytest.raises(ValueError, match="decode"):
        kl_to_full(P, None, P, None, "smooth")


@pytest.mark.parametrize("decode", ["marginal", "renorm", "truncate"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_kl_to_full_matches_the_dense_reference_decode(decode, k):
    """The sparse float64 KL equals the one built from the reference's dense [N, C] decode, for top-k
    codes through a codebook, float values, and full width (k == C, ids None)."""
    from hald_ext.reference.soft_hard_loss import decode_dense

    gen = torch.Generator().manual_seed(k)
    N, C = 37, 12
    full = torch.softmax(3 * torch.randn(N, C, generator=gen, dtype=torch.float64), 1)
    vals, ids = full.topk(k, 1)
    codebook = torch.linspace(0, 1, 256, dtype=torch.float64) ** 2
    codes = (vals.sqrt() * 255).round().to(torch.uint8)
    cases = [(ids.to(torch.int16), codes, codebook), (ids, vals.float(), None)]
    if k == C:
        cases.append((None, full.half(), None))
    for row_ids, values, cb in cases:
        q = decode_dense(row_ids, values, C, decode, cb, torch.float64)
        want = (torch.xlogy(full, full) - torch.xlogy(full, q.clamp_min(Q_FLOOR)) - full + q).sum(1)
        got = kl_to_full(full, row_ids, values, cb, decode, chunk_rows=10)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)

"""Quantisers: table invariants, header round trip, and the measurement behind the default."""
import pytest
import torch

from hald_ext.labels import Quantizer
from hald_ext.ops import label_encode
from hald_ext.reference import decode_dense

ALL = [Quantizer(kind, bits) for kind in ("power", "uniform", "log") for bits in (8, 16)]


@pytest.mark.parametrize("q", ALL, ids=lambda q: f"{q.kind}{q.bits}")
def test_tables(q):
    cb, t = q.codebook(), q.thresholds()
    assert cb.shape == (q.levels,) and t.shape == (q.levels - 1,) and cb.dtype == t.dtype == torch.float32
    assert cb[0] == 0 and cb[-1] == 1
    assert (cb[1:] > cb[:-1]).all()
    assert (t >= cb[:-1]).all() and (t <= cb[1:]).all()  # each threshold between its two levels
    # A level codes to itself.
    assert torch.equal(torch.searchsorted(t, cb, right=True), torch.arange(q.levels))
    assert Quantizer.from_header(q.to_header()) == q


def test_invalid():
    for kw in (dict(kind="mu"), dict(bits=4), dict(kind="log", p_min=0.0), dict(kind="power", gamma=100),
               dict(kind="uniform", gamma=2.0), dict(kind="power", p_min=1e-3)):
        with pytest.raises(ValueError):
            Quantizer(**kw)
    with pytest.raises(ValueError):
        Quantizer.from_header({"kind": "power", "bits": 8, "extra": 1})


def added_kl(q, C, T, k=5, N=600):
    """Mean KL(decoded coded top-k || decoded fp32 top-k), marginal decode, float64."""
    g = torch.Generator().manual_seed(C)
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    z[torch.arange(N), torch.randint(0, C, (N,), generator=g)] += torch.rand(N, generator=g, dtype=torch.float64) * 10
    ids, codes = label_encode(z.float(), k, q.thresholds(), temperature=T, from_logits=True)
    p = torch.softmax(z / T, 1).gather(1, ids.long())
    exact = decode_dense(ids.long(), p, C, dtype=torch.float64)
    coded = decode_dense(ids.long(), codes, C, codebook=q.codebook(), dtype=torch.float64)
    return float((torch.special.xlogy(coded, coded) - torch.special.xlogy(coded, exact)).sum(1).mean())


def test_default_quantizer_meets_the_distortion_target():
    """8-bit top-5: added KL <= 1e-3 nats for peaked (T=1) and flat (T=20) labels, where uniform codes
    fail on flat labels over many classes and log codes fail on peaked labels over few."""
    cases = [(10, 1.0), (10, 20.0), (1000, 1.0), (1000, 20.0)]
    default = [added_kl(Quantizer(), C, T) for C, T in cases]
    assert max(default) <= 1e-3, default
    assert added_kl(Quantizer("log", 8), 10, 1.0) > 2e-3
    assert added_kl(Quantizer("uniform", 8), 1000, 20.0) > 2e-3

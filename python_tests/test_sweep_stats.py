"""Sweep statistics against hand computations and published t-table values."""
import math

import pytest

from hald_ext.sweep import stats
from hald_ext.sweep.report import _HALD_CASES, explain, verdict

# Two-sided 95 % critical values t_{0.975, df} from the standard table (4 decimals).
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 20: 2.0860, 30: 2.0423,
         120: 1.9799}


@pytest.mark.parametrize("df,value", sorted(T_975.items()))
def test_t_quantile_matches_the_table(df, value):
    assert stats.t_quantile(0.975, df) == pytest.approx(value, abs=6e-5)
    assert stats.t_quantile(0.025, df) == pytest.approx(-value, abs=6e-5)


def test_t_quantile_other_levels_and_cdf():
    assert stats.t_quantile(0.95, 10) == pytest.approx(1.8125, abs=6e-5)  # one-sided 95 %, df 10
    assert stats.t_quantile(0.995, 4) == pytest.approx(4.6041, abs=6e-5)
    assert stats.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    assert stats.t_cdf(0.0, 3) == pytest.approx(0.5)
    assert stats.t_cdf(12.7062, 1) == pytest.approx(0.975, abs=1e-6)
    with pytest.raises(ValueError, match="p must be in"):
        stats.t_quantile(1.0, 3)


def test_t_tail_far_out_is_not_rounded_to_zero():
    # df 2 has a closed form: P(T > t) = (1 - t / sqrt(2 + t^2)) / 2, about 1 / (2 t^2) for large t
    for t in (0.5, 3.0, 1e3, 1e9):
        exact = 0.5 / (math.sqrt(2 + t * t) * (math.sqrt(2 + t * t) + t) / 2)  # the same, without cancellation
        assert stats.t_sf(t, 2) == pytest.approx(exact, rel=1e-6)
    assert stats.t_sf(1e9, 2) > 0 and 1.0 - stats.t_cdf(1e9, 2) == 0.0  # what a p-value "= 0" came from
    assert stats.t_sf(-1.5, 7) == pytest.approx(stats.t_cdf(1.5, 7)) and stats.t_sf(0.0, 5) == pytest.approx(0.5)


def test_mean_sd_and_paired_interval_by_hand():
    a = [71.0, 73.5, 70.0, 74.0]
    b = [70.0, 71.5, 69.5, 72.5]
    # differences 1.0, 2.0, 0.5, 1.5: mean 1.25, sd sqrt(1.25 / 3), t_{0.975,3} = 3.182446
    p = stats.paired(a, b)
    sd = math.sqrt(1.25 / 3)
    half = 3.182446 * sd / 2.0
    assert p["n"] == 4 and p["mean"] == pytest.approx(1.25)
    assert p["sd"] == pytest.approx(sd)
    assert p["lo"] == pytest.approx(1.25 - half, abs=1e-5) and p["hi"] == pytest.approx(1.25 + half, abs=1e-5)
    assert (p["positive"], p["negative"]) == (4, 0)
    assert stats.mean(a) == pytest.approx(72.125)
    assert stats.sd(a) == pytest.approx(math.sqrt(sum((x - 72.125) ** 2 for x in a) / 3))
    assert math.isnan(stats.sd([1.0]))
    one = stats.paired([1.0], [2.0])
    assert one["n"] == 1 and math.isnan(one["lo"])
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired([1, 2], [1])


def test_spearman_by_hand_and_ties():
    # d = rank differences (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert stats.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert stats.ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))


def test_verdicts_and_the_plain_explanation():
    up = stats.paired([3, 4, 5], [1, 2, 3])        # +2 each: sd 0, resolved
    flat = stats.paired([3, 1, 5], [1, 2, 4])      # 2, -1, 1: spans zero
    assert verdict(up, "hald", "soft-only").startswith("hald beats soft-only")
    assert verdict(flat, "hald", "hard-only").startswith("no difference resolved")
    rows = [{"a": "hald", "b": "soft-only", "pair": "hald - soft-only", **up, "verdict": "v1"},
            {"a": "hald", "b": "hard-only", "pair": "hald - hard-only", **flat, "verdict": "v2"}]
    lines = explain(rows)
    assert lines[0] == _HALD_CASES[(1, 0)] and "hard phase's" in lines[0]
    assert len(_HALD_CASES) == 9


def test_sign_rule_by_hand():
    from hald_ext.sweep.report import sign_rule

    # gains positive exactly when drift > 0.2: the rule gets all 5 right; the majority sign gets 3
    r = sign_rule([0.1, 0.15, 0.2, 0.3, 0.5], [-1.0, -0.5, -0.2, 0.4, 1.2])
    assert (r["threshold"], r["sign_correct"], r["sign_majority"]) == (0.2, 5, 3)
    r = sign_rule([0.1, 0.3, 0.5], [1.0, -1.0, 2.0])
    assert r["sign_correct"] == 2 and r["sign_majority"] == 2

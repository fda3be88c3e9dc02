"""`hald sweep-summary`: pooling sweeps, counting a shared pair of runs once, and the rank statistics
against hand computations."""
import json
import math

import pytest

from hald_ext.cli import main
from hald_ext.sweep import summary as S


def results(name, axes, rows, compare_axis="train.schedule"):
    """A results.json as `hald sweep` writes it (report.build): the fields the summary reads."""
    return {"name": name, "metric": "top1", "axes": axes, "seeds": sorted({r["seed"] for r in rows}),
            "compare": {"axis": compare_axis, "pairs": [["hald", "soft-only"]]}, "rows": rows}


def row(seed, sli, sched, top1, trace, run=None, **extra):
    return {"seed": seed, "relabel.sli": sli, "train.schedule": sched, "top1": top1, "sli": sli,
            "lvsd_trace_sigma": trace, "lvsd_drift": trace / sli,
            "run": run or f"train/s{seed}-sli{sli}-{sched}", **extra}


def write(tmp_path, name, res):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(res))
    return str(d)


# gains hald - soft-only per (sli, seed); Tr(Sigma) 0.02 for seed 0, 0.04 for seed 1
GAIN = {(1, 0): 2.0, (1, 1): 4.0, (2, 0): 1.0, (2, 1): 1.0, (5, 0): -1.0, (5, 1): -3.0}


def sli_map():
    rows = []
    for (sli, seed), g in GAIN.items():
        rows += [row(seed, sli, "soft-only", 70.0, 0.02 * (seed + 1)), row(seed, sli, "hald", 70.0 + g, 0.02 * (seed + 1))]
    return results("map", {"relabel.sli": [1, 2, 5], "train.schedule": ["hald", "soft-only"]}, rows)


def test_pooled_cells_count_shared_runs_once_and_match_hand_computation(tmp_path):
    a = write(tmp_path, "map", sli_map())
    # a second sweep whose smoothing 0.1 cell is the map's SLI 1 runs (same folders), plus a new cell
    rows = [dict(r, **{"train.label_smoothing": 0.1}) for r in sli_map()["rows"] if r["relabel.sli"] == 1]
    for seed, g in ((0, 6.0), (1, 8.0)):
        rows += [row(seed, 1, "soft-only", 60.0, 0.5, run=f"train/s{seed}-0.8-soft-only", **{"train.label_smoothing": 0.8}),
                 row(seed, 1, "hald", 60.0 + g, 0.5, run=f"train/s{seed}-0.8-hald", **{"train.label_smoothing": 0.8})]
    for r in rows:
        del r["relabel.sli"]
    b = write(tmp_path, "smooth", results("smooth", {"train.label_smoothing": [0.1, 0.8],
                                                     "train.schedule": ["hald", "soft-only"]}, rows))
    s = S.build([a, b], str(tmp_path / "out"), ["hald - soft-only"], plots=False)
    (e,) = s["pairs"]
    assert e["points"] == 8  # 6 from the map + 2 new; the shared SLI 1 pairs count once
    cells = {(c["sweep"], c["cell"]): c for c in e["cells"]}
    assert set(cells) == {("map", "sli=1"), ("map", "sli=2"), ("map", "sli=5"), ("smooth", "label_smoothing=0.8")}
    assert cells[("map", "sli=1")]["mean"] == 3.0 and cells[("map", "sli=5")]["mean"] == -2.0
    # hand computation: SLI 1 gains 2, 4 -> mean 3, sd sqrt(2), t(0.975, 1) = 12.7062 -> 3 +- 12.7062
    assert cells[("map", "sli=1")]["lo"] == pytest.approx(3.0 - 12.7062, abs=1e-3)
    assert cells[("map", "sli=2")]["lvsd_drift"] == pytest.approx(0.015)  # mean of 0.02/2 and 0.04/2
    # drift per cell: sli5 0.006, sli2 0.015, sli1 0.03, smooth 0.5; gains -2, 1, 3, 7: perfectly monotone,
    # exact p = 2 / 4! (the identity and the reversal reach |rho| = 1)
    q = e["predictors"]["lvsd_drift"]
    assert q["cells"]["rho"] == pytest.approx(1.0) and q["cells"]["p"] == pytest.approx(2 / 24)
    assert q["cells"]["p_method"] == "exact permutation"
    # the best threshold splits the negative cell from the rest; leave-one-out gets every cell right
    # but the lowest (its neighbours are all positive: the rule fitted without it says 'always positive')
    assert q["sign_rule"]["sign_correct"] == 4 and q["sign_rule"]["loo_correct"] == 3
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| map | sli=1 | 2 | +3.00 |" in md and "Spearman rho = +1.00 over 4 cells (p = 0.083" in md


def test_exact_permutation_p_matches_enumeration_by_hand():
    # n = 4, rho = 1 - sum d^2 / 10. |rho| >= 0.8 <=> sum d^2 <= 2 or >= 18: 1 + 3 + 3 + 1 = 8 of 24
    t = S.spearman_test([1, 2, 3, 4], [2, 1, 3, 4])
    assert t["rho"] == pytest.approx(0.8) and t["p"] == pytest.approx(8 / 24)


def test_t_approximation_for_many_points():
    # n = 9, d = (2,-1,-1) x 3: sum d^2 = 18, rho = 1 - 6 * 18 / 720 = 0.85, t = 4.27 on 7 df:
    # between the table's 3.499 (two-sided 0.01) and 5.408 (0.001)
    t = S.spearman_test(list(range(1, 10)), [3, 1, 2, 6, 4, 5, 9, 7, 8])
    assert t["rho"] == pytest.approx(0.85) and t["p_method"] == "t approximation"
    assert 0.001 < t["p"] < 0.01
    assert math.isnan(S.spearman_test([1, 2], [1, 2])["rho"])
    # a perfect ordering of 9 points: only 2 of the 9! orderings reach |rho| = 1
    assert S.spearman_test(list(range(9)), list(range(9)))["p"] == pytest.approx(2 / 362880)


def test_bad_input_names_the_file_or_argument(tmp_path, capsys):
    assert main(["sweep-summary", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere: no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    assert main(["sweep-summary", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad/results.json: not a sweep results file" in capsys.readouterr().err
    good = write(tmp_path, "map", sli_map())
    assert main(["sweep-summary", good, "--out", str(tmp_path / "o"), "--pairs", "hald soft-only"]) == 2
    assert "--pairs: 'hald soft-only' must be 'A - B'" in capsys.readouterr().err
    assert main(["sweep-summary", good, "--out", str(tmp_path / "o"), "--pairs", "hald - hard-only"]) == 2
    assert "no finished paired runs of hald - hard-only" in capsys.readouterr().err
    assert main(["sweep-summary", good, "--out", str(tmp_path / "o"), "--pairs", "hald - soft-only"]) == 0
    assert (tmp_path / "o" / "summary.png").exists() and (tmp_path / "o" / "summary.json").exists()


def test_sign_rule_reads_as_a_constant_when_no_threshold_splits_the_cells(tmp_path):
    res = sli_map()
    for r in res["rows"]:  # every hald run 10 points below its soft-only pair: all gains negative
        if r["train.schedule"] == "hald":
            r["top1"] = 60.0 - r["relabel.sli"]
    s = S.build([write(tmp_path, "neg", res)], str(tmp_path / "out"), ["hald - soft-only"], plots=False)
    r = s["pairs"][0]["predictors"]["lvsd_drift"]["sign_rule"]
    assert r["sign_correct"] == 3 and r["above"] == 0 and r["loo_correct"] == 3
    assert "Best sign rule 'gain < 0 always': 3/3 cells in-sample" in (tmp_path / "out" / "summary.md").read_text()

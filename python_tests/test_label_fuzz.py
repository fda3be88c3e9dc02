"""A short run of scripts/fuzz_labels.py (the full run's counts are in benchmarks/results/fuzz_cpu.json):
corrupted stores and corrupted foreign pickles give either a valid store or an error naming the file,
never another exception, a dead worker, a hang or a payload that runs."""
import importlib.util
import os

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "fuzz_labels.py")


def test_short_fuzz_run():
    spec = importlib.util.spec_from_file_location("fuzz_labels", SCRIPT)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    res = fuzz.run(stores=240, pickles=100, seed=7, timeout=60.0)
    for family, kinds in (("stores", len(fuzz.STORE_KINDS)), ("pickles", 4 * len(fuzz.PICKLE_KINDS))):
        r = res[family]
        assert r["crash"] == 0 and r["hang"] == 0, r["failures"]
        assert r["cases"] == r["opened"] + r["refused"]
        assert len(r["by_kind"]) == kinds and r["refused"] > r["cases"] // 2  # the corruptions bite
    assert not res["payload_ran"]
    assert res["pickles"]["by_kind"]["fkd/payload"]["refused"] == res["pickles"]["by_kind"]["fkd/payload"]["cases"]

"""Every committed sweep preset still validates and plans, and plans the same stages as when the
fixture was written: a stage's id holds the hash of what decides its output, so a changed id would
make committed results and resumable runs look like new work (python_tests/fixtures/sweep_stage_ids.json
was written from the presets before the command-line options were renamed)."""
import glob
import hashlib
import json
import os

import pytest

from hald_ext.sweep import config as C
from hald_ext.sweep import plan as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED = json.load(open(os.path.join(ROOT, "python_tests", "fixtures", "sweep_stage_ids.json")))
PRESETS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "experiments", "**", "*.yaml"),
                                                              recursive=True))


def test_every_pinned_preset_is_still_there():
    """A pinned preset (or a committed report's config.yaml) may not disappear; a new one plans below
    and is pinned when its results are committed."""
    assert PRESETS and set(PINNED) <= set(PRESETS), sorted(set(PINNED) - set(PRESETS))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_plans_the_pinned_stages(preset):
    plan = P.make_plan(C.load(os.path.join(ROOT, preset)), "/tmp/hald-sweep-root")
    ids = sorted(plan.stages)
    assert ids, f"{preset} plans no stage"
    if preset not in PINNED:
        return
    want = PINNED[preset]
    assert [ids[0], ids[len(ids) // 2], ids[-1]] == want["sample"]
    assert (len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()) == (want["stages"], want["sha256"])

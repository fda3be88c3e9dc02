"""Schedule presets (the phase order), the LR schedule and the weight-decay rule (docs/schedules.md)."""
import math

import pytest
import torch

from hald_ext.train.optim import HalfCosineLR, create_optimizer, half_cosine, param_groups
from hald_ext.train.schedule import PRESETS, Schedule, build_schedule, parse_explicit


def parts(s):
    return [(p.kind, p.epochs) for p in s.phases]


def test_hald_split_matches_the_released_imagenet_run():
    # 300 epochs, 150 soft: 75 soft, 150 hard, 75 soft.
    assert parts(build_schedule("hald", 300, 150)) == [("soft", 75), ("hard", 150), ("soft", 75)]


@pytest.mark.parametrize("E,Es,expected", [
    (10, 5, [("soft", 2), ("hard", 5), ("soft", 3)]),  # A = floor(Es/2), C = Es - A
    (7, 1, [("hard", 6), ("soft", 1)]),                # A = 0 is dropped
    (6, None, [("soft", 1), ("hard", 3), ("soft", 2)]),  # E_soft defaults to E // 2
    (5, 5, [("soft", 5)]),                               # E <= E_soft: soft-only
    (5, 9, [("soft", 5)]),
])
def test_hald_arithmetic(E, Es, expected):
    s = build_schedule("hald", E, Es)
    assert parts(s) == expected
    assert s.epochs == E


def test_every_preset_keeps_the_soft_and_hard_budgets():
    for name in PRESETS:
        s = build_schedule(name, 12, 5, period=2)
        assert s.epochs == 12
        if name == "soft-only":
            assert s.epochs_of("soft") == 12
        elif name == "hard-only":
            assert s.epochs_of("hard") == 12
        else:
            assert (s.epochs_of("soft"), s.epochs_of("hard")) == (5, 7), name


def test_orders():
    assert parts(build_schedule("hard-soft", 10, 4)) == [("hard", 6), ("soft", 4)]
    assert parts(build_schedule("soft-hard", 10, 4)) == [("soft", 4), ("hard", 6)]
    assert parts(build_schedule("hard-soft-hard", 10, 4)) == [("hard", 3), ("soft", 4), ("hard", 3)]
    # periodic: blocks of `period`, soft first; the longer budget fills the end.
    assert parts(build_schedule("periodic", 10, 3, period=2)) == [
        ("soft", 2), ("hard", 2), ("soft", 1), ("hard", 5)]


def test_phase_lookup_and_boundaries():
    s = build_schedule("hald", 10, 5)
    assert [s.kind_at(e) for e in range(10)] == ["soft"] * 2 + ["hard"] * 5 + ["soft"] * 3
    assert s.boundaries() == [2, 7]
    with pytest.raises(IndexError):
        s.kind_at(10)


def test_explicit_lists_merge_neighbours_and_reject_nonsense():
    assert parse_explicit("soft:2, soft:3,hard:1") == Schedule([("soft", 5), ("hard", 1)])
    assert str(build_schedule("soft:1,hard:2", 3)) == "soft:1,hard:2"
    for bad in ("soft:x", "medium:3", "soft:0", ""):
        with pytest.raises(ValueError):
            parse_explicit(bad)
    with pytest.raises(ValueError, match="has 3 epochs but epochs=4"):
        build_schedule("soft:1,hard:2", 4)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule("hlad", 10)


def test_half_cosine_only_decays_to_half_with_eta_2():
    assert half_cosine(0, 100) == 1.0
    assert math.isclose(half_cosine(100, 100, eta=2), 0.5)
    assert math.isclose(half_cosine(100, 100, eta=1), 0.0, abs_tol=1e-12)
    assert math.isclose(half_cosine(50, 100, eta=2), 0.5 * (1 + math.cos(math.pi / 4)))


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Flatten(),
                               torch.nn.Linear(4, 2))


def test_no_weight_decay_on_norm_bias_and_1d_params():
    m = _model()
    decay, no_decay = param_groups(m, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[3].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, norm weight + bias, linear bias


def test_lr_schedule_per_epoch_per_update_and_warmup():
    opt = create_optimizer(_model(), lr=1e-3)
    sched = HalfCosineLR(opt, total_epochs=10, eta=2.0)
    sched.set_position(4.7)  # per epoch: the fraction is ignored
    assert math.isclose(sched.last_lr(), 1e-3 * half_cosine(4, 10))
    assert all(math.isclose(g["lr"], sched.last_lr()) for g in opt.param_groups)
    sched = HalfCosineLR(opt, total_epochs=10, eta=2.0, warmup_epochs=2, warmup_lr=1e-5, on_updates=True)
    sched.set_position(0)
    assert math.isclose(sched.last_lr(), 1e-5)
    sched.set_position(1.0)
    assert math.isclose(sched.last_lr(), 1e-5 + 0.5 * (1e-3 * half_cosine(1, 10) - 1e-5))
    sched.set_position(3.5)
    assert math.isclose(sched.last_lr(), 1e-3 * half_cosine(3.5, 10))
    # The state is the position: a restored LR schedule sets the same LR.
    state = sched.state_dict()
    opt2 = create_optimizer(_model(), lr=1e-3)
    other = HalfCosineLR(opt2, total_epochs=99)
    other.load_state_dict(state)
    assert other.last_lr() == sched.last_lr()

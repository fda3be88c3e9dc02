"""Phase kinds, schedule presets and LR schedules as registries: the same numbers as the trainer with
hard-coded soft / hard branches gave, and a new kind / order / LR schedule is one registered piece."""
import math

import pytest
import torch

from hald_ext.core import distributed as D
from hald_ext.models import create_model
from hald_ext.ops import soft_hard_loss
from hald_ext.train.batches import FusedBatchSource, TorchBatchSource
from hald_ext.train.config import TrainConfig
from hald_ext.train.evaluate import EvalData, autocast
from hald_ext.train.lr_schedule import LR_SCHEDULES, HalfCosineLR, LRSchedule, create_lr_schedule, half_cosine
from hald_ext.train.optim import create_optimizer
from hald_ext.train.phases import PHASE_KINDS, PhaseKind, SoftPhase, register_phase_kind
from hald_ext.train.registry import Registry
from hald_ext.train.schedule import (PRESETS, SCHEDULE_PRESETS, Schedule, build_schedule, parse_explicit,
                                     register_schedule)
from hald_ext.train.synthetic import color_blob_labels, color_blobs
from hald_ext.train.trainer import Trainer, _seed

SIZE = 16

# Per epoch (phase, lr, train_loss, train_samples, eval_top1, eval_loss), recorded on the 2-core CPU VM
# (torch 1 thread) with the trainer as it was before phase kinds / presets / LR schedules were registries
# (commit c04d28c); the same script gave bit-identical numbers after the change.
RECORDED = {
    "hald": [
        ["soft", 0.003, 1.1243703067302704, 16, 15.0, 1.4006820678710938],
        ["hard", 0.00288581929876693, 1.364251434803009, 16, 35.0, 1.3459890365600586],
        ["hard", 0.002560660171779821, 1.3760328888893127, 16, 52.5, 1.3016368865966796],
        ["soft", 0.002074025148547635, 1.0502150058746338, 16, 62.5, 1.2630599021911622]],
    "periodic_updates_warmup": [
        ["soft", 0.0001, 1.1853373348712921, 32, 27.5, 1.3936113357543944],
        ["hard", 0.002560660171779821, 1.3957006335258484, 16, 42.5, 1.3430018424987793],
        ["soft", 0.0015, 0.9892991036176682, 32, 60.0, 1.3086567878723145],
        ["hard", 0.0004393398282201788, 1.3973435163497925, 16, 60.0, 1.3047691345214845]],
    "hard_soft_hard": [
        ["hard", 0.002, 1.4047535061836243, 16, 37.5, 1.379801368713379],
        ["soft", 0.001866025403784439, 1.0579041242599487, 16, 47.5, 1.3359392166137696],
        ["hard", 0.0015, 1.3923112154006958, 16, 47.5, 1.3067886352539062]],
}
CASES = {  # schedule (name, E, E_soft, period), config, batch source
    "hald": (("hald", 4, None, 1), dict(lr=3e-3, label_smoothing=0.1), TorchBatchSource),
    "periodic_updates_warmup": (("periodic", 4, 2, 1), dict(lr=3e-3, sched_on_updates=True, warmup_epochs=1.0,
                                                             warmup_lr=1e-4, eta=1.0, slots_per_epoch=0),
                                FusedBatchSource),
    "hard_soft_hard": (("hard-soft-hard", 3, 1, 1), dict(lr=2e-3, batch_size=5), FusedBatchSource),
}


class OldTrainer(Trainer):
    """The epoch sampling and step loss exactly as the trainer wrote them with `if kind == SOFT`
    branches (a frozen copy): the registered kinds must give the same batches and losses."""

    def epoch_batches(self, epoch):
        kind = self.schedule.kind_at(epoch)
        gen = torch.Generator().manual_seed(_seed(self.cfg.seed, epoch))
        n = self.source.num_images
        if kind == "soft":
            soft_before = sum(1 for e in range(epoch) if self.schedule.kind_at(e) == "soft")
            s, sli = self.slots_per_epoch, self.source.labels.slots
            slots = (torch.arange(s) + soft_before * s) % sli
            pairs = torch.stack(torch.meshgrid(torch.arange(n), slots, indexing="ij"), -1).view(-1, 2)
            order = pairs[torch.randperm(len(pairs), generator=gen)]
        else:
            order = torch.randperm(n, generator=gen)[:, None]
        chunks = list(order.split(self.cfg.batch_size))
        if len(chunks) > 1 and len(chunks[-1]) < 2 * self.info.world_size:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        out, sizes = [], []
        for chunk in chunks:
            if len(chunk) < self.info.world_size:
                continue
            mine = D.split_global_batch(chunk, self.info)
            out.append((mine[:, 0], mine[:, 1] if kind == "soft" else None))
            sizes.append(len(chunk))
        return out, sizes

    def loss_sum(self, kind, image_ids, slots, step_seed):
        cfg = self.cfg
        if kind == "soft":
            b = self.source.soft_batch(image_ids, slots)
            with autocast(self.device, cfg.amp):
                logits = self.net(b.x)
            return soft_hard_loss(logits, b.topk_ids, b.topk_codes, codebook=self.codebook,
                                  temperature=self.temperature, decode=self.decode, soft_loss=cfg.soft_loss,
                                  hinton=cfg.hinton, reduction="sum")
        b = self.source.hard_batch(image_ids, step_seed)
        with autocast(self.device, cfg.amp):
            logits = self.net(b.x)
        return soft_hard_loss(logits, hard_target=b.y_a, target_b=b.y_b, mix_lambda=b.lam, soft_weight=0.0,
                              hard_weight=1.0, label_smoothing=cfg.label_smoothing, reduction="sum")


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    train = color_blobs(4, num_classes=4, size=SIZE, seed=0)
    held = color_blobs(10, num_classes=4, size=SIZE, seed=1, prefix="held")
    store = color_blob_labels(train, sli=2, k=3, path=str(tmp_path_factory.mktemp("store") / "b.safetensors"))
    return train, held, store


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the recorded run
    yield
    torch.set_num_threads(threads)


def _run(problem, case, trainer_cls=Trainer):
    train, held, store = problem
    sched, overrides, source_cls = CASES[case]
    cfg = TrainConfig(**{**dict(epochs=sched[1], batch_size=8, eval_every=1, progress=False), **overrides})
    torch.manual_seed(0)
    model = create_model("convnet3", 4, img_size=SIZE, width=8)
    t = trainer_cls(cfg, model, source_cls(train, None, store, SIZE), build_schedule(*sched),
                    EvalData(held, SIZE, loader="torch"))
    hist = t.fit()
    return [[r["phase"], r["lr"], r["train_loss"], r["train_samples"], r["eval_top1"], r["eval_loss"]] for r in hist]


@pytest.mark.parametrize("case", list(CASES))
def test_registered_kinds_give_the_numbers_of_the_branching_trainer(problem, case, one_thread):
    rows = _run(problem, case)
    # Bit-identical to the frozen copy of the old branches, run here on the same machine.
    assert rows == _run(problem, case, OldTrainer)
    # And the run recorded before the change: phases, sample counts and LRs exactly; losses and
    # accuracy to float32 rounding (another CPU may round its convolutions differently).
    recorded = RECORDED[case]
    assert [(r[0], r[3]) for r in rows] == [(r[0], r[3]) for r in recorded]
    for got, want in zip(rows, recorded):
        assert math.isclose(got[1], want[1], rel_tol=1e-12)
        for g, w in zip(got[2:], want[2:]):
            assert math.isclose(g, w, rel_tol=1e-5), (case, got, want)


# ------------------------------------------------------------------------------------------ registry
def test_registry_refuses_duplicates_and_odd_names_and_lists_known_ones():
    reg = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def b():
        return 2

    assert list(reg) == ["a", "b"] and reg["b"] is b and "a" in reg and len(reg) == 2
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    for bad in ("", "x:y", "x,y", None):
        with pytest.raises(ValueError, match="widget name"):
            reg.register(bad, 0)
    with pytest.raises(KeyError, match="unknown widget 'c': use one of a, b"):
        reg["c"]


# ------------------------------------------------------------------------------------------ phase kinds
def test_builtin_kinds():
    assert list(PHASE_KINDS) == ["soft", "hard"]
    assert PHASE_KINDS["soft"].uses_labels and not PHASE_KINDS["hard"].uses_labels
    assert build_schedule("hald", 10, 4).label_epochs() == 4 and build_schedule("hald", 10, 4).label_kinds() == ["soft"]
    assert build_schedule("hard-only", 10).label_epochs() == 0 and build_schedule("hard-only", 10).label_kinds() == []
    with pytest.raises(ValueError, match="cannot read schedule item 'medium:3': expected 'soft:N' or 'hard:N'"):
        parse_explicit("medium:3")
    with pytest.raises(ValueError, match="schedule phase must be 'soft' or 'hard', got 'medium'"):
        Schedule([("medium", 3)])


@pytest.fixture
def soft_all_kind():
    """A kind registered for the test: replays every stored crop of every image each epoch."""

    @register_phase_kind("soft-all")
    class SoftAll(SoftPhase):
        def sample_order(self, trainer, epoch, gen):
            n, sli = trainer.source.num_images, trainer.source.labels.slots
            pairs = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(sli), indexing="ij"), -1).view(-1, 2)
            return pairs[torch.randperm(len(pairs), generator=gen)]

    yield SoftAll
    PHASE_KINDS.unregister("soft-all")


def test_a_new_kind_is_one_registered_class(problem, soft_all_kind):
    train, held, store = problem
    sched = build_schedule("soft-all:1,hard:1,soft:1", 3)
    assert sched.kinds() == ["soft-all", "hard", "soft"] and sched.label_kinds() == ["soft-all", "soft"]
    assert sched.label_epochs() == 2
    cfg = TrainConfig(epochs=3, batch_size=8, lr=3e-3, progress=False)
    t = Trainer(cfg, create_model("convnet3", 4, img_size=SIZE, width=8), TorchBatchSource(train, None, store, SIZE),
                sched)
    batches, _ = t.epoch_batches(0)
    pairs = sorted(zip(torch.cat([b[0] for b in batches]).tolist(), torch.cat([b[1] for b in batches]).tolist()))
    assert pairs == [(i, s) for i in range(16) for s in range(2)]
    hist = t.fit()
    assert [(r["phase"], r["train_samples"]) for r in hist] == [("soft-all", 32), ("hard", 16), ("soft", 16)]
    assert all(math.isfinite(r["train_loss"]) for r in hist)
    # It reads the label store, so the trainer asks for one, naming the kinds that need it.
    with pytest.raises(ValueError, match="has soft-all/soft phases but the batch source has no label store"):
        Trainer(cfg, create_model("convnet3", 4, img_size=SIZE, width=8), TorchBatchSource(train, None, None, SIZE),
                sched)


def test_the_kind_interface_must_be_filled():
    with pytest.raises(NotImplementedError):
        PhaseKind().sample_order(None, 0, torch.Generator())


# ------------------------------------------------------------------------------------------ presets
def test_builtin_presets_in_order():
    assert PRESETS is SCHEDULE_PRESETS
    assert list(PRESETS) == ["hald", "soft-only", "hard-only", "hard-soft", "soft-hard", "hard-soft-hard", "periodic"]
    assert ", ".join(PRESETS).startswith("hald, soft-only")
    with pytest.raises(ValueError, match="period must be positive"):
        build_schedule("periodic", 4, 2, period=0)


def test_a_new_preset_is_one_registered_function():
    @register_schedule("soft-hard-soft-hard")
    def shsh(epochs, soft_epochs, **_):
        a, b = soft_epochs // 2, (epochs - soft_epochs) // 2
        return [("soft", a), ("hard", b), ("soft", soft_epochs - a), ("hard", epochs - soft_epochs - b)]

    try:
        s = build_schedule("soft-hard-soft-hard", 10, 4)
        assert str(s) == "soft:2,hard:3,soft:2,hard:3"
        assert str(build_schedule("soft-hard-soft-hard", 4, 9)) == "soft:4"  # E_soft is clipped to E first
        with pytest.raises(ValueError, match="already registered"):
            register_schedule("hald", shsh)
    finally:
        SCHEDULE_PRESETS.unregister("soft-hard-soft-hard")
    with pytest.raises(ValueError, match="unknown schedule 'soft-hard-soft-hard'"):
        build_schedule("soft-hard-soft-hard", 10, 4)


# ------------------------------------------------------------------------------------------ LR schedules
def _opt(lr=1e-3):
    return create_optimizer(torch.nn.Linear(2, 2), lr=lr)


def test_teacher_lr_is_the_recorded_cosine_to_zero():
    # hald teacher: half-cosine with eta = 1, stepped on updates (recorded before the registry).
    s = create_lr_schedule("half-cosine", _opt(), 3, eta=1.0, on_updates=True)
    got = []
    for p in (0, 0.25, 1.5, 2.75, 3.0):
        s.set_position(p)
        got.append(s.last_lr())
    want = [0.001, 0.0009829629131445341, 0.0005, 1.70370868554659e-05, 0.0]
    assert all(math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-18) for g, w in zip(got, want))


@pytest.mark.parametrize("on_updates", [False, True])
def test_half_cosine_by_name_is_half_cosine_lr(on_updates):
    kw = dict(eta=2.0, warmup_epochs=1.5, warmup_lr=1e-5, on_updates=on_updates)
    a, b = create_lr_schedule("half-cosine", _opt(), 7, **kw), HalfCosineLR(_opt(), 7, **kw)
    for p in (0, 0.3, 1, 1.7, 2, 3.5, 6.9, 7):
        a.set_position(p)
        b.set_position(p)
        assert a.last_lr() == b.last_lr()
    assert isinstance(b, LRSchedule) and b.name == "half-cosine"


def test_constant_lr_keeps_the_base_lr_after_the_warmup():
    s = create_lr_schedule("constant", _opt(2e-3), 5, warmup_epochs=2, warmup_lr=0.0, on_updates=True)
    s.set_position(1.0)
    assert math.isclose(s.last_lr(), 1e-3)
    for p in (2, 3.3, 5):
        s.set_position(p)
        assert s.last_lr() == 2e-3


def test_lr_schedule_names_state_and_errors():
    assert list(LR_SCHEDULES)[:2] == ["half-cosine", "constant"] and LR_SCHEDULES["half-cosine"] is half_cosine
    with pytest.raises(ValueError, match="unknown LR schedule 'cosine-ish': use one of half-cosine, constant"):
        create_lr_schedule("cosine-ish", _opt(), 5)
    s = create_lr_schedule("constant", _opt(), 5)
    s.set_position(3)
    state = s.state_dict()
    other = HalfCosineLR(_opt(), 9)
    other.load_state_dict(state)  # the state names its schedule
    assert other.name == "constant" and other.last_lr() == 1e-3
    old = HalfCosineLR(_opt(), 10).state_dict()
    del old["name"]  # a checkpoint written before LR schedules had names
    other.load_state_dict(old)
    assert other.name == "half-cosine" and other.last_lr() == 1e-3


def test_trainer_uses_the_default_lr_schedule(problem):
    train, _, store = problem
    t = Trainer(TrainConfig(epochs=2, progress=False), create_model("convnet3", 4, img_size=SIZE, width=8),
                TorchBatchSource(train, None, store, SIZE), build_schedule("hald", 2))
    assert t.lr_schedule.name == "half-cosine" and t.state_dict()["lr_schedule"]["name"] == "half-cosine"

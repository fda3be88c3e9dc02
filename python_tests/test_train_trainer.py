"""The epoch loop on a tiny synthetic problem: it learns, resumes exactly, and survives a killed save."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hald_ext.models import create_model
from hald_ext.train import checkpoint as ckpt
from hald_ext.train.batches import TorchBatchSource
from hald_ext.train.config import ConfigError, TrainConfig
from hald_ext.train.schedule import build_schedule
from hald_ext.train.synthetic import color_blob_labels, color_blobs
from hald_ext.train.evaluate import EvalData, evaluate
from hald_ext.train.trainer import Trainer

SIZE = 16


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    train = color_blobs(8, num_classes=4, size=SIZE, seed=0)
    held = color_blobs(40, num_classes=4, size=SIZE, seed=1, prefix="held")
    path = str(tmp_path_factory.mktemp("store") / "blobs.safetensors")
    return train, held, color_blob_labels(train, sli=2, k=3, path=path)


def make_trainer(problem, schedule="hald", epochs=6, run_dir=None, init_seed=0, dropout=0.0, **overrides):
    train, held, store = problem
    kw = dict(epochs=epochs, batch_size=8, lr=3e-3, eval_every=2, label_smoothing=0.1, progress=False)
    kw.update(overrides)
    cfg = TrainConfig(**kw)
    source = TorchBatchSource(train, None, store, SIZE)
    torch.manual_seed(init_seed)
    model = create_model("convnet3", 4, img_size=SIZE, width=16)
    if dropout:  # a model that draws from the global RNG, so resume must restore it
        model = torch.nn.Sequential(torch.nn.Dropout(dropout), model)
    eval_set = EvalData(held, SIZE, loader="torch")
    return Trainer(cfg, model, source, build_schedule(schedule, epochs), eval_set, run_dir)


def test_short_run_lowers_the_loss_and_beats_chance(problem, tmp_path):
    t = make_trainer(problem, run_dir=str(tmp_path))
    before = evaluate(t.model, t.eval_set, t.cfg.mean, t.cfg.std)
    history = t.fit()
    after = history[-1]
    assert [r["phase"] for r in history] == ["soft", "hard", "hard", "hard", "soft", "soft"]
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    assert after["eval_top1"] > 60.0  # chance is 25 %
    soft = [r["train_loss"] for r in history if r["phase"] == "soft"]
    assert soft[-1] < soft[0]
    # HALD's soft epoch (the default): every image once, as in a hard epoch.
    assert [r["train_samples"] for r in history] == [32] * 6
    assert {f for f in os.listdir(tmp_path)} >= {"last.pth", "summary.csv", "metrics.json", "curves.png"}
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,phase,lr,train_loss") and len(lines) == 7


def test_all_slots_per_soft_epoch_stays_an_option(problem):
    t = make_trainer(problem, schedule="soft-only", epochs=2, crops_per_epoch=0)
    batches, sizes = t.epoch_batches(1)
    pairs = sorted(zip(torch.cat([b[0] for b in batches]).tolist(), torch.cat([b[1] for b in batches]).tolist()))
    assert pairs == [(i, s) for i in range(32) for s in range(2)] and sum(sizes) == 64


def test_soft_epoch_replays_each_pair_once_and_walks_slots(problem):
    t = make_trainer(problem, schedule="soft-only", epochs=3)  # the default: HALD's soft epoch
    for epoch, slot in ((0, 0), (1, 1), (2, 0)):
        batches, sizes = t.epoch_batches(epoch)
        ids = torch.cat([b[0] for b in batches])
        slots = torch.cat([b[1] for b in batches])
        assert sorted(ids.tolist()) == list(range(32)) and set(slots.tolist()) == {slot}
        assert sum(sizes) == 32
    with pytest.raises(ConfigError, match="SLI=2"):
        make_trainer(problem, schedule="soft-only", epochs=3, crops_per_epoch=1, reuse_labels=False)


def test_hard_batches_are_reproducible_from_the_step_seed(problem):
    t = make_trainer(problem)
    ids = torch.arange(8)
    a, b, c = (t.source.hard_batch(ids, s) for s in (5, 5, 6))
    assert torch.equal(a.x, b.x) and torch.equal(a.y_b, b.y_b) and torch.equal(a.lam, b.lam)
    assert not torch.equal(a.x, c.x)
    assert torch.equal(a.y_a, t.source.targets[ids]) and bool(((a.lam > 0) & (a.lam <= 1)).all())


def _comparable(history):
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in history]


def test_resume_continues_exactly(problem, tmp_path):
    full = make_trainer(problem, epochs=5, eval_every=1, dropout=0.1)
    history = full.fit()

    first = make_trainer(problem, epochs=5, eval_every=1, dropout=0.1, run_dir=str(tmp_path))
    first.fit(stop_after=3)  # "killed" after epoch 3 (phase change inside the schedule)
    torch.manual_seed(1234)  # the interrupted process's RNG is gone
    resumed = make_trainer(problem, epochs=5, eval_every=1, dropout=0.1, run_dir=str(tmp_path), init_seed=99)
    resumed.load_checkpoint(str(tmp_path))
    assert resumed.start_epoch == 3
    resumed_history = resumed.fit()

    assert _comparable(resumed_history) == _comparable(history)
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)
    # The checkpoint is also a model file for create_model(..., checkpoint=).
    state = ckpt.load(str(tmp_path / "last.pth"))
    assert state["epoch"] == 5 and len(state["history"]) == 5


def test_resume_refuses_another_schedule(problem, tmp_path):
    make_trainer(problem, epochs=4, run_dir=str(tmp_path)).fit(stop_after=1)
    other = make_trainer(problem, schedule="soft-only", epochs=4)
    with pytest.raises(ValueError, match="schedule"):
        other.load_checkpoint(str(tmp_path / "last.pth"))


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from hald_ext.train import checkpoint
    path = sys.argv[1]
    checkpoint.save_atomic({"step": torch.tensor(1)}, path)

    def dying_save(obj, f):  # the process dies with half a file written
        f.write(b"x" * 4096)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.torch.save = dying_save
    checkpoint.save_atomic({"step": torch.tensor(2)}, path)
""")


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert ckpt.load(str(path))["step"].item() == 1
    assert any(name.endswith(".tmp") for name in os.listdir(tmp_path))  # the half-written file, aside


def test_a_training_temperature_other_than_the_stores_is_reported(problem, capsys):
    make_trainer(problem, temperature=problem[2].temperature)
    assert "differs" not in capsys.readouterr().out
    t = make_trainer(problem, temperature=problem[2].temperature + 3)
    out = capsys.readouterr().out
    assert "differs from the label store's" in out and t.temperature == problem[2].temperature + 3

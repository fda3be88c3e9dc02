"""The epoch loop: whole-epoch phases of registered kinds (hald_ext.train.phases: soft / hard), one
optimizer and one LR schedule (hald_ext.train.lr_schedule) throughout, evaluation, metrics files and
exact resume. What a phase samples and how its loss is computed belong to its kind; nothing here
depends on which kinds there are.

Determinism: every random choice of the loop (sample order, hard-phase crops and CutMix) is drawn from
a generator seeded by (seed, epoch, step), never from global state, so a resumed run replays the
same batches; the global torch RNG (dropout, drop-path) is checkpointed as well.
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn

from hald_ext.core import distributed as D
from hald_ext.labels.compat import check_store_use
from hald_ext.train import checkpoint as ckpt
from hald_ext.train import metrics
from hald_ext.train.batches import BatchSource
from hald_ext.train.config import TrainConfig, check_label_budget
from hald_ext.train.evaluate import EvalData, evaluate  # noqa: F401  (evaluate re-exported)
from hald_ext.train.lr_schedule import DEFAULT_LR_SCHEDULE, create_lr_schedule
from hald_ext.train.optim import create_optimizer
from hald_ext.train.phases import phase_kind
from hald_ext.train.schedule import Schedule

_MIX = 1_000_003  # a prime for mixing seeds


def _seed(*parts: int) -> int:
    s = 0
    for p in parts:
        s = (s * _MIX + int(p)) % (2 ** 63 - 1)
    return s


class Trainer:
    """Trains `model` from `source` over `schedule`; files go to `run_dir` (rank 0 writes them)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, source: BatchSource, schedule: Schedule,
                 eval_set: EvalData | None = None, run_dir: str | None = None, device="cpu",
                 num_classes: int | None = None, model_meta: dict | None = None):
        self.cfg, self.schedule, self.source, self.eval_set = cfg, schedule, source, eval_set
        self.run_dir = run_dir
        self.device = torch.device(device)
        self.info = D.current()
        self.model = model.to(self.device)
        self.model_meta = dict(model_meta or {})
        self.net = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = create_optimizer(self.model, cfg.lr, cfg.weight_decay)
        # A config without an `lr_schedule` field is a half-cosine one (the only LR schedule it had).
        self.lr_schedule = create_lr_schedule(getattr(cfg, "lr_schedule", DEFAULT_LR_SCHEDULE), self.optimizer,
                                              schedule.epochs, eta=cfg.eta, warmup_epochs=cfg.warmup_epochs,
                                              warmup_lr=cfg.warmup_lr, on_updates=cfg.sched_on_updates)
        self.history: list = []
        self.start_epoch = 0
        self.phase_kinds = {kind: phase_kind(kind) for kind in schedule.kinds()}

        store = source.labels
        label_epochs = schedule.label_epochs()
        if label_epochs and store is None:
            raise ValueError(f"schedule {schedule} has {'/'.join(schedule.label_kinds())} phases but the batch "
                             f"source has no label store")
        if store is not None:
            self.slots_per_epoch = check_label_budget(cfg, label_epochs, store.sli)
            self.temperature = cfg.temperature if cfg.temperature is not None else store.temperature
            if self.info.is_main:
                for problem in check_store_use(store, img_size=getattr(source, "out_size", None),
                                               temperature=cfg.temperature, decode=cfg.decode, where="hald train",
                                               strict=False, warn=False):
                    print(f"warning: {problem}", flush=True)
            if getattr(store, "mix", None) is not None and self.info.is_main:
                print("label store holds a CutMix record: soft steps replay each stored crop with its pasted "
                      "partner crop", flush=True)
            self.decode = cfg.decode or store.default_decode
            # None for a store of lossless fp16 probabilities (nothing to decode).
            self.codebook = store.codebook_on(self.device) if hasattr(store, "codebook_on") else \
                store.codebook.to(self.device)
        self.num_classes = num_classes or (store.num_classes if store is not None else None)

    # ---------------------------------------------------------------------------------- samples
    def epoch_batches(self, epoch: int) -> tuple:
        """This rank's batches of the epoch and the global batch sizes: lists of (image_ids, slots)
        (slots None for a kind that samples images only, e.g. hard) and of ints. Every rank draws the
        same global order."""
        gen = torch.Generator().manual_seed(_seed(self.cfg.seed, epoch))
        order = self.phase_kinds[self.schedule.kind_at(epoch)].sample_order(self, epoch, gen)
        with_slots = order.shape[1] > 1
        chunks = list(order.split(self.cfg.batch_size))
        # A last chunk with fewer than two rows per rank joins the one before: BatchNorm in train
        # mode cannot normalise a single sample (as relabel's batch plan does).
        if len(chunks) > 1 and len(chunks[-1]) < 2 * self.info.world_size:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        out, sizes = [], []
        for chunk in chunks:
            if len(chunk) < self.info.world_size:  # too small to give every rank a row
                continue
            mine = D.split_global_batch(chunk, self.info)
            out.append((mine[:, 0], mine[:, 1] if with_slots else None))
            sizes.append(len(chunk))
        return out, sizes

    # ---------------------------------------------------------------------------------- one step
    def loss_sum(self, kind: str, image_ids: torch.Tensor, slots, step_seed: int) -> torch.Tensor:
        """Summed per-row loss of this rank's piece of the batch, as the phase kind `kind` computes it."""
        phase = self.phase_kinds.get(kind) or phase_kind(kind)  # a kind outside the schedule: still one step
        return phase.loss_sum(self, image_ids, slots, step_seed)

    def step(self, kind: str, image_ids: torch.Tensor, slots, step_seed: int, global_size: int) -> torch.Tensor:
        """One optimisation step on this rank's piece of a global batch; returns the detached summed
        loss, still on the device (reading it would make the host wait for the GPU)."""
        loss = self.loss_sum(kind, image_ids, slots, step_seed)
        # DDP averages gradients over ranks: scale so the result is the global batch mean
        # whatever the split (sum over all rows / global batch size).
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (self.info.world_size / global_size)).backward()
        self.optimizer.step()
        return loss.detach()

    def train_epoch(self, epoch: int) -> dict:
        kind = self.schedule.kind_at(epoch)
        batches, sizes = self.epoch_batches(epoch)
        if hasattr(self.source, "prefetch"):  # a streaming image source decodes ahead of the steps
            self.source.prefetch(batches)
        self.net.train()
        # The loss sum stays on the device and the row count on the host: nothing in a step waits
        # for the GPU (the one sync is the epoch's all-reduce and read-back below).
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        rows = 0
        bar = _progress(len(batches), f"epoch {epoch + 1}/{self.schedule.epochs} {kind}",
                        self.cfg.progress and self.info.is_main)
        for i, ((ids, slots), global_size) in enumerate(zip(batches, sizes)):
            if self.cfg.sched_on_updates:
                self.lr_schedule.set_position(epoch + i / len(batches))
            loss = self.step(kind, ids, slots, _seed(self.cfg.seed, epoch, i, self.info.rank), global_size)
            loss_sum += loss.double()
            rows += len(ids)
            if bar is not None:
                bar.update()
                if i % 10 == 0 or i == len(batches) - 1:
                    bar.set_postfix(loss=f"{loss.item() / max(len(ids), 1):.4f}", lr=f"{self.lr_schedule.last_lr():.2e}")
        if bar is not None:
            bar.close()
        total = torch.stack([loss_sum, torch.tensor(float(rows), dtype=torch.float64).to(self.device)])
        D.all_reduce_sum(total)
        loss_sum, rows = total.tolist()
        return {"phase": kind, "train_loss": loss_sum / max(rows, 1), "train_samples": int(rows)}

    # ---------------------------------------------------------------------------------- loop
    def fit(self, stop_after: int | None = None) -> list:
        """Runs the remaining epochs (at most `stop_after` of them in this call); returns the history."""
        cfg, E = self.cfg, self.schedule.epochs
        last = E if stop_after is None else min(E, self.start_epoch + stop_after)
        for epoch in range(self.start_epoch, last):
            t0 = time.perf_counter()
            self.lr_schedule.set_position(epoch)
            row = {"epoch": epoch + 1, "lr": self.lr_schedule.last_lr()}
            row.update(self.train_epoch(epoch))
            row.update(eval_top1=None, eval_top5=None, eval_loss=None)  # the same keys in every row
            if self.eval_set is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == E):
                row.update(evaluate(self.model, self.eval_set, cfg.mean, cfg.std, cfg.amp))
            row["epoch_time"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            self.start_epoch = epoch + 1
            self._report(row)
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 in (E, last):
                self.save_checkpoint()
            self.write_metrics(plot=row.get("eval_top1") is not None or epoch + 1 in (E, last))
        return self.history

    def _report(self, row: dict) -> None:
        epoch = row["epoch"] - 1
        starts_phase = epoch == 0 or self.schedule.kind_at(epoch - 1) != row["phase"]
        due = row["epoch"] % self.cfg.log_every == 0 or row.get("eval_top1") is not None or starts_phase
        if not self.info.is_main or not due:
            return
        msg = f"epoch {row['epoch']:>4} {row['phase']:<4} lr {row['lr']:.2e} train {row['train_loss']:.4f}"
        if row.get("eval_top1") is not None:
            msg += f" | eval top1 {row['eval_top1']:.2f} top5 {row['eval_top5']:.2f} loss {row['eval_loss']:.4f}"
        print(msg, flush=True)

    # ---------------------------------------------------------------------------------- files
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(), "epoch": self.start_epoch,
                "schedule": self.schedule.as_list(), "history": self.history, "rng": ckpt.rng_state(),
                "config": self.cfg.to_dict(), "world_size": self.info.world_size, **self.model_meta}

    def save_checkpoint(self) -> None:
        if self.run_dir is not None and self.info.is_main:
            ckpt.save_atomic(self.state_dict(), os.path.join(self.run_dir, "last.pth"))
        D.barrier()

    def load_checkpoint(self, path: str) -> None:
        if os.path.isdir(path):
            path = os.path.join(path, "last.pth")
        state = ckpt.load(path, map_location=self.device)
        if state["schedule"] != self.schedule.as_list():
            raise ValueError(f"{path}: checkpoint schedule {state['schedule']} differs from this run's "
                             f"{self.schedule.as_list()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        ckpt.set_rng_state({k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v])
                            for k, v in state["rng"].items()})

    def write_metrics(self, plot: bool = True) -> None:
        if self.run_dir is None or not self.info.is_main:
            return
        metrics.write_csv(self.history, os.path.join(self.run_dir, "summary.csv"))
        metrics.write_json(self.history, os.path.join(self.run_dir, "metrics.json"))
        if plot:  # matplotlib costs ~0.3 s a figure: only when there is a new point to show
            metrics.plot_curves(self.history, self.schedule.boundaries(), os.path.join(self.run_dir, "curves.png"),
                                title=f"{self.cfg.model} {self.schedule}")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

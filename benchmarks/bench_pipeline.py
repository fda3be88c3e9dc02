"""This package's soft-label training and relabel path side by side with the pipelines users run
today (benchmarks/baselines/: SRe2L's train_FKD + patched fetcher, the HALD authors' train_fkd.py /
relabel_slc.py, FKD's per-image files), on one synthetic ImageNet-shaped distilled set.

Data: 1,000 classes x IPC 10 and IPC 50, 224-px JPEGs saved as SRe2L's recover step saves them
(baselines/images.py), generated once under --work-dir. Labels: SLI = SLC // IPC as HALD's
relabel_slc.py derives it, SLC = 100 (its --SLC default): SLI 10 at IPC 10, 2 at IPC 50. The
training benchmarks' label files are written in each tool's own layout and dtypes by the baselines'
writers, from synthetic teacher logits (3 N(0, 1) + U(0, 10) on the image's class; a real teacher at
224 px would take hours on this CPU); the crops and CutMix records are drawn as their relabel
scripts draw them. Ours: `hald labels import-sre2l --flavor hald` of the HALD files (top-5, 8-bit
power codes, the CutMix record kept) -> label store -> FusedBatchSource -> fused loss (the trainer's
path: `hald_ext.train.Trainer`'s batch plan and step).

Measured, each in its own subprocess (peak memory = its ru_maxrss; DataLoader workers' largest
ru_maxrss separately), runs interleaved and the order of pipelines alternated, medians reported:
  soft epoch   data + labels + loss (forward + backward on fixed logits, no model): ours, HALD,
               SRe2L, FKD; time to the first batch (setup included: our decode of the set into
               the resident cache, HALD's loading of every label file, ...)
  hard epoch   fresh RandomResizedCrop + flip + CutMix + smoothed CE: ours, HALD
  + model      the same with a ResNet-18 (timm, AdamW step) at 64 px on the first batches only
               (CPU; said in the JSON)
  relabel      crops labelled per second, same teacher (timm resnet18, seed 0, untrained, 64 px
               crops, BatchNorm as each tool sets it), end to end (our decode of the images included)
  storage      label bytes on disk at equal content (same crops; ours keeps the top 5) and the
               time to open them, against reading the same bytes

    python benchmarks/bench_pipeline.py            # full run (about 15 minutes on 2 cores)
    python benchmarks/bench_pipeline.py --quick    # IPC 1, one run (under 2 minutes)

Writes benchmarks/results/pipeline_cpu.json (pipeline_quick_cpu.json with --quick; pipeline_cpu_<tag>.json with --tag).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import device_tag, machine, payload, write_results  # noqa: E402

C = 1000
T = 20.0
K = 5
CROP = 224
MODEL_SIZE = 64  # ResNet-18 runs on this CPU at 64 px (224 px: about 12 images/s)
TARGETS = {"soft_epoch_vs_hald": 5.0, "relabel_vs_hald": 3.0, "storage_vs_hald": 50.0, "open_over_read": 2.0}


# =========================================================================================== label files
def synthetic_logits(classes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(len(classes), C, generator=g) * 3
    z[torch.arange(len(classes)), classes] += torch.rand(len(classes), generator=g) * 10
    return z


def draw_crops(n: int, size: int = CROP):
    """(coords float32 [n, 4], flips bool [n]) as RandomResizedCropWithCoords / the flip draw them
    on size x size images (torch's global RNG, as in a DataLoader worker)."""
    from torchvision.transforms import RandomResizedCrop

    dummy = torch.empty(3, size, size)
    coords = torch.tensor([[v / size for v in RandomResizedCrop.get_params(dummy, (0.08, 1.0), (3 / 4, 4 / 3))]
                           for _ in range(n)], dtype=torch.float32)
    return coords, torch.rand(n) < 0.5


def draw_cutmix(b: int, size: int = CROP):
    from baselines.fkd_transforms import rand_bbox

    idx = torch.randperm(b)
    lam = np.random.beta(1.0, 1.0)
    return idx, lam, list(rand_bbox((b, 3, size, size), lam))


def write_label_files(folder: str, out: str, ipc: int, sli: int, batch: int, seed: int = 0, with_fkd: bool = True) -> dict:
    """HALD, SRe2L and FKD label files for `folder` (N = C x ipc images, SLI crops each), in each
    tool's layout and dtypes, written with the baselines' own save calls. Cached by `out`/done.json."""
    from baselines import fkd, hald, sre2l

    marker = os.path.join(out, "done.json")
    spec = {"ipc": ipc, "sli": sli, "batch": batch, "seed": seed, "fkd": with_fkd, "version": 1}
    tools = ("hald", "sre2l", "fkd") if with_fkd else ("hald", "sre2l")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                return {k: os.path.join(out, k) for k in tools}
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    n = C * ipc
    classes = torch.arange(n) // ipc
    torch.manual_seed(seed)
    np.random.seed(seed)
    g = torch.Generator().manual_seed(seed)
    # HALD: relabel_slc.py's sampler file, one list over batches per label epoch
    d = os.path.join(out, "hald")
    os.makedirs(d)
    info = hald.sampler_indices(n, sli)
    torch.save(info, os.path.join(d, "sampler_indices_dict.pt"))
    for e in range(sli):
        order = torch.tensor(info[str(e)])
        epoch_batch = []
        for s in range(0, n, batch):
            ids = order[s:s + batch]
            coords, flips = draw_crops(len(ids))
            idx, lam, bbox = draw_cutmix(len(ids))
            soft = torch.softmax(synthetic_logits(classes[ids], g) / T, 1).half()
            epoch_batch.append([coords.half(), flips, idx, lam, bbox, soft])
        torch.save(epoch_batch, os.path.join(d, f"epoch_{e}.tar"))
    # SRe2L: generate_soft_label.py's epoch_<e>/batch_<b>.tar, fp16 logits
    d = os.path.join(out, "sre2l")
    for e, order in enumerate(sre2l.sampler_order(n, sli)):
        os.makedirs(os.path.join(d, f"epoch_{e}"))
        order = torch.tensor(order)
        for b, s in enumerate(range(0, n, batch)):
            ids = order[s:s + batch]
            coords, flips = draw_crops(len(ids))
            idx, lam, bbox = draw_cutmix(len(ids))
            sre2l.write_batch_file(os.path.join(d, f"epoch_{e}", f"batch_{b}.tar"), coords, flips, idx, lam, bbox,
                                   synthetic_logits(classes[ids], g).half())
    # FKD: one file per image, SLI crops, top-5 of softmax(z) (T = 1, as its generator)
    d = os.path.join(out, "fkd")
    import torchvision

    for i, (path, c) in enumerate(torchvision.datasets.ImageFolder(folder).samples if with_fkd else []):
        coords, flips = draw_crops(sli)
        probs = torch.softmax(synthetic_logits(torch.full((sli,), c), g), 1)
        fkd.write_image_labels(d, path, coords, flips, probs, K)
    with open(marker, "w") as f:
        json.dump(spec, f)
    return {k: os.path.join(out, k) for k in tools}


def import_store(hald_dir: str, out: str) -> dict:
    """`hald labels import-sre2l --flavor hald --k 5 --quantizer power`: the HALD files -> our store
    (cached beside the store: the import runs once per set of label files)."""
    from hald_ext.labels import LabelStore
    from hald_ext.labels.importers import import_batches

    sidecar = out + ".import.json"
    if os.path.exists(out) and os.path.getmtime(out) > os.path.getmtime(os.path.join(hald_dir, "..", "done.json")):
        if os.path.exists(sidecar):
            with open(sidecar) as f:
                return json.load(f)
        store, import_s = LabelStore.open(out), None  # written by an earlier run that did not record its time
    else:
        t0 = time.perf_counter()
        store = import_batches(hald_dir, out, C, values="probs", temperature=T, k=K, bits=8, quantizer="power",
                               crop_size=CROP, flavor="hald").store
        import_s = time.perf_counter() - t0
    info = {"import_s": import_s, "bytes": store.nbytes, "labels": store.num_labels,
            "bytes_per_label": store.bytes_per_label, "kl_to_teacher": store.header.stats.get("kl_to_teacher")}
    with open(sidecar, "w") as f:
        json.dump(info, f)
    return info


def mem_available() -> int:
    """MemAvailable of /proc/meminfo (free memory plus what the page cache would give back)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def dir_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# =========================================================================================== measurements
class Clock:
    """Time to the first batch (from `start`) and the epoch's time (from the first batch request)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.iter_start = self.first = None

    def begin(self):
        self.iter_start = time.perf_counter()

    def batch(self, b):
        if b == 1:
            self.first = time.perf_counter()


def peak_memory() -> dict:
    gc.collect()
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def make_step(model_name, batch, kind, ours=False):
    """(step(x, target) for the baselines, model or None). Without a model the loss takes fixed
    logits [B, C] (forward + backward); with one, a ResNet-18 forward, the loss, backward, AdamW."""
    from baselines import hald

    model = opt = None
    if model_name:
        from hald_ext.models import create_model

        torch.manual_seed(0)
        model = create_model(model_name, C, img_size=MODEL_SIZE)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fixed = torch.randn(batch, C) * 2

    def logits_of(x):
        if model is None:
            return fixed[: len(x)].clone().requires_grad_(True)
        return model(x)

    def step(x, target):
        z = logits_of(x)
        loss = hald.kl_batchmean(z, target.float(), T) if kind == "soft" else hald.soft_cross_entropy(z, target)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if opt is not None:
            opt.step()

    return step, model, opt, logits_of


def measure_theirs(spec) -> dict:
    from baselines import fkd, hald, sre2l

    clock = Clock()
    kind, tool, size = spec["kind"], spec["pipeline"], spec["size"]
    step, *_ = make_step(spec.get("model"), spec["batch"], kind)
    B, W, folder = spec["batch"], spec["workers"], spec["folder"]
    if kind == "hard":
        job = hald.HardTraining(folder, batch_size=B, workers=W, input_size=size)
        run = lambda mb, cb: job.epoch(step, max_batches=mb, on_batch=cb)  # noqa: E731
        total = len(job.loader)
    elif tool == "hald":
        job = hald.SoftTraining(folder, spec["labels"]["hald"], batch_size=B, workers=W, input_size=size)
        run = lambda mb, cb: job.epoch(step, max_batches=mb, on_batch=cb)  # noqa: E731
        total = job.manager.batch_num_per_epoch
    elif tool == "sre2l":
        job = sre2l.soft_loader(folder, spec["labels"]["sre2l"], batch_size=B, workers=W, label_epochs=spec["sli"],
                                input_size=size)
        run = lambda mb, cb: sre2l.soft_epoch(job, 0, step, T, max_batches=mb, on_batch=cb)  # noqa: E731
        total = len(job)
    elif tool == "fkd":
        job = fkd.soft_loader(folder, spec["labels"]["fkd"], batch_size=B, workers=W, input_size=size)
        run = lambda mb, cb: fkd.soft_epoch(job, step, C, K, max_batches=mb, on_batch=cb)  # noqa: E731
        total = len(job)
    else:
        raise ValueError(tool)
    clock.begin()
    n, b = run(spec.get("max_batches"), clock.batch)
    end = time.perf_counter()
    del job
    return {"samples": n, "batches": b, "batches_per_epoch": total, **timing(clock, end), **peak_memory()}


def timing(clock, end) -> dict:
    return {"epoch_s": end - clock.iter_start, "setup_s": clock.iter_start - clock.start,
            "first_batch_s": clock.first - clock.start}


def measure_ours(spec) -> dict:
    from hald_ext.data import image_source, open_images
    from hald_ext.labels import LabelStore
    from hald_ext.ops import soft_hard_loss
    from hald_ext.train.batches import FusedBatchSource
    from hald_ext.train.config import TrainConfig
    from hald_ext.train.schedule import build_schedule
    from hald_ext.train.trainer import Trainer

    clock = Clock()
    kind, size, B = spec["kind"], spec["size"], spec["batch"]
    images = open_images(spec["folder"])  # the folder's files: decoded once into the cache by the workers
    store = LabelStore.open(spec["store"]) if kind == "soft" else None
    cache = image_source(images, "cpu", workers=spec["workers"])
    source = FusedBatchSource(cache, None, store, size, cutmix_alpha=1.0)
    cfg = TrainConfig(batch_size=B, progress=False, label_smoothing=0.8, schedule="soft:1,hard:1", epochs=2)
    _, model, _, logits_of = make_step(spec.get("model"), B, kind)
    if model is None:
        from hald_ext.models import create_model

        model = create_model("convnet3", C, img_size=size)  # the Trainer's plan and source only; never run
    schedule = build_schedule(cfg.schedule, 2)
    if store is None:  # a hard-only run still builds the trainer the same way
        schedule = build_schedule("hard:2", 2)
    trainer = Trainer(cfg, model, source, schedule, device="cpu", num_classes=C)
    epoch = 0 if kind == "soft" else 1 if store is not None else 0
    batches, sizes = trainer.epoch_batches(epoch)
    mem = cache.memory()
    mb = spec.get("max_batches")
    clock.begin()
    n = b = 0
    for i, ((ids, slots), gsize) in enumerate(zip(batches, sizes)):
        seed = 1_000_003 * epoch + i
        if spec.get("model"):
            trainer.step(kind, ids, slots, seed, gsize)
        elif kind == "soft":
            sb = source.soft_batch(ids, slots)
            z = logits_of(sb.x)
            soft_hard_loss(z, sb.topk_ids, sb.topk_codes, codebook=trainer.codebook, temperature=T).backward()
        else:
            hb = source.hard_batch(ids, seed)
            z = logits_of(hb.x)
            soft_hard_loss(z, hard_target=hb.y_a, target_b=hb.y_b, mix_lambda=hb.lam, soft_weight=0.0, hard_weight=1.0,
                           label_smoothing=0.8).backward()
        n, b = n + len(ids), b + 1
        clock.batch(b)
        if mb is not None and b >= mb:
            break
    end = time.perf_counter()
    return {"samples": n, "batches": b, "batches_per_epoch": len(batches), "cache": mem["kind"],
            "cache_bytes": mem["bytes"], **timing(clock, end), **peak_memory()}


def relabel_teacher(name: str) -> torch.nn.Module:
    """resnet18: timm's, untrained, seed 0. probe: a linear layer on 8 x 8 average-pooled pixels,
    seed 0 (almost free: what is left is each pipeline's own data path)."""
    torch.manual_seed(0)
    if name == "resnet18":
        import timm

        return timm.create_model("resnet18", pretrained=False, num_classes=C)
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 64, C))


def measure_relabel(spec) -> dict:
    teacher = relabel_teacher(spec["teacher"])
    size, B, sli, out = spec["size"], spec["batch"], spec["sli"], spec["out"]
    t0 = time.perf_counter()
    if spec["pipeline"] == "ours":
        from hald_ext.data import open_images
        from hald_ext.labels.relabel import relabel_with_stats

        images = open_images(spec["folder"])
        t_load = time.perf_counter() - t0
        store, _ = relabel_with_stats(images, teacher, out, sli=sli, k=K, temperature=T, size=size, batch_size=B,
                                      device="cpu", cutmix_alpha=1.0, progress=False, teacher_name=spec["teacher"],
                                      teacher_sha256="untrained-seed0", save_every_s=1e9, workers=spec["workers"])
        crops, extra = store.num_labels, {"decode_s": t_load, "bytes": store.nbytes}
    elif spec["pipeline"] == "hald":
        from baselines import hald

        crops = hald.relabel(spec["folder"], out, teacher, slc=sli * spec["ipc"], batch_size=B, workers=spec["workers"],
                             input_size=size)
        extra = {"bytes": dir_bytes(out)}
    else:
        from baselines import sre2l

        crops = sre2l.relabel(spec["folder"], out, teacher, epochs=sli, batch_size=B, workers=spec["workers"],
                              input_size=size)
        extra = {"bytes": dir_bytes(out)}
    s = time.perf_counter() - t0
    return {"crops": crops, "seconds": s, "crops_per_s": crops / s, **extra, **peak_memory()}


def _median_time(fn, reps=5):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure_open(spec) -> dict:
    """Time to open the labels, and to read the same bytes (page cache warm for both)."""
    tool, path = spec["pipeline"], spec["path"]
    files = [path] if os.path.isfile(path) else sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)

    def read_bytes():
        for f in files:
            with open(f, "rb") as fh:
                fh.read()

    read_bytes()
    if tool == "ours":
        from hald_ext.labels import LabelStore

        opened = lambda: LabelStore.open(path)  # noqa: E731  (validated, as training opens it)
    elif tool == "hald":
        from baselines import hald

        opened = lambda: hald.FKDConfigManager(path)  # noqa: E731  (train_fkd.py loads every epoch at start)
    else:  # SRe2L / FKD read one file per batch / per image while training: all of them once
        opened = lambda: [torch.load(f, weights_only=False) for f in files if f.endswith(".tar")]  # noqa: E731
    reps = 5 if tool == "ours" else 2
    extra = {}
    if tool == "ours":
        from hald_ext.labels import LabelStore

        extra["open_unvalidated_s"] = _median_time(lambda: LabelStore.open(path, validate=False), reps)
    return {"bytes": sum(os.path.getsize(f) for f in files), "files": len(files), "read_s": _median_time(read_bytes, reps),
            "open_s": _median_time(opened, reps), **extra, **peak_memory()}


MEASURES = {"epoch_theirs": measure_theirs, "epoch_ours": measure_ours, "relabel": measure_relabel,
            "open": measure_open}


def run_measure(spec: dict, timeout: float) -> dict:
    """One measurement in a fresh interpreter; its result (and peak memory) as a dict."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"measurement {spec.get('what')}/{spec.get('pipeline')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# =========================================================================================== driver
def median_rows(rows: list) -> dict:
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        out[key] = statistics.median(vals) if len(vals) == len(rows) else rows[0][key]
    out["runs"] = len(rows)
    return out


def interleaved(specs: dict, runs: int, timeout: float, log) -> dict:
    """{name: [result per run]}: every run measures each spec once; the order alternates by run."""
    names = list(specs)
    res = {n: [] for n in names}
    for r in range(runs):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            res[name].append(run_measure(specs[name], timeout))
            log(f"  run {r + 1}/{runs} {name}: {time.perf_counter() - t0:.1f} s wall")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="IPC 1 (SLI 2), one run, few batches: under 2 minutes")
    p.add_argument("--tag", default="", help="results file pipeline_cpu_<tag>.json (e.g. ipc50), not pipeline_cpu.json")
    p.add_argument("--work-dir", default=os.path.join("/tmp", "hald_bench_pipeline"),
                   help="cache of the generated images and label files (default: /tmp/hald_bench_pipeline)")
    p.add_argument("--ipcs", default="10,50", help="IPCs of the distilled sets (default: 10,50)")
    p.add_argument("--slc", type=int, default=100, help="HALD's SLC: SLI = SLC // IPC (default: 100, its default)")
    p.add_argument("--batch", type=int, default=256, help="batch of the label files and of training (default: 256)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="DataLoader workers (default: cores)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs of the epoch measurements at IPC <= 10")
    p.add_argument("--big-runs", type=int, default=1, help="interleaved runs of the epoch measurements at IPC > 10")
    p.add_argument("--epoch-batches", type=int, default=8,
                   help="batches timed per epoch measurement, every pipeline the same (samples/s; the epoch time is "
                        "extrapolated); 0: whole epochs (default: 8)")
    p.add_argument("--model-batches", type=int, default=2, help="batches timed with the ResNet-18 (default: 2)")
    p.add_argument("--model-runs", type=int, default=1, help="interleaved runs with the ResNet-18 (default: 1)")
    p.add_argument("--relabel-ipc", type=int, default=1, help="relabel benchmark: images per class (default: 1)")
    p.add_argument("--relabel-sli", type=int, default=2, help="relabel benchmark: crops per image (default: 2)")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(MEASURES[spec["what"]](spec)), flush=True)
        return 0
    return drive(args)


def drive(args) -> int:
    from baselines.images import SIZE, distilled_sets

    t_start = time.perf_counter()
    loads = [os.getloadavg()]

    def log(msg):
        print(msg, flush=True)

    if args.quick:
        args.ipcs, args.slc, args.runs, args.batch, args.epoch_batches = "1", 2, 1, 100, 0
        args.relabel_ipc, args.relabel_sli, args.model_batches, args.big_runs = 1, 1, 2, 1
    ipcs = [int(v) for v in args.ipcs.split(",")]
    work = os.path.join(args.work_dir, "quick") if args.quick else args.work_dir
    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    folders = distilled_sets(work, C, sorted(set(ipcs + [args.relabel_ipc])))
    log(f"images: {', '.join(f'IPC {i}: {f}' for i, f in folders.items())} ({time.perf_counter() - t0:.1f} s)")
    result = {"config": {"classes": C, "ipcs": ipcs, "slc": args.slc, "batch": args.batch, "workers": args.workers,
                         "temperature": T, "k": K, "crop": CROP, "model": "resnet18 (timm)", "model_size": MODEL_SIZE,
                         "model_batches": args.model_batches, "runs": args.runs, "big_runs": args.big_runs,
                         "quick": args.quick, "epoch_batches": args.epoch_batches,
                         "images": "synthetic 224-px JPEG (PIL default q75)",
                         "labels": "synthetic teacher logits in each tool's file layout (see docstring)",
                         "command": " ".join(sys.argv),
                         "notes": ["times on a shared machine: load_avg holds os.getloadavg() sampled through the run; "
                                   "the DataLoader pipelines run more processes (main + workers) than ours (one "
                                   "process, torch threads = cores), so on contended cores they get a larger share",
                                   "worker_peak_rss_mb is the largest child process's ru_maxrss; importing torch "
                                   "here starts a helper process of about 620 MB, so it is a floor, not a worker",
                                   "ResNet-18 rows: 64-px crops, the first model_batches batches only (CPU)"]},
              "ipc": {}}
    timeout = 3600
    for ipc in ipcs:
        sli = max(args.slc // ipc, 1)
        folder = folders[ipc]
        small = ipc <= 10
        t0 = time.perf_counter()
        labels = write_label_files(folder, os.path.join(work, f"labels_ipc{ipc}_sli{sli}_b{args.batch}"), ipc, sli,
                                   args.batch, with_fkd=small)
        store_path = os.path.join(work, f"store_ipc{ipc}_sli{sli}_b{args.batch}.safetensors")
        imp = import_store(labels["hald"], store_path)
        log(f"IPC {ipc}: SLI {sli}, label files and store ready ({time.perf_counter() - t0:.1f} s): import of the HALD "
            f"files {imp['import_s'] or float('nan'):.1f} s -> {imp['bytes'] / 1e6:.1f} MB")
        n_batches = math.ceil(C * ipc / args.batch)
        mb = args.epoch_batches if 0 < args.epoch_batches < n_batches else None
        runs = args.runs if small else args.big_runs
        base = {"folder": folder, "labels": labels, "store": store_path, "batch": args.batch, "workers": args.workers,
                "sli": sli, "size": CROP, "max_batches": mb}
        block = {"sli": sli, "images": C * ipc, "labels": C * ipc * sli, "import": imp, "epochs": {}, "not_run": {}}
        # Our resident cache holds the decoded set (3 x 224 x 224 bytes an image) and, while it is built,
        # the decoded list as well: skip our side where that would not fit in the memory free now.
        need = 2 * C * ipc * 3 * SIZE * SIZE
        avail = mem_available()
        ours_ok = need < 0.8 * avail
        if not ours_ok:
            block["not_run"]["ours"] = (f"decoding {C * ipc} images into the resident cache needs about "
                                        f"{need / 2**30:.1f} GiB while it is built; {avail / 2**30:.1f} GiB were free")
            log(f"IPC {ipc}: ours not run: {block['not_run']['ours']}")
        epoch_specs = {}
        for kind, tools in (("soft", ("ours", "hald", "sre2l", "fkd")), ("hard", ("ours", "hald"))):
            for tool in tools:
                if (tool == "ours" and not ours_ok) or (tool == "fkd" and "fkd" not in labels):
                    continue
                epoch_specs[f"{kind}/{tool}"] = {**base, "what": "epoch_ours" if tool == "ours" else "epoch_theirs",
                                                 "kind": kind, "pipeline": tool}
        log(f"IPC {ipc}: epochs ({'whole' if mb is None else f'first {mb} of {n_batches} batches'}, {runs} run(s))")
        for name, rows in interleaved(epoch_specs, runs, timeout, log).items():
            m = median_rows(rows)
            m["epoch_s_extrapolated"] = m["epoch_s"] * m["batches_per_epoch"] / m["batches"]
            m["samples_per_s"] = m["samples"] / m["epoch_s"]
            block["epochs"][name] = {"median": m, "runs": rows}
        loads.append(os.getloadavg())
        if ipc == min(ipcs):  # the model rows and storage once, on the smallest set
            model_specs = {}
            # --quick: one baseline with the model (the model's time is the same for every pipeline)
            soft_tools = ("ours", "hald") if args.quick else ("ours", "hald", "sre2l")
            for kind, tools in (("soft", soft_tools), ("hard", ("ours", "hald"))):
                for tool in tools:
                    model_specs[f"{kind}+model/{tool}"] = {**base, "what": "epoch_ours" if tool == "ours" else
                                                           "epoch_theirs", "kind": kind, "pipeline": tool,
                                                           "model": "resnet18", "size": MODEL_SIZE,
                                                           "max_batches": args.model_batches}
            log(f"IPC {ipc}: ResNet-18 at {MODEL_SIZE} px, first {args.model_batches} batches")
            for name, rows in interleaved(model_specs, args.model_runs, timeout, log).items():
                m = median_rows(rows)
                m["samples_per_s"] = m["samples"] / m["epoch_s"]
                block["epochs"][name] = {"median": m, "runs": rows}
            block["storage"] = storage(labels, store_path, imp, timeout, log)
            loads.append(os.getloadavg())
        result["ipc"][str(ipc)] = block
    result["relabel"] = relabel_bench(args, folders[args.relabel_ipc], work, timeout, log)
    loads.append(os.getloadavg())
    result["load_avg"] = [list(v) for v in loads]
    result["wall_s"] = time.perf_counter() - t_start
    summary = summarize(result)
    result["summary"] = summary
    print_summary(summary, result)
    name = f"pipeline_{'quick_' if args.quick else ''}{device_tag('cpu')}{'_' + args.tag if args.tag else ''}.json"
    rows = [{"name": k, **v} for k, v in summary.items()]
    path = write_results(name, payload("pipeline: this package against SRe2L / HALD / FKD's own pipelines", rows,
                                       **result))
    log(f"wrote {path} ({result['wall_s']:.0f} s)")
    return 0


def storage(labels, store_path, imp, timeout, log) -> dict:
    specs = {tool: {"what": "open", "pipeline": tool, "path": p} for tool, p in
             [("ours", store_path)] + [(t, labels[t]) for t in ("hald", "sre2l", "fkd") if t in labels]}
    log("storage: bytes and time to open")
    out = {name: median_rows(rows) for name, rows in interleaved(specs, 1, timeout, log).items()}
    out["ours"]["kl_to_teacher"] = imp["kl_to_teacher"]
    return out


def relabel_teachers(args) -> tuple:
    """The relabel teachers measured: a ResNet-18, and a linear probe (the data path's own cost);
    --quick measures the ResNet-18 only (each run is a fresh process: the probe's 15 s would take the
    quick mode past two minutes)."""
    return ("resnet18",) if args.quick else ("resnet18", "probe")


def relabel_bench(args, folder, work, timeout, log) -> dict:
    import shutil

    out = {"images": C * args.relabel_ipc, "sli": args.relabel_sli, "size": MODEL_SIZE, "batch": 128}
    for teacher in relabel_teachers(args):
        specs = {}
        for tool in ("ours", "hald") if args.quick else ("ours", "hald", "sre2l"):
            path = os.path.join(work, f"relabel_{tool}" + (".safetensors" if tool == "ours" else ""))
            specs[tool] = {"what": "relabel", "pipeline": tool, "folder": folder, "out": path, "size": MODEL_SIZE,
                           "batch": 128, "sli": args.relabel_sli, "ipc": args.relabel_ipc, "workers": args.workers,
                           "teacher": teacher}
        log(f"relabel: IPC {args.relabel_ipc} ({C * args.relabel_ipc} images) x SLI {args.relabel_sli}, "
            f"{MODEL_SIZE}-px crops, batch 128, teacher {teacher}")
        res = {}
        for name, rows in interleaved(specs, 1, timeout, log).items():
            res[name] = {"median": median_rows(rows), "runs": rows}
        for s in specs.values():
            if os.path.isdir(s["out"]):
                shutil.rmtree(s["out"], ignore_errors=True)
            elif os.path.exists(s["out"]):
                os.remove(s["out"])
        out[teacher] = res
    return out


def summarize(result) -> dict:
    out = {}
    for ipc, block in result["ipc"].items():
        ep = block["epochs"]
        for kind in ("soft", "hard", "soft+model", "hard+model"):
            ours = ep.get(f"{kind}/ours")
            if ours is None:
                continue
            o = ours["median"]
            for tool in ("hald", "sre2l", "fkd"):
                th = ep.get(f"{kind}/{tool}")
                if th is None:
                    continue
                t = th["median"]
                row = {"ipc": int(ipc), "kind": kind, "vs": tool,
                       "ours_samples_per_s": o["samples_per_s"], "theirs_samples_per_s": t["samples_per_s"],
                       "speedup": o["samples_per_s"] / t["samples_per_s"],
                       "ours_epoch_s": o.get("epoch_s_extrapolated", o["epoch_s"]),
                       "theirs_epoch_s": t.get("epoch_s_extrapolated", t["epoch_s"]),
                       "ours_first_batch_s": o["first_batch_s"], "theirs_first_batch_s": t["first_batch_s"],
                       "ours_peak_rss_mb": o["peak_rss_mb"],
                       "theirs_peak_rss_mb": t["peak_rss_mb"], "theirs_worker_peak_rss_mb": t["worker_peak_rss_mb"],
                       "measured_batches": o["batches"], "batches_per_epoch": o["batches_per_epoch"]}
                if kind == "soft" and tool == "hald":
                    row["target"] = TARGETS["soft_epoch_vs_hald"]
                    row["met"] = row["speedup"] >= row["target"]
                out[f"ipc{ipc}/{kind}/{tool}"] = row
        st = block.get("storage")
        if st:
            ours = st["ours"]
            for tool in [t for t in ("hald", "sre2l", "fkd") if t in st]:
                out[f"ipc{ipc}/storage/{tool}"] = {
                    "ipc": int(ipc), "kind": "storage", "vs": tool, "ours_bytes": ours["bytes"],
                    "theirs_bytes": st[tool]["bytes"], "smaller": st[tool]["bytes"] / ours["bytes"],
                    "ours_open_s": ours["open_s"], "theirs_open_s": st[tool]["open_s"],
                    **({"target": TARGETS["storage_vs_hald"], "met": st[tool]["bytes"] / ours["bytes"] >= 50}
                       if tool == "hald" else {})}
            out[f"ipc{ipc}/open/ours"] = {"ipc": int(ipc), "kind": "open", "vs": "reading the bytes",
                                          "open_s": ours["open_s"], "read_s": ours["read_s"],
                                          "open_unvalidated_s": ours["open_unvalidated_s"],
                                          "open_over_read": ours["open_s"] / ours["read_s"],
                                          "target": TARGETS["open_over_read"],
                                          "met": ours["open_s"] / ours["read_s"] <= TARGETS["open_over_read"]}
    rl = result["relabel"]
    for teacher in [t for t in ("resnet18", "probe") if t in rl]:
        for tool in [t for t in ("hald", "sre2l") if t in rl[teacher]]:
            o, t = rl[teacher]["ours"]["median"], rl[teacher][tool]["median"]
            row = {"kind": "relabel", "teacher": teacher, "vs": tool, "ours_crops_per_s": o["crops_per_s"],
                   "theirs_crops_per_s": t["crops_per_s"], "speedup": o["crops_per_s"] / t["crops_per_s"],
                   "ours_decode_s": o["decode_s"], "ours_seconds": o["seconds"], "theirs_seconds": t["seconds"],
                   "ours_peak_rss_mb": o["peak_rss_mb"], "theirs_peak_rss_mb": t["peak_rss_mb"]}
            if tool == "hald" and teacher == "resnet18":
                row["target"], row["met"] = TARGETS["relabel_vs_hald"], row["speedup"] >= TARGETS["relabel_vs_hald"]
            out[f"relabel/{teacher}/{tool}"] = row
    return out


def print_summary(summary, result) -> None:
    print(f"\n{'measure':<28}{'ours':>12}{'theirs':>12}{'ratio':>9}  target")
    for name, r in summary.items():
        if r["kind"] in ("soft", "hard", "soft+model", "hard+model"):
            a, b, ratio = r["ours_samples_per_s"], r["theirs_samples_per_s"], r["speedup"]
            unit = "samples/s"
        elif r["kind"] == "relabel":
            a, b, ratio, unit = r["ours_crops_per_s"], r["theirs_crops_per_s"], r["speedup"], "crops/s"
        elif r["kind"] == "storage":
            a, b, ratio, unit = r["ours_bytes"] / 1e6, r["theirs_bytes"] / 1e6, r["smaller"], "MB (x smaller)"
        else:
            a, b, ratio, unit = r["open_s"], r["read_s"], r["open_over_read"], "s open / s read"
        tgt = ""
        if "target" in r:
            tgt = f"{'met' if r['met'] else 'MISSED'} ({r['target']:g}x)"
        print(f"{name:<28}{a:>12.1f}{b:>12.1f}{ratio:>9.2f}  {tgt} [{unit}]")
    print(f"load average during the run: {result['load_avg']}")


if __name__ == "__main__":
    sys.exit(main())

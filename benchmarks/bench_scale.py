"""ImageNet scale: peak memory and time of `hald select`, `hald relabel` and one training epoch on
ImageNet-shaped folders of growing size, and decoded 224-px crops per second through the streaming
path against torchvision's ImageFolder + RandomResizedCrop DataLoader.

1. Folders (benchmarks/imagenet_like.py): 1,000 classes (n01440764-style names), JPEGs of ImageNet's
   size mix (mostly 500x375 / 375x500, some large, a few tiny; ~120 KB each at quality 90) plus the
   odd files ImageNet has (grayscale, CMYK, EXIF-rotated, a PNG under a .JPEG name, progressive).
   A pool of distinct files is generated once under --root/pool and bigger folders are filled with hard
   links to it: repeated files then come from the page cache, where real ImageNet reads from disk.
2. Commands, each a separate `python -m hald_ext.cli ...` process, one at a time: wall time, peak RSS
   of the largest process (ru_maxrss from wait4) and the sampled peak PSS summed over the command's
   process tree (DataLoader workers and DALI threads included), with its anonymous + shmem part (the
   data, independent of what else runs on the machine). A command over --max-rss-gb is killed
   and recorded as such (the machine is shared). The teacher of `relabel` is a small untrained
   resnet18 at 112 px (its cost per image is what matters here, not its labels); the epoch trains a
   resnet18 at 112 px. EXTRA_FLAGS forces streaming (--resident-budget 0).
3. Crops per second per core (same files, same order, workers, batch size; rounds interleaved, medians):
     torchvision : ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize
                   in a DataLoader;
     ours-dali / ours-torch : hald_ext.data.open_images + image_source(..., loader=...) prefetching the
                   planned batches, each batch cropped / flipped / normalised by ops.crop_and_lookup.
   When the streaming API is not in this build, "ours" rows say so and carry no figure.

    python benchmarks/bench_scale.py --quick                      # ~1k and 2k images
    python benchmarks/bench_scale.py --sizes 10000,50000,200000   # the full run
    python benchmarks/bench_scale.py --quick --tag before         # -> results/scale_cpu_before.json
    python benchmarks/bench_scale.py --package-root /other/checkout ...   # measure another checkout

Writes benchmarks/results/scale_<device>[_<tag>].json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagenet_like  # noqa: E402
from common import device_tag, payload, write_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Extra command-line flags per command: a resident budget of 0 forces the streaming path (decoded
# images are never all held); empty lists for a build without --resident-budget.
EXTRA_FLAGS: dict[str, list[str]] = {"select": [], "relabel": ["--resident-budget", "0"],
                                     "train": ["--resident-budget", "0"]}

TEACHER = "resnet18"          # relabel's teacher (untrained, saved once with the folder's 1000 classes)
TEACHER_SIZE = 112            # relabel crop size: reduced resolution to keep the CPU run short
TRAIN_MODEL = "resnet18"
TRAIN_SIZE = 112
DEVICE = "cpu"                # relabel / train --device (the crops comparison is on the CPU whatever this is)
BATCH = 64
SELECT_IPC = 10               # capped at half a class's images (select needs ipc <= images per class)
NUM_CLASSES = 1000
POOL_PER_CLASS = 10           # distinct pool files per class (10,000 files, ~1.1 GB)
CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------
# memory of a process tree
def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _pss_kb(pid: int) -> tuple[int, int]:
    """(PSS, anonymous + shmem PSS) in KiB. PSS splits shared pages between the processes that map
    them -- library files with every process on the machine that maps them too, so it moves with what
    else runs; the anonymous + shmem part is the process's data (shared only with its forks)."""
    pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    anon += int(line.split()[1])
    except OSError:
        pass
    return pss, anon


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run_child(cmd: list[str], *, log_path: str, timeout_s: float, max_rss_mb: float,
              min_free_mb: float = 0.0, interval_s: float = 0.2, package_root: str = REPO) -> dict:
    """Run one command; wall time, exit code, peak RSS (largest process of its tree, from wait4) and
    peak PSS summed over its tree (sampled every interval_s). Killed (whole process group) when the
    tree's PSS passes max_rss_mb, the machine's available memory falls under min_free_mb (it is
    shared) or the wall time passes timeout_s. The command imports hald_ext from `package_root`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=package_root,
                                start_new_session=True)
        peak_pss_kb = peak_anon_kb = 0
        killed = None
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            sample = [_pss_kb(p) for p in _tree(proc.pid)]
            pss, anon = sum(x[0] for x in sample), sum(x[1] for x in sample)
            peak_pss_kb, peak_anon_kb = max(peak_pss_kb, pss), max(peak_anon_kb, anon)
            if killed is None and pss > max_rss_mb * 1024:
                killed = f"killed: process tree PSS {pss / 1024:.0f} MB over --max-rss-gb"
            elif killed is None and mem_available_mb() < min_free_mb:
                killed = (f"killed: the machine's available memory fell under --min-free-gb "
                          f"(process tree PSS {pss / 1024:.0f} MB)")
            elif killed is None and time.perf_counter() - t0 > timeout_s:
                killed = f"killed: over --timeout {timeout_s:.0f} s"
            if killed is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(interval_s)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "returncode": proc.returncode, "killed": killed,
            "peak_rss_mb": ru.ru_maxrss / 1024, "peak_tree_pss_mb": peak_pss_kb / 1024,
            "peak_tree_anon_mb": peak_anon_kb / 1024}


def _tail(path: str, n: int = 6) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:]).strip()


# ---------------------------------------------------------------------------------------------------
# the commands
def teacher_checkpoint(root: str) -> str:
    """An untrained TEACHER with NUM_CLASSES outputs, saved once (seeded) as a plain state dict."""
    path = os.path.join(root, f"teacher_{TEACHER}_{NUM_CLASSES}.pth")
    if not os.path.exists(path):
        import torch

        from hald_ext.models import create_model

        torch.manual_seed(0)
        model = create_model(TEACHER, NUM_CLASSES)
        torch.save(model.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def select_ipc(n_images: int) -> int:
    return max(1, min(SELECT_IPC, n_images // NUM_CLASSES // 2))


def commands(folder: str, n_images: int, work: str, checkpoint: str) -> list[tuple[str, list[str], int]]:
    """(name, argv, images processed) of each measured command on one folder."""
    py = [sys.executable, "-m", "hald_ext.cli"]
    ipc = select_ipc(n_images)
    store = os.path.join(work, "labels.safetensors")
    return [
        ("select", py + ["select", "--data", folder, "--ipc", str(ipc), "--out", os.path.join(work, "sel")]
         + EXTRA_FLAGS["select"], n_images),
        ("relabel", py + ["relabel", folder, "--out", store, "--model", TEACHER, "--checkpoint", checkpoint,
                          "--size", str(TEACHER_SIZE), "--sli", "1", "--k", "5", "--batch-size", str(BATCH),
                          "--device", DEVICE, "--restart", "--no-progress"] + EXTRA_FLAGS["relabel"], n_images),
        ("train", py + ["train", "--data", folder, "--labels", store, "--schedule", "hard-only", "--epochs", "1",
                        "--model", TRAIN_MODEL, "--img-size", str(TRAIN_SIZE), "--batch-size", str(BATCH),
                        "--device", DEVICE, "--output", os.path.join(work, "runs"), "--experiment", "epoch",
                        "--no-progress"] + EXTRA_FLAGS["train"], n_images),
    ]


def measure_commands(folders: dict, args, work_root: str, checkpoint: str, on_row=None) -> list[dict]:
    rows = []
    for rep in range(args.repeats):
        for n, folder in folders.items():
            work = os.path.join(work_root, f"n{n}")
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            failed = set()
            for name, cmd, items in commands(folder, n, work, checkpoint):
                if name not in args.commands:
                    continue
                if n > args.limits.get(name, n):
                    failed.add(name)
                    rows.append({"command": name, "images": n, "repeat": rep, "ok": False, "skipped": True,
                                 "error": f"skipped: over --limit {name}={args.limits[name]}"})
                    print(f"  {name:8s} n={n:7d}  skipped (--limit {name}={args.limits[name]})", flush=True)
                    continue
                if name == "train" and "relabel" in failed:
                    cmd = _without(cmd, "--labels")  # hard-only needs no store; measure it anyway
                log = os.path.join(work_root, f"{name}_n{n}_r{rep}.log")
                r = run_child(cmd, log_path=log, timeout_s=args.timeout, max_rss_mb=args.max_rss_gb * 1024,
                              min_free_mb=args.min_free_gb * 1024, package_root=args.package_root)
                ok = r["returncode"] == 0 and r["killed"] is None
                if not ok:
                    failed.add(name)
                row = {"command": name, "images": n, "repeat": rep, "ok": ok, **r,
                       "images_per_s": items / r["wall_s"] if ok else None,
                       "argv": " ".join(cmd[1:]), "log": log}
                if not ok:
                    row["error"] = r["killed"] or _tail(log)
                rows.append(row)
                status = "ok" if ok else ("KILLED" if r["killed"] else f"FAILED rc={r['returncode']}")
                print(f"  {name:8s} n={n:7d}  {r['wall_s']:8.1f} s  rss {r['peak_rss_mb']:7.0f} MB  "
                      f"tree pss {r['peak_tree_pss_mb']:7.0f} MB  anon {r['peak_tree_anon_mb']:7.0f} MB  {status}",
                      flush=True)
                if not ok:
                    print("    " + row["error"].replace("\n", "\n    "), flush=True)
                if on_row is not None:
                    on_row(rows)
            shutil.rmtree(work, ignore_errors=True)
    return rows


def _without(cmd: list[str], flag: str) -> list[str]:
    i = cmd.index(flag)
    return cmd[:i] + cmd[i + 2:]


def _ratios(s: dict, ref: dict) -> dict:
    return {"size_ratio": s["images"] / ref["images"], "time_ratio": s["wall_s"] / ref["wall_s"],
            "pss_ratio": s["peak_tree_pss_mb"] / max(ref["peak_tree_pss_mb"], 1e-9),
            "rss_ratio": s["peak_rss_mb"] / max(ref["peak_rss_mb"], 1e-9),
            "anon_ratio": s["peak_tree_anon_mb"] / max(ref["peak_tree_anon_mb"], 1e-9)}


def summarize_commands(rows: list[dict]) -> list[dict]:
    """Median over repeats per (command, size), and ratios against the previous size (`vs_previous`,
    when that one ran) and the smallest size that ran (`vs_smallest`)."""
    out = []
    for name in dict.fromkeys(r["command"] for r in rows):
        prev = first = None
        for n in sorted({r["images"] for r in rows if r["command"] == name}):
            rs = [r for r in rows if r["command"] == name and r["images"] == n and r["ok"]]
            s = {"command": name, "images": n, "ok": bool(rs)}
            if not rs:
                s["error"] = next((r.get("error", "") for r in rows
                                   if r["command"] == name and r["images"] == n), "").split("\n")[-1]
            else:
                s.update(wall_s=statistics.median(r["wall_s"] for r in rs),
                         peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in rs),
                         peak_tree_pss_mb=statistics.median(r["peak_tree_pss_mb"] for r in rs),
                         peak_tree_anon_mb=statistics.median(r["peak_tree_anon_mb"] for r in rs))
                s["images_per_s"] = n / s["wall_s"]
                if prev is not None and prev["ok"]:
                    s["vs_previous"] = _ratios(s, prev)
                if first is not None and first is not prev:
                    s["vs_smallest"] = _ratios(s, first)
                first = first or s
            out.append(s)
            prev = s
    return out


# ---------------------------------------------------------------------------------------------------
# crops per second
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def torchvision_crops(folder: str, ids, workers: int, batch: int):
    """Crops/s of torchvision's training input pipeline over `ids` (in order), after the first batch;
    (crops_per_s, first_batch_s)."""
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(CROP), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = torch.utils.data.Subset(datasets.ImageFolder(folder, transform=tf), ids.tolist())
    t0 = time.perf_counter()
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers)
    count, t1 = 0, None
    for x, _ in dl:
        if t1 is None:
            t1 = time.perf_counter()
            continue
        count += x.shape[0]
    t2 = time.perf_counter()
    del dl
    return count / (t2 - t1), t1 - t0


def streaming_api():
    """(open_images, image_source, crop_and_lookup) when this build has the streaming folder API,
    else the reason it is not measured."""
    try:
        from hald_ext import data
        from hald_ext.ops import crop_and_lookup
    except Exception as e:  # noqa: BLE001  (a build without the extension: say why)
        return None, f"hald_ext not importable: {e}"
    if not hasattr(data, "open_images"):
        return None, "not measured: hald_ext.data.open_images (the streaming folder API) is not in this build"
    return (data.open_images, data.image_source, crop_and_lookup), None


def _layout(b) -> dict:
    """crop_and_lookup's image layout keywords of a batch (builds before packed batches: sizes only)."""
    return b.crop_kwargs() if hasattr(b, "crop_kwargs") else {"image_sizes": b.image_sizes}


def ours_crops(api, folder: str, ids, workers: int, batch: int, loader: str):
    import inspect

    import torch

    open_images, image_source, crop_and_lookup = api
    images = open_images(folder)
    plan = [torch.from_numpy(ids[i:i + batch]).to(torch.int64) for i in range(0, len(ids), batch)]
    kw = {"device": "cpu", "max_bytes": 0, "loader": loader}
    params = inspect.signature(image_source).parameters
    for name in ("workers", "num_workers", "num_threads"):
        if name in params:
            kw[name] = workers
            break
    t0 = time.perf_counter()
    src = image_source(images, **kw)
    src.prefetch(plan)
    count, t1 = 0, None
    for step, ids_b in enumerate(plan):
        b = src.batch(ids_b)
        r = crop_and_lookup(b.images, b.image_ids, CROP, **_layout(b), seed=step, offset=0,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_prob=0.5,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
        out = r.crops
        if t1 is None:
            t1 = time.perf_counter()
            continue
        count += out.shape[0]
    t2 = time.perf_counter()
    close = getattr(src, "close", None)
    if close is not None:
        close()
    del src
    return count / (t2 - t1), t1 - t0


def measure_crops(folder: str, n_folder: int, args) -> dict:
    import numpy as np

    ids = np.random.default_rng(0).permutation(n_folder)[:args.crop_images].astype(np.int64)
    api, why = streaming_api()
    variants = ["torchvision", "ours-dali", "ours-torch"]
    results = {v: [] for v in variants}
    errors = {}
    first = {v: [] for v in variants}
    for rnd in range(args.rounds):
        order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]  # interleaved, rotated
        for v in order:
            if v != "torchvision" and (api is None or v in errors):
                continue
            try:
                if v == "torchvision":
                    cps, fb = torchvision_crops(folder, ids, args.workers, BATCH)
                else:
                    cps, fb = ours_crops(api, folder, ids, args.workers, BATCH, v.split("-")[1])
            except Exception as e:  # noqa: BLE001  (recorded, not hidden)
                errors[v] = f"{type(e).__name__}: {e}"
                print(f"  {v}: failed: {errors[v]}", flush=True)
                continue
            results[v].append(cps)
            first[v].append(fb)
            print(f"  round {rnd}  {v:12s} {cps:8.1f} crops/s  (first batch after {fb:.1f} s)", flush=True)
            gc.collect()
    cores = _cores()
    rows = []
    base = statistics.median(results["torchvision"]) if results["torchvision"] else None
    for v in variants:
        row = {"variant": v, "crops_per_s": None, "crops_per_s_per_core": None, "vs_torchvision": None}
        if results[v]:
            m = statistics.median(results[v])
            row.update(crops_per_s=m, crops_per_s_per_core=m / cores, all_crops_per_s=results[v],
                       first_batch_s=statistics.median(first[v]),
                       vs_torchvision=(m / base) if base else None)
        elif v in errors:
            row["error"] = errors[v]
        else:
            row["error"] = why
        rows.append(row)
    return {"folder": folder, "folder_images": n_folder, "images_measured": len(ids), "workers": args.workers,
            "batch": BATCH, "crop": CROP, "cores": cores, "rounds": args.rounds, "rows": rows,
            "target": "ours-dali >= 1.5x torchvision (crops per second per core)",
            "note": "crops/s counted after the first batch (steady state); per core = crops/s / cores "
                    "available to the process; torchvision decodes with PIL in DataLoader workers"}


# ---------------------------------------------------------------------------------------------------
def print_tables(summary: list[dict], crops: dict | None) -> None:
    if summary:
        print("\ncommand     images    wall s   images/s   peak RSS MB   tree PSS MB  tree anon MB   x size  x time"
              "  x anon")
    for s in summary:
        if not s["ok"]:
            print(f"{s['command']:10s} {s['images']:7d}    {s.get('error') or 'failed'}")
            continue
        v = s.get("vs_previous")
        ratios = (f"  {v['size_ratio']:6.1f}  {v['time_ratio']:6.2f}  {v['anon_ratio']:6.2f}" if v else "")
        print(f"{s['command']:10s} {s['images']:7d}  {s['wall_s']:8.1f}  {s['images_per_s']:9.1f}  "
              f"{s['peak_rss_mb']:12.0f}  {s['peak_tree_pss_mb']:12.0f}  {s['peak_tree_anon_mb']:12.0f}{ratios}")
    if crops:
        print(f"\ncrops of {crops['crop']} px, {crops['images_measured']} images of {crops['folder']}, "
              f"{crops['workers']} workers, batch {crops['batch']}, {crops['cores']} cores, medians of "
              f"{crops['rounds']} interleaved rounds")
        for r in crops["rows"]:
            if r["crops_per_s"] is None:
                print(f"  {r['variant']:12s}  -- {r['error']}")
            else:
                vs = f"  {r['vs_torchvision']:.2f}x torchvision" if r["vs_torchvision"] else ""
                print(f"  {r['variant']:12s} {r['crops_per_s']:8.1f} crops/s  "
                      f"{r['crops_per_s_per_core']:7.1f} per core{vs}")


def main(argv=None) -> int:
    global TEACHER, TEACHER_SIZE, TRAIN_MODEL, TRAIN_SIZE, DEVICE  # --teacher ... override the defaults above
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "scale"), help="pool, folders, teacher and scratch go here")
    p.add_argument("--sizes", default="10000,50000,200000", help="folder sizes, comma-separated")
    p.add_argument("--quick", action="store_true", help="sizes 1000,2000, fewer crop measurements")
    p.add_argument("--commands", default="select,relabel,train", help="which commands to measure")
    p.add_argument("--no-crops", action="store_true", help="skip the crops-per-second comparison")
    p.add_argument("--crops-only", action="store_true", help="only the crops-per-second comparison")
    p.add_argument("--crop-images", type=int, default=None, help="images per crop measurement (default "
                   "1536; quick 384)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved crop rounds (default 3; quick 2)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the cores)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of every command (median)")
    p.add_argument("--limit", default="", help="run a command only on folders up to N images, e.g. "
                   "relabel=50000,train=50000 (larger sizes are recorded as skipped)")
    p.add_argument("--jobs", type=int, default=1, help="processes generating the pool")
    p.add_argument("--max-rss-gb", type=float, default=10.0, help="kill a command whose tree passes this")
    p.add_argument("--min-free-gb", type=float, default=2.0,
                   help="kill a command when the machine's available memory falls under this")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="kill a command running longer (s)")
    p.add_argument("--teacher", default=TEACHER, help="relabel's teacher model (timm name)")
    p.add_argument("--teacher-size", type=int, default=TEACHER_SIZE, help="relabel crop size")
    p.add_argument("--train-model", default=TRAIN_MODEL, help="the epoch's student model (timm name)")
    p.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="the epoch's crop size")
    p.add_argument("--package-root", default=REPO, help="repository the commands import hald_ext from "
                   "(default: this one)")
    p.add_argument("--label", default="", help="what code this run measured, recorded in the results")
    p.add_argument("--device", default="cpu", help="--device of relabel and train (cpu | cuda); results file "
                   "scale_<cpu | GPU name>.json")
    p.add_argument("--tag", default="", help="results file scale_cpu_<tag>.json (e.g. before)")
    args = p.parse_args(argv)
    TEACHER, TEACHER_SIZE = args.teacher, args.teacher_size
    TRAIN_MODEL, TRAIN_SIZE = args.train_model, args.train_size
    DEVICE = args.device
    sys.path.insert(0, args.package_root)  # the crops measurement imports the package the commands run
    if args.quick:
        args.sizes = "1000,2000"
    args.crop_images = args.crop_images or (384 if args.quick else 1536)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.workers = args.workers or _cores()
    args.commands = [c for c in args.commands.split(",") if c]
    args.limits = {k: int(v) for k, v in (item.split("=") for item in args.limit.split(",") if item)}
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)

    folders = {}
    for n in sizes:
        path = imagenet_like.folder_path(args.root, n)
        if not imagenet_like.folder_ready(path, n):
            print(f"generating {path} (pool under {args.root}/pool; kept for later runs)", flush=True)
            imagenet_like.ensure(args.root, [n], num_classes=NUM_CLASSES, per_class=POOL_PER_CLASS,
                                 jobs=args.jobs)
        folders[n] = path
    infos = {n: imagenet_like.folder_info(path) for n, path in folders.items()}
    load_before = os.getloadavg()
    work_root = os.path.join(args.root, "work")
    os.makedirs(work_root, exist_ok=True)

    import hald_ext

    name = f"scale_{device_tag(DEVICE)}" + (f"_{args.tag}" if args.tag else "") + ".json"
    notes = [
        "folders are hard links into a pool of distinct files: repeated files come from the page cache, "
        "where real ImageNet reads every file from disk",
        f"relabel: untrained {TEACHER} teacher at {TEACHER_SIZE} px, 1 crop per image, k 5; train: one "
        f"hard-only epoch of {TRAIN_MODEL} at {TRAIN_SIZE} px, batch {BATCH}",
        "peak_rss_mb: the largest single process (wait4 ru_maxrss); peak_tree_pss_mb: PSS summed over the "
        "command's process tree, sampled every 0.2 s (library pages split with every process on the machine "
        "that maps them); peak_tree_anon_mb: its anonymous + shmem part, the data (judge flatness on it)",
        "the machine is shared with other jobs: see machine.load_avg_1m and load_avg_before/after",
    ]
    config = {"sizes": sizes, "extra_flags": EXTRA_FLAGS, "teacher": TEACHER, "teacher_size": TEACHER_SIZE,
              "train_model": TRAIN_MODEL, "train_size": TRAIN_SIZE, "batch": BATCH,
              "select_ipc": {str(n): select_ipc(n) for n in sizes}, "quick": args.quick,
              "repeats": args.repeats, "limits": args.limits, "max_rss_gb": args.max_rss_gb, "min_free_gb": args.min_free_gb,
              "hald_ext_version": getattr(hald_ext, "__version__", None), "device": DEVICE, "argv": sys.argv[1:],
              "package_root": args.package_root}

    def save(rows, summary, crops, complete):
        out = payload("scale", rows, label=args.label, summary=summary, crops=crops, complete=complete,
                      folders={str(k): v for k, v in infos.items()}, config=config,
                      load_avg_before=load_before, load_avg_after=os.getloadavg(), notes=notes)
        return write_results(name, out)

    rows, summary = [], []
    if not args.crops_only:
        checkpoint = teacher_checkpoint(args.root)
        print(f"commands on folders of {sizes} images (one process at a time)", flush=True)
        rows = measure_commands(folders, args, work_root, checkpoint,
                                on_row=lambda rs: save(rs, summarize_commands(rs), None, False))
        summary = summarize_commands(rows)
    crops = None
    if not args.no_crops:
        n0 = sizes[0]
        print(f"crops per second on {folders[n0]}", flush=True)
        crops = measure_crops(folders[n0], n0, args)
    print_tables(summary, crops)
    print("\nwrote", save(rows, summary, crops, True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

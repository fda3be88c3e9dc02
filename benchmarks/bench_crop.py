"""Crops per second of crop_and_lookup against the usual ways of making random-resized crops, per
output size, batch size and output dtype.

Every method turns uint8 images (already decoded, in memory) into a batch of normalised crops
[B, 3, S, S] with a random box (torchvision's RRC rule, scale 0.08-1), a random flip and ImageNet
mean/std:
  fused            hald_ext.ops.crop_and_lookup, fp32 NCHW            (CPU)
  fused_bf16       the same, bf16 output                              (CPU)
  tv_per_sample    torchvision v2 RandomResizedCrop + RandomHorizontalFlip + ToDtype + Normalize on
                   each CHW uint8 image, then stack (the FKD / SRe2L data path)
  tv_batched       the same v2 transforms on a whole [B, 3, H, W] uint8 batch (one box for the batch:
                   an upper bound for torchvision's kernels, not the same augmentation)
  reference        hald_ext.reference.crop_reference (the tests' ground truth: per-sample float path)
  dali_cpu         DALI, CPU-only pipeline: external_source -> fn.random_resized_crop ->
                   fn.crop_mirror_normalize (coin-flip mirror), num_threads = the torch thread count
  fused_cuda, fused_cuda_bf16, dali_gpu   the same on the GPU, when one is present (images resident
                   on the device: the resident cache)
Methods run interleaved in several rounds and the median is kept, so load from other processes hits
all of them alike; every method runs at each of --threads (torch intra-op threads, DALI num_threads)
and is reported at its best. The fused rows carry their speed-up over tv_per_sample and dali_cpu
measured in the same run, and the minor page faults per call (the cost of a fresh output buffer).

    python benchmarks/bench_crop.py                    # S = 224, batches 32 64 256 -> results/crop_cpu.json
    python benchmarks/bench_crop.py --quick            # one round, short timings, 2 threads only
    python benchmarks/bench_crop.py --sizes 224 --batches 1024 8192 --methods fused_cuda fused_cuda_bf16
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hald_ext  # noqa: E402
from common import device_tag, payload, per_second, sync, write_results  # noqa: E402
from hald_ext.ops import crop_and_lookup  # noqa: E402
from hald_ext.ops.crop import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from hald_ext.reference import crop_reference  # noqa: E402

BASELINES = ("tv_per_sample", "dali_cpu")  # the fused rows' speed-ups are over these (same run)


def versions() -> dict:
    """Versions of the libraries compared (absent ones are left out)."""
    out = {}
    for name, module in (("torchvision", "torchvision"), ("dali", "nvidia.dali")):
        try:
            out[name] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            pass
    return out


# ------------------------------------------------------------------------------------------- methods
def fused_method(images, batch, size, device, dtype=torch.float32):
    imgs = images.to(device)
    ids = torch.arange(batch, device=device) % imgs.shape[0]
    step = [0]

    def run():
        step[0] += 1
        out = crop_and_lookup(imgs, ids, size, seed=0, offset=step[0], out_dtype=dtype, check=False)
        return out.crops
    return run


def tv_per_sample_method(images, batch, size):
    from torchvision.transforms import v2

    chw = [im.permute(2, 0, 1).contiguous() for im in images]
    tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def run():
        return torch.stack([tf(chw[i % len(chw)]) for i in range(batch)])
    return run


def tv_batched_method(images, batch, size):
    from torchvision.transforms import v2

    nchw = images[torch.arange(batch) % images.shape[0]].permute(0, 3, 1, 2).contiguous()
    tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return lambda: tf(nchw)


def reference_method(images, batch, size):
    ids = torch.arange(batch) % images.shape[0]
    boxes_flips = crop_and_lookup(images, ids, size, seed=0)
    return lambda: crop_reference(images, ids, size, boxes_flips.boxes, boxes_flips.flips)


def dali_method(images, batch, size, gpu: bool):
    from nvidia.dali import fn, pipeline_def, types

    arrays = [images[i % images.shape[0]].numpy() for i in range(batch)]
    mean = [m * 255 for m in IMAGENET_MEAN]
    std = [s * 255 for s in IMAGENET_STD]

    @pipeline_def(batch_size=batch, num_threads=torch.get_num_threads(), device_id=0 if gpu else None, seed=0,
                  prefetch_queue_depth=2)
    def pipe():
        im = fn.external_source(source=lambda: arrays, layout="HWC", dtype=types.UINT8)
        if gpu:
            im = im.gpu()
        im = fn.random_resized_crop(im, size=[size, size], random_area=[0.08, 1.0], antialias=True)
        return fn.crop_mirror_normalize(im, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                        mirror=fn.random.coin_flip())

    p = pipe()
    p.build()
    return lambda: p.run()


def method_table(images, gpu: bool) -> dict:
    """name: (factory of (size, batch), device to synchronise)."""
    methods = {
        "fused": (lambda s, b: fused_method(images, b, s, "cpu"), "cpu"),
        "fused_bf16": (lambda s, b: fused_method(images, b, s, "cpu", torch.bfloat16), "cpu"),
        "tv_per_sample": (lambda s, b: tv_per_sample_method(images, b, s), "cpu"),
        "tv_batched": (lambda s, b: tv_batched_method(images, b, s), "cpu"),
        "dali_cpu": (lambda s, b: dali_method(images, b, s, gpu=False), "cpu"),
        "reference": (lambda s, b: reference_method(images, b, s), "cpu"),
    }
    if gpu:
        methods["fused_cuda"] = (lambda s, b: fused_method(images, b, s, "cuda"), "cuda")
        methods["fused_cuda_bf16"] = (lambda s, b: fused_method(images, b, s, "cuda", torch.bfloat16), "cuda")
        methods["dali_gpu"] = (lambda s, b: dali_method(images, b, s, gpu=True), "cuda")
    return methods


# ------------------------------------------------------------------------------------------- timing
def minor_faults_per_call(run, device, calls=5) -> float:
    run()
    sync(device)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        run()
    sync(device)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / calls


def bench_point(size, batch, rounds, seconds, methods, threads):
    """Rows for one (size, batch): each method at its best thread count (median of the rounds)."""
    res = {}
    for t in threads:
        torch.set_num_threads(t)  # DALI pipelines are built with the same thread count
        # Page faults are counted for the whole process, so the fused methods are measured before any
        # other method exists (DALI's pipelines prefetch, and fault, on their own threads).
        gc.collect()
        faults = {name: minor_faults_per_call(make(size, batch), device)
                  for name, (make, device) in methods.items() if name.startswith("fused")}
        built = {}
        for name, (make, device) in methods.items():
            try:
                built[name] = (make(size, batch), device)
            except Exception as e:  # a missing optional backend is reported, not fatal
                print(f"  {name}: unavailable ({type(e).__name__}: {e})")
        samples = {name: [] for name in built}
        for _ in range(rounds):  # interleaved, so load from other processes hits every method alike
            for name, (run, device) in built.items():
                samples[name].append(per_second(run, batch, device, warmup=1, min_time=seconds))
        for name, v in samples.items():
            r = res.setdefault(name, {"size": size, "batch": batch, "method": name, "by_threads": {}, "rounds": {}})
            r["by_threads"][t] = statistics.median(v)
            r["rounds"][t] = v
            if name in faults:
                r.setdefault("minor_faults_per_call", {})[t] = faults[name]
        del built
    for r in res.values():
        r["best_threads"] = max(r["by_threads"], key=r["by_threads"].get)
        r["crops_per_s"] = r["by_threads"][r["best_threads"]]
    for r in res.values():
        if r["method"].startswith("fused"):
            r["speedup"] = {b: r["crops_per_s"] / res[b]["crops_per_s"] for b in BASELINES if b in res}
    return list(res.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--source", type=int, default=256, help="source images are source x source")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="per method per round")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts to try (default: 1 and all); each method is reported at its best")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="methods to run (default: all available; see the list above)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one round of 0.3 s per method, all threads only")
    ap.add_argument("--out", default=None, help="result file name under benchmarks/results (or a path)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 0.3
    if args.threads is None:
        args.threads = [torch.get_num_threads()] if args.quick else sorted({1, torch.get_num_threads()})

    gpu = torch.cuda.is_available() and hald_ext.build_info()["cuda_available"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, args.source, args.source, 3), dtype=torch.uint8, generator=g)
    methods = method_table(images, gpu)
    if args.no_reference or args.quick:
        methods.pop("reference")
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            ap.error(f"unknown or unavailable methods {sorted(unknown)}; choose from {sorted(methods)}")
        methods = {k: v for k, v in methods.items() if k in args.methods}

    rows = []
    load_start = list(os.getloadavg())
    for size in args.sizes:
        for batch in args.batches:
            print(f"S = {size} ({args.source} -> {size}), batch {batch}:", flush=True)
            for r in bench_point(size, batch, args.rounds, args.seconds, methods, args.threads):
                per = "  ".join(f"{t} thr: {v:8.0f}" for t, v in r["by_threads"].items())
                extra = "  ".join(f"{v:5.2f}x {b}" for b, v in r.get("speedup", {}).items())
                faults = r.get("minor_faults_per_call")
                if faults:
                    extra += f"  ({max(faults.values()):.0f} minor faults/call)"
                print(f"  {r['method']:16s} {r['crops_per_s']:9.0f} crops/s (best; {per})  {extra}", flush=True)
                rows.append(r)
    result = payload("crop", rows, config=vars(args), versions=versions(),
                     load_average={"start": load_start, "end": list(os.getloadavg())})
    name = args.out or f"crop_{device_tag('cuda') if gpu else 'cpu'}.json"
    print(f"wrote {write_results(name, result)}")


if __name__ == "__main__":
    main()

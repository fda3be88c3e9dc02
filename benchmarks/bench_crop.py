"""Crops per second of the fused crop op against the usual CPU data paths.

    python benchmarks/bench_crop.py            # every config
    python benchmarks/bench_crop.py --quick    # 256 -> 224 only

Candidates (all: random-resized crop + horizontal flip + mean/std normalisation to float32 NCHW):
  fused       hald_ext.ops.crop_and_lookup, fresh seeded crops, one call per batch (uint8 NHWC source)
  tv_sample   torchvision v2 per sample: RandomResizedCrop + RandomHorizontalFlip + ToDtype + Normalize
              (the FKD-style path; what TorchBatchSource does)
  tv_batch    torchvision v2 on the batch tensor (one crop for the whole batch: a lower bound on cost)
  dali_cpu    DALI CPU-only (device_id=None): fn.random_resized_crop + fn.crop_mirror_normalize
Writes benchmarks/results/crop_cpu.json.
"""
from __future__ import annotations

import argparse
import os
import sys

# Output batches are tens of MB: on transparent huge pages, or every candidate pays a page fault per
# 4 KiB of fresh output (as in bench_loss.py).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's hald_ext
from common import machine, time_fn, write_results  # noqa: E402

from hald_ext.ops import crop_and_lookup  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CONFIGS = [  # (name, H, W, S, B)
    ("256to224", 256, 256, 224, 64),
    ("28to32", 28, 28, 32, 256),
    ("28to64", 28, 28, 64, 256),
]


def bench_fused(images_nhwc, S, B):
    ids = torch.randint(0, images_nhwc.shape[0], (B,))
    state = {"step": 0}

    def fn():
        state["step"] += 1
        return crop_and_lookup(images_nhwc, ids, out_size=S, seed=0, step=state["step"], mean=MEAN, std=STD)
    return fn


def bench_tv_sample(images_nchw, S, B):
    tf = v2.Compose([v2.RandomResizedCrop(S, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ids = torch.randint(0, images_nchw.shape[0], (B,)).tolist()
    return lambda: torch.stack([tf(images_nchw[i]) for i in ids])


def bench_tv_batch(images_nchw, S, B):
    tf = v2.Compose([v2.RandomResizedCrop(S, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ids = torch.randint(0, images_nchw.shape[0], (B,))
    batch = images_nchw[ids].contiguous()
    return lambda: tf(batch)


def bench_dali(images_nhwc, S, B, threads):
    from nvidia.dali import fn, pipeline_def, types  # noqa: PLC0415

    arrs = [images_nhwc[i].numpy() for i in np.random.default_rng(0).integers(0, images_nhwc.shape[0], B)]

    @pipeline_def(batch_size=B, num_threads=threads, device_id=None, prefetch_queue_depth=1, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: arrs, layout="HWC", dtype=types.UINT8)
        x = fn.random_resized_crop(x, size=[S, S], antialias=True)
        return fn.crop_mirror_normalize(x, mirror=fn.random.coin_flip(), mean=[m * 255 for m in MEAN],
                                        std=[s * 255 for s in STD], dtype=types.FLOAT, output_layout="CHW")
    p = pipe()
    p.build()
    return lambda: p.run()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--min-time", type=float, default=1.0)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    results = {"machine": machine(), "threads": threads, "configs": {}}
    for name, H, W, S, B in CONFIGS[:1] if args.quick else CONFIGS:
        g = torch.Generator().manual_seed(0)
        nhwc = torch.randint(0, 256, (max(B, 64), H, W, 3), dtype=torch.uint8, generator=g)
        nchw = nhwc.permute(0, 3, 1, 2).contiguous()
        row = {}
        cands = {"fused": lambda: bench_fused(nhwc, S, B), "tv_sample": lambda: bench_tv_sample(nchw, S, B),
                 "tv_batch": lambda: bench_tv_batch(nchw, S, B), "dali_cpu": lambda: bench_dali(nhwc, S, B, threads)}
        for cname, make in cands.items():
            try:
                fn = make()
                ms = time_fn(fn, "cpu", warmup=2, min_time=args.min_time, max_reps=50)
                row[cname] = {"ms_per_batch": ms, "crops_per_s": B / (ms * 1e-3)}
            except Exception as e:  # noqa: BLE001  (a missing optional baseline is reported, not fatal)
                row[cname] = {"error": f"{type(e).__name__}: {e}"[:300]}
        f = row["fused"].get("crops_per_s")
        for cname in ("tv_sample", "tv_batch", "dali_cpu"):
            c = row[cname].get("crops_per_s")
            if f and c:
                row[f"fused_vs_{cname}"] = f / c
        results["configs"][name] = {"H": H, "W": W, "S": S, "B": B, **row}
        print(f"{name:9s} B={B:4d}  " + "  ".join(
            f"{c}={row[c]['crops_per_s']:.0f}/s" if "crops_per_s" in row[c] else f"{c}=n/a"
            for c in cands) + "  ratios: " + "  ".join(f"{k[9:]}={v:.2f}x" for k, v in row.items() if k.startswith("fused_vs")),
            flush=True)
        for c in cands:
            if "error" in row[c]:
                print(f"   {c}: {row[c]['error']}")
    print("wrote", write_results("crop_cpu.json", results))


if __name__ == "__main__":
    main()

"""Launch each headline CUDA kernel a few times, for a profiler to read (Nsight Compute).

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
        -k regex:'soft_hard_kernel|crop_kernel' python benchmarks/profile_kernels.py

The fused loss (forward with grad, B 8192, C 21843, bf16, stored top-5 labels) under each kernel variant
(HALD_LOSS_KERNEL = staged, then registers: the mangled kernel name says which ran) and the crop op
(S 224 from 256 px sources, batch 1024, bf16 out). Each is called twice: a warm-up, then the call to
read. Without a GPU it says so and exits 0 (`--dry-run` checks the arguments only).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import hald_ext  # noqa: E402
from bench_loss import CONFIGS, make_inputs, with_loss_kernel  # noqa: E402
from hald_ext.ops import crop_and_lookup, soft_hard_loss  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss-shape", default="8192x21843", help="BxC of the loss call")
    ap.add_argument("--kernels", default="staged,registers", help="HALD_LOSS_KERNEL values, in order")
    ap.add_argument("--crop-batch", type=int, default=1024)
    ap.add_argument("--dry-run", action="store_true", help="check the arguments and exit")
    args = ap.parse_args(argv)
    B, C = (int(v) for v in args.loss_shape.lower().split("x"))
    if args.dry_run:
        return 0
    if not hald_ext.build_info()["cuda_available"]:
        print("profile_kernels: no CUDA device (or no CUDA build): nothing launched")
        return 0
    logits, ids, codes, codebook, y, _, _ = make_inputs(B, C, 5, torch.bfloat16, "cuda")
    x = logits.clone().requires_grad_()

    def loss():
        soft_hard_loss(x, ids, codes, y, codebook=codebook, **CONFIGS["soft"])

    for kernel in [k for k in args.kernels.split(",") if k]:
        for _ in range(2):
            with_loss_kernel(loss, kernel)()
        torch.cuda.synchronize()
        print(f"profile_kernels: loss {B} x {C} bf16, HALD_LOSS_KERNEL={kernel}: 2 calls", flush=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 256, 256, 3), dtype=torch.uint8, generator=g).cuda()
    crop_ids = torch.arange(args.crop_batch, device="cuda") % images.shape[0]
    for step in range(2):
        crop_and_lookup(images, crop_ids, 224, seed=0, offset=step, out_dtype=torch.bfloat16, check=False)
    torch.cuda.synchronize()
    print(f"profile_kernels: crops S 224, batch {args.crop_batch}, bf16: 2 calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

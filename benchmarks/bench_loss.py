"""Forward + backward of the fused soft-KL / hard-CE loss against the eager plain-PyTorch reference
and against torch.compile of that reference (hald_ext.reference: the same code the tests trust).

    python benchmarks/bench_loss.py                  # every shape, CPU and (when present) CUDA
    python benchmarks/bench_loss.py --quick          # the target shape only

Prints a table with ratios, achieved bandwidth and the bandwidth floor (logits read once, gradient
written once, over the measured copy bandwidth), and writes benchmarks/results/loss_<device>.json.
"""
from __future__ import annotations

import argparse
import os
import sys

# Large CPU tensors on transparent huge pages: fresh multi-MB buffers otherwise cost a page fault per
# 4 KiB, which dominates every candidate alike at C = 21843 (README: the same tip for training).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth_gbs, device_tag, machine, time_fn, write_results  # noqa: E402

import hald_ext  # noqa: E402
from hald_ext.ops import soft_hard_loss  # noqa: E402
from hald_ext.reference import soft_hard_loss_reference  # noqa: E402

CONFIGS = {
    # A HALD soft phase: stored top-5, 8-bit codes, T = 20.
    "soft": dict(temperature=20.0, soft_weight=1.0, hard_weight=0.0),
    # Soft + hard term (two exponentials per logit), CutMix pair and smoothing.
    "soft+hard": dict(temperature=4.0, soft_weight=1.0, hard_weight=0.5, label_smoothing=0.1),
}


def make_inputs(B, C, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, C, generator=g) * 3).to(dtype)
    ids = torch.stack([torch.randperm(C, generator=g)[:k] for _ in range(min(B, 64))]).repeat((B + 63) // 64, 1)[:B]
    probs = torch.softmax(torch.randn(B, k, generator=g) * 2, 1) * 0.9
    codebook = torch.linspace(0, 1, 256) ** 2
    codes = (probs.sqrt() * 255).round().to(torch.uint8)
    y = torch.randint(0, C, (B,), generator=g)
    yb = torch.randint(0, C, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    to = lambda t: t.to(device)  # noqa: E731
    return to(logits), to(ids.to(torch.int16 if C <= 32767 else torch.int32)), to(codes), to(codebook), to(y), \
        to(yb), to(lam)


def bench_one(B, C, dtype, device, config, compile_ref=True):
    k = 5
    logits, ids, codes, codebook, y, yb, lam = make_inputs(B, C, k, dtype, device)
    kw = dict(CONFIGS[config], codebook=codebook)
    if kw["hard_weight"]:
        kw.update(target_b=yb, mix_lambda=lam)
    x = logits.clone().requires_grad_()

    def fused():
        x.grad = None
        soft_hard_loss(x, ids, codes, y, **kw).backward()

    def eager():
        x.grad = None
        soft_hard_loss_reference(x, ids, codes, y, **kw).backward()

    ref_compiled = torch.compile(soft_hard_loss_reference, dynamic=False)

    def compiled():
        x.grad = None
        ref_compiled(x, ids, codes, y, **kw).backward()

    row = {"device": device, "config": config, "B": B, "C": C, "k": k, "dtype": str(dtype).replace("torch.", "")}
    elem = logits.element_size()
    floor_bytes = 2 * B * C * elem  # logits read once + gradient written once
    row["floor_bytes"] = floor_bytes
    for name, fn in [("fused", fused), ("eager", eager)] + ([("compiled", compiled)] if compile_ref else []):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms = time_fn(fn, device, min_time=0.5 if B * C < 10_000_000 else 0.2, max_reps=100)
        row[f"{name}_ms"] = ms
        if device == "cuda":
            # Peak memory above what was allocated before (logits, labels): the extra buffers.
            fn()
            torch.cuda.synchronize()
            row[f"{name}_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    if device == "cuda":
        # The in-place mode: the gradient goes into the logits buffer, nothing logits-sized is added.
        buf = logits.clone()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        soft_hard_loss(buf.requires_grad_(), ids, codes, y, inplace=True, **kw).backward()
        torch.cuda.synchronize()
        row["fused_inplace_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    row["speedup_vs_eager"] = row["eager_ms"] / row["fused_ms"]
    if compile_ref:
        row["speedup_vs_compiled"] = row["compiled_ms"] / row["fused_ms"]
    row["fused_GBps"] = floor_bytes / (row["fused_ms"] * 1e-3) / 1e9
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="only B=1024, C=1000 (the CPU target shape)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or hald_ext.build_info()["cuda_available"]]
    shapes = [(1024, 1000)] if args.quick else [(256, 1000), (1024, 1000), (8192, 1000), (256, 21843),
                                                (1024, 21843), (8192, 21843)]
    for device in devices:
        rows = []
        bw = copy_bandwidth_gbs(8192 * 21843 * 4 if device == "cuda" else 64 << 20, device)
        print(f"\n== {device} ({machine().get('gpu', machine()['cpu'])}), copy bandwidth {bw:.1f} GB/s")
        print(f"{'config':<10}{'B':>6}{'C':>7}{'dtype':>9}{'fused ms':>10}{'eager ms':>10}{'compile ms':>11}"
              f"{'x eager':>9}{'x compile':>10}{'GB/s':>8}{'x floor':>9}")
        cases = [(cfg, B, C, dt) for cfg in (["soft", "soft+hard"]) for (B, C) in shapes
                 for dt in (torch.float32, torch.bfloat16) if cfg == "soft" or (B, C) == (1024, 1000)]
        for cfg, B, C, dt in cases:
            row = bench_one(B, C, dt, device, cfg, compile_ref=not args.no_compile)
            floor_ms = row["floor_bytes"] / (bw * 1e9) * 1e3
            row["floor_ms"] = floor_ms
            row["fused_over_floor"] = row["fused_ms"] / floor_ms
            rows.append(row)
            print(f"{cfg:<10}{B:>6}{C:>7}{row['dtype']:>9}{row['fused_ms']:>10.3f}{row['eager_ms']:>10.3f}"
                  f"{row.get('compiled_ms', float('nan')):>11.3f}{row['speedup_vs_eager']:>9.2f}"
                  f"{row.get('speedup_vs_compiled', float('nan')):>10.2f}{row['fused_GBps']:>8.1f}"
                  f"{row['fused_over_floor']:>9.2f}", flush=True)
        payload = {"benchmark": "soft_hard_loss forward+backward", "machine": machine(),
                   "copy_bandwidth_GBps": bw, "build": hald_ext.build_info(), "rows": rows}
        if not args.quick:
            print("wrote", write_results(f"loss_{device_tag(device)}.json", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

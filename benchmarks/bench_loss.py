"""Forward + backward of the fused soft-KL / hard-CE loss.

Sparse suite (stored top-k labels): against the eager plain-PyTorch reference and torch.compile of it
(hald_ext.reference: the same code the tests trust); writes benchmarks/results/loss_<device>.json.
Dense suite (timm's Mixup targets and online distillation): hald_ext.timm against timm 1.0's own loss
objects, eager and torch.compile'd (and Liger-Kernel's fused KL when it is importable), time and peak
memory; writes benchmarks/results/loss_dense_<device>.json.

    python benchmarks/bench_loss.py                  # both suites, CPU and (when present) CUDA
    python benchmarks/bench_loss.py --suite dense    # the dense suite only
    python benchmarks/bench_loss.py --quick          # B = 1024, C = 1000 only, short timings, nothing written
    python benchmarks/bench_loss.py --suite sparse --shapes 8192x1000,8192x21843 --dtypes float32,bfloat16 \
        --out $OUT/loss_gpu.json                     # the GPU headline (issue 21)
    python benchmarks/bench_loss.py --precision      # loss error vs float64: loss_precision_<device>.json
    python benchmarks/bench_loss.py --device cuda --precision --out $OUT/loss_precision_gpu.json

Candidates run interleaved (round after round, each round timed with common.time_fn) and the median
over rounds is kept. Prints tables with ratios; the sparse one also gives a copy of the logits
(`clone()`: one read, one fresh write, what the loss's own gradient costs at least), the bandwidth
floor (logits read once, gradient written once, over the copy_ bandwidth) and the peak bytes one
forward + backward adds above what is allocated before it (in gradient buffers: 1.0 is the floor).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys

# Large CPU tensors on transparent huge pages: fresh multi-MB buffers otherwise cost a page fault per
# 4 KiB, which dominates every candidate alike at C = 21843 (README: the same tip for training).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth_gbs, device_tag, machine, time_fn, write_results  # noqa: E402
import statistics  # noqa: E402

import hald_ext  # noqa: E402
from hald_ext.ops import soft_hard_loss  # noqa: E402
from hald_ext.reference import soft_hard_loss_reference  # noqa: E402

try:
    import timm  # noqa: E402
    import hald_ext.timm as hald_timm  # noqa: E402
except ImportError:  # the dense suite needs timm
    timm = None
try:
    from liger_kernel.transformers import LigerKLDIVLoss  # noqa: E402
except ImportError:
    LigerKLDIVLoss = None

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


def interleaved(fns: dict, device: str, rounds: int, min_time: float, max_reps: int = 50) -> dict:
    """name -> median over `rounds` rounds of time_fn's median (ms); each round times every candidate
    once, in turn, so load that comes and goes on the machine hits them all alike. On CUDA each sample
    is 10 calls back to back (a training loop's view: launch work overlaps the device's)."""
    times = {name: [] for name in fns}
    b2b = 10 if device == "cuda" else 1
    for r in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_fn(fn, device, warmup=3 if r == 0 else 1, min_time=min_time, max_reps=max_reps,
                                       back_to_back=b2b))
    return {name: statistics.median(t) for name, t in times.items()}


def with_loss_kernel(fn, kernel):
    """fn run with HALD_LOSS_KERNEL=kernel (the CUDA kernel variant; read by the op at each call)."""
    def run():
        old = os.environ.get("HALD_LOSS_KERNEL")
        os.environ["HALD_LOSS_KERNEL"] = kernel
        try:
            fn()
        finally:
            if old is None:
                del os.environ["HALD_LOSS_KERNEL"]
            else:
                os.environ["HALD_LOSS_KERNEL"] = old
    return run


def bench_one(B, C, dtype, device, config, compile_ref=True, rounds=5, min_time=0.2, kernels=()):
    """One row; `kernels`: CUDA kernel variants (HALD_LOSS_KERNEL) timed beside the default, as fused_<name>."""
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

    def copy():  # a copy of the logits into a fresh tensor (as the gradient is)
        logits.clone()

    row = {"device": device, "config": config, "B": B, "C": C, "k": k, "dtype": str(dtype).replace("torch.", "")}
    elem = logits.element_size()
    floor_bytes = 2 * B * C * elem  # logits read once + gradient written once
    row["floor_bytes"] = floor_bytes
    fns = {"fused": fused, "eager": eager, "copy": copy}
    for kernel in kernels:
        fns[f"fused_{kernel}"] = with_loss_kernel(fused, kernel)
    if compile_ref:
        fns["compiled"] = compiled
    for name, ms in interleaved(fns, device, rounds, min_time).items():
        row[f"{name}_ms"] = ms
    grad_bytes = B * C * elem
    for name in ("fused", "compiled") if compile_ref else ("fused",):
        x.grad = None  # freed before the baseline is read: the new gradient counts for every candidate
        peak = peak_extra_bytes(fns[name], device)
        row[f"{name}_extra_bytes"] = peak
        row[f"{name}_extra_grad_buffers"] = None if peak is None else peak / grad_bytes
    # The in-place mode: the gradient goes into the logits buffer, nothing logits-sized is added.
    buf = logits.clone().requires_grad_()
    row["fused_inplace_extra_bytes"] = peak_extra_bytes(
        lambda: soft_hard_loss(buf, ids, codes, y, inplace=True, **kw).backward(), device)
    row["speedup_vs_eager"] = row["eager_ms"] / row["fused_ms"]
    if compile_ref:
        row["speedup_vs_compiled"] = row["compiled_ms"] / row["fused_ms"]
    row["fused_over_copy"] = row["fused_ms"] / row["copy_ms"]
    row["fused_GBps"] = floor_bytes / (row["fused_ms"] * 1e-3) / 1e9
    return row


# ---- dense suite ---------------------------------------------------------------------------------------
# Shapes the 2-core CPU can run in a few minutes with the torch.compile baselines; B = 8192 at
# C = 21843 (716 MB per [B, C] fp32 tensor, several seconds per timm step) only on CUDA.
DENSE_SHAPES = [(256, 1000), (1024, 1000), (8192, 1000), (256, 21843), (1024, 21843), (8192, 21843)]
CPU_SKIP = {(8192, 21843)}
KD_T = 4.0


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def peak_extra_bytes(fn, device: str) -> int | None:
    """Peak memory one call of fn() adds above what is allocated before it (CUDA: the caching
    allocator's peak; CPU: the process's peak resident set, reset through /proc/self/clear_refs after
    returning freed heap memory to the system)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _rss("VmRSS")
    fn()
    return _rss("VmHWM") - base


def timm_kd_total(s, t, y, task_fn):
    """timm.task.LogitDistillationTask.forward's loss, as written there (task weight 0.5, distill 0.5)."""
    prob_s = torch.nn.functional.log_softmax(s / KD_T, dim=-1)
    prob_t = torch.nn.functional.log_softmax(t / KD_T, dim=-1)
    kd = torch.nn.functional.kl_div(prob_s, prob_t, reduction="batchmean", log_target=True) * (KD_T ** 2)
    return 0.5 * task_fn(s, y) + 0.5 * kd


def dense_candidates(case):
    """name -> loss(student_logits, target_or_teacher, y) for one dense case."""
    if case == "mixup-ce":
        fused = hald_timm.SoftTargetCrossEntropy()
        ref = timm.loss.SoftTargetCrossEntropy()
        out = {"fused": lambda x, t, y: fused(x, t), "timm": lambda x, t, y: ref(x, t)}
        compiled = torch.compile(ref, dynamic=False)
        out["timm_compiled"] = lambda x, t, y: compiled(x, t)
        return out
    # "distill": the whole LogitDistillationTask loss (label-smoothed CE + KD at T = 4).
    fused = hald_timm.LogitDistillationLoss(temperature=KD_T, task_loss_weight=0.5, distill_loss_weight=0.5,
                                            smoothing=0.1)
    lsce = timm.loss.LabelSmoothingCrossEntropy(0.1)
    ref = lambda x, t, y: timm_kd_total(x, t, y, lsce)  # noqa: E731
    out = {"fused": lambda x, t, y: fused(x, t, y), "timm": ref,
           "timm_compiled": torch.compile(ref, dynamic=False)}
    if LigerKLDIVLoss is not None:
        liger = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        out["liger_kd"] = lambda x, t, y: 0.5 * lsce(x, y) + 0.5 * liger(
            torch.log_softmax(x / KD_T, -1), torch.log_softmax(t / KD_T, -1)) * KD_T ** 2
    return out


def bench_dense(case, B, C, dtype, device, rounds=5):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, C, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, C, (B,), generator=g).to(device)
    if case == "mixup-ce":  # a Mixup/CutMix target with smoothing 0.1: two classes mixed, the rest eps / C
        lam = torch.rand(B, 1, generator=g)
        yb = torch.randint(0, C, (B,), generator=g)
        t = torch.full((B, C), 0.1 / C).scatter_add_(1, y.cpu()[:, None], 0.9 * lam)
        t = t.scatter_add_(1, yb[:, None], 0.9 * (1 - lam)).to(device)
    else:
        t = (torch.randn(B, C, generator=g) * 3).to(device=device, dtype=dtype)
    torch._dynamo.reset()
    row = {"device": device, "case": case, "B": B, "C": C, "dtype": str(dtype).replace("torch.", "")}
    steps = {}
    for name, loss_fn in dense_candidates(case).items():
        def step(loss_fn=loss_fn):
            x.grad = None
            loss_fn(x, t, y).backward()
        steps[name] = step
    for name, ms in interleaved(steps, device, rounds, 0.3 if B * C < 10_000_000 else 0.1).items():
        row[f"{name}_ms"] = ms
    for name, step in steps.items():
        x.grad = None  # freed before the baseline is read: the new gradient counts for every candidate
        row[f"{name}_peak_bytes"] = peak_extra_bytes(step, device)
    for name in ("timm", "timm_compiled", "liger_kd"):
        if f"{name}_ms" in row:
            row[f"speedup_vs_{name}"] = row[f"{name}_ms"] / row["fused_ms"]
    return row


def run_dense_suite(device, quick, shapes=None, rounds=5):
    if timm is None:
        print("dense suite skipped: timm is not installed")
        return None
    liger = "importable" if LigerKLDIVLoss is not None else "not installed here: no Liger baseline"
    print(f"\n== dense targets on {device} ({machine().get('gpu', machine()['cpu'])}); Liger-Kernel: {liger}")
    shapes = shapes or ([(1024, 1000)] if quick else DENSE_SHAPES)
    skipped = [s for s in shapes if device == "cpu" and s in CPU_SKIP]
    if skipped:
        print(f"   CPU: skipping B x C = {skipped} (several seconds per timm step on this machine); CUDA runs them")
    print(f"{'case':<10}{'B':>6}{'C':>7}{'fused ms':>10}{'timm ms':>10}{'compiled':>10}{'x timm':>8}{'x comp':>8}"
          f"{'peak MiB fused/timm/compiled':>30}")
    rows = []
    for case in ("mixup-ce", "distill"):
        for B, C in shapes:
            if (B, C) in skipped:
                continue
            r = bench_dense(case, B, C, torch.float32, device, rounds)
            rows.append(r)
            mib = "/".join("-" if r.get(f"{n}_peak_bytes") is None else f"{r[f'{n}_peak_bytes'] / 2**20:.0f}"
                           for n in ("fused", "timm", "timm_compiled"))
            print(f"{case:<10}{B:>6}{C:>7}{r['fused_ms']:>10.2f}{r['timm_ms']:>10.2f}{r['timm_compiled_ms']:>10.2f}"
                  f"{r['speedup_vs_timm']:>8.2f}{r['speedup_vs_timm_compiled']:>8.2f}{mib:>30}", flush=True)
    return {"benchmark": "dense soft targets: hald_ext.timm vs timm 1.0 losses, forward+backward",
            "machine": machine(), "build": hald_ext.build_info(), "timm": timm.__version__, "liger_kernel": liger,
            "skipped_shapes": [list(s) for s in skipped], "rows": rows}


# ---- precision ---------------------------------------------------------------------------------------
def precision_rows(device, Cs=(1000, 21843), B=64):
    """Per-row loss error against float64 (same inputs, rounded to the dtype first) of the fused loss
    and of the same loss written with torch / timm ops (in float32, as autocast runs log_softmax and
    kl_div for 16-bit logits)."""
    import torch.nn.functional as F

    T = 4.0

    def kd(s, t):  # the distillation trainers' form (timm's LogitDistillationTask), per row
        return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none", log_target=True).sum(-1)

    rows = []
    for C in Cs:
        g = torch.Generator().manual_seed(C)
        z64 = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
        t64 = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
        top = torch.softmax(t64, 1).topk(10, dim=1)
        ids = top.indices.to(device)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            z = z64.to(dtype).to(device)
            zd = z.double()
            t = t64.to(dtype).to(device)
            mix = torch.softmax(t64.float(), 1).to(device)  # a dense target (fp32, as timm's Mixup makes it)
            vals = top.values.float().to(device)
            q_top = torch.zeros(B, C, dtype=torch.float64, device=device).scatter(1, ids, vals.double())
            cases = {
                # stored top-10 label, KL at T = 4 (decode="truncate": q is the stored entries)
                "topk-kl": (lambda: soft_hard_loss(z, ids, vals, temperature=T, decode="truncate", reduction="none"),
                            lambda x, q: F.kl_div(F.log_softmax(x / T, -1), q, reduction="none").sum(-1),
                            (q_top,)),
                # timm's SoftTargetCrossEntropy on a dense (Mixup-like) target
                "dense-ce": (lambda: hald_soft_ce_rows(z, mix),
                             lambda x, q: torch.sum(-q * F.log_softmax(x, dim=-1), dim=-1), (mix,)),
                # online distillation, KL of softmax(t / T) at T = 4
                "teacher-kl": (lambda: soft_hard_loss(z, teacher_logits=t, temperature=T, reduction="none"), kd, (t,)),
            }
            for name, (fused, torch_form, targets) in cases.items():
                exact = torch_form(zd, *[q.double() for q in targets])
                # 16-bit logits: log_softmax / kl_div run in float32 (what autocast does with them)
                torch_rows = torch_form(z.float(), *[q.float() for q in targets]).double()
                ours = fused().double()
                scale = exact.abs().max().item()
                row = {"device": device, "case": name, "B": B, "C": C, "dtype": str(dtype).replace("torch.", ""),
                       "loss_scale": scale,
                       "fused_max_abs_err": (ours - exact).abs().max().item(),
                       "torch_max_abs_err": (torch_rows - exact).abs().max().item()}
                row["fused_over_torch"] = row["fused_max_abs_err"] / max(row["torch_max_abs_err"], 1e-300)
                rows.append(row)
                print(f"{name:<11}{C:>7}{row['dtype']:>10}{row['fused_max_abs_err']:>12.2e}"
                      f"{row['torch_max_abs_err']:>12.2e}{row['fused_over_torch']:>9.3f}{scale:>10.3f}", flush=True)
    return rows


def hald_soft_ce_rows(z, target):
    return soft_hard_loss(z, None, target, soft_loss="ce", decode="truncate", reduction="none")


def parse_shapes(text):
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true",
                   help="B=1024, C=1000 unless --shapes; 3 short rounds; writes only with --out")
    p.add_argument("--shapes", type=parse_shapes, default=None, help="BxC[,BxC...], e.g. 8192x1000,8192x21843")
    p.add_argument("--dtypes", default="float32,bfloat16", help="sparse suite logits dtypes")
    p.add_argument("--configs", default="soft,soft+hard", help="sparse suite configs (soft+hard runs at 1024x1000 "
                   "only unless --shapes is given)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 3 with --quick)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline (sparse suite)")
    p.add_argument("--suite", choices=["sparse", "dense", "all"], default="all")
    p.add_argument("--precision", action="store_true", help="only the loss error vs float64 (precision JSON)")
    p.add_argument("--out", default=None, help="result file of the sparse suite (default results/loss_<device>.json)")
    p.add_argument("--kernels", default="", help="CUDA loss kernel variants timed beside the default, as "
                   "fused_<name>_ms (HALD_LOSS_KERNEL values, e.g. staged,registers)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); on a machine "
                   "shared with other work, 1 keeps a descheduled worker thread from stalling every call")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or hald_ext.build_info()["cuda_available"]]
    rounds = args.rounds or (3 if args.quick else 5)
    if args.precision:
        for device in devices:
            print(f"\n== loss error vs float64 on {device}: max |loss_row - exact| over 64 rows")
            print(f"{'case':<11}{'C':>7}{'dtype':>10}{'fused':>12}{'torch':>12}{'ratio':>9}{'|loss|':>10}")
            rows = precision_rows(device)
            what = ("soft_hard_loss per-row loss error vs float64 (fused vs the torch/timm form in float32 on the "
                    "same dtype-rounded inputs)")
            payload = {"benchmark": what, "machine": machine(), "build": hald_ext.build_info(), "rows": rows}
            if args.out:  # e.g. $OUT/loss_precision_gpu.json on the GPU machine
                with open(args.out, "w") as f:
                    json.dump(payload, f, indent=1)
                print("wrote", args.out)
            else:
                print("wrote", write_results(f"loss_precision_{device_tag(device)}.json", payload))
        return 0
    shapes = args.shapes or ([(1024, 1000)] if args.quick else [(256, 1000), (1024, 1000), (8192, 1000), (256, 21843),
                                                                (1024, 21843), (8192, 21843)])
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    for device in devices:
        if args.suite in ("dense", "all"):
            payload = run_dense_suite(device, args.quick, args.shapes, rounds)
            if payload is not None and args.out:
                dense_out = args.out if args.suite == "dense" else os.path.join(
                    os.path.dirname(os.path.abspath(args.out)), "dense_" + os.path.basename(args.out))
                with open(dense_out, "w") as f:
                    json.dump(payload, f, indent=1)
                print("wrote", dense_out)
            elif payload is not None and not args.quick:
                # THP_MEM_ALLOC_ENABLE=0 (4 KiB pages) changes mid-size CPU figures a lot: its own file.
                thp = "_thp0" if device == "cpu" and os.environ.get("THP_MEM_ALLOC_ENABLE") == "0" else ""
                print("wrote", write_results(f"loss_dense_{device_tag(device)}{thp}.json", payload))
        if args.suite == "dense":
            continue
        rows = []
        bw = copy_bandwidth_gbs(8192 * 21843 * 4 if device == "cuda" else 64 << 20, device)
        print(f"\n== {device} ({machine().get('gpu', machine()['cpu'])}), copy_ bandwidth {bw:.1f} GB/s; "
              f"{rounds} interleaved rounds")
        print(f"{'config':<10}{'B':>6}{'C':>7}{'dtype':>9}{'fused ms':>10}{'eager ms':>10}{'compile ms':>11}"
              f"{'copy ms':>9}{'x eager':>9}{'x compile':>10}{'/ copy':>8}{'x floor':>9}{'peak/grad':>10}")
        configs = args.configs.split(",")
        cases = [(cfg, B, C, dt) for cfg in configs for (B, C) in shapes for dt in dtypes
                 if cfg == "soft" or args.shapes or (B, C) == (1024, 1000)]
        kernels = [k for k in args.kernels.split(",") if k] if device == "cuda" else []
        for cfg, B, C, dt in cases:
            row = bench_one(B, C, dt, device, cfg, compile_ref=not args.no_compile, rounds=rounds,
                            min_time=0.1 if args.quick else 0.2, kernels=kernels)
            floor_ms = row["floor_bytes"] / (bw * 1e9) * 1e3
            row["floor_ms"] = floor_ms
            row["fused_over_floor"] = row["fused_ms"] / floor_ms
            for kernel in kernels:
                row[f"fused_{kernel}_over_floor"] = row[f"fused_{kernel}_ms"] / floor_ms
            rows.append(row)
            peak = row.get("fused_extra_grad_buffers")
            print(f"{cfg:<10}{B:>6}{C:>7}{row['dtype']:>9}{row['fused_ms']:>10.3f}{row['eager_ms']:>10.3f}"
                  f"{row.get('compiled_ms', float('nan')):>11.3f}{row['copy_ms']:>9.3f}{row['speedup_vs_eager']:>9.2f}"
                  f"{row.get('speedup_vs_compiled', float('nan')):>10.2f}{row['fused_over_copy']:>8.2f}"
                  f"{row['fused_over_floor']:>9.2f}{'-' if peak is None else f'{peak:.2f}':>10}"
                  + "".join(f"  {k} {row[f'fused_{k}_ms']:.3f} ms ({row[f'fused_{k}_over_floor']:.2f}x floor)"
                            for k in kernels), flush=True)
        payload = {"benchmark": "soft_hard_loss forward+backward", "machine": machine(),
                   "copy_bandwidth_GBps": bw, "build": hald_ext.build_info(), "rounds": rounds, "rows": rows}
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(payload, f, indent=1)
            print("wrote", args.out)
        elif not args.quick:
            print("wrote", write_results(f"loss_{device_tag(device)}.json", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

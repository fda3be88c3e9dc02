"""Label storage: bytes per label and decode distortion of the label store against the SRe2L fp16
full-label format and FKD's fp16 top-5, plus encode / decode throughput of the codec kernels against
the plain-PyTorch reference (hald_ext.reference: the code the tests trust).

    python benchmarks/bench_storage.py            # everything (about a minute on 2 CPU cores)
    python benchmarks/bench_storage.py --quick    # fewer rows

Teacher outputs are synthetic logits: z = 3 * N(0, 1) plus a boost of U(0, 10) on one class per
row (top-1 probability at T = 1 spread from about chance to about 0.99, like a trained network on
crops of varying difficulty); the JSON records the resulting top-1 and top-5 mass so the
distortions can be read against them. Distortions are mean KL per label in nats, dense, float64,
in the direction the training loss measures, KL(target || model):
  full_kl     KL(decoded label || teacher): the soft-KL loss the teacher itself would score on the
              stored label, i.e. what the format loses against the full distribution
  added_kl    KL(decoded coded top-k || decoded fp32 top-k): the loss a student matching the fp32
              label exactly would score on the coded one, i.e. what quantisation adds (target:
              <= 1e-3 at k = 5, 8-bit)
(The other direction is infinite whenever a format rounds a tiny probability to 0, as fp16 does
below 6e-8, which says nothing about training.)
Decoding is "marginal" (the rest mass spread over the other classes, FKD's default).
Writes benchmarks/results/storage_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import hald_ext
from hald_ext.labels import Quantizer
from hald_ext.ops import label_decode_dense, label_encode
from hald_ext.reference import decode_dense, label_decode_dense_reference, label_encode_reference

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CLASSES = (10, 1000, 21843)
KS = (1, 2, 5, 10)
TEMPERATURES = (1.0, 20.0)
BOX_FLIP_BYTES = 8 + 1  # uint16 (y, x, h, w) + flip byte


def teacher_logits(N, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    cls = torch.randint(0, C, (N,), generator=g)
    z[torch.arange(N), cls] += torch.rand(N, generator=g, dtype=torch.float64) * 10
    return z


def kl_rows(p, q):
    """KL(p || q) per row, float64 (0 log 0 = 0)."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(1)


def store_bytes(C, k, bits):
    return BOX_FLIP_BYTES + k * ((2 if C <= 65535 else 4) + bits // 8)


def distortion(z, T, k, q: Quantizer | None, chunk=250):
    """(mean full_kl, mean added_kl) of k-entry labels coded by q (None: fp32, no coding; "fp16":
    FKD's fp16 values)."""
    full, added = [], []
    C = z.shape[1]
    for lo in range(0, z.shape[0], chunk):
        zc = z[lo:lo + chunk]
        p = torch.softmax(zc / T, 1)
        ids, _, top = label_encode_reference(zc.float(), k, Quantizer().thresholds(), T, True)
        ids = ids.long()
        exact = decode_dense(ids, p.gather(1, ids), C, "marginal", dtype=torch.float64)
        if q is None:
            dec = exact
        elif q == "fp16":
            dec = decode_dense(ids, p.gather(1, ids).half(), C, "marginal", dtype=torch.float64)
        else:
            _, codes = label_encode(zc.float(), k, q.thresholds(), temperature=T, from_logits=True)
            dec = decode_dense(ids, codes, C, "marginal", codebook=q.codebook(), dtype=torch.float64)
        full.append(kl_rows(dec, p))
        added.append(kl_rows(dec, exact))
    return float(torch.cat(full).mean()), float(torch.cat(added).mean())


def sre2l_fp16_distortion(z, T):
    p = torch.softmax(z / T, 1)
    q = p.half().double()
    return float(kl_rows(q / q.sum(1, keepdim=True), p).mean())  # fp16 rows renormalised, as a loss would see them


def time_ms(fn, min_time=0.3, reps=50):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def machine():
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "hald_ext": hald_ext.build_info()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def bench_storage(rows):
    out = []
    print(f"\n{'C':>6} {'T':>4} {'format':<22} {'B/label':>8} {'full KL':>10} {'added KL':>10}")
    for C in CLASSES:
        n = rows if C < 20000 else max(rows // 4, 100)
        z = teacher_logits(n, C, seed=C)
        for T in TEMPERATURES:
            p = torch.softmax(z / T, 1)
            stats = {"top1": float(p.max(1).values.mean()), "top5_mass": float(p.topk(min(5, C), 1).values.sum(1).mean())}

            def row(fmt, nbytes, full, added, **extra):
                out.append({"C": C, "T": T, "format": fmt, "bytes_per_label": nbytes, "full_kl": full,
                            "added_kl": added, **stats, **extra})
                print(f"{C:>6} {T:>4g} {fmt:<22} {nbytes if nbytes else '-':>8} {full:>10.3g} {added:>10.3g}")

            row("SRe2L fp16 full", 2 * C + 25, sre2l_fp16_distortion(z, T), 0.0)
            if C >= 5:
                full, added = distortion(z, T, 5, "fp16")
                row("FKD fp16 top-5", 29, full, added, k=5)
            for k in KS:
                if k > C:
                    continue
                full32, _ = distortion(z, T, k, None)
                row(f"fp32 top-{k} (uncoded)", None, full32, 0.0, k=k)
                for bits in (8, 16):
                    full, added = distortion(z, T, k, Quantizer(bits=bits))  # the default quantiser
                    row(f"store top-{k} {bits}-bit", store_bytes(C, k, bits), full, added, k=k, bits=bits)
    return out


def bench_quantizers(rows):
    """Which quantiser: added KL at k = 5 for every kind (and the log quantiser's range)."""
    cands = [Quantizer(kind, bits) for bits in (8, 16) for kind in ("uniform", "power", "log")]
    cands += [Quantizer("power", 8, gamma=g) for g in (1.25, 1.75, 2.0, 3.0)]
    cands += [Quantizer("log", 8, p_min) for p_min in (1e-3, 1e-4, 1e-5, 1e-8)]
    out = []
    print(f"\n{'quantizer':<32} " + " ".join(f"{f'C={C},T={T:g}':>14}" for C in CLASSES for T in TEMPERATURES))
    zs = {C: teacher_logits(rows if C < 20000 else max(rows // 4, 100), C, seed=C) for C in CLASSES}
    for q in cands:
        vals = []
        for C in CLASSES:
            for T in TEMPERATURES:
                _, added = distortion(zs[C], T, 5, q)
                vals.append(added)
                out.append({"quantizer": q.to_header(), "C": C, "T": T, "k": 5, "added_kl": added})
        print(f"{json.dumps(q.to_header()):<32} " + " ".join(f"{v:>14.3g}" for v in vals))
    return out


def bench_throughput(device, quick):
    out = []
    print(f"\n{'op':<14} {'N x C':>14} {'k':>3} {'impl':<26} {'ms':>9} {'rows/s':>12}")
    q = Quantizer()
    t = q.thresholds().to(device)
    cb = q.codebook().to(device)
    for N, C in ((4096, 1000), (512, 21843)) if not quick else ((1024, 1000),):
        z = teacher_logits(N, C).float().to(device)
        impls = {
            "hald label_encode": lambda: label_encode(z, 5, t, temperature=20.0, from_logits=True),
            "reference (stable sort)": lambda: label_encode_reference(z, 5, t, 20.0, True),
            "torch topk+searchsorted": lambda: torch.searchsorted(
                t, torch.softmax(z / 20.0, 1).topk(5).values.contiguous(), right=True),
        }
        for name, fn in impls.items():
            ms = time_ms(fn)
            out.append({"op": "encode", "N": N, "C": C, "k": 5, "impl": name, "device": device, "ms": ms,
                        "rows_per_s": N / ms * 1e3})
            print(f"{'encode':<14} {f'{N}x{C}':>14} {5:>3} {name:<26} {ms:>9.3f} {N / ms * 1e3:>12.0f}")
        ids, codes = label_encode(z, 5, t, temperature=20.0, from_logits=True)
        for name, fn in {"hald label_decode_dense": lambda: label_decode_dense(ids, codes, cb, C),
                         "reference": lambda: label_decode_dense_reference(ids, codes, cb, C)}.items():
            ms = time_ms(fn)
            out.append({"op": "decode_dense", "N": N, "C": C, "k": 5, "impl": name, "device": device, "ms": ms,
                        "rows_per_s": N / ms * 1e3})
            print(f"{'decode_dense':<14} {f'{N}x{C}':>14} {5:>3} {name:<26} {ms:>9.3f} {N / ms * 1e3:>12.0f}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=2000, help="teacher rows per class count (a quarter at C=21843)")
    args = ap.parse_args()
    rows = 400 if args.quick else args.rows
    hald_ext._ext.require()
    result = {"machine": machine(), "rows": rows, "storage": bench_storage(rows), "quantizers": bench_quantizers(rows)}
    devices = ["cpu"] + (["cuda"] if hald_ext.build_info()["cuda_available"] else [])
    result["throughput"] = [r for d in devices for r in bench_throughput(d, args.quick)]
    tag = "cuda" if "cuda" in devices else "cpu"
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"storage_{tag}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

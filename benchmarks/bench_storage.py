"""Label storage: bytes per label and what each format keeps of the teacher's full label, for
full-width labels (k = C), top-k labels, the SRe2L / LPLD / HALD files (fp16, C wide) and FKD's files
(float32 top-5 as its generator writes them); plus the quantisers' added error and the codec
kernels' throughput against the plain-PyTorch reference (hald_ext.reference: the code the tests trust).

    python benchmarks/bench_storage.py            # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_storage.py --quick    # fewer rows

"KL kept" is hald_ext.labels.quality.kl_to_full: mean KL(teacher's full label || decoded stored
label) in nats, float64, marginal decoding (FKD's default: the rest mass spread over the other
classes), a decoded zero counted as 1e-12 (quality.Q_FLOOR); "uniform label" is the KL of a label
that keeps nothing, for comparison. Teacher labels are softmax(logits / T) at T = 1 and 20:
  C = 10      a small trained model: an MLP (784-256-10) trained 2 epochs on Fashion-MNIST's
              training set (seeded), its logits on the 10,000 test images (real teacher outputs)
  C = 1000,   synthetic logits, z = 3 * N(0, 1) plus a boost of U(0, 10) on one class per row (top-1
  C = 21843   probability at T = 1 from about chance to about 0.99); no trained ImageNet teacher is
              available offline, so these rows say what the formats keep of *that* distribution
The JSON records each teacher's mean top-1 probability and top-5 mass so the KLs can be read against them.
Writes benchmarks/results/storage_<device>.json (benchmarks/common.py layout).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hald_ext  # noqa: E402
from common import device_tag, machine, time_fn, write_results  # noqa: E402
from hald_ext.labels import Quantizer  # noqa: E402
from hald_ext.labels.quality import kl_to_full, uniform_kl  # noqa: E402
from hald_ext.ops import label_decode_dense, label_encode  # noqa: E402
from hald_ext.reference import decode_dense, label_decode_dense_reference, label_encode_reference  # noqa: E402

CLASSES = (10, 1000, 21843)
TEMPERATURES = (1.0, 20.0)
BOX_FLIP_BYTES = 8 + 1  # uint16 (y, x, h, w) + flip byte
FKD_FILE_BYTES = 4 * 4 + 1  # float32 coords + bool flip, as FKD's generator saves them (plus 2 x k float32)


def teacher_logits(N, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    cls = torch.randint(0, C, (N,), generator=g)
    z[torch.arange(N), cls] += torch.rand(N, generator=g, dtype=torch.float64) * 10
    return z


def fashion_mnist_logits(epochs=2, seed=0):
    """(test logits float64 [10000, 10], test accuracy) of a small MLP trained on Fashion-MNIST."""
    from hald_ext.data.sources import FASHION_MNIST_ROOT, read_idx

    def load(split):
        x = torch.from_numpy(read_idx(os.path.join(FASHION_MNIST_ROOT, f"{split}-images-idx3-ubyte.gz"))).float()
        y = torch.from_numpy(read_idx(os.path.join(FASHION_MNIST_ROOT, f"{split}-labels-idx1-ubyte.gz"))).long()
        return (x.reshape(len(x), -1) / 255 - 0.286) / 0.353, y

    (x, y), (xt, yt) = load("train"), load("t10k")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(256):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        z = model(xt).double()
    return z, float((z.argmax(1) == yt).float().mean())


def top_k(p, k, q: Quantizer | None):
    """(ids [N, k], stored values) of the k largest entries; q None keeps float32 (FKD's files)."""
    top = p.topk(k, 1)
    values = top.values.float() if q is None else q.encode(top.values)
    return top.indices, values


def bench_storage(rows):
    out = []
    print(f"\n{'C':>6} {'T':>4} {'format':<36} {'B/label':>8} {'KL kept':>10}")
    for C in CLASSES:
        if C == 10:
            z, acc = fashion_mnist_logits()
            teacher = f"MLP on Fashion-MNIST, test images (test top-1 {acc:.3f})"
        else:
            z = teacher_logits(rows if C < 20000 else max(rows // 4, 100), C, seed=C)
            teacher = "synthetic: 3 N(0, 1) + U(0, 10) on one class"
        for T in TEMPERATURES:
            p = torch.softmax(z / T, 1)
            stats = {"teacher": teacher, "rows": len(p), "top1": float(p.max(1).values.mean()),
                     "top5_mass": float(p.topk(min(5, C), 1).values.sum(1).mean())}

            def row(fmt, nbytes, ids, values, q=None, **extra):
                kl = float(kl_to_full(p, ids, values, None if q is None else q.codebook(), "marginal").mean())
                out.append({"C": C, "T": T, "format": fmt, "bytes_per_label": nbytes, "kl_to_teacher": kl,
                            **stats, **extra})
                print(f"{C:>6} {T:>4g} {fmt:<36} {nbytes:>8} {kl:>10.4g}")

            fp16, u8 = Quantizer("fp16"), Quantizer("power", 8)
            row("store full width fp16 (k = C)", BOX_FLIP_BYTES + 2 * C, None, fp16.encode(p), fp16, k=C)
            row("SRe2L / LPLD / HALD files (fp16, C wide)", 2 * C + 25, None, fp16.encode(p), fp16, k=C)
            for q in (u8, Quantizer("log", 8), Quantizer("power", 16)):
                row(f"store full width {q.kind} {q.bits}-bit (k = C)", BOX_FLIP_BYTES + C * q.bits // 8, None,
                    q.encode(p), q, k=C, bits=q.bits)
            for k in (1, 5, 10, 100):
                if k >= C:
                    continue
                for q in (u8, Quantizer("power", 16), fp16) if k == 5 else (u8,):
                    nbytes = BOX_FLIP_BYTES + k * ((2 if C <= 65535 else 4) + q.bits // 8)
                    row(f"store top-{k} {q.kind} {q.bits}-bit", nbytes, *top_k(p, k, q), q, k=k, bits=q.bits)
            if C > 5:
                row("FKD files (float32 top-5)", FKD_FILE_BYTES + 2 * 5 * 4, *top_k(p, 5, None), k=5)
            kl_u = float(uniform_kl(p).mean())
            out.append({"C": C, "T": T, "format": "uniform label (keeps nothing)", "bytes_per_label": 0,
                        "kl_to_teacher": kl_u, **stats})
            print(f"{C:>6} {T:>4g} {'uniform label (keeps nothing)':<36} {0:>8} {kl_u:>10.4g}")
    return out


def distortion(z, T, k, q: Quantizer):
    """Mean KL(decoded coded top-k || decoded fp64 top-k): what quantisation adds, in the direction
    the training loss measures."""
    C = z.shape[1]
    added = []
    for zc in z.split(250):
        p = torch.softmax(zc / T, 1)
        ids, _, _ = label_encode_reference(zc.float(), k, Quantizer().thresholds(), T, True)
        ids = ids.long()
        exact = decode_dense(ids, p.gather(1, ids), C, "marginal", dtype=torch.float64)
        _, codes = label_encode(zc.float(), k, q.thresholds(), temperature=T, from_logits=True)
        dec = decode_dense(ids, codes, C, "marginal", codebook=q.codebook(), dtype=torch.float64)
        added.append((torch.special.xlogy(dec, dec) - torch.special.xlogy(dec, exact)).sum(1))
    return float(torch.cat(added).mean())


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
                added = distortion(zs[C], T, 5, q)
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
            ms = time_fn(fn, device, warmup=1, min_time=0.3, max_reps=50)
            out.append({"op": "encode", "N": N, "C": C, "k": 5, "impl": name, "device": device, "ms": ms,
                        "rows_per_s": N / ms * 1e3})
            print(f"{'encode':<14} {f'{N}x{C}':>14} {5:>3} {name:<26} {ms:>9.3f} {N / ms * 1e3:>12.0f}")
        ids, codes = label_encode(z, 5, t, temperature=20.0, from_logits=True)
        for name, fn in {"hald label_decode_dense": lambda: label_decode_dense(ids, codes, cb, C),
                         "reference": lambda: label_decode_dense_reference(ids, codes, cb, C)}.items():
            ms = time_fn(fn, device, warmup=1, min_time=0.3, max_reps=50)
            out.append({"op": "decode_dense", "N": N, "C": C, "k": 5, "impl": name, "device": device, "ms": ms,
                        "rows_per_s": N / ms * 1e3})
            print(f"{'decode_dense':<14} {f'{N}x{C}':>14} {5:>3} {name:<26} {ms:>9.3f} {N / ms * 1e3:>12.0f}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=2000, help="teacher rows at C = 1000 (a quarter at C = 21843)")
    args = ap.parse_args()
    rows = 400 if args.quick else args.rows
    hald_ext._ext.require()
    devices = ["cpu"] + (["cuda"] if hald_ext.build_info()["cuda_available"] else [])
    payload = {"benchmark": "storage", "machine": machine(), "build": hald_ext.build_info(),
               "rows": bench_storage(rows), "quantizers": bench_quantizers(rows),
               "throughput": [r for d in devices for r in bench_throughput(d, args.quick)]}
    path = write_results(f"storage_{device_tag(devices[-1])}.json", payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

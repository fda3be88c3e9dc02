"""Markdown tables from benchmarks/results/*.json.

    python benchmarks/report.py                  # print them
    python benchmarks/report.py --update-docs    # rewrite the generated block of docs/benchmarks.md
"""
from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def loss_table(payload: dict) -> str:
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_threads']} threads"
    if payload["rows"] and "fused_over_torch" in payload["rows"][0]:  # precision against float64
        lines = [f"Fused loss value error against float64, next to torch's own fp32 form on the same inputs ({where}):",
                 "", "| case | B | C | dtype | fused max abs err | torch max abs err | fused / torch |",
                 "|---|---:|---:|---|---:|---:|---:|"]
        for r in payload["rows"]:
            lines.append(f"| {r['case']} | {r['B']} | {r['C']} | {r['dtype']} | {r['fused_max_abs_err']:.2e} "
                         f"| {r['torch_max_abs_err']:.2e} | {r['fused_over_torch']:.2f} |")
        return "\n".join(lines)
    if payload["rows"] and "case" in payload["rows"][0]:  # the dense suite (hald_ext.timm vs timm)
        def mib(r, name):
            v = r.get(f"{name}_peak_bytes")
            return "-" if v is None else f"{v / 2**20:.0f}"

        lines = [f"Dense soft targets, forward + backward, hald_ext.timm vs timm {payload.get('timm', '')} "
                 f"({where}; load {m.get('load_avg_1m', 0):.1f}; Liger-Kernel: {payload.get('liger_kernel')}):",
                 "",
                 "| case | B | C | fused ms | timm ms | timm compiled ms | x timm | x compiled "
                 "| peak MiB fused / timm / compiled |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in payload["rows"]:
            lines.append(f"| {r['case']} | {r['B']} | {r['C']} | {r['fused_ms']:.2f} | {r['timm_ms']:.2f} "
                         f"| {r['timm_compiled_ms']:.2f} | {r['speedup_vs_timm']:.2f} "
                         f"| {r['speedup_vs_timm_compiled']:.2f} "
                         f"| {mib(r, 'fused')} / {mib(r, 'timm')} / {mib(r, 'timm_compiled')} |")
        if payload.get("skipped_shapes"):
            lines += ["", f"Not run on this machine (too slow for the CPU): B x C in {payload['skipped_shapes']}."]
        return "\n".join(lines)
    bw = payload.get("copy_bandwidth_GBps")
    lines = [f"Fused loss, forward + backward ({where}" + (f"; copy bandwidth {bw:.0f} GB/s" if bw else "") + "):",
             "",
             "| config | B | C | dtype | fused ms | eager ms | compiled ms | x eager | x compiled | x floor |"
             + (" extra MiB fused / eager / compiled |" if "fused_extra_bytes" in payload["rows"][0] else ""),
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
             + ("---:|" if "fused_extra_bytes" in payload["rows"][0] else "")]
    for r in payload["rows"]:
        line = (f"| {r['config']} | {r['B']} | {r['C']} | {r['dtype']} | {r['fused_ms']:.3f} | {r['eager_ms']:.3f} "
                f"| {r.get('compiled_ms', float('nan')):.3f} | {r['speedup_vs_eager']:.2f} "
                f"| {r.get('speedup_vs_compiled', float('nan')):.2f} | {r['fused_over_floor']:.2f} |")
        if "fused_extra_bytes" in r:
            mib = [r.get(f"{n}_extra_bytes", 0) / 2**20 for n in ("fused", "eager", "compiled")]
            line += f" {mib[0]:.0f} / {mib[1]:.0f} / {mib[2]:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def train_table(payload: dict) -> str:
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_threads']} threads"
    lines = [f"One soft-phase training step, images/s ({where}):", "",
             "| model | input | batch | pipeline | FKD-style | resident tensors | x FKD | pipeline share of step |"
             " batch source |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['model']} | {r['source']} -> {r['size']} | {r['batch']} | {r['pipeline_img_per_s']:.0f} "
                     f"| {r['fkd_img_per_s']:.0f} | {r['resident_img_per_s']:.0f} | {r['speedup_vs_fkd']:.2f} "
                     f"| {r['pipeline_overhead']:.0%} | {r['batch_source']} |")
    return "\n".join(lines)


def crop_table(payload: dict) -> str:
    """Crops/s per method (rows) and batch size (columns) at each S; the fused rows also show their lead
    over torchvision's per-sample path and DALI's CPU pipeline, measured in the same run."""
    m, cfg = payload["machine"], payload["config"]
    names = [("fused", "fused op fp32"), ("fused_bf16", "fused op bf16"), ("fused_cuda", "fused op fp32, CUDA"),
             ("fused_cuda_bf16", "fused op bf16, CUDA"), ("tv_per_sample", "torchvision per sample"),
             ("tv_batched", "torchvision batched (1 box)"), ("dali_cpu", "DALI CPU"), ("dali_gpu", "DALI GPU"),
             ("reference", "reference")]
    threads = "-".join(str(t) for t in cfg["threads"])
    where = f"{m['cpu']}, {m['cores']} cores, best of {threads} threads" + (f"; {m['gpu']}" if m.get("gpu") else "")
    load = payload.get("load_average")
    if isinstance(load, dict):  # 1-minute load average at the start and the end of the run
        load = f"{load['start'][0]:.1f} -> {load['end'][0]:.1f}"
    out = []
    for size in cfg["sizes"]:
        rows = [r for r in payload["rows"] if r["size"] == size]
        batches = list(dict.fromkeys(r["batch"] for r in rows))
        cell = {(r["batch"], r["method"]): r for r in rows}
        out += [f"Random-resized crop + flip + normalise, {cfg['source']} -> {size} px uint8, crops/s; fused rows: "
                f"x torchvision per sample / x DALI CPU ({where}" + (f"; load average {load}" if load else "") + "):",
                "", "| method | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
        for key, label in names:
            if not any((b, key) in cell for b in batches):
                continue
            cells = []
            for b in batches:
                r = cell.get((b, key))
                if r is None:
                    cells.append("-")
                    continue
                sp = r.get("speedup") or {}
                extra = " / ".join(f"{sp[k]:.1f}x" for k in ("tv_per_sample", "dali_cpu") if k in sp)
                cells.append(f"{r['crops_per_s']:.0f}" + (f" ({extra})" if extra else ""))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def storage_table(payload: dict) -> str:
    """Bytes per label and KL kept (mean KL(teacher's full label || stored label), nats) at T = 1 / 20."""
    m = payload["machine"]
    rows = payload["rows"]
    out = [f"Label storage per label and what it keeps of the teacher's full label ({m['cpu']}, "
           f"{m['cpu_threads']} threads):", ""]
    for C in sorted({r["C"] for r in rows}):
        at = {(r["format"], r["T"]): r for r in rows if r["C"] == C}
        formats = list(dict.fromkeys(r["format"] for r in rows if r["C"] == C))
        teacher = next(r["teacher"] for r in rows if r["C"] == C)
        out += [f"C = {C} ({teacher}):", "", "| format | bytes/label | KL kept, T = 1 | KL kept, T = 20 |",
                "|---|---:|---:|---:|"]
        for f in formats:
            cells = [f"{at[f, T]['kl_to_teacher']:.3g}" if (f, T) in at else "-" for T in (1.0, 20.0)]
            out.append(f"| {f} | {at[f, 1.0]['bytes_per_label'] if (f, 1.0) in at else '-'} | {cells[0]} | {cells[1]} |")
        out.append("")
    return "\n".join(out).rstrip()


TABLES = {"loss_": loss_table, "train_": train_table, "crop_": crop_table, "storage_": storage_table}
BEGIN, END = "<!-- results:begin (benchmarks/report.py) -->", "<!-- results:end -->"


def tables() -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "results", "*.json"))):
        name = os.path.basename(path)
        fn = next((f for prefix, f in TABLES.items() if name.startswith(prefix)), None)
        if fn is not None:
            with open(path) as f:
                out.append(fn(json.load(f)) + f"\n\n(`benchmarks/results/{name}`)")
    return "\n\n".join(out)


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update-docs", action="store_true", help="rewrite the generated block of docs/benchmarks.md")
    p.add_argument("--update-readme", action="store_true", help="old name of --update-docs (the tables moved)")
    args = p.parse_args(argv)
    text = tables()
    if args.update_readme:
        print("report.py: --update-readme is now --update-docs (the tables live in docs/benchmarks.md)")
    if not (args.update_docs or args.update_readme):
        print(text)
        return
    page = os.path.join(os.path.dirname(HERE), "docs", "benchmarks.md")
    with open(page) as f:
        content = f.read()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"docs/benchmarks.md has no {BEGIN} ... {END} block")
    head, rest = content.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(page, "w") as f:
        f.write(head + BEGIN + "\n" + text + "\n" + END + tail)


if __name__ == "__main__":
    main()

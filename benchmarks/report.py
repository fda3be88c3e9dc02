"""Markdown tables from benchmarks/results/*.json (the README's tables are pasted from this).

    python benchmarks/report.py
"""
from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def loss_table(payload: dict) -> str:
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_threads']} threads"
    lines = [f"Fused loss, forward + backward ({where}; copy bandwidth {payload['copy_bandwidth_GBps']:.0f} GB/s):",
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


def main():
    for path in sorted(glob.glob(os.path.join(HERE, "results", "*.json"))):
        with open(path) as f:
            payload = json.load(f)
        if os.path.basename(path).startswith("loss_"):
            print(loss_table(payload))
            print()


if __name__ == "__main__":
    main()

"""Pairs seeds 0-4 of the temperature and IPC 1 drift-rule cells (the committed 3-seed reports plus the
-s34 reports) and writes five-seeds.json; prints the table of five-seeds.md. Run from the repository root."""
import csv, json, sys
from hald_ext.sweep import stats
def rows(path):
    return list(csv.DictReader(open(path)))
out, lines = {}, []
for preset, axis in (("temperature", "relabel.temperature"), ("ipc1", "relabel.temperature")):
    rs = rows(f"experiments/fmnist/rule/{preset}/results.csv") + rows(f"experiments/fmnist/rule/{preset}-s34/results.csv")
    cells = sorted({r[axis] for r in rs})
    for c in cells:
        by = {}
        for r in rs:
            if r[axis] == c:
                by.setdefault(int(r["seed"]), {})[r["train.schedule"]] = float(r["top1"])
        seeds = sorted(s for s in by if {"hald", "soft-only"} <= set(by[s]))
        a = [by[s]["hald"] for s in seeds]; b = [by[s]["soft-only"] for s in seeds]
        p = stats.paired(a, b)
        key = f"{preset} {axis.split('.')[-1]}={c}"
        out[key] = dict(seeds=seeds, hald=a, soft_only=b, **{k: p[k] for k in p if not isinstance(p[k], (list, dict))})
        lines.append(f"| {preset} | T = {c} | {len(seeds)} | {stats.mean(a):.2f} +- {stats.sd(a):.2f} | {stats.mean(b):.2f} +- {stats.sd(b):.2f} | {p['mean']:+.2f} | [{p['lo']:+.2f}, {p['hi']:+.2f}] | {sum(x > y for x, y in zip(a, b))}/{sum(x < y for x, y in zip(a, b))} |")
print("\n".join(lines))
json.dump(out, open("experiments/fmnist/rule/five-seeds.json", "w"), indent=1)

"""Test top-1 of each expert snapshot of the expert-epoch study's teacher (`hald teacher --save-every 1`),
so the study's table can say how good each expert was. Writes expert-epoch/experts.json; run from the
repository root after the sweep (its --out: runs/label-worth by default)."""
import glob
import os
import json
import re
import sys

import torch

from hald_ext.train import checkpoint as ckpt
from hald_ext.data.sources import load_fashion_mnist
from hald_ext.train.evaluate import EvalData, evaluate
from hald_ext.train.lvsd import load_model

out_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/label-worth"
torch.set_num_threads(1)
test = EvalData(load_fashion_mnist("test"), 28)
teacher_dir, = glob.glob(f"{out_dir}/teacher/*/teacher-epoch001.pth")
teacher_dir = teacher_dir.rsplit("/", 1)[0]
paths = sorted(glob.glob(f"{teacher_dir}/teacher-epoch*.pth"))  # the last epoch's too (teacher.pth's weights)
result = {}
for p in paths:
    state = ckpt.load(p)
    model, _ = load_model(p, 10, 28)
    m = re.search(r"epoch(\d+)", p)
    epoch = int(m.group(1))
    r = evaluate(model.eval(), test, mean=state.get("mean"), std=state.get("std"))
    result[epoch] = round(float(r["eval_top1"]), 2)
    print(f"epoch {epoch:2d}: test top-1 {result[epoch]:.2f} %", flush=True)
os.makedirs("experiments/label-worth/expert-epoch", exist_ok=True)
with open("experiments/label-worth/expert-epoch/experts.json", "w") as f:
    json.dump({"teacher": teacher_dir, "test_top1_by_epoch": result}, f, indent=1)

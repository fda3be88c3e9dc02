"""The library without the extras: with torchvision, timm, PyYAML, tqdm, matplotlib and DALI made
unimportable, the loss, ops, label store and data readers import and work, and a `hald` command that
needs an extra says which one in one line."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hald_ext.core import extras

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("torchvision", "timm", "yaml", "tqdm", "matplotlib", "nvidia")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    """)


def run_blocked(code: str, tmp_path, args=()) -> subprocess.CompletedProcess:
    script = tmp_path / "blocked.py"
    script.write_text(BLOCK + textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)


def test_library_works_without_the_extras(tmp_path):
    r = run_blocked(f"""
        import numpy as np, torch
        import hald_ext
        from hald_ext import SoftHardLoss, ops
        from hald_ext.labels import LabelStore, Quantizer
        from hald_ext.data import ImageFiles, open_images, image_sizes
        from hald_ext.core import boxes, normalize
        from PIL import Image

        logits = torch.randn(4, 10, requires_grad=True)
        soft = torch.softmax(torch.randn(4, 10), 1)
        loss = SoftHardLoss()(logits, soft)
        loss.backward()
        assert logits.grad is not None and torch.isfinite(loss)

        root = {str(tmp_path / 'folder')!r}
        import os
        for c in ("a", "b"):
            os.makedirs(os.path.join(root, c))
            Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(os.path.join(root, c, "x.png"))
        files = open_images(root)
        assert isinstance(files, ImageFiles) and len(files) == 2
        assert image_sizes(files).tolist() == [[7, 9], [7, 9]]
        for name in ("torchvision", "timm", "yaml", "tqdm", "matplotlib", "nvidia.dali"):
            assert name not in sys.modules, name
        print("ok")
        """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


@pytest.mark.parametrize("command", [["train", "--help"], ["teacher", "--help"]])
def test_a_command_names_its_missing_extra(tmp_path, command):
    r = run_blocked("""
        from hald_ext.cli import main
        sys.exit(main(sys.argv[1:]))
        """, tmp_path, command)
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "pip install 'hald_ext[train]'" in last and "Traceback" not in r.stderr, r.stderr


def test_install_hint_names_the_extra():
    assert "hald_ext[train]" in extras.install_hint("timm.models")
    assert "hald_ext[plots]" in extras.install_hint("matplotlib.pyplot")
    assert "hald_ext[dali]" in extras.install_hint("nvidia.dali")
    assert extras.install_hint("torch") is None
    assert extras.available("json") and not extras.available("hald_ext_no_such_module")

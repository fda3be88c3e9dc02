"""Build the source distribution, a wheel from it alone (C++ kernels only), install that wheel in a
scratch folder and run it: the check that a package index upload or `pip install hald_ext-*.tar.gz`
would work, which `pip install .` in the checkout cannot show (it sees every file of the checkout).

    python scripts/check_package.py            (make test runs it after the tests)

Exits non-zero, naming the step, when the sdist lacks a file the build needs, the wheel lacks a
module or data file, or the installed package cannot run the loss and the `hald` entry point."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMOKE = textwrap.dedent("""
    import os, sys, torch
    import hald_ext
    from hald_ext import SoftHardLoss
    from hald_ext.sweep import drift_rule
    where = os.path.dirname(hald_ext.__file__)
    assert where.startswith(sys.argv[1]), f"imported {where}, not the installed wheel"
    x = torch.randn(8, 100, requires_grad=True)
    loss = SoftHardLoss()(x, torch.softmax(torch.randn(8, 100), 1))
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None
    assert drift_rule.load()["threshold"] > 0      # the rule's JSON ships in the wheel
    print("installed wheel runs:", hald_ext.build_info())
    """)


def step(name: str, cmd: list, **kw) -> None:
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        sys.exit(f"check_package: {name} failed ({' '.join(cmd)}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(f"check_package: {name} ({time.time() - t0:.0f} s)")


def main() -> int:
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="hald-package-") as tmp:
        step("sdist", [py, "setup.py", "-q", "sdist", "-d", os.path.join(tmp, "dist")], cwd=ROOT)
        (sdist,) = glob.glob(os.path.join(tmp, "dist", "*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(os.path.join(tmp, "src"), filter="data")
        (src,) = glob.glob(os.path.join(tmp, "src", "hald_ext-*"))
        # C++ kernels only, unoptimised (-O0): this checks what the package holds, not its speed
        env = dict(os.environ, HALD_CPU_ONLY="1", HALD_DEBUG="1", MAX_JOBS=str(os.cpu_count() or 1))
        step("wheel from the sdist alone (C++ kernels)",
             [py, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", os.path.join(tmp, "wheel"),
              src], env=env)
        (wheel,) = glob.glob(os.path.join(tmp, "wheel", "*.whl"))
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        ours = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "hald_ext", "**", "*.py"), recursive=True)}
        missing = sorted(p for p in ours if p not in names) + [
            p for p in ("hald_ext/sweep/drift_rule.json",) if p not in names]
        if missing:
            sys.exit(f"check_package: the wheel lacks {missing}")
        for extra in ("train", "plots", "dali"):
            if f"Provides-Extra: {extra}" not in meta:
                sys.exit(f"check_package: the wheel's metadata has no [{extra}] extra")
        site = os.path.join(tmp, "site")
        step("install the wheel", [py, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel])
        run_env = dict(os.environ, PYTHONPATH=site)
        step("run the installed package", [py, "-c", SMOKE, site], env=run_env, cwd=tmp)
        step("hald info from the installed package", [py, "-m", "hald_ext.cli", "info"], env=run_env, cwd=tmp)
    print("check_package: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build script for hald_ext.

`pip install --no-build-isolation .` compiles `hald_ext._C`:
  * C++ kernels always;
  * CUDA kernels too when torch is a CUDA build and nvcc is found.

Environment switches:
  HALD_CPU_ONLY=1          skip the CUDA kernels even when nvcc is present (fast iteration).
  HALD_DEBUG=1             -O0 -g, for gdb / sanitizers.
  TORCH_CUDA_ARCH_LIST     the usual torch knob; without a visible GPU we default to "9.0+PTX"
                           so a CPU-only machine compiles one architecture (PTX covers newer ones).
  CUDA_HOME                toolkit root; when unset we look for nvcc and resolve wrapper scripts.
"""
import glob
import os
import re
import runpy
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """Resolve the toolkit root. A `/usr/local/bin/nvcc` wrapper would make torch guess `/usr/local`."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        nvcc = os.path.realpath(nvcc)
        # Follow a one-line `exec /path/to/nvcc "$@"` wrapper script.
        try:
            with open(nvcc, "rb") as f:
                head = f.read(512)
            m = re.search(rb"exec\s+(\S+/bin/nvcc)", head)
            if m:
                nvcc = m.group(1).decode()
        except OSError:
            pass
        candidates.insert(0, os.path.dirname(os.path.dirname(nvcc)))
    for c in candidates:
        if os.path.exists(os.path.join(c, "bin", "nvcc")) and os.path.isdir(os.path.join(c, "include")):
            return c
    return None


cuda_home = None
if os.environ.get("HALD_CPU_ONLY", "0") != "1":
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

use_cuda = bool(cuda_home) and torch.version.cuda is not None
if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"

debug = os.environ.get("HALD_DEBUG", "0") == "1"
opt = ["-O0", "-g"] if debug else ["-O3"]

sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
include_dirs = [os.path.join(ROOT, "csrc", "include")]
cxx_flags = opt + ["-fopenmp", "-fvisibility=hidden", "-DHALD_WITH_CUDA=%d" % int(use_cuda)]
define_macros = []  # py_limited_api=True below defines Py_LIMITED_API

if use_cuda:
    sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
    # No --use_fast_math: it turns every float division into an approximate one, flushes denormals
    # and swaps in approximate exp/log, which the crop kernel's resampling span and the codec's
    # codes near a threshold must not see (they promise the CPU kernels' results). The loss kernel
    # asks for its fast exp explicitly (__expf on its float path), so it keeps its speed.
    # Kernels include c10/cuda/CUDAStream.h, not ATen/cuda/CUDAContext.h: the latter pulls in
    # cuBLAS/cuSPARSE headers that minimal toolkits lack (and the pip `nvidia` headers of another
    # CUDA minor version must not shadow the toolkit's own).
    ext = CUDAExtension(
        "hald_ext._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": opt + ["-lineinfo", "-DHALD_WITH_CUDA=1", "--expt-relaxed-constexpr"],
        },
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
else:
    ext = CppExtension(
        "hald_ext._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )

# The extras come from the table the package names a missing extra with (hald_ext/core/extras.py,
# read as a file: the package itself cannot be imported before it is built).
_EXTRA_OF = runpy.run_path(os.path.join(ROOT, "hald_ext", "core", "extras.py"))["EXTRA_OF"]
EXTRAS = {}
for _package, _extra in _EXTRA_OF.values():
    EXTRAS.setdefault(_extra, []).append(_package)
EXTRAS["all"] = sorted({d for deps in EXTRAS.values() for d in deps})

setup(
    name="hald_ext",
    version="0.1.0",
    description="Fused kernels, label store and trainer for HALD (Soft -> Hard -> Soft) soft-label distillation",
    packages=find_packages(include=["hald_ext", "hald_ext.*"]),
    package_data={"hald_ext.sweep": ["drift_rule.json"]},  # the drift rule hald lvsd prints its lead from
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
    python_requires=">=3.10",
    # The library (fused loss, ops, label store, data readers) needs these only; the `hald` commands
    # (trainer, sweeps) are the [train] extra. DALI's wheel is built per CUDA major version: [dali]
    # names the CUDA 13 one (use nvidia-dali-cuda120 on CUDA 12).
    install_requires=["torch", "numpy", "safetensors", "pillow"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hald=hald_ext.cli:main"]},
)

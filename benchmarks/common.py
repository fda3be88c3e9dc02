"""Timing, machine description and result files shared by the benchmark scripts.

Every result file has one layout:
    {"benchmark": str, "machine": machine(), "build": hald_ext.build_info(), "rows": [{...}, ...], ...}
(`payload()` builds it, `write_results()` writes it); every time comes from `time_fn`."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def build() -> dict:
    """Which hald_ext build ran (backends compiled in and usable here)."""
    import hald_ext

    return hald_ext.build_info()


def payload(benchmark: str, rows: list[dict], **extra) -> dict:
    """A result file's contents in the shared layout; `extra` adds benchmark-specific keys (config, ...)."""
    return {"benchmark": benchmark, "machine": machine(), "build": build(), "rows": rows, **extra}


def device_tag(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
    return "cpu"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: str, *, warmup: int = 3, min_time: float = 0.5, max_reps: int = 200,
            back_to_back: int = 1) -> float:
    """Median wall time of fn() in milliseconds (synchronised on CUDA). back_to_back > 1: each sample
    is the mean of that many calls queued one after the other and synchronised once, as a training loop
    runs them (the host's launch work then overlaps the device's; a sync per call would add it)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 5):
        t0 = time.perf_counter()
        for _ in range(back_to_back):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3 / back_to_back)
    return statistics.median(times)


def per_second(fn, items: int, device: str, **timing) -> float:
    """Throughput of fn() in items per second, from time_fn's median (keywords go to time_fn)."""
    return items / (time_fn(fn, device, **timing) * 1e-3)


def copy_bandwidth_gbs(nbytes: int, device: str) -> float:
    """Measured read+write bandwidth of a plain tensor copy of `nbytes` (the floor's denominator)."""
    n = max(nbytes // 4, 1)
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    ms = time_fn(lambda: dst.copy_(src), device, min_time=0.3, back_to_back=10 if device == "cuda" else 1)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def write_results(name: str, payload: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path

"""Shared helpers of the benchmark scripts: machine description, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

#: The solver's warm start before BENCHMARKS.md section 25 made ``warm_start="best"`` (h = 0 or the
#: radial start, by a probe) the default. The scripts of sections 1-24 pin it.
ZERO_START = {"warm_start": "zero"}

#: The solver's step scales before BENCHMARKS.md section 24 made ``preconditioner="adaptive"`` the
#: default, with the warm start of that time. The scripts of the sections measured before it pin
#: them, so that their tables rerun as measured (their "default" means these settings).
CELL = {"preconditioner": "cell", **ZERO_START}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def repeat(fn, repeats: int = 5, warmup: int = 1, sync=None) -> dict:
    """Wall time of fn() over repeats (after warm-up): min and median seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return {"min": min(times), "median": statistics.median(times), "all": times}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path

"""Warm start of the semidiscrete solver: time, chi2 and a radial bias that chi2 hardly sees.

For each problem (normalised as `sdfm train` does) the solver runs with its defaults and
warm_start "auto" (Gaussian / linear-Monge-map start) or "zero". The bias check: the mass that
the potential's cells receive from 10^6 fresh noise samples on the atoms farther from the mean than
the median atom, against their target mass 0.5 (uniform weights). Sampling error of that mass:
about 0.0005.

    python benchmarks/warm_start_bias.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, machine, save  # noqa: E402
from sdfm.evaluation.compare import prepare  # noqa: E402
from sdfm.transport import SemidiscreteSolver, assign  # noqa: E402

PROBLEMS = ["checkerboard", "gmm:d=16,k=8", "digits", "mnist1d", "gmm:d=64,k=8"]


def outer_mass(y: torch.Tensor, potential: torch.Tensor, samples: int = 1_000_000) -> float:
    r = y.norm(dim=1)
    outer = r > r.median()
    gen = torch.Generator().manual_seed(5)
    counts = torch.zeros(y.shape[0], dtype=torch.float64)
    for _ in range(samples // 100_000):
        idx = assign(torch.randn(100_000, y.shape[1], generator=gen), y, potential)
        counts += torch.bincount(idx, minlength=y.shape[0])
    return float(counts[outer].sum() / counts.sum())


def main() -> None:
    rows = []
    for spec in PROBLEMS:
        y = torch.from_numpy(prepare(spec).train)
        for warm in ("auto", "zero"):
            t = time.perf_counter()
            res = SemidiscreteSolver(warm_start=warm, **CELL).solve(
                y, generator=torch.Generator().manual_seed(0)
            )
            row = {
                "problem": spec,
                "N": int(y.shape[0]),
                "d": int(y.shape[1]),
                "warm_start": warm,
                "seconds": time.perf_counter() - t,
                "samples": res.samples,
                "chi2": res.chi2,
                "outer_half_mass": outer_mass(y, res.potential),
            }
            rows.append(row)
            print(row, flush=True)
    save(
        "warm_start_bias",
        {"command": "python benchmarks/warm_start_bias.py", "machine": machine(), "rows": rows},
    )


if __name__ == "__main__":
    main()

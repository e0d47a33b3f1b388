"""The annealing step's noise cap (``SemidiscreteSolver.anneal_noise_level``) at N beyond 10,240.

The annealing runs batches of 1024 noise samples; a cell's relative counting error per batch has
variance about N / 1024, so with a fixed step the annealed potential gets noisier as N grows. The cap
``lr_anneal <= anneal_noise_level * 1024 / N`` (default 3.0) does not bind for N <= 10,240. Each
configuration solves from scratch to the default tol 0.05 (or the time cap); "first chi2" is the
solver's first measurement after the annealing, at the samples per atom (spa) given.

    python benchmarks/anneal_cap.py                      # results/anneal_cap.json

Problems: the mixture of benchmarks/scale.py (16 rank-16 Gaussians, d = 64) at N = 20,000 and 50,000,
and the 2-D checkerboard at N = 30,000 (normalised as `sdfm train` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, machine, save  # noqa: E402
from scale import make_data, open_targets  # noqa: E402
from sdfm.evaluation.compare import prepare  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402

CONFIGS = {
    "no cap (before)": {"anneal_noise_level": None},
    "cap 3.0 (default)": {},
    "no annealing": {"anneal": False},
}


def load(problem: str) -> torch.Tensor:
    if problem.startswith("mix:"):
        return open_targets(make_data(int(problem[4:]), 64)).clone()
    return torch.from_numpy(prepare(problem).train)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="mix:20000,mix:50000,checkerboard:n=30000")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    args = ap.parse_args()
    rows = []
    for problem in args.problems.split(","):
        y = load(problem)
        n = y.shape[0]
        configs = dict(CONFIGS)
        if y.shape[1] <= 2:  # without annealing the 2-D problems do not converge (BENCHMARKS 3)
            configs.pop("no annealing")
        for name, extra in configs.items():
            solver = SemidiscreteSolver(max_seconds=args.max_seconds, **CELL, **extra)
            t = time.perf_counter()
            res = solver.solve(y, generator=torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - t
            first = next(e for e in res.history if e.chi2 is not None)
            row = {
                "problem": problem,
                "N": n,
                "d": int(y.shape[1]),
                "config": name,
                "seconds": round(seconds, 1),
                "samples_per_atom": round(res.samples / n, 1),
                "chi2": res.chi2,
                "chi2_stderr": res.chi2_stderr,
                "converged": res.converged,
                "first_chi2": first.chi2,
                "first_chi2_spa": round(first.samples / n, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = "python benchmarks/anneal_cap.py " + " ".join(sys.argv[1:])
    save("anneal_cap", {"command": command.strip(), "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()

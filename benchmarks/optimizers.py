"""Which optimiser reaches chi2 <= 0.05 fastest? Variants of SemidiscreteSolver on the three problems.

Each variant runs until its own chi2 measurement (+ 2 stderr) is <= 0.05 or --cap seconds pass; the
chi2 of its result is then checked independently on 2^20 fresh samples. Variants, from the
textbook to the default:
- sgd-ema:        plain SGD on the semi-dual gradient (one global step scale), g0 = 0, EMA 0.99 of
                  the iterates (the paper's recipe);
- asgd:           averaged SGD, step ~ k^-2/3 and uniform (Polyak) averaging (POT's base solver);
- adam:           Adam (b1 = 0.9, b2 = 0.999) on the same gradient, EMA 0.99;
- growing-batch:  plain SGD whose batch grows linearly with the samples drawn, polynomial averaging;
- drag:           eps annealing (as POT's DRAG) with the global step, g0 = 0, uniform averaging;
- cell:           per-cell Newton-scale preconditioning, g0 = 0, polynomial averaging;
- cell+warm:      the same with the Gaussian (linear Monge map) warm start;
- default:        cell + warm start + entropic annealing (SemidiscreteSolver()).

    python benchmarks/optimizers.py [--cap 120]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, machine, save  # noqa: E402
from problems import PROBLEMS, independent_chi2, load  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402

PLAIN = {"preconditioner": "global", "anneal": False, "warm_start": "zero", "batch_size": 1024}
VARIANTS = {
    "sgd-ema": {**PLAIN, "averaging": "ema", "noise_level": 1e9},
    "asgd": {**PLAIN, "averaging": "uniform", "lr_decay": 2 / 3, "lr": 0.3, "noise_level": 1e9},
    "adam": {**PLAIN, "optimizer": "adam", "averaging": "ema", "lr": 0.05, "noise_level": 1e9},
    "growing-batch": {**PLAIN, "batch_growth": 0.5, "noise_level": 1e9},
    "drag": {**PLAIN, "anneal": True, "averaging": "uniform", "noise_level": 1e9},
    "cell": {**CELL, "anneal": False, "warm_start": "zero"},
    "cell+warm": {**CELL, "anneal": False},
    "default": CELL,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=120.0)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    rows = []
    for name in args.problems.split(","):
        y = load(name)
        for variant in args.variants.split(","):
            solver = SemidiscreteSolver(max_seconds=args.cap, **VARIANTS[variant])
            t = time.perf_counter()
            res = solver.solve(torch.from_numpy(y), generator=torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - t
            chi2, se = independent_chi2(y, res.potential)
            row = {
                "problem": name,
                "variant": variant,
                "settings": VARIANTS[variant],
                "seconds": seconds,
                "samples": res.samples,
                "converged": res.converged,
                "chi2": chi2,
                "chi2_stderr": se,
                "curve": [(e.seconds, e.chi2) for e in res.history if e.chi2 is not None],
            }
            rows.append(row)
            print(
                f"{name:16s} {variant:14s} {seconds:7.1f}s {res.samples:10.3g} samples "
                f"converged={res.converged!s:5s} chi2={chi2:.4f}",
                flush=True,
            )
    save(
        "optimizers",
        {
            "command": "python benchmarks/optimizers.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "cap_seconds": args.cap,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()

"""The radial warm start and the default's choice between it and h = 0 (BENCHMARKS.md section 25).

    python benchmarks/radial_start.py                 # results/radial_start.json
    python benchmarks/radial_start.py --seeds 5 --starts "best (default)" --problems cauchy_2d \\
        lognormal_2d student_t3_2d far_cluster_2d checkerboard --out radial_start_seeds
                                                      # results/radial_start_seeds.json
    python benchmarks/radial_start.py --problems "cauchy_2d n=300" --out radial_start_cauchy300
    python benchmarks/radial_start.py --problems "checkerboard n=30000" "checkerboard n=100000" \\
        --max-seconds 900 --out radial_start_large2d
    for cap in 1 10; do python benchmarks/radial_start.py --cap $cap --starts "best (default)" \\
        --problems cauchy_2d lognormal_2d student_t3_2d checkerboard --out radial_start_cap$cap; done

Each problem is solved twice in one process, with the zero start (``warm_start="zero"``, the default
before section 25) and with the default (``warm_start="best"``: a probe batch decides between h = 0
and the radial start), both with the default adaptive step scales, tol 0.05 (0.1 for the 64-d
mixture), at most 6,000 steps and 120 s (``--max-seconds``), solver seeds 0.. (``--seeds``). chi2
is checked independently: float64 brute-force argmax on 400,000 fresh samples
(``chains.independent_chi2``), and the far clusters' mass on 2^20 (``step_designs``).

Problems: those of ``step_designs.py`` (the built-in 8gaussians, checkerboard, moons, gmm, digits and
MNIST-1D normalised as ``sdfm solve`` does; a chain spiral and helix; the N = 1,000 2-D sets of
``tails.py``: standard normal, 8-component mixture, Student t, log-normal, Cauchy, a tiny far
cluster; two far clusters; tight clusters in 2-D and 8-D), the 16-D Student t of ``tails.py``, a
300-point Cauchy set (numpy's seed 0, as the CLI test draws it) and the checkerboard at N = 30,000
and 100,000 (these three only when named), the
peers' 10,000-point 64-d gmm8 (``problems.py``) and the 64-d mixture of ``scale.py`` at N = 30,000.
2 threads, nothing else running. ``--cap K`` sets the cap on the annealing's score scale where the
radial start is chosen (K times its own mean gap; the solver's ``RADIAL_SCALE_CAP`` is 3).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chains import independent_chi2  # noqa: E402
from common import ZERO_START, machine, save, set_before_26  # noqa: E402
from problems import load  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.transport import SemidiscreteSolver, assign  # noqa: E402
from sdfm.transport.semidiscrete import parts  # noqa: E402
from step_designs import _all_problems, _builtin, _far_mass  # noqa: E402
from tails import _problems as tail_problems  # noqa: E402

STARTS = {"zero": ZERO_START, "best (default)": {}}
ONLY_WHEN_NAMED = ("cauchy_2d n=300", "checkerboard n=30000", "checkerboard n=100000")
MAX_STEPS, MAX_SECONDS = 6000, 120.0


def problems() -> dict[str, tuple[torch.Tensor, list[int], float]]:
    """name -> (targets, start indices of far clusters, tol)."""
    out = {name: (y, far, 0.05) for name, (y, far) in _all_problems().items()}
    out["student_t3_16d"] = (tail_problems()["student_t3_16d"][0], [], 0.05)
    out["gmm8-64d"] = (torch.from_numpy(load("gmm8-64d")), [], 0.05)
    u = np.random.default_rng(0).uniform(size=(300, 2))  # the CLI test's Cauchy set
    out["cauchy_2d n=300"] = (torch.from_numpy(np.tan(np.pi * (u - 0.5)).astype(np.float32)), [], 0.05)
    for n in (30_000, 100_000):  # large N in 2-D (only when named)
        out[f"checkerboard n={n}"] = (_builtin(f"checkerboard:n={n}"), [], 0.05)
    out["mixture-64d n=30000"] = (torch.from_numpy(np.load(make_data(30000, 64))), [], 0.1)
    return out


def row(y: torch.Tensor, far: list[int], tol: float, options: dict, seed: int, cap: float) -> dict:
    solver = SemidiscreteSolver(tol=tol, max_steps=MAX_STEPS, max_seconds=cap, **options)
    start = time.perf_counter()
    r = solver.solve(y, generator=torch.Generator().manual_seed(seed))
    out = {
        "seed": seed,
        "start_used": r.settings["warm_start_used"],
        "seconds": round(time.perf_counter() - start, 2),
        "samples_per_target": round(r.samples / y.shape[0], 1),
        "converged": r.converged,
        "chi2_independent": round(independent_chi2(y, r.potential), 4),
        "empty_rises": r.settings["empty_rises"],
    }
    if far:
        out["far_mass"] = _far_mass(y, r.potential, far)
    if y.shape[0] <= 1000:  # atoms that no sample reaches (counted for the small sets)
        noise = torch.Generator().manual_seed(123)
        x = torch.randn(400_000, y.shape[1], generator=noise, dtype=torch.float64)
        counts = torch.bincount(assign(x, y.double(), r.potential.double()), minlength=y.shape[0])
        out["empty_atoms"] = int((counts == 0).sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", help="a subset (default: all)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--starts", nargs="*", choices=list(STARTS), help="a subset of the starts")
    parser.add_argument("--out", default="radial_start")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="cap per solve")
    parser.add_argument("--cap", type=float, help="the radial start's scale cap (default: the solver's, 3)")
    parser.add_argument("--before-26", action="store_true", help="the adaptive scales before section 26")
    args = parser.parse_args()
    torch.set_num_threads(2)
    before = set_before_26(args.before_26)
    if args.cap is not None:
        parts.RADIAL_SCALE_CAP = args.cap
    rows = []
    for name, (y, far, tol) in problems().items():
        if (name not in args.problems) if args.problems else name in ONLY_WHEN_NAMED:
            continue
        for label, options in STARTS.items():
            if args.starts and label not in args.starts:
                continue
            for seed in range(args.seeds):
                out = {"problem": name, "N": y.shape[0], "d": y.shape[1], "tol": tol, "start": label}
                out.update(row(y, far, tol, {**options, **before}, seed, args.max_seconds))
                print(out, flush=True)
                rows.append(out)
    limits = {"max_steps": MAX_STEPS, "max_seconds": args.max_seconds, "cap": parts.RADIAL_SCALE_CAP}
    save(args.out, {"machine": machine(), **limits, "rows": rows})


if __name__ == "__main__":
    main()

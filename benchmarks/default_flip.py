"""The adaptive step scales as the solver's default (BENCHMARKS.md section 24): the cell scales, the
default before, and the adaptive ones side by side in one process, on the problems whose default
solves the earlier sections measured and sections 21-23 did not re-run.

    python benchmarks/default_flip.py            # results/default_flip.json
    python benchmarks/default_flip.py --large    # results/default_flip_large.json: N = 100,000 x 64
    python benchmarks/default_flip.py --why      # results/default_flip_why.json: the two regressions

- ``solver``: the peers' problems of section 14 (checkerboard-2d, digits-64d, gmm8-64d; tol 0.05)
  and the 64-d mixture of ``scale.py`` at N = 30,000 (tol 0.1; with ``--large`` only N = 100,000,
  tol 0.1, at most 1,500 s a solve); solver seed 0, samples per target at the stop, seconds, and chi2
  checked independently on 2^20 fresh samples (``problems.independent_chi2``).
- ``augmented``: section 8's nine 20-point toys (beta = 10, ``augmented_toys.toy``): chi2, the
  fraction of pairs that leave their condition, and the fraction paired as POT's exact coupling pairs.

- ``--why``: the solver's own chi2 measurements (step, chi2, stderr) of both scales on gmm8-64d, and
  on the 16-point ring of ``small_problems.py`` each cell's mean gap over its Newton scale
  m_j / (d m_j / d h_j) at a near-exact potential (the cell scales solved to tol 0.005), for the
  noise it wins (the cell scales' estimate) and the noise where it is the runner-up (what the
  adaptive scales add); 2^22 float64 samples, d m_j / d h_j from the gaps below 1e-3.

2 threads (1 for the toys, as ``augmented_toys.py``), nothing else running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, ZERO_START, AdaptiveBefore26, machine, save  # noqa: E402
from problems import load, solve_row  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402
from sdfm.transport.semidiscrete import parts  # noqa: E402

#: label -> solver options: the scales before section 24, and the default of sections 24-25 (with the
#: zero warm start of that time: section 25 made ``warm_start="best"`` the default, section 26 changed
#: the adaptive scales' runner-up gaps and added the empty rise)
SCALES = {"cell": CELL, "adaptive": {**ZERO_START, "empty_rise": False}}


def solver_rows(problems: dict, cap: float) -> list[dict]:
    rows = []
    for name, (make, tol) in problems.items():
        y = make()
        for label, options in SCALES.items():
            solver = SemidiscreteSolver(tol=tol, max_steps=None, max_seconds=cap, **options)
            row = {"problem": name, "n": y.shape[0], "d": y.shape[1], "tol": tol, "scales": label}
            row.update(solve_row(solver, y))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def augmented_rows() -> list[dict]:
    from augmented_toys import TOYS, toy

    torch.set_num_threads(1)
    rows = []
    for spec in TOYS:
        for label, options in SCALES.items():
            row = toy(*spec, options=options)
            rows.append({"scales": label, **row})
    torch.set_num_threads(2)
    return rows


def measurements(y: np.ndarray) -> dict:
    """(step, chi2, stderr) of every measurement the solver made, for each scale."""
    out = {}
    for label, options in SCALES.items():
        seen = []

        def keep(state, seen=seen):
            m = state.measured
            if m is not None and m.step == state.step:
                seen.append([m.step, round(m.chi2, 4), round(m.stderr, 4)])

        SemidiscreteSolver(**options).solve(
            torch.from_numpy(y), generator=torch.Generator().manual_seed(0), callback=keep
        )
        out[label] = seen
    return out


def gap_scales(y: np.ndarray) -> dict:
    """Each cell's mean gap over its Newton scale, for the noise it wins and where it is runner-up."""
    yt = torch.from_numpy(y).double()
    g = SemidiscreteSolver(tol=0.005, **CELL).solve(yt.float(), generator=torch.Generator().manual_seed(0))
    x = torch.randn(1 << 22, yt.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    top = (x @ yt.T + g.potential.double() - 0.5 * (yt * yt).sum(1)).topk(2, dim=1)
    gap, n = top.values[:, 0] - top.values[:, 1], yt.shape[0]
    win, runner = top.indices[:, 0], top.indices[:, 1]
    mass = torch.bincount(win, minlength=n).double() / x.shape[0]
    newton = mass / (torch.bincount(win[gap < 1e-3], minlength=n).double() / x.shape[0] / 1e-3)
    own = torch.bincount(win, gap, minlength=n) / torch.bincount(win, minlength=n) / newton
    other = torch.bincount(runner, gap, minlength=n) / torch.bincount(runner, minlength=n) / newton
    return {"own_over_newton": own.tolist(), "runner_up_over_newton": other.tolist()}


def why() -> dict:
    from small_problems import problems as small

    ring = gap_scales(small()["ring-2d n=16"])
    for key in list(ring):
        print(key, "min", round(min(ring[key]), 2), "max", round(max(ring[key]), 2), flush=True)
    gmm8 = measurements(load("gmm8-64d"))
    for label, seen in gmm8.items():
        print(label, seen, flush=True)
    return {"ring-2d n=16": ring, "gmm8-64d measurements": gmm8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="only the 100,000 x 64 mixture")
    parser.add_argument("--why", action="store_true", help="only the diagnosis of the two regressions")
    args = parser.parse_args()
    torch.set_num_threads(2)
    parts.PRECONDITIONERS["adaptive"] = AdaptiveBefore26  # the adaptive scales of sections 24-25
    if args.why:
        save("default_flip_why", {"machine": machine(), "command": " ".join(sys.argv), **why()})
        return
    if args.large:
        problems = {"mixture-64d": (lambda: np.load(make_data(100_000, 64)), 0.1)}
        rows = solver_rows(problems, cap=1500.0)
        save("default_flip_large", {"machine": machine(), "command": " ".join(sys.argv), "rows": rows})
        return
    problems = {
        name: (lambda name=name: load(name), 0.05) for name in ("checkerboard-2d", "digits-64d", "gmm8-64d")
    }
    problems["mixture-64d"] = (lambda: np.load(make_data(30_000, 64)), 0.1)
    payload = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "solver": solver_rows(problems, cap=600.0),
    }
    payload["augmented"] = augmented_rows()
    save("default_flip", payload)


if __name__ == "__main__":
    main()

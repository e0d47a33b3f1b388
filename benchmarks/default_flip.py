"""The adaptive step scales as the solver's default (BENCHMARKS.md section 24): the cell scales, the
default before, and the adaptive ones side by side in one process, on the problems whose default
solves the earlier sections measured and sections 21-23 did not re-run.

    python benchmarks/default_flip.py            # results/default_flip.json
    python benchmarks/default_flip.py --large    # results/default_flip_large.json: N = 100,000 x 64

- ``solver``: the peers' problems of section 14 (checkerboard-2d, digits-64d, gmm8-64d; tol 0.05)
  and the 64-d mixture of ``scale.py`` at N = 30,000 (tol 0.1; with ``--large`` only N = 100,000,
  tol 0.1, at most 1,500 s a solve); solver seed 0, samples per target at the stop, seconds, and chi2
  checked independently on 2^20 fresh samples (``problems.independent_chi2``).
- ``augmented``: section 8's nine 20-point toys (beta = 10, ``augmented_toys.toy``): chi2, the
  fraction of pairs that leave their condition, and the fraction paired as POT's exact coupling pairs.

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
from common import CELL, machine, save  # noqa: E402
from problems import load, solve_row  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402

#: label -> solver options: the scales before section 24, and the default since
SCALES = {"cell": CELL, "adaptive": {}}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="only the 100,000 x 64 mixture")
    args = parser.parse_args()
    torch.set_num_threads(2)
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

"""Far outliers of heavy-tailed data: runner-up gaps only for cells that won nothing, and the empty rise.

    python benchmarks/outliers.py            # results/outliers.json

Heavy-tailed point sets (Cauchy in 2-D from numpy's seeds 0-4 at N = 300, N = 100 and 3,000; the
1,000-point Cauchy, log-normal and Student t sets of ``tails.py``; Student t with 1.5 degrees of
freedom in 3-D; Pareto 1.2 in 2-D), each solved three ways (tol 0.05, solver seed 0, at most 6,000
steps and 30 s):

- ``before``: the solver as it was (the adaptive scales count every runner-up gap, no empty rise:
  ``before_26`` of ``common.py``);
- ``fallback only``: runner-up gaps count only for a cell that won no sample of the batch
  (``empty_rise=False``);
- ``default``: that and the empty rise (:mod:`sdfm.transport.semidiscrete.empty`).

The check is independent and knows the merged atoms: 400,000 float64 samples assigned by
``assign`` (brute force over every target, the copies of merged atoms taken out by
``DuplicateGroups.representatives_only`` as the coupling does), counted per group of merged targets
(the solver merges atoms closer than its float32 scores resolve; ``result.duplicates``) against the
group's weight. "empty" counts the groups that no check sample reaches (each should get about
400,000 / N). Where targets were merged, ``chi2_copies_own_cells`` is the same count with every copy
keeping its own cell (what ``SemidiscreteCoupling`` and ``estimate_marginal`` paired before they took
the representatives only).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import before_26, machine, save  # noqa: E402
from sdfm.transport import SemidiscreteSolver, assign  # noqa: E402
from tails import _problems as tail_problems  # noqa: E402

MAX_STEPS, MAX_SECONDS, CHECK = 6000, 30.0, 400_000


#: label -> (the adaptive scales before section 26?, solver options)
VARIANTS = {"before": (True, {}), "fallback only": (False, {"empty_rise": False}), "default": (False, {})}


def problems() -> dict[str, torch.Tensor]:
    out = {}
    for n, seeds in ((300, range(5)), (100, [0]), (3000, [0])):
        for seed in seeds:
            u = np.random.default_rng(seed).uniform(size=(n, 2))
            out[f"cauchy {n} (numpy seed {seed})"] = np.tan(np.pi * (u - 0.5))
    tails = tail_problems()
    for name in ("cauchy_2d", "lognormal_2d", "student_t3_2d"):
        out[f"{name} (tails.py)"] = tails[name][0].numpy()
    out["student t 1.5 dof, 3-D"] = np.random.default_rng(0).standard_t(1.5, size=(1000, 3))
    out["pareto 1.2, 2-D"] = np.random.default_rng(0).pareto(1.2, size=(1000, 2))
    return {name: torch.from_numpy(np.asarray(y, dtype=np.float32)) for name, y in out.items()}


def check(y: torch.Tensor, result, copies: bool = False) -> tuple[float, int]:
    """(chi2 over the groups of merged targets, groups that no sample reaches). ``copies``: every
    target keeps its own cell (the coupling before ``representatives_only``)."""
    x = torch.randn(CHECK, y.shape[1], generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    n = y.shape[0]
    groups, weights = torch.arange(n), torch.full((n,), 1.0 / n, dtype=torch.float64)
    potential = result.potential
    if result.duplicates is not None:
        groups, weights = result.duplicates.inverse, result.duplicates.group_weights()
        if not copies:  # a group's cell is its atom's
            potential = result.duplicates.representatives_only(potential)
    index = assign(x, y.double(), potential.double())
    counts = torch.bincount(groups[index], minlength=weights.shape[0]).double()
    chi2 = float(((counts / CHECK - weights) ** 2 / weights).sum()) - (weights.shape[0] - 1) / CHECK
    return chi2, int((counts == 0).sum())


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name, y in problems().items():
        for label, (before, options) in VARIANTS.items():
            with before_26(before) as extra:
                solver = SemidiscreteSolver(
                    tol=0.05, max_steps=MAX_STEPS, max_seconds=MAX_SECONDS, **options, **extra
                )
                start = time.perf_counter()
                r = solver.solve(y, generator=torch.Generator().manual_seed(0))
                seconds = time.perf_counter() - start
            chi2, empty = check(y, r)
            row = {
                "problem": name,
                "N": y.shape[0],
                "d": y.shape[1],
                "extent": round(float(y.norm(dim=1).max()), 1),
                "merged_targets": 0 if r.duplicates is None else r.duplicates.num_duplicates,
                "variant": label,
                "seconds": round(seconds, 2),
                "samples_per_target": round(r.samples / y.shape[0], 1),
                "converged": r.converged,
                "chi2_independent": round(chi2, 4),
                "empty": empty,
                "empty_rises": r.settings["empty_rises"],
            }
            if r.duplicates is not None:  # the same potential, paired as the coupling did before
                row["chi2_copies_own_cells"] = round(check(y, r, copies=True)[0], 4)
            print(row, flush=True)
            rows.append(row)
    save("outliers", {"machine": machine(), "max_steps": MAX_STEPS, "max_seconds": MAX_SECONDS, "rows": rows})


if __name__ == "__main__":
    main()

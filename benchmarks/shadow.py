"""The stop on the steps' noise (BENCHMARKS.md section 35): whole solves side by side.

    python benchmarks/shadow.py solve     # results/shadow_solve.json

Problem: the 64-d mixture of 16 rank-16 Gaussians of scale.py (N = 30,000), where the solver's
defaults take the large high-dimensional regime (no annealing, the lifted start). "before" measures
the stop on fresh noise as section 34 left it (common.before_35); "now" is the default, which reads
snapshots of the average on the steps' own noise (``sdfm.transport.semidiscrete.shadow``). Tol 0.1,
seeds 0-2 alternating before / now in one process, chi2 checked on 2^20 independent samples; the
readings (samples per target in all, chi2, se) are in the JSON. Both run the lift as section 35 did
(256 clusters: common.before_36). Threads: 2 (set below); nothing else running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import before_35, before_36, machine, save  # noqa: E402
from problems import solve_and_check  # noqa: E402
from regime import N, mixture  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402


def cmd_solve(args):
    y = mixture()
    rows = []
    for seed in (0, 1, 2):
        for label in ("before", "now"):
            trained = [0]

            def keep(state, trained=trained):  # the training samples so far
                trained[0] = state.train_samples

            solver = SemidiscreteSolver(tol=0.1, max_steps=None, max_seconds=300)
            with before_35(label == "before"), before_36():  # (section 35: the lift on 256 clusters)
                res, seconds, chi2, se = solve_and_check(solver, y, seed, callback=keep)
            row = {
                "config": label,
                "seed": seed,
                "seconds": round(seconds, 1),
                "samples_per_target": round(res.samples / N, 2),
                "train_samples_per_target": round(trained[0] / N, 2),
                "converged": res.converged,
                "chi2_solver": round(res.chi2, 4),
                "chi2_solver_se": round(res.chi2_stderr, 4),
                "chi2_independent": round(chi2, 4),
                "chi2_independent_se": round(se, 4),
                "readings": [
                    [round(h.samples / N, 2), round(h.chi2, 4), round(h.chi2_stderr, 4)]
                    for h in res.history
                    if h.chi2 is not None
                ],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    save("shadow_solve", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "rows": rows})


def main():
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("solve")
    args = parser.parse_args()
    {"solve": cmd_solve}[args.cmd](args)


if __name__ == "__main__":
    main()

"""The lifted warm start (BENCHMARKS.md section 34): a coarse solve on k-means clusters lifted to the atoms.

    python benchmarks/lift.py start     # results/lift_start.json: chi2 of the starts, N = 30,000
    python benchmarks/lift.py curves    # results/lift_curves.json: chi2 against samples per target
    python benchmarks/lift.py solve     # results/lift_solve.json: whole solves to tol 0.1, 3 seeds
    python benchmarks/lift.py clusters  # results/lift_clusters.json: curves with K = 256 and n / 100

Problem: the 64-d mixture of 16 rank-16 Gaussians of scale.py (N = 30,000), where the solver's
defaults take the large high-dimensional regime (no annealing; section 15).

``start``: chi2 of each start on 2^17 fresh samples (estimate_marginal, fixed seed): h = 0 (what the
default started from before), the lift's constant term only (each atom given its cluster's coarse
potential), constant + linear term, and the lifted start (constant + linear + quadratic) with K = 64,
256 (the default) and 1,024 clusters; seconds of the lift.

``curves``: the averaged potential copied at fixed samples per target (noise scored against all atoms:
the lift's draws, scored against its K centres, are not in the count; the JSON has them) and its chi2
measured on 2^17 fresh samples afterwards; three seeds. "before" is the default of section 17 (h = 0,
averaging power 1), "lifted, power 1" separates the start from the flatter averaging, "now" is the
default (lifted, power 0.5).

``start`` and ``curves`` run the lift as section 34 measured it (256 clusters, 1,024 draws per
cluster: common.before_36).

``clusters`` (section 36): the curve of the default solve (chi2 of the averaged potential at 6, 10, 13
and 15 samples per target) with the lift on 256 clusters (common.before_36) and on the default
n / 100 clusters, up to 1,024 (N = 30,000: K = 1,024 given explicitly, seeds 0-2, chi2 on 2^17
samples; N = 100,000 (the same mixture, scale.py's file), seed 0, K = 1,000 by the default rule,
chi2 on 2^18 samples); the lift's seconds and summary beside each.

``solve``: the solver's defaults to tol 0.1 as before section 34 (h = 0 and the stop's earlier
measurement schedule: common.before_34) and as section 34 left them (the stop on fresh noise:
common.before_35), seeds 0-2, chi2 checked on 2^20 independent samples. Threads: 2 (set below);
one process, nothing else running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import _patched, before_34, before_35, before_36, machine, save  # noqa: E402
from problems import solve_row  # noqa: E402
from regime import N, mixture, snapshots  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.transport import SemidiscreteSolver, estimate_marginal  # noqa: E402
from sdfm.transport.semidiscrete import lift  # noqa: E402
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem  # noqa: E402

BEFORE = {"warm_start": "zero"}  # what "best" picked on these data before section 34
CONFIGS = {
    "before (h = 0, power 1)": BEFORE,
    "lifted, power 1": {"average_power": 1.0},
    "now (lifted, power 0.5)": {},
}


def chi2_of(y: torch.Tensor, g: torch.Tensor, samples: int = 1 << 17) -> float:
    gen = torch.Generator().manual_seed(5)
    return estimate_marginal(y, g, num_samples=samples, batch_size=8192, generator=gen, with_cost=False).chi2


def _terms(keep_linear: bool):
    """A lift whose atoms keep the constant term (and the linear one): no quadratic term."""

    def partial_potential(problem, rows, centre, psi_k, xbar_k, span, block):
        linear = (problem.atoms_at(rows) - problem.mean - centre) @ xbar_k
        return psi_k + (linear if keep_linear else torch.zeros_like(linear))

    return partial_potential


def cmd_start(args):
    y = torch.from_numpy(mixture())
    rows = {}

    def one(label, clusters=lift.LIFT_CLUSTERS, change=None):
        problem = SemidiscreteProblem(
            SemidiscreteSolver(), y, None, torch.Generator().manual_seed(0), None, None
        )
        t0 = time.perf_counter()
        with _patched(change is not None, *([(lift, "_member_potential", change)] if change else [])):
            h, summary = lift.lifted_start(problem, clusters)
        seconds = time.perf_counter() - t0
        rows[label] = {
            "chi2": round(chi2_of(y, problem.potential_of(h)), 4),
            "seconds": round(seconds, 2),
            **summary,
        }
        print(label, json.dumps(rows[label]), flush=True)

    rows["h = 0"] = {"chi2": round(chi2_of(y, torch.zeros(N, dtype=torch.float64)), 2)}
    print("h = 0", rows["h = 0"], flush=True)
    one("constant term only (K = 256)", change=_terms(False))
    one("constant + linear (K = 256)", change=_terms(True))
    for k in (64, 256, 1024):
        one(f"lifted, K = {k}", clusters=k)
    save("lift_start", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "starts": rows})


def curve(y: torch.Tensor, cfg: dict, marks: list[float], seed: int, samples: int = 1 << 17) -> dict:
    """chi2 of the averaged potential at the given samples per target (from the solver's start)."""
    t0 = time.perf_counter()
    run, snaps = snapshots(y, cfg, marks, seed)
    seconds = time.perf_counter() - t0
    return {
        "start": run.start_used,
        "lift": run.lift,
        "seconds": round(seconds, 1),
        "chi2": {m: round(chi2_of(y, g, samples), 4) for m, g, _ in snaps},
    }


def cmd_curves(args):
    y = torch.from_numpy(mixture())
    marks = [4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 18.0]
    out = {label: {} for label in CONFIGS}
    for seed in (0, 1, 2):
        for label, cfg in CONFIGS.items():
            out[label][seed] = curve(y, cfg, marks, seed)
            print(seed, label, json.dumps(out[label][seed]), flush=True)
    save("lift_curves", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "curves": out})


def cmd_clusters(args):
    marks = [6.0, 10.0, 13.0, 15.0]
    rows = []

    def one(y, n, seed, label, clusters, samples):
        with (
            before_36(label == "K = 256"),
            _patched(clusters is not None, (lift, "lift_clusters", lambda n, k=clusters: k)),
        ):
            row = {"n": n, "seed": seed, "config": label, **curve(y, {}, marks, seed, samples)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    y = torch.from_numpy(mixture())
    for seed in (0, 1, 2):
        one(y, N, seed, "K = 256", None, 1 << 17)
        one(y, N, seed, "K = 1,024", 1024, 1 << 17)
    big = 100_000
    y = torch.from_numpy(np.load(make_data(big, 64)))
    one(y, big, 0, "K = 256", None, 1 << 18)
    one(y, big, 0, "K = 1,000 (n / 100, the default)", None, 1 << 18)
    save("lift_clusters", {"machine": machine(), "command": " ".join(sys.argv), "marks": marks, "rows": rows})


def cmd_solve(args):
    y = mixture()
    rows = []
    for seed in (0, 1, 2):
        for label in ("before", "now"):
            solver = SemidiscreteSolver(tol=0.1, max_steps=None, max_seconds=300)
            with before_34(label == "before"), before_35():  # (section 34's stop: fresh noise)
                row = {"config": label, "seed": seed, **solve_row(solver, y, seed)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    save("lift_solve", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "rows": rows})


def main():
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("start", "curves", "solve", "clusters"):
        sub.add_parser(name)
    args = parser.parse_args()
    commands = {"start": cmd_start, "curves": cmd_curves, "solve": cmd_solve, "clusters": cmd_clusters}
    with before_36(args.cmd in ("start", "curves")):  # (section 34's lift)
        commands[args.cmd](args)


if __name__ == "__main__":
    main()
